import type {
  ContainerMetrics,
  ListMetricDescriptorsRequest,
  ListMetricDescriptorsResponse,
  ListPodSandboxMetricsRequest,
  ListPodSandboxMetricsResponse,
  PodSandboxMetrics,
  StreamPodSandboxMetricsRequest,
  StreamPodSandboxMetricsResponse,
} from '../generated/runtime/v1/api';
import type { Container } from '../container/container_store';
import type { Sandbox } from '../sandbox/sandbox_store';
import { containerMetricValues, METRIC_DESCRIPTORS, type MetricLabels, podSandboxMetricValues } from '../stats/cri_stats';
import { runningContainers, sampleContainers } from './container_stats';
import type { CallContext } from './instrument';
import { readySandboxes, samplePods } from './sandbox_stats';
import type { CriService } from './service';

const STREAM_CHUNK = 100;

/** The cAdvisor-style metrics kubelet may ask for with ListPodSandboxMetrics. */
export async function listMetricDescriptors(_svc: CriService, _req: ListMetricDescriptorsRequest, _ctx: CallContext): Promise<ListMetricDescriptorsResponse> {
  return { descriptors: METRIC_DESCRIPTORS.map((d) => ({ ...d, labelKeys: [...d.labelKeys] })) };
}

function podLabels(sandbox: Sandbox, cgroupPath: string): MetricLabels {
  const meta = sandbox.config.metadata;
  return { container: '', cgroupPath, image: '', name: '', namespace: meta?.namespace ?? '', pod: meta?.name ?? '' };
}

function containerLabels(sandbox: Sandbox, c: Container): MetricLabels {
  const meta = sandbox.config.metadata;
  return {
    container: c.config.metadata?.name ?? '',
    cgroupPath: c.record.cgroupPath,
    image: c.record.image,
    name: c.id,
    namespace: meta?.namespace ?? '',
    pod: meta?.name ?? '',
  };
}

/** Metrics of every ready pod and of its running containers: one batch of pods, one of containers. */
async function metricsOf(svc: CriService, ctx: CallContext): Promise<PodSandboxMetrics[]> {
  const sandboxes = readySandboxes(svc);
  const ids = new Set(sandboxes.map((s) => s.id));
  const [pods, containers] = await Promise.all([
    samplePods(svc, sandboxes, ctx),
    sampleContainers(
      svc,
      runningContainers(svc).filter((c) => ids.has(c.record.sandboxId)),
      ctx,
    ),
  ]);
  const byPod = new Map<string, Array<(typeof containers)[number]>>();
  for (const entry of containers) {
    let list = byPod.get(entry.container.record.sandboxId);
    if (!list) byPod.set(entry.container.record.sandboxId, (list = []));
    list.push(entry);
  }
  return pods.map(({ sandbox, target, sample }) => ({
    podSandboxId: sandbox.id,
    metrics: podSandboxMetricValues(podLabels(sandbox, target.cgroupPath), sample),
    containerMetrics: (byPod.get(sandbox.id) ?? []).map(
      ({ container, sample: cs }): ContainerMetrics => ({ containerId: container.id, metrics: containerMetricValues(containerLabels(sandbox, container), cs) }),
    ),
  }));
}

export async function listPodSandboxMetrics(svc: CriService, _req: ListPodSandboxMetricsRequest, ctx: CallContext): Promise<ListPodSandboxMetricsResponse> {
  return { podMetrics: await metricsOf(svc, ctx) };
}

export async function streamPodSandboxMetrics(
  svc: CriService,
  _req: StreamPodSandboxMetricsRequest,
  ctx: CallContext,
  send: (m: StreamPodSandboxMetricsResponse) => Promise<void>,
): Promise<void> {
  const metrics = await metricsOf(svc, ctx);
  for (let i = 0; i < metrics.length; i += STREAM_CHUNK) await send({ podSandboxMetrics: metrics.slice(i, i + STREAM_CHUNK) });
}
