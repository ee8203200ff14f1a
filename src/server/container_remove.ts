import { ContainerEventType, type RemoveContainerRequest, type RemoveContainerResponse } from '../generated/runtime/v1/api';
import type { Container } from '../container/container_store';
import { invalidArgument } from '../util/errors';
import { removeTree } from '../util/fsutil';
import type { CallContext } from './instrument';
import { stopContainerProcess } from './container_stop';
import type { CriService } from './service';

/** Removes a container, killing it first if it still runs. Unknown ids succeed. */
export async function removeContainer(svc: CriService, req: RemoveContainerRequest, ctx: CallContext): Promise<RemoveContainerResponse> {
  if (!req.containerId) throw invalidArgument('container id is empty');
  const container = svc.containers.find(req.containerId);
  if (!container) return {};
  await removeContainerFully(svc, container, ctx);
  ctx.log.info({ container: container.id.slice(0, 12) }, 'container removed');
  return {};
}

export async function removeContainerFully(svc: CriService, container: Container, ctx: CallContext): Promise<void> {
  await stopContainerProcess(svc, container, 0, ctx);
  await svc.containerLocks.run(container.id, async () => {
    if (!svc.containers.get(container.id)) return;
    // The writable layer goes while the cgroup is removed; the record goes last, once both are gone.
    await Promise.all([svc.pods.removeCgroup(container.record.cgroupPath), removeTree(container.layerDir)]);
    const sandbox = svc.sandboxes.get(container.record.sandboxId);
    if (sandbox) svc.events.publishContainer(container.id, sandbox, ContainerEventType.CONTAINER_DELETED_EVENT);
    await svc.containers.delete(container);
  });
}
