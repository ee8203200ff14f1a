import {
  NamespaceMode,
  type PodSandbox,
  type PodSandboxStatus,
  PodSandboxState,
  type PodSandboxStatusRequest,
  type PodSandboxStatusResponse,
} from '../generated/runtime/v1/api';
import type { Sandbox } from '../sandbox/sandbox_store';
import { invalidArgument } from '../util/errors';
import { toCriContainerStatus } from './container_status';
import type { CallContext } from './instrument';
import type { CriService } from './service';

/** READY only while created, not stopped, and its monitor (holding the namespaces) is alive. */
export function criSandboxState(svc: CriService, sandbox: Sandbox): PodSandboxState {
  return sandbox.state === 'ready' && svc.pods.alive(sandbox) ? PodSandboxState.SANDBOX_READY : PodSandboxState.SANDBOX_NOTREADY;
}

export function toCriPodSandbox(svc: CriService, sandbox: Sandbox): PodSandbox {
  return {
    id: sandbox.id,
    metadata: sandbox.config.metadata,
    state: criSandboxState(svc, sandbox),
    createdAt: BigInt(sandbox.record.createdAt),
    labels: sandbox.config.labels,
    annotations: sandbox.config.annotations,
    runtimeHandler: sandbox.record.runtimeHandler,
  };
}

function toCriStatus(svc: CriService, sandbox: Sandbox): PodSandboxStatus {
  const [ip, ...additional] = sandbox.record.ips;
  const opts = sandbox.config.linux?.securityContext?.namespaceOptions;
  return {
    ...toCriPodSandbox(svc, sandbox),
    network: { ip: ip ?? '', additionalIps: additional.map((a) => ({ ip: a })) },
    linux: {
      namespaces: {
        options: {
          network: opts?.network ?? NamespaceMode.POD,
          pid: opts?.pid ?? NamespaceMode.CONTAINER,
          ipc: opts?.ipc ?? NamespaceMode.POD,
          targetId: opts?.targetId ?? '',
          usernsOptions: undefined,
        },
      },
    },
  };
}

export async function podSandboxStatus(svc: CriService, req: PodSandboxStatusRequest, _ctx: CallContext): Promise<PodSandboxStatusResponse> {
  if (!req.podSandboxId) throw invalidArgument('pod sandbox id is empty');
  const sandbox = svc.sandboxes.resolve(req.podSandboxId);
  const info: Record<string, string> = {};
  if (req.verbose) {
    info.info = JSON.stringify({
      pid: sandbox.record.resources.monitorPid ?? 0,
      netnsPath: sandbox.netnsPath,
      stage: sandbox.record.stage,
      resources: sandbox.record.resources,
      runtimeHandler: sandbox.record.runtimeHandler,
      config: sandbox.record.config,
    });
  }
  // Filled for evented PLEG, which reads a pod's containers from its status (CRI 1.27+).
  const containersStatuses = svc.containers
    .bySandbox(sandbox.id)
    .filter((c) => c.state !== 'creating')
    .map((c) => toCriContainerStatus(svc, c));
  return { status: toCriStatus(svc, sandbox), info, containersStatuses, timestamp: BigInt(Date.now()) * 1_000_000n };
}
