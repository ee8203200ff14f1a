import { cniParams } from '../server/sandbox_run';
import type { CriService } from '../server/service';
import { errorMessage } from '../util/errors';

/**
 * Reconciles sandboxes with what survived a daemon restart. A sandbox still `creating` belongs to
 * a RunPodSandbox that never returned (the daemon died half-way): everything its record lists is
 * released and the record deleted, so the pod is fully gone and kubelet creates it again.
 * Ready and stopped sandboxes are kept; a ready one whose monitor died reports NOTREADY.
 */
export async function recoverSandboxes(svc: CriService): Promise<void> {
  const log = svc.log.child({ subsystem: 'sandbox-recovery' });
  for (const sandbox of await svc.sandboxes.load()) {
    if (sandbox.state !== 'creating') continue;
    log.warn({ sandbox: sandbox.id, stage: sandbox.record.stage }, 'undoing a pod sandbox creation interrupted by a restart');
    try {
      if (sandbox.record.resources.network) await svc.cni.del(cniParams(sandbox));
      await svc.pods.release(sandbox);
      await svc.sandboxes.delete(sandbox);
    } catch (err) {
      // Kept on disk and retried at the next start; it is never listed while creating.
      log.error({ sandbox: sandbox.id, err: errorMessage(err) }, 'could not undo the interrupted creation');
    }
  }
}
