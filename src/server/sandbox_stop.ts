import type { StopPodSandboxRequest, StopPodSandboxResponse } from '../generated/runtime/v1/api';
import type { Sandbox } from '../sandbox/sandbox_store';
import { invalidArgument } from '../util/errors';
import type { CallContext } from './instrument';
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
    await svc.pods.stop(sandbox);
    if (sandbox.record.resources.network) {
      await svc.cni.del(cniParams(sandbox));
      await svc.sandboxes.update(sandbox, (r) => void (r.resources.network = false));
    }
    await svc.sandboxes.update(sandbox, (r) => {
      r.state = 'stopped';
      r.stage = 'stopped';
    });
    ctx.log.info({ sandbox: sandbox.id.slice(0, 12) }, 'pod sandbox stopped');
  });
}
