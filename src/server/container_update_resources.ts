import type { UpdateContainerResourcesRequest, UpdateContainerResourcesResponse } from '../generated/runtime/v1/api';
import { cgroupResources } from '../sandbox/pod_runtime';
import { failedPrecondition, invalidArgument } from '../util/errors';
import type { CallContext } from './instrument';
import type { CriService } from './service';

/** Applies new limits to the container's cgroup before returning, and records them for ContainerStatus. */
export async function updateContainerResources(
  svc: CriService,
  req: UpdateContainerResourcesRequest,
  ctx: CallContext,
): Promise<UpdateContainerResourcesResponse> {
  if (!req.containerId) throw invalidArgument('container id is empty');
  const c = svc.containers.resolve(req.containerId);
  if (!req.linux) return {};
  await svc.containerLocks.run(c.id, async () => {
    if (c.state === 'exited') throw failedPrecondition(`container ${c.id} has exited`);
    await svc.pods.updateCgroup(c.record.cgroupPath, cgroupResources(req.linux));
    await svc.containers.update(c, (r) => {
      const config = r.config as { linux?: { resources?: unknown } };
      config.linux = { ...(config.linux ?? {}), resources: req.linux };
    });
  });
  ctx.log.info({ container: c.id.slice(0, 12) }, 'container resources updated');
  return {};
}
