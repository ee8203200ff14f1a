import type { CriService } from '../server/service';
import { lostExit, markExited } from '../state/container_state';
import { errorMessage } from '../util/errors';

/**
 * Reconciles containers after a daemon restart: exits the monitors recorded meanwhile are applied;
 * a create that never finished is undone; containers whose pod monitor is gone have exited.
 */
export async function recoverContainers(svc: CriService): Promise<void> {
  const log = svc.log.child({ subsystem: 'container-recovery' });
  for (const c of await svc.containers.load()) {
    const sandbox = svc.sandboxes.get(c.record.sandboxId);
    try {
      if (c.state === 'creating') {
        log.warn({ container: c.id, stage: c.record.stage }, 'undoing a container creation interrupted by a restart');
        if (sandbox && svc.pods.alive(sandbox)) await svc.pods.killContainer(sandbox, c.id);
        await svc.pods.removeCgroup(c.record.cgroupPath);
        await svc.containers.delete(c);
        continue;
      }
      if (await svc.exits.reconcile(c, true)) continue;
      if (!sandbox || !svc.pods.alive(sandbox)) {
        await svc.containers.update(c, (r) => markExited(r, lostExit()));
      }
    } catch (err) {
      log.error({ container: c.id, err: errorMessage(err) }, 'container recovery failed');
    }
  }
  // Exits pushed while the daemon runs arrive over each pod monitor's connection; open them now so
  // none is missed for containers that are running.
  for (const sandbox of svc.sandboxes.list()) {
    if (sandbox.state === 'ready' && svc.containers.bySandbox(sandbox.id).some((c) => c.state === 'running' || c.state === 'created')) {
      await svc.pods.runtimeOf(sandbox).catch((err: unknown) => log.warn({ sandbox: sandbox.id, err: errorMessage(err) }, 'cannot reach the pod monitor'));
    }
  }
}
