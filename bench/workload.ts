/**
 * Running a workload against both runtimes: iterations interleaved (crisp then containerd, then
 * the other way round) so that drift on the host — page cache, other load, thermal — hits both
 * alike, warm-up iterations discarded, and a runtime that lacks an RPC reported as "not
 * available" instead of failing the run.
 */
import type { CriClient } from '../src/client/cri_client';
import { isUnimplemented, removeAllPods } from './cri';
import type { BenchOptions } from './options';
import { Recorder, type WorkloadResult } from './result';
import type { BenchRuntime } from './runtimes/runtime';

export interface BenchImages {
  /** The busybox fixture every container runs. */
  busybox: { reference: string; compressedBytes: number; uncompressedBytes: number };
  /** The large multi-layer image, unless `--quick`. */
  large?: { reference: string; compressedBytes: number; uncompressedBytes: number };
}

export interface BenchContext {
  options: BenchOptions;
  runtimes: readonly BenchRuntime[];
  images: BenchImages;
  client(rt: BenchRuntime): CriClient;
  log(message: string): void;
}

export interface Workload {
  id: string;
  title: string;
  run(ctx: BenchContext): Promise<WorkloadResult>;
}

export function errorText(err: unknown): string {
  if (err instanceof Error) return err.message.split('\n')[0]!;
  return String(err);
}

/** Records why a runtime dropped out: not implemented, or failed (and logs the failure). */
export function dropOut(ctx: BenchContext, rec: Recorder, rt: BenchRuntime, err: unknown): void {
  if (isUnimplemented(err)) {
    rec.stop(rt.name, { kind: 'unavailable', reason: errorText(err) });
    return;
  }
  rec.stop(rt.name, { kind: 'failed', reason: errorText(err) });
  ctx.log(`${rec.id}: ${rt.name} failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
}

/** One iteration's view of a runtime: its client, and a sample sink that ignores warm-up. */
export interface Iteration {
  rt: BenchRuntime;
  client: CriClient;
  index: number;
  warmup: boolean;
  sample(metric: string, value: number): void;
}

/** Iterations in a row per runtime for workloads of short calls (see `interleave`). */
export const SHORT_CALL_BLOCK = 10;

/**
 * Runs `warmup + iterations` rounds; in each, `body` runs once per runtime still in the workload,
 * alternating which runtime goes first. With `block`, each runtime runs that many iterations in a
 * row before the other takes over: for calls of a few milliseconds, work a runtime leaves running
 * after its reply (a shim and runc cleaning up) would otherwise land in the other's next sample,
 * and with blocks it lands in its own. A runtime that throws drops out; its pods are removed so
 * they do not weigh on later measurements.
 */
export async function interleave(
  ctx: BenchContext,
  rec: Recorder,
  counts: { iterations: number; warmup: number; block?: number },
  body: (it: Iteration) => Promise<void>,
): Promise<void> {
  const total = counts.warmup + counts.iterations;
  const block = Math.max(1, counts.block ?? 1);
  for (let start = 0, round = 0; start < total; start += block, round++) {
    const order = round % 2 === 0 ? ctx.runtimes : [...ctx.runtimes].reverse();
    for (const rt of order) {
      for (let i = start; i < Math.min(total, start + block); i++) {
        if (rec.isOut(rt.name)) break;
        const warmup = i < counts.warmup;
        const client = ctx.client(rt);
        try {
          await body({ rt, client, index: i, warmup, sample: (metric, value) => !warmup && rec.add(rt.name, metric, value) });
        } catch (err) {
          dropOut(ctx, rec, rt, err);
          await removeAllPods(client).catch(() => undefined);
        }
      }
    }
  }
}

/** Runs `body` once per runtime (set-up and tear-down phases of a workload). */
export async function eachRuntime(ctx: BenchContext, rec: Recorder, body: (rt: BenchRuntime, client: CriClient) => Promise<void>): Promise<void> {
  for (const rt of ctx.runtimes) {
    if (rec.isOut(rt.name)) continue;
    try {
      await body(rt, ctx.client(rt));
    } catch (err) {
      dropOut(ctx, rec, rt, err);
      await removeAllPods(ctx.client(rt)).catch(() => undefined);
    }
  }
}

export function newRecorder(ctx: BenchContext, id: string, title: string, parameters: Record<string, number | string>): Recorder {
  return new Recorder(
    id,
    title,
    ctx.runtimes.map((r) => r.name),
    parameters,
  );
}
