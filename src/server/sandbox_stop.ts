import { ContainerEventType, type StopPodSandboxRequest, type StopPodSandboxResponse } from '../generated/runtime/v1/api';
import type { Sandbox } from '../sandbox/sandbox_store';
import { markStopped } from '../state/sandbox_state';
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
    // Tearing the network down while a container still runs would cut it off in its grace
    // period; with none left, CNI DEL (the pinned netns outlives the monitor) overlaps the
    // monitor's shutdown.
    const network = sandbox.record.resources.network;
    const quiet = svc.containers.bySandbox(sandbox.id).every((c) => c.state === 'exited');
    const teardown = network && quiet ? svc.cni.del(cniParams(sandbox)) : undefined;
    // The monitor stops its containers (stop signal, then SIGKILL after the grace period) before
    // it exits; their exits are then on disk.
    const [monitor] = await Promise.allSettled([svc.pods.stop(sandbox), teardown]);
    // A failed stop fails the call, but only once the teardown settled (it is retried either way).
    if (monitor.status === 'rejected') throw monitor.reason;
    await teardown;
    for (const c of svc.containers.bySandbox(sandbox.id)) await stopContainerProcess(svc, c, 0, ctx);
    if (network && !teardown) await svc.cni.del(cniParams(sandbox));
    // One write for both: a crash before it makes recovery repeat the (idempotent) CNI DEL.
    await svc.sandboxes.update(sandbox, (r) => {
      r.resources.network = false;
      markStopped(r);
    });
    svc.events.publishSandbox(sandbox, ContainerEventType.CONTAINER_STOPPED_EVENT);
    ctx.log.info({ sandbox: sandbox.id.slice(0, 12) }, 'pod sandbox stopped');
  });
}
