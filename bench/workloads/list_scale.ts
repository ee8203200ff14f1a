import type { CriClient } from '../../src/client/cri_client';
import { call, ensureImage, forEachLimit, isUnimplemented, podConfig, removeAllPods, runContainer, timed } from '../cri';
import type { WorkloadResult } from '../result';
import { type BenchContext, eachRuntime, errorText, interleave, newRecorder, SHORT_CALL_BLOCK, type Workload } from '../workload';

/** Set-up parallelism: pods are created a few at a time, as kubelet's pod workers would. */
const SETUP_PARALLELISM = 4;

/**
 * The calls kubelet's PLEG and stats collection make constantly, against a node holding
 * `--scale` running pods, each with one running container where the runtime supports containers.
 */
export const listAtScale: Workload = {
  id: 'list',
  title: 'List and stats at scale',
  async run(ctx: BenchContext): Promise<WorkloadResult> {
    const { n, warmup, scale } = ctx.options;
    const image = ctx.images.busybox.reference;
    const rec = newRecorder(ctx, this.id, this.title, { iterations: n, warmup, pods: scale });
    const goal = { stat: 'p99', comparison: '<=', ratio: 1.0 } as const;
    const long = { timeoutMs: 120_000 };
    /** Each call resolves to the number of items it listed. */
    const calls: { name: string; count(c: CriClient): Promise<number> }[] = [
      { name: 'ListPodSandbox', count: async (c) => (await c.call('listPodSandbox', {}, long)).items.length },
      { name: 'ListContainers', count: async (c) => (await c.call('listContainers', {}, long)).containers.length },
      { name: 'ListContainerStats', count: async (c) => (await c.call('listContainerStats', {}, long)).stats.length },
    ];
    for (const { name } of calls) rec.metric(name, { unit: 'ms', goal });
    const withContainers = new Map<string, boolean>();
    await eachRuntime(ctx, rec, async (rt, client) => {
      await ensureImage(client, image);
      let containers = true;
      await forEachLimit(
        Array.from({ length: scale }, (_, i) => i),
        SETUP_PARALLELISM,
        async () => {
          const pod = podConfig(rt, 'scale');
          const { podSandboxId } = await call('RunPodSandbox', () => client.call('runPodSandbox', { config: pod }));
          if (!containers) return;
          try {
            await runContainer(client, podSandboxId, pod, 'app', image);
          } catch (err) {
            if (!isUnimplemented(err)) throw err;
            containers = false;
          }
        },
      );
      withContainers.set(rt.name, containers);
    });
    const missing = new Set<string>();
    for (const rt of ctx.runtimes) {
      if (withContainers.get(rt.name) !== false) continue;
      // Listing nothing is not comparable with listing `scale` containers.
      for (const name of ['ListContainers', 'ListContainerStats']) {
        missing.add(`${rt.name}/${name}`);
        rec.unavailableMetric(rt.name, name, `no containers to list: CreateContainer is not implemented (${scale} pods only)`);
      }
    }
    await interleave(ctx, rec, { iterations: n, warmup, block: SHORT_CALL_BLOCK }, async ({ rt, client, sample }) => {
      for (const { name, count } of calls) {
        if (missing.has(`${rt.name}/${name}`)) continue;
        try {
          const res = await timed(() => call(name, () => count(client)));
          if (res.value < scale) throw new Error(`${name} listed ${res.value} items, expected at least ${scale}`);
          sample(name, res.ms);
        } catch (err) {
          if (!isUnimplemented(err)) throw err;
          missing.add(`${rt.name}/${name}`);
          rec.unavailableMetric(rt.name, name, errorText(err));
        }
      }
    });
    await eachRuntime(ctx, rec, (_, client) => removeAllPods(client));
    return rec.result();
  },
};
