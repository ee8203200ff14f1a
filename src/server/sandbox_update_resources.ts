import {
  LinuxContainerResources,
  PodSandboxState,
  type UpdatePodSandboxResourcesRequest,
  type UpdatePodSandboxResourcesResponse,
} from '../generated/runtime/v1/api';
import { cgroupResources } from '../sandbox/pod_runtime';
import { failedPrecondition, invalidArgument } from '../util/errors';
import type { CallContext } from './instrument';
import { criSandboxState } from './sandbox_status';
import type { CriService } from './service';

/** Sum of two limits where 0 means "unlimited": unlimited wins. */
function addLimit(a: bigint, b: bigint): bigint {
  return a === 0n ? 0n : a + b;
}

/**
 * The pod's total: `resources` is the sum over its containers, `overhead` what the runtime class
 * adds (kubelet sizes its pod cgroup the same way). Shares add up; a quota or memory limit stays
 * unlimited if the containers' is; the cpuset and unified keys are the containers'.
 */
export function podTotalResources(resources: LinuxContainerResources | undefined, overhead: LinuxContainerResources | undefined): LinuxContainerResources | undefined {
  if (!resources || !overhead) return resources ?? overhead;
  const hugepages = new Map<string, bigint>();
  for (const h of [...resources.hugepageLimits, ...overhead.hugepageLimits]) hugepages.set(h.pageSize, (hugepages.get(h.pageSize) ?? 0n) + h.limit);
  return LinuxContainerResources.fromPartial({
    ...resources,
    cpuShares: resources.cpuShares + overhead.cpuShares,
    cpuQuota: resources.cpuQuota > 0n ? resources.cpuQuota + (overhead.cpuQuota > 0n ? overhead.cpuQuota : 0n) : resources.cpuQuota,
    memoryLimitInBytes: addLimit(resources.memoryLimitInBytes, overhead.memoryLimitInBytes),
    memorySwapLimitInBytes: addLimit(resources.memorySwapLimitInBytes, overhead.memorySwapLimitInBytes),
    hugepageLimits: [...hugepages].map(([pageSize, limit]) => ({ pageSize, limit })),
  });
}

/**
 * Applies kubelet's new pod-level resources (after an in-place resize) to the sandbox's cgroup.
 * kubelet resizes its own pod cgroup itself; this keeps the runtime's view and cgroup in step.
 */
export async function updatePodSandboxResources(
  svc: CriService,
  req: UpdatePodSandboxResourcesRequest,
  ctx: CallContext,
): Promise<UpdatePodSandboxResourcesResponse> {
  if (!req.podSandboxId) throw invalidArgument('pod sandbox id is empty');
  const sandbox = svc.sandboxes.resolve(req.podSandboxId);
  await svc.sandboxLocks.run(sandbox.id, async () => {
    if (criSandboxState(svc, sandbox) !== PodSandboxState.SANDBOX_READY) {
      throw failedPrecondition(`pod sandbox ${sandbox.id} is not ready: its resources cannot be updated`);
    }
    const resources = cgroupResources(podTotalResources(req.resources, req.overhead));
    await svc.native.cgroupUpdate(svc.pods.cgroupPathFor(sandbox), resources);
    ctx.log.info({ sandbox: sandbox.id.slice(0, 12), resources }, 'pod sandbox resources updated');
  });
  return {};
}
