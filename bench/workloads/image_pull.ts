import { call, timed } from '../cri';
import type { WorkloadResult } from '../result';
import { type BenchContext, interleave, newRecorder, type Workload } from '../workload';

/**
 * PullImage of an image the runtime does not have (it is removed between iterations): download,
 * verification and unpacking into snapshots. Throughput is compressed bytes moved per second.
 */
export const imagePull: Workload = {
  id: 'pull',
  title: 'Image pull + unpack',
  async run(ctx: BenchContext): Promise<WorkloadResult> {
    const { busybox, large } = ctx.images;
    const images = [{ key: 'busybox', image: busybox, iterations: ctx.options.n, warmup: ctx.options.warmup }];
    if (large && ctx.options.largeN > 0) images.push({ key: `large`, image: large, iterations: ctx.options.largeN, warmup: Math.min(1, ctx.options.warmup) });
    const parameters: Record<string, number | string> = {};
    for (const i of images) {
      parameters[`${i.key} iterations`] = i.iterations;
      parameters[`${i.key} compressed MB`] = +(i.image.compressedBytes / 1e6).toFixed(2);
      parameters[`${i.key} unpacked MB`] = +(i.image.uncompressedBytes / 1e6).toFixed(2);
    }
    const rec = newRecorder(ctx, this.id, this.title, parameters);
    for (const { key } of images) {
      rec.metric(`${key} PullImage`, { unit: 'ms' });
      rec.metric(`${key} throughput`, { unit: 'MB/s', better: 'higher', goal: { stat: 'p50', comparison: '>=', ratio: 1.5 } });
    }
    for (const { key, image, iterations, warmup } of images) {
      await interleave(ctx, rec, { iterations, warmup }, async ({ client, sample }) => {
        const ref = { image: image.reference };
        await call('RemoveImage', () => client.call('removeImage', { image: ref }, { timeoutMs: 120_000 }));
        const { image: still } = await call('ImageStatus', () => client.call('imageStatus', { image: ref }));
        if (still) throw new Error(`${image.reference} is still present after RemoveImage`);
        const pull = await timed(() => call('PullImage', () => client.call('pullImage', { image: ref }, { timeoutMs: 600_000 })));
        sample(`${key} PullImage`, pull.ms);
        sample(`${key} throughput`, image.compressedBytes / 1e6 / (pull.ms / 1000));
      });
    }
    rec.notes.push('throughput = compressed image bytes / PullImage time; the registry serves from local disk (page cache warm after the warm-up).');
    return rec.result();
  },
};
