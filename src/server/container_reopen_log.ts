import type { ReopenContainerLogRequest, ReopenContainerLogResponse } from '../generated/runtime/v1/api';
import { failedPrecondition, invalidArgument } from '../util/errors';
import type { CallContext } from './instrument';
import type { CriService } from './service';

/** kubelet renamed the log file for rotation: the monitor starts a new one at the same path. */
export async function reopenContainerLog(svc: CriService, req: ReopenContainerLogRequest, _ctx: CallContext): Promise<ReopenContainerLogResponse> {
  if (!req.containerId) throw invalidArgument('container id is empty');
  const c = svc.containers.resolve(req.containerId);
  await svc.exits.reconcile(c);
  if (c.state !== 'running') throw failedPrecondition(`container ${c.id} is not running`);
  const sandbox = svc.sandboxes.resolve(c.record.sandboxId);
  await (await svc.pods.runtimeOf(sandbox)).reopenLog(c.id);
  return {};
}
