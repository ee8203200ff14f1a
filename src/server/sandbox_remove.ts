import { ContainerEventType, type RemovePodSandboxRequest, type RemovePodSandboxResponse } from '../generated/runtime/v1/api';
import { invalidArgument } from '../util/errors';
import type { CallContext } from './instrument';
import { removeContainerFully } from './container_remove';
import { stopSandbox } from './sandbox_stop';
import type { CriService } from './service';

/** Removes a sandbox and everything it holds, stopping it first if needed. Unknown ids succeed. */
export async function removePodSandbox(svc: CriService, req: RemovePodSandboxRequest, ctx: CallContext): Promise<RemovePodSandboxResponse> {
  if (!req.podSandboxId) throw invalidArgument('pod sandbox id is empty');
  const sandbox = svc.sandboxes.find(req.podSandboxId);
  if (!sandbox) return {};
  await stopSandbox(svc, sandbox, ctx);
  for (const c of svc.containers.bySandbox(sandbox.id)) await removeContainerFully(svc, c, ctx);
  await svc.sandboxLocks.run(sandbox.id, async () => {
    await svc.pods.release(sandbox);
    // Published while the record still exists, so the event carries the pod's last status.
    if (svc.sandboxes.get(sandbox.id) === sandbox) svc.events.publishSandbox(sandbox, ContainerEventType.CONTAINER_DELETED_EVENT);
    await svc.sandboxes.delete(sandbox);
  });
  ctx.log.info({ sandbox: sandbox.id.slice(0, 12) }, 'pod sandbox removed');
  return {};
}
