import { forEachLimit, podConfig, removeAllPods, runPod } from '../cri';
import { type MemoryUsage, memoryOf } from '../env/proc';
import type { WorkloadResult } from '../result';
import type { BenchRuntime } from '../runtimes/runtime';
import { slope } from '../stats';
import { type BenchContext, eachRuntime, newRecorder, type Workload } from '../workload';

const MIB = 1024 * 1024;
/** Time for pods' processes to finish starting (page faults, lazy allocations) before measuring. */
const SETTLE_MS = 2000;
const READINGS = 3;

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

interface Reading {
  daemon: MemoryUsage;
  pods: MemoryUsage;
}

async function measure(rt: BenchRuntime): Promise<{ daemon: number; pods: number; processes: number; rss: number }> {
  const readings: Reading[] = [];
  for (let i = 0; i < READINGS; i++) {
    if (i > 0) await new Promise((r) => setTimeout(r, 250));
    readings.push({ daemon: memoryOf(rt.daemonProcesses()), pods: memoryOf(rt.podProcesses()) });
  }
  return {
    daemon: median(readings.map((r) => r.daemon.pssBytes)) / MIB,
    pods: median(readings.map((r) => r.pods.pssBytes)) / MIB,
    processes: readings[0]!.daemon.processes + readings[0]!.pods.processes,
    rss: median(readings.map((r) => r.daemon.rssBytes + r.pods.rssBytes)) / MIB,
  };
}

/**
 * Memory of the runtime itself plus every process it keeps per pod — crisp: the daemon and each
 * crisp-monitor tree; containerd: containerd, each shim and each pause process — at increasing
 * numbers of running pods. The least-squares slope over the pod counts is what one more pod costs
 * the node; it is split into the daemon's share (its state per pod, and heap growth) and the
 * per-pod processes'.
 */
export const memoryPerPod: Workload = {
  id: 'memory',
  title: 'Memory (PSS of daemon + per-pod helpers)',
  async run(ctx: BenchContext): Promise<WorkloadResult> {
    const levels = ctx.options.memoryPods;
    const rec = newRecorder(ctx, this.id, this.title, { 'pod counts': levels.join(','), 'settle ms': SETTLE_MS });
    for (const level of levels) rec.metric(`PSS at ${level} pods`, { unit: 'MiB' });
    rec.metric('per pod', { unit: 'MiB', goal: { stat: 'p50', comparison: '<=', ratio: 0.1 } });
    rec.metric('per pod: daemon share', { unit: 'MiB' });
    rec.metric('per pod: pod processes', { unit: 'MiB' });
    await eachRuntime(ctx, rec, async (rt, client) => {
      // Start from an empty node: earlier workloads remove their pods, this makes sure.
      await removeAllPods(client);
      const total: { x: number; y: number }[] = [];
      const daemon: { x: number; y: number }[] = [];
      const pods: { x: number; y: number }[] = [];
      let running = 0;
      for (const level of levels) {
        await forEachLimit(Array.from({ length: level - running }), 4, async () => {
          await runPod(client, podConfig(rt, 'mem'));
        });
        running = level;
        await new Promise((r) => setTimeout(r, SETTLE_MS));
        const m = await measure(rt);
        rec.add(rt.name, `PSS at ${level} pods`, m.daemon + m.pods);
        rec.notes.push(
          `${rt.name} at ${level} pods: ${m.processes} processes, PSS ${(m.daemon + m.pods).toFixed(1)} MiB ` +
            `(daemon ${m.daemon.toFixed(1)}, pod processes ${m.pods.toFixed(1)}), RSS ${m.rss.toFixed(1)} MiB`,
        );
        total.push({ x: level, y: m.daemon + m.pods });
        daemon.push({ x: level, y: m.daemon });
        pods.push({ x: level, y: m.pods });
      }
      rec.add(rt.name, 'per pod', slope(total));
      rec.add(rt.name, 'per pod: daemon share', slope(daemon));
      rec.add(rt.name, 'per pod: pod processes', slope(pods));
      await removeAllPods(client);
    });
    return rec.result();
  },
};
