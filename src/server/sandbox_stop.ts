import { ContainerEventType, type StopPodSandboxRequest, type StopPodSandboxResponse } from '../generated/runtime/v1/api';
import type { Sandbox } from '../sandbox/sandbox_store';
import { invalidArgument } from '../util/errors';
import type { CallContext } from './instrument';
import { stopContainerProcess } from './container_stop';
import { cniParams } from './sandbox_run';
import type { CriService } from './service';

/**
 * Stops every process of the pod and releases its network. Idempotent: stopping a stopped pod, or
 * one whose netns is already gone (CNI DEL tolerates that), succeeds. An unknown id succeeds too,
 * as kubelet may retry after a remove.
 */
export async function stopPodSandbox(svc: CriService, req: StopPodSandboxRequest, ctx: CallContext): Promise<StopPodSandboxResponse> {
  if (!req.podSandboxId) throw invalidArgument('pod sandbox id is empty');
  const sandbox = svc.sandboxes.find(req.podSandboxId);
  if (!sandbox) return {};
  await stopSandbox(svc, sandbox, ctx);
  return {};
}

export async function stopSandbox(svc: CriService, sandbox: Sandbox, ctx: CallContext): Promise<void> {
  await svc.sandboxLocks.run(sandbox.id, async () => {
    if (sandbox.state === 'stopped') return;
    // The monitor stops its containers (stop signal, then SIGKILL after the grace period) before
    // it exits; their exits are then on disk.
    await svc.pods.stop(sandbox);
    for (const c of svc.containers.bySandbox(sandbox.id)) await stopContainerProcess(svc, c, 0, ctx);
    if (sandbox.record.resources.network) {
      await svc.cni.del(cniParams(sandbox));
      await svc.sandboxes.update(sandbox, (r) => void (r.resources.network = false));
    }
    await svc.sandboxes.update(sandbox, (r) => {
      r.state = 'stopped';
      r.stage = 'stopped';
    });
    svc.events.publishSandbox(sandbox, ContainerEventType.CONTAINER_STOPPED_EVENT);
    ctx.log.info({ sandbox: sandbox.id.slice(0, 12) }, 'pod sandbox stopped');
  });
}
