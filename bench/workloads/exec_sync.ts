import { call, ensureImage, podConfig, removePod, runContainer, timed } from '../cri';
import type { WorkloadResult } from '../result';
import { type BenchContext, eachRuntime, interleave, newRecorder, SHORT_CALL_BLOCK, type Workload } from '../workload';

const COMMANDS: { metric: string; cmd: string[] }[] = [
  { metric: 'ExecSync true', cmd: ['true'] },
  { metric: 'ExecSync cat /etc/hostname', cmd: ['cat', '/etc/hostname'] },
];

/** ExecSync of short commands in one running container per runtime. */
export const execSync: Workload = {
  id: 'exec',
  title: 'ExecSync',
  async run(ctx: BenchContext): Promise<WorkloadResult> {
    const { n, warmup } = ctx.options;
    const image = ctx.images.busybox.reference;
    const rec = newRecorder(ctx, this.id, this.title, { iterations: n, warmup });
    for (const c of COMMANDS) rec.metric(c.metric, { unit: 'ms', goal: { stat: 'p50', comparison: '<=', ratio: 0.1 } });
    const targets = new Map<string, { podId: string; containerId: string; hostname: string }>();
    await eachRuntime(ctx, rec, async (rt, client) => {
      await ensureImage(client, image);
      const pod = podConfig(rt, 'exec');
      const { podSandboxId } = await call('RunPodSandbox', () => client.call('runPodSandbox', { config: pod }));
      const containerId = await runContainer(client, podSandboxId, pod, 'exec', image);
      targets.set(rt.name, { podId: podSandboxId, containerId, hostname: pod.hostname });
    });
    try {
      await interleave(ctx, rec, { iterations: n, warmup, block: SHORT_CALL_BLOCK }, async ({ rt, client, sample }) => {
        const target = targets.get(rt.name)!;
        for (const c of COMMANDS) {
          const res = await timed(() => call('ExecSync', () => client.call('execSync', { containerId: target.containerId, cmd: c.cmd, timeout: 10n })));
          if (res.value.exitCode !== 0) throw new Error(`${c.cmd.join(' ')} exited ${res.value.exitCode}: ${Buffer.from(res.value.stderr).toString()}`);
          if (c.cmd[0] === 'cat' && Buffer.from(res.value.stdout).toString().trim() !== target.hostname) {
            throw new Error(`cat /etc/hostname printed "${Buffer.from(res.value.stdout).toString().trim()}", expected ${target.hostname}`);
          }
          sample(c.metric, res.ms);
        }
      });
    } finally {
      // Runtimes that dropped out had their pods removed then.
      await eachRuntime(ctx, rec, async (rt, client) => {
        const target = targets.get(rt.name);
        if (target) await removePod(client, target.podId);
      });
    }
    return rec.result();
  },
};
