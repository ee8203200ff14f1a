import { call, podConfig, timed } from '../cri';
import type { WorkloadResult } from '../result';
import { type BenchContext, interleave, newRecorder, type Workload } from '../workload';

/** RunPodSandbox, PodSandboxStatus, StopPodSandbox, RemovePodSandbox of one pod at a time. */
export const podLifecycle: Workload = {
  id: 'pod',
  title: 'Pod lifecycle',
  async run(ctx: BenchContext): Promise<WorkloadResult> {
    const { n, warmup } = ctx.options;
    const rec = newRecorder(ctx, this.id, this.title, { iterations: n, warmup });
    rec.metric('RunPodSandbox', { unit: 'ms', goal: { stat: 'p50', comparison: '<=', ratio: 0.4 } });
    rec.metric('PodSandboxStatus', { unit: 'ms' });
    rec.metric('StopPodSandbox', { unit: 'ms' });
    rec.metric('RemovePodSandbox', { unit: 'ms' });
    await interleave(ctx, rec, { iterations: n, warmup }, async ({ rt, client, sample }) => {
      const config = podConfig(rt, 'lifecycle');
      const run = await timed(() => call('RunPodSandbox', () => client.call('runPodSandbox', { config })));
      const id = run.value.podSandboxId;
      sample('RunPodSandbox', run.ms);
      sample('PodSandboxStatus', (await timed(() => call('PodSandboxStatus', () => client.call('podSandboxStatus', { podSandboxId: id })))).ms);
      sample('StopPodSandbox', (await timed(() => call('StopPodSandbox', () => client.call('stopPodSandbox', { podSandboxId: id })))).ms);
      sample('RemovePodSandbox', (await timed(() => call('RemovePodSandbox', () => client.call('removePodSandbox', { podSandboxId: id })))).ms);
    });
    return rec.result();
  },
};
