import type {
  ListMetricDescriptorsRequest,
  ListMetricDescriptorsResponse,
  ListPodSandboxMetricsRequest,
  ListPodSandboxMetricsResponse,
  PodSandboxMetrics,
  StreamPodSandboxMetricsRequest,
  StreamPodSandboxMetricsResponse,
} from '../generated/runtime/v1/api';
import { METRIC_DESCRIPTORS, podSandboxMetricValues } from '../stats/cri_stats';
import type { CallContext } from './instrument';
import { readySandboxes, samplePods } from './sandbox_stats';
import type { CriService } from './service';

const STREAM_CHUNK = 100;

/** The cAdvisor-style metrics kubelet may ask for with ListPodSandboxMetrics. */
export async function listMetricDescriptors(_svc: CriService, _req: ListMetricDescriptorsRequest, _ctx: CallContext): Promise<ListMetricDescriptorsResponse> {
  return { descriptors: METRIC_DESCRIPTORS.map((d) => ({ ...d, labelKeys: [...d.labelKeys] })) };
}

async function metricsOf(svc: CriService, ctx: CallContext): Promise<PodSandboxMetrics[]> {
  const sampled = await samplePods(svc, readySandboxes(svc), ctx);
  return sampled.map(({ sandbox, target, sample }) => ({
    podSandboxId: sandbox.id,
    metrics: podSandboxMetricValues(target.cgroupPath, sample),
    containerMetrics: [],
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
