import * as fsp from 'node:fs/promises';
import type { Logger } from '../log';
import { errorMessage } from '../util/errors';
import type { CgroupStats } from './cgroup_stats';
import { type InterfaceCounters, parseNetDev } from './net_dev';

/** What to sample for one pod. */
export interface PodStatsTarget {
  /** The cgroup whose counters stand for the pod (hierarchical: it includes its children). */
  cgroupPath: string;
  /**
   * A process inside the pod's network namespace (the monitor, which pins it); its
   * /proc/<pid>/net/dev lists the pod's interfaces without entering the namespace. Undefined for
   * host-network pods: kubelet reports node network stats itself.
   */
  netnsPid?: number;
}

/** One reading of a pod's counters. */
export interface PodSample {
  /** Wall-clock time of the reading, nanoseconds since the epoch. */
  timestamp: bigint;
  cgroup: CgroupStats;
  /** Interfaces of the pod's network namespace; undefined when not sampled (host network). */
  interfaces?: InterfaceCounters[];
  /** CPU use in billionths of a core over the last sampling window, once a window exists. */
  usageNanoCores?: bigint;
}

export interface PodStatsSource {
  cgroupStats(path: string): Promise<CgroupStats>;
  /** Contents of /proc/<pid>/net/dev. */
  readNetDev(pid: number): Promise<string>;
}

/** Reads net/dev through the kernel's per-process view; async so the read runs off the event loop. */
export function procNetDev(pid: number): Promise<string> {
  return fsp.readFile(`/proc/${pid}/net/dev`, 'utf8');
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

  /** Forgets cgroups not in `keys` (removed pods). */
  retain(keys: ReadonlySet<string>): void {
    for (const key of this.points.keys()) if (!keys.has(key)) this.points.delete(key);
  }

  get size(): number {
    return this.points.size;
  }
}

export interface PodStatsCollectorOptions {
  source: PodStatsSource;
  log: Logger;
  /** Monotonic clock in nanoseconds (tests substitute their own). */
  monotonicNs?: () => bigint;
  /** Wall clock in nanoseconds since the epoch. */
  wallNs?: () => bigint;
  minRateWindowNs?: bigint;
}

/**
 * Samples pods' cgroup and network counters. The cgroup read is a native call on the libuv
 * threadpool and net/dev an async file read, so a sample costs the event loop only the JSON and
 * text parsing. A background pass keeps a CPU baseline per pod so that on-demand readings carry a
 * usage rate even on the first call after a quiet period.
 */
export class PodStatsCollector {
  private readonly rates: CpuRateTracker;
  private readonly monotonicNs: () => bigint;
  private readonly wallNs: () => bigint;
  private timer?: NodeJS.Timeout;
  private pass?: Promise<void>;

  constructor(private readonly options: PodStatsCollectorOptions) {
    this.rates = new CpuRateTracker(options.minRateWindowNs);
    this.monotonicNs = options.monotonicNs ?? (() => process.hrtime.bigint());
    this.wallNs = options.wallNs ?? (() => BigInt(Date.now()) * 1_000_000n);
  }

  async sample(target: PodStatsTarget): Promise<PodSample> {
    const [cgroup, netDev] = await Promise.all([
      this.options.source.cgroupStats(target.cgroupPath),
      target.netnsPid === undefined ? undefined : this.options.source.readNetDev(target.netnsPid).catch(() => undefined),
    ]);
    const sample: PodSample = { timestamp: this.wallNs(), cgroup };
    if (netDev !== undefined) sample.interfaces = parseNetDev(netDev);
    if (cgroup.cpu) sample.usageNanoCores = this.rates.update(target.cgroupPath, cgroup.cpu.usageNanos, this.monotonicNs());
    return sample;
  }

  /**
   * Samples `targets()` every `intervalMs` in the background, one pod at a time so a large node
   * never occupies more than one threadpool thread. The timer does not keep the process alive.
   */
  startBackground(targets: () => PodStatsTarget[], intervalMs: number): void {
    if (this.timer) return;
    this.timer = setInterval(() => {
      this.pass ??= this.backgroundPass(targets()).finally(() => (this.pass = undefined));
    }, intervalMs);
    this.timer.unref();
  }

  private async backgroundPass(targets: PodStatsTarget[]): Promise<void> {
    this.rates.retain(new Set(targets.map((t) => t.cgroupPath)));
    for (const target of targets) {
      if (!this.timer) return;
      try {
        const cgroup = await this.options.source.cgroupStats(target.cgroupPath);
        if (cgroup.cpu) this.rates.update(target.cgroupPath, cgroup.cpu.usageNanos, this.monotonicNs());
      } catch (err) {
        this.options.log.debug({ cgroup: target.cgroupPath, err: errorMessage(err) }, 'background stats sample failed');
      }
    }
  }

  /** Stops the background sampler and waits for a pass in progress. */
  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    await this.pass;
  }
}
