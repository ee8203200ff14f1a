import * as crypto from 'node:crypto';
import * as fsp from 'node:fs/promises';
import { ContainerEventType, PodSandboxConfig, type RunPodSandboxRequest, type RunPodSandboxResponse } from '../generated/runtime/v1/api';
import { podIPs } from '../network/cni_result';
import { writePodFiles } from '../sandbox/pod_files';
import { DEFAULT_CGROUP_PARENT } from '../sandbox/pod_runtime';
import { sandboxNamespaces, validateSandboxConfig, validateSysctls } from '../sandbox/sandbox_spec';
import { type Sandbox, sandboxNameKey } from '../sandbox/sandbox_store';
import { msToNanos } from '../state/container_state';
import { markReady } from '../state/sandbox_state';
import { CleanupStack } from '../util/cleanup';
import { errorMessage, invalidArgument } from '../util/errors';
import { failpoint } from '../util/failpoint';
import type { CallContext } from './instrument';
import type { CriService } from './service';

/**
 * Creates and starts a pod sandbox: the per-pod monitor holding its namespaces, the pod cgroup,
 * per-pod files and the CNI network. Every step registers its undo, so a failure leaves nothing.
 *
 * kubelet retries RunPodSandbox with the same metadata when a call times out; such a retry joins
 * the create still in flight, or gets the sandbox it produced, instead of failing with "name is
 * reserved" (containerd#12438, cri-o#6185).
 */
export async function runPodSandbox(svc: CriService, req: RunPodSandboxRequest, ctx: CallContext): Promise<RunPodSandboxResponse> {
  const config = req.config;
  validateSandboxConfig(config);
  const handler = req.runtimeHandler || svc.config.runtime.defaultHandler;
  if (!svc.runtimeHandlers().includes(handler)) {
    throw invalidArgument(`runtime handler "${req.runtimeHandler}" is not configured (known: ${svc.runtimeHandlers().join(', ')})`);
  }
  const key = sandboxNameKey(config);
  if (svc.sandboxes.creating(key)) ctx.log.info({ key }, 'joining the create already in flight for this pod');
  const { id } = await svc.sandboxes.createOnce(key, () => createSandbox(svc, config, handler, ctx));
  return { podSandboxId: id };
}

async function createSandbox(svc: CriService, config: PodSandboxConfig, handler: string, ctx: CallContext): Promise<string> {
  const ns = sandboxNamespaces(config);
  const sysctls = validateSysctls(config.linux?.sysctls ?? {}, ns);
  const id = crypto.randomBytes(32).toString('hex');
  const log = ctx.log.child({ sandbox: id.slice(0, 12) });
  const cleanup = new CleanupStack();

  // Persisted before the first side effect: a crash from here on is undone by recovery.
  const sandbox: Sandbox = await svc.sandboxes.create({
    version: 1,
    id,
    config: PodSandboxConfig.toJSON(config),
    state: 'creating',
    createdAt: msToNanos(Date.now()),
    runtimeHandler: handler,
    ips: [],
    // What will be acquired is recorded up front, so that recovery after a crash knows what to release.
    resources: {
      cgroup: svc.pods.cgroupPathForName(config.linux?.cgroupParent || DEFAULT_CGROUP_PARENT, id),
      pinned: true,
      shmMounted: ns.ipc === 'pod',
    },
    stage: 'starting monitor',
  });
  cleanup.push('sandbox record', () => svc.sandboxes.delete(sandbox));
  try {
    cleanup.push('pod runtime', () => svc.pods.release(sandbox));
    // The monitor does not read the pod's files, so they are written while it starts; both
    // settle before anything is undone.
    const [files, monitor] = await Promise.allSettled([
      (async () => {
        await writePodFiles(sandbox.dir, { hostname: config.hostname || config.metadata!.name, hostNetwork: ns.network === 'node', dns: config.dnsConfig });
        if (config.logDirectory) await fsp.mkdir(config.logDirectory, { recursive: true, mode: 0o755 });
      })(),
      svc.pods.start(sandbox, { namespaces: ns, sysctls }),
    ]);
    if (monitor.status === 'rejected') throw monitor.reason;
    if (files.status === 'rejected') throw files.reason;
    const started = monitor.value;
    // The monitor, and the network about to be set up, are on disk before CNI ADD: a crash at any
    // later point is undone by recovery (CNI DEL of a network never added succeeds).
    await svc.sandboxes.update(sandbox, (r) => {
      r.resources.monitorPid = started.pid;
      r.resources.monitorStartTime = started.startTime;
      if (ns.network === 'pod') {
        r.resources.network = true;
        r.stage = 'setting up network';
      }
    });
    failpoint('sandbox-after-monitor');
    // The control connection every container call needs is opened and subscribed while CNI
    // runs, not by the pod's first CreateContainer. A failure here is seen again by that call.
    svc.pods.runtimeOf(sandbox).catch(() => undefined);

    let ips: string[] = [];
    if (ns.network === 'pod') {
      cleanup.push('network', () => svc.cni.del(cniParams(sandbox)));
      const result = await svc.cni.add({ ...cniParams(sandbox), signal: ctx.signal });
      ips = podIPs(result);
    }
    failpoint('sandbox-after-network');

    // The IPs are persisted with the final state: a crash before this undoes the network anyway.
    await svc.sandboxes.update(sandbox, (r) => {
      r.ips = ips;
      markReady(r);
    });
    cleanup.release();
    svc.events.publishSandbox(sandbox, ContainerEventType.CONTAINER_CREATED_EVENT);
    svc.events.publishSandbox(sandbox, ContainerEventType.CONTAINER_STARTED_EVENT);
    log.info({ pod: `${config.metadata!.namespace}/${config.metadata!.name}`, ips: sandbox.record.ips }, 'pod sandbox ready');
    return id;
  } catch (err) {
    log.warn({ err: errorMessage(err), stage: sandbox.record.stage }, 'pod sandbox creation failed; undoing');
    const failed = await cleanup.unwind(log);
    if (failed.length > 0) log.error({ failed }, 'some cleanup steps failed; recovery will retry them');
    throw err;
  }
}

/** The CNI arguments of a sandbox; kubelet identifies pods by these in plugin logs. */
export function cniParams(sandbox: Sandbox) {
  const m = sandbox.config.metadata!;
  return {
    containerId: sandbox.id,
    netnsPath: sandbox.netnsPath,
    ifName: 'eth0',
    podName: m.name,
    podNamespace: m.namespace,
    podUid: m.uid,
    runtimeConfig: {
      portMappings: sandbox.config.portMappings.map((p) => ({
        hostPort: p.hostPort,
        containerPort: p.containerPort,
        protocol: ['tcp', 'udp', 'sctp'][p.protocol] ?? 'tcp',
        hostIP: p.hostIp,
      })),
      dns: sandbox.config.dnsConfig
        ? { servers: sandbox.config.dnsConfig.servers, searches: sandbox.config.dnsConfig.searches, options: sandbox.config.dnsConfig.options }
        : undefined,
      cgroupPath: sandbox.record.resources.cgroup,
    },
  };
}
