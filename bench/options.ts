import * as path from 'node:path';
import { parseArgs } from 'node:util';
import type { RuntimeName } from './runtimes/runtime';

export const WORKLOAD_IDS = ['pod', 'container', 'exec', 'pull', 'list', 'concurrency', 'memory'] as const;
export type WorkloadId = (typeof WORKLOAD_IDS)[number];

export interface BenchOptions {
  quick: boolean;
  /** Measured iterations of each latency workload. */
  n: number;
  /** Discarded iterations before them. */
  warmup: number;
  /** Measured pulls of the large image (each moves `largeMb`). */
  largeN: number;
  largeMb: number;
  largeLayers: number;
  /** Running pods (with a container each where supported) for the list/stats workload. */
  scale: number;
  /** Pods started at once by the concurrency workload, and how many such batches. */
  concurrency: number;
  batches: number;
  /** Pod counts at which memory is measured. */
  memoryPods: number[];
  workloads: WorkloadId[];
  runtimes: RuntimeName[];
  /** Fail instead of reporting crisp alone when containerd cannot run. */
  requireContainerd: boolean;
  outDir: string;
}

export const USAGE = `usage: node dist/bench/main.js [flags]

Runs the same CRI workloads against crisp and a containerd started side by side, and reports
latency percentiles per runtime and the crisp/containerd ratio.

  --quick               tiny run proving the harness works (2 iterations, scale 5, small image only)
  --n N                 measured iterations per latency workload (default 20)
  --warmup N            discarded iterations before them (default 3)
  --large-n N           measured pulls of the large image (default 3)
  --large-mb N          size of the large image in MiB (default 300)
  --large-layers N      its number of data layers (default 8)
  --scale N             running pods for the list/stats workload (default 100)
  --concurrency N       pods started in parallel (default 20)
  --batches N           parallel batches measured (default 5)
  --memory-pods A,B,..  pod counts at which memory is measured (default 0,10,50)
  --only W1,W2          workloads to run: ${WORKLOAD_IDS.join(', ')} (default all)
  --runtimes R1,R2      crisp, containerd (default both)
  --require-containerd  fail when containerd is not installed instead of measuring crisp alone
  --out DIR             where results-<timestamp>.json goes (default .bench)
`;

export class UsageError extends Error {}

function positiveInt(name: string, value: string | undefined, fallback: number, min = 1): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < min) throw new UsageError(`--${name}: expected an integer >= ${min}, got "${value}"`);
  return n;
}

function list<T extends string>(name: string, value: string | undefined, allowed: readonly T[], fallback: readonly T[]): T[] {
  if (value === undefined) return [...fallback];
  const items = value.split(',').map((s) => s.trim()).filter(Boolean);
  for (const item of items) if (!allowed.includes(item as T)) throw new UsageError(`--${name}: unknown "${item}" (expected ${allowed.join(', ')})`);
  if (items.length === 0) throw new UsageError(`--${name}: empty list`);
  return items as T[];
}

export function parseOptions(argv: string[], cwd = process.cwd()): BenchOptions | 'help' {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      help: { type: 'boolean', short: 'h' },
      quick: { type: 'boolean' },
      n: { type: 'string' },
      warmup: { type: 'string' },
      'large-n': { type: 'string' },
      'large-mb': { type: 'string' },
      'large-layers': { type: 'string' },
      scale: { type: 'string' },
      concurrency: { type: 'string' },
      batches: { type: 'string' },
      'memory-pods': { type: 'string' },
      only: { type: 'string' },
      runtimes: { type: 'string' },
      'require-containerd': { type: 'boolean' },
      out: { type: 'string' },
    },
  });
  if (values.help) return 'help';
  const quick = values.quick ?? false;
  const memoryPods =
    values['memory-pods'] === undefined
      ? quick
        ? [0, 2]
        : [0, 10, 50]
      : values['memory-pods'].split(',').map((s) => positiveInt('memory-pods', s.trim(), 0, 0));
  if (memoryPods.length < 2 || new Set(memoryPods).size !== memoryPods.length) {
    throw new UsageError('--memory-pods: expected at least two different pod counts');
  }
  const only = list('only', values.only, WORKLOAD_IDS, WORKLOAD_IDS);
  const largeMb = positiveInt('large-mb', values['large-mb'], 300);
  return {
    quick,
    n: positiveInt('n', values.n, quick ? 2 : 20),
    warmup: positiveInt('warmup', values.warmup, quick ? 1 : 3, 0),
    largeN: positiveInt('large-n', values['large-n'], quick ? 0 : 3, 0),
    largeMb,
    largeLayers: positiveInt('large-layers', values['large-layers'], 8),
    scale: positiveInt('scale', values.scale, quick ? 5 : 100),
    concurrency: positiveInt('concurrency', values.concurrency, quick ? 4 : 20),
    batches: positiveInt('batches', values.batches, quick ? 1 : 5),
    memoryPods: [...memoryPods].sort((a, b) => a - b),
    workloads: WORKLOAD_IDS.filter((w) => only.includes(w)),
    runtimes: list('runtimes', values.runtimes, ['crisp', 'containerd'] as const, ['crisp', 'containerd']),
    requireContainerd: values['require-containerd'] ?? false,
    outDir: path.resolve(cwd, values.out ?? '.bench'),
  };
}
