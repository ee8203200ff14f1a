import { ContainerEventType } from '../generated/runtime/v1/api';
import type { CriService } from '../server/service';
import { errorMessage } from '../util/errors';
import { readExitRecord } from '../runtime/exit_record';
import { markExited, recordedExit } from '../state/container_state';
import type { Container } from './container_store';

/**
 * Turns exits recorded by the pods' monitors into container state, and lets StopContainer wait
 * for an exit. The monitor writes `exit.json` before it announces the exit, so the record is read
 * from disk whether the event arrives live or the exit happened while the daemon was down.
 */
export class ContainerExits {
  private readonly waiters = new Map<string, Set<() => void>>();

  constructor(private readonly svc: CriService) {}

  /** Records the exit if the monitor has written one; returns whether the container has exited. */
  async reconcile(container: Container, force = false): Promise<boolean> {
    if (container.state === 'exited') return true;
    // With the monitor's events flowing, a running container's exit is pushed to us: no need to
    // look at the disk on every status call.
    if (!force && container.state === 'running' && this.svc.pods.connected(container.record.sandboxId)) return false;
    const exit = await readExitRecord(container.bundleDir);
    if (!exit) return false;
    await this.svc.containerLocks.run(container.id, async () => {
      if (container.state === 'exited' || !this.svc.containers.get(container.id)) return;
      await this.svc.containers.update(container, (r) => markExited(r, recordedExit(exit)));
    });
    this.svc.log.info({ container: container.id.slice(0, 12), exitCode: exit.exitCode, reason: container.record.reason }, 'container exited');
    const sandbox = this.svc.sandboxes.get(container.record.sandboxId);
    if (sandbox) this.svc.events.publishContainer(container.id, sandbox, ContainerEventType.CONTAINER_STOPPED_EVENT);
    for (const wake of this.waiters.get(container.id) ?? []) wake();
    this.waiters.delete(container.id);
    return true;
  }

  /** Called for each `container_exit` event of a pod's monitor. */
  onExit(containerId: string): void {
    const container = this.svc.containers.get(containerId);
    if (!container) return;
    this.reconcile(container, true).catch((err: unknown) =>
      this.svc.log.error({ container: containerId, err: errorMessage(err) }, 'recording a container exit failed'),
    );
  }

  /** Resolves true once the container has exited, false if `timeoutMs` passes first. */
  async waitForExit(container: Container, timeoutMs: number): Promise<boolean> {
    if (await this.reconcile(container)) return true;
    return new Promise((resolve) => {
      const set = this.waiters.get(container.id) ?? new Set<() => void>();
      this.waiters.set(container.id, set);
      const wake = (): void => {
        clearTimeout(timer);
        set.delete(wake);
        resolve(true);
      };
      const timer = setTimeout(() => {
        set.delete(wake);
        // The event may have been missed (monitor reconnect): look at the record once more.
        this.reconcile(container, true).then(resolve, () => resolve(false));
      }, timeoutMs);
      set.add(wake);
    });
  }
}
