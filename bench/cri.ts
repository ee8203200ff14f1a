/**
 * CRI requests shaped the way kubelet sends them, identical for both runtimes, and small helpers
 * around the client.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { status as GrpcStatus } from '@grpc/grpc-js';
import type { CriClient } from '../src/client/cri_client';
import type { BenchRuntime } from './runtimes/runtime';

/** The RPC is not implemented by this runtime (yet): the workload is "not available" for it. */
export class NotAvailable extends Error {
  constructor(readonly rpc: string) {
    super(`${rpc} is not implemented`);
  }
}

export function grpcCode(err: unknown): number | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'number' ? code : undefined;
}

export function isUnimplemented(err: unknown): boolean {
  return err instanceof NotAvailable || grpcCode(err) === GrpcStatus.UNIMPLEMENTED;
}

/** Turns UNIMPLEMENTED from `rpc` into NotAvailable, so reports can name what is missing. */
export async function call<T>(rpc: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (grpcCode(err) === GrpcStatus.UNIMPLEMENTED) throw new NotAvailable(rpc);
    throw err;
  }
}

/** Milliseconds `fn` takes, measured with the monotonic high-resolution clock. */
export async function timed<T>(fn: () => Promise<T>): Promise<{ ms: number; value: T }> {
  const start = process.hrtime.bigint();
  const value = await fn();
  return { ms: Number(process.hrtime.bigint() - start) / 1e6, value };
}

let podCounter = 0;

/**
 * A pod as kubelet describes it: metadata with a unique uid, a log directory kubelet has
 * created, hostname, DNS, labels, and the runtime's pod cgroup parent.
 */
/** network POD (0), pid CONTAINER (1), ipc POD (0): kubelet's defaults for a pod. */
const KUBELET_NAMESPACES = { network: 0, pid: 1, ipc: 0 };

export function podConfig(rt: BenchRuntime, prefix: string) {
  const n = ++podCounter;
  const name = `${prefix}-${n}`;
  const logDirectory = path.join(rt.logRoot, `${name}`);
  fs.mkdirSync(logDirectory, { recursive: true });
  return {
    metadata: { name, namespace: 'bench', uid: `bench-${process.pid}-${n}`, attempt: 0 },
    hostname: name,
    logDirectory,
    dnsConfig: { servers: ['192.0.2.53'], searches: ['bench.svc.cluster.local'], options: ['ndots:5'] },
    labels: { app: prefix, 'crisp.bench/run': String(process.pid) },
    annotations: {},
    // What kubelet sends for a pod without shareProcessNamespace: a PID namespace per container.
    linux: { cgroupParent: rt.cgroupParent, securityContext: { namespaceOptions: KUBELET_NAMESPACES } },
  };
}

export type PodConfig = ReturnType<typeof podConfig>;

/**
 * A long-running container that stops promptly on SIGTERM: `sleep` as PID 1 would ignore it and
 * every StopContainer would wait out its grace period.
 */
export const SLEEPER_COMMAND = ['/bin/sh', '-c', "trap 'exit 0' TERM; sleep 3600 & wait"];

export function containerConfig(name: string, image: string, command: string[] = SLEEPER_COMMAND) {
  return {
    metadata: { name, attempt: 0 },
    image: { image },
    command,
    logPath: `${name}/0.log`,
    labels: { container: name },
    linux: { resources: {}, securityContext: { namespaceOptions: KUBELET_NAMESPACES } },
  };
}

export async function runPod(client: CriClient, config: PodConfig): Promise<string> {
  const { podSandboxId } = await call('RunPodSandbox', () => client.call('runPodSandbox', { config }));
  return podSandboxId;
}

export async function removePod(client: CriClient, id: string): Promise<void> {
  await call('StopPodSandbox', () => client.call('stopPodSandbox', { podSandboxId: id }));
  await call('RemovePodSandbox', () => client.call('removePodSandbox', { podSandboxId: id }));
}

/** Creates and starts a sleeper container in the pod; returns its id. */
export async function runContainer(client: CriClient, podId: string, pod: PodConfig, name: string, image: string): Promise<string> {
  fs.mkdirSync(path.join(pod.logDirectory, name), { recursive: true });
  const { containerId } = await call('CreateContainer', () =>
    client.call('createContainer', { podSandboxId: podId, config: containerConfig(name, image), sandboxConfig: pod }),
  );
  await call('StartContainer', () => client.call('startContainer', { containerId }));
  return containerId;
}

/** Pulls the image unless the runtime has it already. */
export async function ensureImage(client: CriClient, image: string): Promise<void> {
  const { image: present } = await call('ImageStatus', () => client.call('imageStatus', { image: { image } }));
  if (!present) await call('PullImage', () => client.call('pullImage', { image: { image } }, { timeoutMs: 600_000 }));
}

/** Runs `fn` over `items` with at most `limit` in flight; resolves when all have settled. */
export async function forEachLimit<T>(items: readonly T[], limit: number, fn: (item: T, index: number) => Promise<void>): Promise<void> {
  let next = 0;
  let failure: unknown;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      try {
        await fn(items[i]!, i);
      } catch (err) {
        failure ??= err;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  if (failure !== undefined) throw failure;
}

/**
 * Removes every pod and container the runtime has, as kubelet would when draining the node.
 * Containers first where the runtime supports them; pods then take whatever is left with them.
 */
export async function removeAllPods(client: CriClient): Promise<void> {
  try {
    const { containers } = await client.call('listContainers', {}, { timeoutMs: 30_000 });
    await forEachLimit(containers, 4, async (c) => {
      await client.call('stopContainer', { containerId: c.id, timeout: 0n }, { timeoutMs: 30_000 }).catch(() => undefined);
      await client.call('removeContainer', { containerId: c.id }, { timeoutMs: 30_000 }).catch(() => undefined);
    });
  } catch (err) {
    if (!isUnimplemented(err)) throw err;
  }
  const { items } = await client.call('listPodSandbox', {}, { timeoutMs: 30_000 });
  await forEachLimit(items, 4, async (pod) => {
    await client.call('stopPodSandbox', { podSandboxId: pod.id }, { timeoutMs: 60_000 }).catch(() => undefined);
    await client.call('removePodSandbox', { podSandboxId: pod.id }, { timeoutMs: 60_000 });
  });
}
