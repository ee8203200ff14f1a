import * as fs from 'node:fs';
import * as path from 'node:path';
import { call, containerConfig, ensureImage, podConfig, removePod, timed } from '../cri';
import type { WorkloadResult } from '../result';
import { type BenchContext, eachRuntime, interleave, newRecorder, type Workload } from '../workload';

const E2E = 'Pod + container running (end to end)';

/**
 * A container's life in a fresh pod, as kubelet drives it: RunPodSandbox, CreateContainer,
 * StartContainer (together the end-to-end time to a running workload), ContainerStatus,
 * StopContainer with a grace period the container honours, RemoveContainer.
 */
export const containerLifecycle: Workload = {
  id: 'container',
  title: 'Container lifecycle',
  async run(ctx: BenchContext): Promise<WorkloadResult> {
    const { n, warmup } = ctx.options;
    const image = ctx.images.busybox.reference;
    const rec = newRecorder(ctx, this.id, this.title, { iterations: n, warmup, image });
    rec.metric('CreateContainer', { unit: 'ms' });
    rec.metric('StartContainer', { unit: 'ms' });
    rec.metric('Create+Start', { unit: 'ms', goal: { stat: 'p50', comparison: '<=', ratio: 0.15 } });
    rec.metric('ContainerStatus', { unit: 'ms' });
    rec.metric('StopContainer', { unit: 'ms', goal: { stat: 'p50', comparison: '<=', ratio: 0.2 } });
    rec.metric('RemoveContainer', { unit: 'ms' });
    rec.metric(E2E, { unit: 'ms', goal: { stat: 'p50', comparison: '<=', ratio: 0.25 } });
    await eachRuntime(ctx, rec, (_, client) => ensureImage(client, image));
    await interleave(ctx, rec, { iterations: n, warmup }, async ({ rt, client, sample }) => {
      const pod = podConfig(rt, 'ctr');
      fs.mkdirSync(path.join(pod.logDirectory, 'app'), { recursive: true });
      const started = process.hrtime.bigint();
      const { podSandboxId } = await call('RunPodSandbox', () => client.call('runPodSandbox', { config: pod }));
      try {
        const create = await timed(() =>
          call('CreateContainer', () => client.call('createContainer', { podSandboxId, config: containerConfig('app', image), sandboxConfig: pod })),
        );
        const containerId = create.value.containerId;
        const start = await timed(() => call('StartContainer', () => client.call('startContainer', { containerId })));
        sample(E2E, Number(process.hrtime.bigint() - started) / 1e6);
        sample('CreateContainer', create.ms);
        sample('StartContainer', start.ms);
        sample('Create+Start', create.ms + start.ms);
        sample('ContainerStatus', (await timed(() => call('ContainerStatus', () => client.call('containerStatus', { containerId })))).ms);
        sample('StopContainer', (await timed(() => call('StopContainer', () => client.call('stopContainer', { containerId, timeout: 10n })))).ms);
        sample('RemoveContainer', (await timed(() => call('RemoveContainer', () => client.call('removeContainer', { containerId })))).ms);
      } finally {
        await removePod(client, podSandboxId);
      }
    });
    return rec.result();
  },
};
