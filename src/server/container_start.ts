import { ContainerEventType, type StartContainerRequest, type StartContainerResponse } from '../generated/runtime/v1/api';
import { markExited, markRunning, startFailedExit } from '../state/container_state';
import { failedPrecondition, internal, invalidArgument } from '../util/errors';
import type { CallContext } from './instrument';
import type { CriService } from './service';

/** Lets the process the monitor prepared exec. A failed exec fails this call with its reason. */
export async function startContainer(svc: CriService, req: StartContainerRequest, ctx: CallContext): Promise<StartContainerResponse> {
  if (!req.containerId) throw invalidArgument('container id is empty');
  const container = svc.containers.resolve(req.containerId);
  await svc.containerLocks.run(container.id, async () => {
    const r = container.record;
    if (container.state === 'exited' && r.reason === 'StartError' && r.startedAt === '0') {
      // Its set-up failed before this call came (CreateContainer answers before the set-up is
      // done): this call is where that failure is reported, whichever came first.
      throw internal(r.message || `container ${container.id} failed to set up`);
    }
    if (container.state !== 'created') throw failedPrecondition(`container ${container.id} is ${container.state}, not created`);
    const sandbox = svc.sandboxes.resolve(container.record.sandboxId);
    const runtime = await svc.pods.runtimeOf(sandbox);
    let started: { pid: number; startedAtMs: number };
    try {
      started = await runtime.start(container.id);
    } catch (err) {
      // The process is gone: record it as exited with the reason, as kubelet expects to see it.
      await svc.containers.update(container, (r) => markExited(r, startFailedExit((err as Error).message)));
      throw err;
    }
    await svc.containers.update(container, (r) => markRunning(r, started.pid, started.startedAtMs));
  });
  svc.events.publishContainer(container.id, svc.sandboxes.resolve(container.record.sandboxId), ContainerEventType.CONTAINER_STARTED_EVENT);
  // The process may already have exited between exec and now. A subscribed monitor connection
  // delivers that exit as an event (handled once the lock above is free); without one, look.
  if (!svc.pods.connected(container.record.sandboxId)) await svc.exits.reconcile(container, true);
  ctx.log.info({ container: container.id.slice(0, 12) }, 'container started');
  return {};
}
