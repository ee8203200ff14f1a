/**
 * Spec options recording the container's cgroup limits (the daemon creates the cgroup from
 * these; they are in the spec for inspection) and its CRI annotations.
 */
import type { LinuxContainerResources } from '../generated/runtime/v1/api';
import type { ContainerSpecOpt, SpecHost } from './spec_context';
import { applyOpts, withAnnotations, type OciResources } from './spec_opts';

const ANNOTATION_CONTAINER_TYPE = 'io.kubernetes.cri.container-type';
const ANNOTATION_SANDBOX_ID = 'io.kubernetes.cri.sandbox-id';
const ANNOTATION_SANDBOX_NAME = 'io.kubernetes.cri.sandbox-name';
const ANNOTATION_SANDBOX_NAMESPACE = 'io.kubernetes.cri.sandbox-namespace';
const ANNOTATION_SANDBOX_UID = 'io.kubernetes.cri.sandbox-uid';
const ANNOTATION_CONTAINER_NAME = 'io.kubernetes.cri.container-name';
const ANNOTATION_IMAGE_NAME = 'io.kubernetes.cri.image-name';

/** CPU, memory, hugepage and unified limits of the request. */
export const resourcesFromConfig: ContainerSpecOpt = async (spec, { config, input, host }) => {
  const resources = config.linux?.resources;
  if (resources) await applyResources(spec.linux.resources, resources, input.cgroup.version, host);
};

/** The request's annotations, then the ones containerd's CRI plugin sets, which win. */
export const criAnnotations: ContainerSpecOpt = (spec, { config, sandboxConfig, input }) => {
  applyOpts(
    spec,
    withAnnotations({ ...config.annotations }),
    withAnnotations({
      [ANNOTATION_CONTAINER_TYPE]: 'container',
      [ANNOTATION_SANDBOX_ID]: input.sandbox.id,
      [ANNOTATION_SANDBOX_NAME]: sandboxConfig.metadata?.name ?? '',
      [ANNOTATION_SANDBOX_NAMESPACE]: sandboxConfig.metadata?.namespace ?? '',
      [ANNOTATION_SANDBOX_UID]: sandboxConfig.metadata?.uid ?? '',
      [ANNOTATION_CONTAINER_NAME]: config.metadata?.name ?? '',
      [ANNOTATION_IMAGE_NAME]: config.image?.userSpecifiedImage || config.image?.image || '',
    }),
  );
};

async function applyResources(out: OciResources, r: LinuxContainerResources, cgroupVersion: 1 | 2, host: SpecHost): Promise<void> {
  const cpu: NonNullable<OciResources['cpu']> = {};
  if (r.cpuShares !== 0n) cpu.shares = Number(r.cpuShares);
  if (r.cpuQuota !== 0n) cpu.quota = Number(r.cpuQuota);
  if (r.cpuPeriod !== 0n) cpu.period = Number(r.cpuPeriod);
  if (r.cpusetCpus) cpu.cpus = r.cpusetCpus;
  if (r.cpusetMems) cpu.mems = r.cpusetMems;
  if (Object.keys(cpu).length > 0) out.cpu = cpu;

  const memory: NonNullable<OciResources['memory']> = {};
  if (r.memoryLimitInBytes !== 0n) memory.limit = Number(r.memoryLimitInBytes);
  if (r.memoryLimitInBytes !== 0n || r.memorySwapLimitInBytes !== 0n) {
    // Without an explicit swap limit, swap is capped at the memory limit so the container
    // cannot use swap at all (memory+swap == memory on v1).
    if (await host.swapControllerAvailable(cgroupVersion)) {
      memory.swap = Number(r.memorySwapLimitInBytes !== 0n ? r.memorySwapLimitInBytes : r.memoryLimitInBytes);
    }
  }
  if (Object.keys(memory).length > 0) out.memory = memory;

  if (r.hugepageLimits.length > 0) out.hugepageLimits = r.hugepageLimits.map((h) => ({ pageSize: h.pageSize, limit: Number(h.limit) }));
  if (Object.keys(r.unified).length > 0) out.unified = { ...r.unified };
}
