import * as path from 'node:path';
import {
  type ListPodSandboxStatsRequest,
  type ListPodSandboxStatsResponse,
  type PodSandboxAttributes,
  PodSandboxState,
  type PodSandboxStats,
  type PodSandboxStatsRequest,
  type PodSandboxStatsResponse,
  type StreamPodSandboxStatsRequest,
  type StreamPodSandboxStatsResponse,
} from '../generated/runtime/v1/api';
import type { Sandbox } from '../sandbox/sandbox_store';
import { toCriPodStats } from '../stats/cri_stats';
import type { PodSample, PodStatsTarget } from '../stats/pod_stats';
import { errorMessage, failedPrecondition, internal, invalidArgument } from '../util/errors';
import { containerStatsByPod, containerStatsOf, runningContainers } from './container_stats';
import type { CallContext } from './instrument';
import { matchesLabels } from './sandbox_list';
import { criSandboxState } from './sandbox_status';
import type { CriService } from './service';

const STREAM_CHUNK = 100;

/**
 * The cgroup that stands for the whole pod. With a cgroup_parent, that is kubelet's pod cgroup,
 * which holds the sandbox's own cgroup and its containers'; without one (crictl), the parent is
 * shared by all such pods, so the sandbox's own cgroup is the best there is.
 */
export function podStatsCgroup(svc: CriService, sandbox: Sandbox): string {
  const own = svc.pods.cgroupPathFor(sandbox);
  return sandbox.config.linux?.cgroupParent ? path.posix.dirname(own) : own;
}

export function podStatsTarget(svc: CriService, sandbox: Sandbox): PodStatsTarget {
  return {
    cgroupPath: podStatsCgroup(svc, sandbox),
    // A host-network pod's interfaces are the node's: kubelet reports those itself.
    netnsPid: sandbox.hostNetwork ? undefined : sandbox.record.resources.monitorPid,
  };
}

export function podAttributes(sandbox: Sandbox): PodSandboxAttributes {
  return { id: sandbox.id, metadata: sandbox.config.metadata, labels: sandbox.config.labels, annotations: sandbox.config.annotations };
}

/** Ready pods: a stopped pod has no processes to measure and its network is gone. */
export function readySandboxes(svc: CriService, filter?: { id?: string; labelSelector?: Record<string, string> }): Sandbox[] {
  return svc.sandboxes
    .list()
    .filter((s) => !filter?.id || s.id.startsWith(filter.id))
    .filter((s) => !filter?.labelSelector || matchesLabels(s.config.labels, filter.labelSelector))
    .filter((s) => criSandboxState(svc, s) === PodSandboxState.SANDBOX_READY);
}

/**
 * Samples pods in one batch, in input order. A pod that fails (removed meanwhile, for example)
 * is left out rather than failing the whole list.
 */
export async function samplePods(svc: CriService, sandboxes: Sandbox[], ctx: CallContext): Promise<Array<{ sandbox: Sandbox; target: PodStatsTarget; sample: PodSample }>> {
  const targets = sandboxes.map((s) => podStatsTarget(svc, s));
  const samples = await svc.stats.samplePods(targets);
  const out: Array<{ sandbox: Sandbox; target: PodStatsTarget; sample: PodSample }> = [];
  samples.forEach((sample, i) => {
    const sandbox = sandboxes[i]!;
    if (sample instanceof Error) ctx.log.debug({ sandbox: sandbox.id.slice(0, 12), err: errorMessage(sample) }, 'pod stats unavailable; skipped');
    else out.push({ sandbox, target: targets[i]!, sample });
  });
  return out;
}

/**
 * Pod stats with each pod's running containers under `linux.containers`. Pods and containers
 * are sampled as two batches, whatever the number of pods.
 */
async function statsOf(svc: CriService, sandboxes: Sandbox[], ctx: CallContext): Promise<PodSandboxStats[]> {
  const ids = new Set(sandboxes.map((s) => s.id));
  const [pods, byPod] = await Promise.all([
    samplePods(svc, sandboxes, ctx),
    containerStatsByPod(
      svc,
      runningContainers(svc).filter((c) => ids.has(c.record.sandboxId)),
      ctx,
    ),
  ]);
  return pods.map(({ sandbox, sample }) => toCriPodStats(podAttributes(sandbox), sample, byPod.get(sandbox.id) ?? []));
}

export async function podSandboxStats(svc: CriService, req: PodSandboxStatsRequest, ctx: CallContext): Promise<PodSandboxStatsResponse> {
  if (!req.podSandboxId) throw invalidArgument('pod sandbox id is empty');
  const sandbox = svc.sandboxes.resolve(req.podSandboxId);
  if (criSandboxState(svc, sandbox) !== PodSandboxState.SANDBOX_READY) {
    throw failedPrecondition(`pod sandbox ${sandbox.id} is not ready: it has no stats`);
  }
  const [[sample], containers] = await Promise.all([
    svc.stats.samplePods([podStatsTarget(svc, sandbox)]),
    containerStatsOf(
      svc,
      runningContainers(svc).filter((c) => c.record.sandboxId === sandbox.id),
      ctx,
    ),
  ]);
  if (sample instanceof Error) throw internal(`stats of pod sandbox ${sandbox.id}: ${sample.message}`, sample);
  return { stats: toCriPodStats(podAttributes(sandbox), sample!, containers) };
}

export async function listPodSandboxStats(svc: CriService, req: ListPodSandboxStatsRequest, ctx: CallContext): Promise<ListPodSandboxStatsResponse> {
  return { stats: await statsOf(svc, readySandboxes(svc, req.filter), ctx) };
}

export async function streamPodSandboxStats(
  svc: CriService,
  req: StreamPodSandboxStatsRequest,
  ctx: CallContext,
  send: (m: StreamPodSandboxStatsResponse) => Promise<void>,
): Promise<void> {
  const stats = await statsOf(svc, readySandboxes(svc, req.filter), ctx);
  for (let i = 0; i < stats.length; i += STREAM_CHUNK) await send({ podSandboxStats: stats.slice(i, i + STREAM_CHUNK) });
}
