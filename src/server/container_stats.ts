import type {
  ContainerAttributes,
  ContainerStats,
  ContainerStatsFilter,
  ContainerStatsRequest,
  ContainerStatsResponse,
  ListContainerStatsRequest,
  ListContainerStatsResponse,
  StreamContainerStatsRequest,
  StreamContainerStatsResponse,
} from '../generated/runtime/v1/api';
import type { Container } from '../container/container_store';
import { toCriContainerStats } from '../stats/cri_stats';
import type { ContainerSample, ContainerStatsTarget } from '../stats/stats_collector';
import { errorMessage, internal, invalidArgument, notFound } from '../util/errors';
import type { CallContext } from './instrument';
import { matchesLabels } from './sandbox_list';
import type { CriService } from './service';

const STREAM_CHUNK = 100;

export function containerAttributes(c: Container): ContainerAttributes {
  return { id: c.id, metadata: c.config.metadata, labels: c.config.labels, annotations: c.config.annotations };
}

export function containerStatsTarget(c: Container): ContainerStatsTarget {
  return { id: c.id, cgroupPath: c.record.cgroupPath, layerDir: c.upperDir };
}

/** Running containers: kubelet asks for stats of running containers only, as containerd lists them. */
export function runningContainers(svc: CriService, filter?: ContainerStatsFilter): Container[] {
  return svc.containers
    .list()
    .filter((c) => c.state === 'running' && c.record.cgroupPath !== '')
    .filter((c) => !filter?.id || c.id.startsWith(filter.id))
    .filter((c) => !filter?.podSandboxId || c.record.sandboxId.startsWith(filter.podSandboxId))
    .filter((c) => !filter?.labelSelector || matchesLabels(c.config.labels, filter.labelSelector));
}

/**
 * Samples containers in one batch, in input order. A container whose cgroup could not be read
 * (removed meanwhile, for example) is left out rather than failing the whole list.
 */
export async function sampleContainers(svc: CriService, containers: Container[], ctx: CallContext): Promise<Array<{ container: Container; sample: ContainerSample }>> {
  const samples = await svc.stats.sampleContainers(containers.map(containerStatsTarget));
  const out: Array<{ container: Container; sample: ContainerSample }> = [];
  samples.forEach((sample, i) => {
    const container = containers[i]!;
    if (sample instanceof Error) ctx.log.debug({ container: container.id.slice(0, 12), err: errorMessage(sample) }, 'container stats unavailable; skipped');
    else out.push({ container, sample });
  });
  return out;
}

/** The filesystem writable layers live on, as ImageFsInfo reports it. */
export function imageFsMountpoint(svc: CriService): string {
  return svc.images.snapshots.dir;
}

/** CRI stats of `containers`, dropping those that cannot be sampled. */
export async function containerStatsOf(svc: CriService, containers: Container[], ctx: CallContext): Promise<ContainerStats[]> {
  const mountpoint = imageFsMountpoint(svc);
  const sampled = await sampleContainers(svc, containers, ctx);
  return sampled.map(({ container, sample }) => toCriContainerStats(containerAttributes(container), sample, mountpoint));
}

/** CRI stats of `containers` grouped by pod sandbox id (kubelet's PodSandboxStats.linux.containers). */
export async function containerStatsByPod(svc: CriService, containers: Container[], ctx: CallContext): Promise<Map<string, ContainerStats[]>> {
  const mountpoint = imageFsMountpoint(svc);
  const byPod = new Map<string, ContainerStats[]>();
  for (const { container, sample } of await sampleContainers(svc, containers, ctx)) {
    let list = byPod.get(container.record.sandboxId);
    if (!list) byPod.set(container.record.sandboxId, (list = []));
    list.push(toCriContainerStats(containerAttributes(container), sample, mountpoint));
  }
  return byPod;
}

/**
 * Stats of one container in any state but `creating`: a created container's cgroup exists and
 * reads as idle, an exited one's reads as empty, and the writable layer is there either way.
 */
export async function containerStats(svc: CriService, req: ContainerStatsRequest, _ctx: CallContext): Promise<ContainerStatsResponse> {
  if (!req.containerId) throw invalidArgument('container id is empty');
  const container = svc.containers.resolve(req.containerId);
  if (container.state === 'creating') throw notFound(`container ${container.id} is still being created`);
  const [sample] = await svc.stats.sampleContainers([containerStatsTarget(container)]);
  if (sample instanceof Error) throw internal(`stats of container ${container.id}: ${sample.message}`, sample);
  return { stats: toCriContainerStats(containerAttributes(container), sample!, imageFsMountpoint(svc)) };
}

export async function listContainerStats(svc: CriService, req: ListContainerStatsRequest, ctx: CallContext): Promise<ListContainerStatsResponse> {
  return { stats: await containerStatsOf(svc, runningContainers(svc, req.filter), ctx) };
}

export async function streamContainerStats(
  svc: CriService,
  req: StreamContainerStatsRequest,
  ctx: CallContext,
  send: (m: StreamContainerStatsResponse) => Promise<void>,
): Promise<void> {
  const stats = await containerStatsOf(svc, runningContainers(svc, req.filter), ctx);
  for (let i = 0; i < stats.length; i += STREAM_CHUNK) await send({ containerStats: stats.slice(i, i + STREAM_CHUNK) });
}
