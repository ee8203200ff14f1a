import type { CgroupStats } from './cgroup_stats';

/** One reading of a cgroup's counters. */
export interface CgroupSample {
  /** Wall-clock time of the reading, nanoseconds since the epoch (what CRI timestamps carry). */
  timestamp: bigint;
  /** Monotonic time of the reading, nanoseconds: the sample's age is measured on this clock. */
  readAt: bigint;
  stats: CgroupStats;
  /** CPU use in billionths of a core over the last sampling window, once a window exists. */
  usageNanoCores?: bigint;
}

/** A cgroup whose read failed; remembered like a sample so a broken cgroup is not re-read per call. */
interface CgroupFailure {
  readAt: bigint;
  error: Error;
}

type CacheEntry = CgroupSample | CgroupFailure;

function isFailure(entry: CacheEntry): entry is CgroupFailure {
  return 'error' in entry;
}

interface CpuPoint {
  usageNanos: bigint;
  /** Monotonic clock, nanoseconds. */
  at: bigint;
}

/**
 * CPU rate per cgroup from successive readings of its cumulative usage. A rate needs a window of
 * at least `minWindowNs`: readings closer together than that (kubelet and the background sampler
 * interleaving) return the rate of the last full window instead of a noisy one.
 */
export class CpuRateTracker {
  private readonly points = new Map<string, { baseline: CpuPoint; rate?: bigint }>();

  constructor(private readonly minWindowNs: bigint = 1_000_000_000n) {}

  /** Records a reading and returns the current rate in nanocores, if one is known. */
  update(key: string, usageNanos: bigint, at: bigint): bigint | undefined {
    const entry = this.points.get(key);
    if (!entry || usageNanos < entry.baseline.usageNanos || at < entry.baseline.at) {
      // First reading, or the cgroup was recreated (its counter restarted): start over.
      this.points.set(key, { baseline: { usageNanos, at } });
      return undefined;
    }
    const window = at - entry.baseline.at;
    if (window >= this.minWindowNs) {
      entry.rate = ((usageNanos - entry.baseline.usageNanos) * 1_000_000_000n) / window;
      entry.baseline = { usageNanos, at };
    }
    return entry.rate;
  }

  /** Whether a reading at `at` would complete a window for `key` (and so yield a rate). */
  windowComplete(key: string, at: bigint): boolean {
    const entry = this.points.get(key);
    return entry !== undefined && at - entry.baseline.at >= this.minWindowNs;
  }

  /** Forgets cgroups not in `keys` (removed pods and containers). */
  retain(keys: ReadonlySet<string>): void {
    for (const key of this.points.keys()) if (!keys.has(key)) this.points.delete(key);
  }

  get size(): number {
    return this.points.size;
  }
}

export interface CgroupSamplerOptions {
  /** Reads many cgroups in one native call; a cgroup that failed is an Error in its place. */
  read(paths: readonly string[]): Promise<Array<CgroupStats | Error>>;
  /** Monotonic clock in nanoseconds (tests substitute their own). */
  monotonicNs?: () => bigint;
  /** Wall clock in nanoseconds since the epoch. */
  wallNs?: () => bigint;
  minRateWindowNs?: bigint;
  /** Cgroups per native call: bounds the JSON a single call returns and parses in one go. */
  batchSize?: number;
  /** Native calls in flight at once; each occupies a libuv threadpool thread (4 by default). */
  concurrency?: number;
}

const DEFAULT_BATCH_SIZE = 128;
const DEFAULT_CONCURRENCY = 2;

/**
 * A cache of cgroup readings shared by every stats RPC and the background sampler. Readings
 * younger than the caller's maximum age are served from memory; the rest are read in batches
 * (one native call per `batchSize` cgroups, at most `concurrency` at once), and a cgroup already
 * being read is joined rather than read twice. The CPU rate of each cgroup is derived here,
 * from consecutive readings whoever asked for them.
 */
export class CgroupSampler {
  private readonly cache = new Map<string, CacheEntry>();
  private readonly inflight = new Map<string, Promise<void>>();
  private readonly rates: CpuRateTracker;
  private readonly monotonicNs: () => bigint;
  private readonly wallNs: () => bigint;
  private readonly batchSize: number;
  private readonly concurrency: number;
  private running = 0;
  private readonly queue: Array<() => void> = [];

  constructor(private readonly options: CgroupSamplerOptions) {
    this.rates = new CpuRateTracker(options.minRateWindowNs);
    this.monotonicNs = options.monotonicNs ?? (() => process.hrtime.bigint());
    this.wallNs = options.wallNs ?? (() => BigInt(Date.now()) * 1_000_000n);
    this.batchSize = Math.max(1, options.batchSize ?? DEFAULT_BATCH_SIZE);
    this.concurrency = Math.max(1, options.concurrency ?? DEFAULT_CONCURRENCY);
  }

  /**
   * Readings of `paths` no older than `maxAgeNs`, keyed by path; a cgroup whose read failed maps
   * to its Error. A cached reading that lacks a CPU rate is re-read once a rate window has
   * elapsed, so a cgroup's second look always carries a rate.
   */
  async get(paths: readonly string[], maxAgeNs: bigint): Promise<Map<string, CgroupSample | Error>> {
    const now = this.monotonicNs();
    const stale: string[] = [];
    const waits = new Set<Promise<void>>();
    for (const path of new Set(paths)) {
      const pending = this.inflight.get(path);
      if (pending) {
        waits.add(pending);
        continue;
      }
      const entry = this.cache.get(path);
      if (!entry || !this.fresh(path, entry, now, maxAgeNs)) stale.push(path);
    }
    if (stale.length > 0) waits.add(this.read(stale));
    await Promise.all(waits);
    const out = new Map<string, CgroupSample | Error>();
    for (const path of paths) {
      const entry = this.cache.get(path);
      if (entry) out.set(path, isFailure(entry) ? entry.error : entry);
    }
    return out;
  }

  /** Drops readings and rate baselines of cgroups not in `paths`. */
  retain(paths: ReadonlySet<string>): void {
    for (const path of this.cache.keys()) if (!paths.has(path)) this.cache.delete(path);
    this.rates.retain(paths);
  }

  get size(): number {
    return this.cache.size;
  }

  private fresh(path: string, entry: CacheEntry, now: bigint, maxAgeNs: bigint): boolean {
    if (now - entry.readAt > maxAgeNs) return false;
    if (isFailure(entry)) return true;
    return !(entry.stats.cpu && entry.usageNanoCores === undefined && this.rates.windowComplete(path, now));
  }

  /** Reads `paths` in batches; resolves when all are cached. Never rejects: failures are cached. */
  private read(paths: string[]): Promise<void> {
    const batches: Promise<void>[] = [];
    for (let i = 0; i < paths.length; i += this.batchSize) {
      const batch = paths.slice(i, i + this.batchSize);
      const done: Promise<void> = this.withSlot(() => this.readBatch(batch)).finally(() => {
        for (const path of batch) if (this.inflight.get(path) === done) this.inflight.delete(path);
      });
      for (const path of batch) this.inflight.set(path, done);
      batches.push(done);
    }
    return Promise.all(batches).then(() => undefined);
  }

  private async readBatch(paths: string[]): Promise<void> {
    let results: Array<CgroupStats | Error>;
    try {
      results = await this.options.read(paths);
    } catch (err) {
      const error = err instanceof Error ? err : new Error(String(err));
      results = paths.map(() => error);
    }
    const readAt = this.monotonicNs();
    const timestamp = this.wallNs();
    paths.forEach((path, i) => {
      const result = results[i] ?? new Error(`no stats returned for cgroup ${path}`);
      if (result instanceof Error) {
        this.cache.set(path, { readAt, error: result });
        return;
      }
      const sample: CgroupSample = { timestamp, readAt, stats: result };
      if (result.cpu) sample.usageNanoCores = this.rates.update(path, result.cpu.usageNanos, readAt);
      this.cache.set(path, sample);
    });
  }

  /** Runs `work` once one of `concurrency` slots is free; a finished call hands its slot on. */
  private async withSlot<T>(work: () => Promise<T>): Promise<T> {
    if (this.running < this.concurrency) this.running++;
    else await new Promise<void>((resolve) => this.queue.push(resolve));
    try {
      return await work();
    } finally {
      const next = this.queue.shift();
      if (next) next();
      else this.running--;
    }
  }
}
