import type { Logger } from '../log';
import { errorMessage } from '../util/errors';

/** Space a directory tree occupies. */
export interface DiskUsage {
  /** Allocated bytes (st_blocks × 512), each hard-linked inode counted once. */
  bytes: bigint;
  /** Distinct inodes, the root included. */
  inodes: bigint;
}

export interface LayerTarget {
  /** Container id. */
  id: string;
  /** The writable layer's directory (overlayfs upperdir). */
  dir: string;
}

export interface LayerUsageSample {
  /** Wall-clock time of the measurement, nanoseconds since the epoch. */
  timestamp: bigint;
  usage: DiskUsage;
}

interface LayerEntry {
  dir: string;
  sample?: LayerUsageSample;
  /** Monotonic time the last measurement finished. */
  measuredAt?: bigint;
  /** Monotonic time `sample` was taken. */
  sampledAt?: bigint;
  /** How long the last walk took: big layers are walked less often. */
  walkNs: bigint;
  pending?: Promise<void>;
}

export interface LayerUsageCacheOptions {
  log: Logger;
  /** Measures one layer off the event loop (the native core's walker). */
  measure: (dir: string) => Promise<DiskUsage | undefined>;
  monotonicNs?: () => bigint;
  wallNs?: () => bigint;
  /** A measurement older than this is redone (default 5 s). */
  refreshNs?: bigint;
  /**
   * A layer is re-measured no sooner than this many times its last walk took, so a container
   * with millions of files costs a bounded share of time.
   */
  costFactor?: bigint;
  /**
   * A measurement is served for at most this long, or three re-measurement intervals if longer
   * (default 60 s): when the layer cannot be measured any more (or the walk hangs), its usage is
   * reported as unknown rather than frozen at an old, possibly far smaller, value that would keep
   * the container clear of ephemeral-storage eviction.
   */
  maxAgeNs?: bigint;
}

/**
 * Writable-layer usage per container, measured off the request path: the background pass
 * re-walks layers whose measurement is due, and a request is served the last measurement
 * (kicking off a new one if it is due). Only a layer never measured is walked while the request
 * waits, so the first stats call for a new container still reports its layer.
 */
export class LayerUsageCache {
  private readonly entries = new Map<string, LayerEntry>();
  private readonly measure: (dir: string) => Promise<DiskUsage | undefined>;
  private readonly monotonicNs: () => bigint;
  private readonly wallNs: () => bigint;
  private readonly refreshNs: bigint;
  private readonly costFactor: bigint;
  private readonly maxAgeNs: bigint;

  constructor(private readonly options: LayerUsageCacheOptions) {
    this.measure = options.measure;
    this.monotonicNs = options.monotonicNs ?? (() => process.hrtime.bigint());
    this.wallNs = options.wallNs ?? (() => BigInt(Date.now()) * 1_000_000n);
    this.refreshNs = options.refreshNs ?? 5_000_000_000n;
    this.costFactor = options.costFactor ?? 20n;
    this.maxAgeNs = options.maxAgeNs ?? 60_000_000_000n;
  }

  /** The latest measurement of each target's layer, by container id (absent: never measurable). */
  async get(targets: readonly LayerTarget[]): Promise<Map<string, LayerUsageSample>> {
    const now = this.monotonicNs();
    const waits: Promise<void>[] = [];
    for (const target of targets) {
      const entry = this.entry(target);
      if (!entry.sample) waits.push(this.remeasure(target.id, entry));
      else if (this.due(entry, now)) void this.remeasure(target.id, entry);
    }
    await Promise.all(waits);
    const out = new Map<string, LayerUsageSample>();
    const after = this.monotonicNs();
    for (const target of targets) {
      const entry = this.entries.get(target.id);
      if (entry?.sample && !this.expired(entry, after)) out.set(target.id, entry.sample);
    }
    return out;
  }

  /** Re-measures the due layers among `targets`, one at a time, and forgets all others. */
  async refresh(targets: readonly LayerTarget[], shouldStop: () => boolean = () => false): Promise<void> {
    const ids = new Set(targets.map((t) => t.id));
    for (const id of this.entries.keys()) if (!ids.has(id)) this.entries.delete(id);
    for (const target of targets) {
      if (shouldStop()) return;
      const entry = this.entry(target);
      if (this.due(entry, this.monotonicNs())) await this.remeasure(target.id, entry);
    }
  }

  /** Walks still running (for a clean shutdown). */
  async settle(): Promise<void> {
    await Promise.all([...this.entries.values()].map((e) => e.pending));
  }

  get size(): number {
    return this.entries.size;
  }

  private entry(target: LayerTarget): LayerEntry {
    let entry = this.entries.get(target.id);
    if (!entry || entry.dir !== target.dir) {
      entry = { dir: target.dir, walkNs: 0n };
      this.entries.set(target.id, entry);
    }
    return entry;
  }

  private interval(entry: LayerEntry): bigint {
    return entry.walkNs * this.costFactor > this.refreshNs ? entry.walkNs * this.costFactor : this.refreshNs;
  }

  private due(entry: LayerEntry, now: bigint): boolean {
    if (entry.measuredAt === undefined) return true;
    return now - entry.measuredAt >= this.interval(entry);
  }

  private expired(entry: LayerEntry, now: bigint): boolean {
    if (entry.sampledAt === undefined) return true;
    const threeIntervals = 3n * this.interval(entry);
    return now - entry.sampledAt > (threeIntervals > this.maxAgeNs ? threeIntervals : this.maxAgeNs);
  }

  private remeasure(id: string, entry: LayerEntry): Promise<void> {
    entry.pending ??= (async () => {
      const started = this.monotonicNs();
      try {
        const usage = await this.measure(entry.dir);
        if (usage) {
          entry.sample = { timestamp: this.wallNs(), usage };
          entry.sampledAt = this.monotonicNs();
        } else {
          // The layer is gone: nothing is there to report.
          entry.sample = undefined;
        }
      } catch (err) {
        // The old sample is served until it expires, not forever.
        this.options.log.debug({ container: id.slice(0, 12), dir: entry.dir, err: errorMessage(err) }, 'writable layer usage unavailable');
      } finally {
        const finished = this.monotonicNs();
        entry.measuredAt = finished;
        entry.walkNs = finished - started;
        entry.pending = undefined;
      }
    })();
    return entry.pending;
  }
}
