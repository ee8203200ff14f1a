import { call, podConfig, removePod, timed } from '../cri';
import type { WorkloadResult } from '../result';
import { type BenchContext, interleave, newRecorder, type Workload } from '../workload';

/** Rejects with the first failure once every promise has settled (so nothing is left running). */
async function allSettledOrThrow<T>(promises: Promise<T>[]): Promise<T[]> {
  const results = await Promise.allSettled(promises);
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
  return results.map((r) => (r as PromiseFulfilledResult<T>).value);
}

/** A node receiving many pods at once (a rollout, a node drain elsewhere): all started in parallel. */
export const concurrentPods: Workload = {
  id: 'concurrency',
  title: 'Concurrent pod start',
  async run(ctx: BenchContext): Promise<WorkloadResult> {
    const { concurrency, batches } = ctx.options;
    const warmup = Math.min(1, ctx.options.warmup);
    const rec = newRecorder(ctx, this.id, this.title, { pods: concurrency, batches, warmup });
    const all = `${concurrency} pods ready`;
    const removal = `${concurrency} pods stopped+removed`;
    rec.metric(all, { unit: 'ms' });
    rec.metric('RunPodSandbox (each, under load)', { unit: 'ms' });
    rec.metric(removal, { unit: 'ms' });
    await interleave(ctx, rec, { iterations: batches, warmup }, async ({ rt, client, sample }) => {
      const configs = Array.from({ length: concurrency }, () => podConfig(rt, 'burst'));
      const batch = await timed(() =>
        allSettledOrThrow(
          configs.map((config) => timed(() => call('RunPodSandbox', () => client.call('runPodSandbox', { config }, { timeoutMs: 300_000 })))),
        ),
      );
      sample(all, batch.ms);
      for (const pod of batch.value) sample('RunPodSandbox (each, under load)', pod.ms);
      const ids = batch.value.map((p) => p.value.podSandboxId);
      sample(removal, (await timed(() => allSettledOrThrow(ids.map((id) => removePod(client, id))))).ms);
    });
    return rec.result();
  },
};
