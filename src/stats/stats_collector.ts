import type { Logger } from '../log';
import { errorMessage } from '../util/errors';
import { type CgroupSample, CgroupSampler } from './cgroup_sampler';
import type { CgroupStats } from './cgroup_stats';
import { type DiskUsage, type LayerTarget, LayerUsageCache, type LayerUsageSample } from './layer_usage';
import { parseNetDev } from './net_dev';
import type { PodSample, PodStatsTarget } from './pod_stats';

/** What to sample for one container. */
export interface ContainerStatsTarget {
  id: string;
  cgroupPath: string;
  /** The writable layer (overlayfs upperdir). */
  layerDir: string;
}

/** One reading of a container: its cgroup and its writable layer, each when available. */
export interface ContainerSample {
  cgroup: CgroupSample;
  layer?: LayerUsageSample;
}

/** What the background pass keeps warm. */
export interface StatsTargets {
  pods: PodStatsTarget[];
  /** Running containers: the only ones kubelet lists stats for. */
  containers: ContainerStatsTarget[];
}

export interface StatsCollectorOptions {
  readCgroups(paths: readonly string[]): Promise<Array<CgroupStats | Error>>;
  /** Contents of /proc/<pid>/net/dev. */
  readNetDev(pid: number): Promise<string>;
  log: Logger;
  measureLayer: (dir: string) => Promise<DiskUsage | undefined>;
  monotonicNs?: () => bigint;
  wallNs?: () => bigint;
  minRateWindowNs?: bigint;
  /** Readings up to this old are served without touching the cgroup (default 2 s). */
  maxAgeMs?: number;
  /** Background interval while stats are being asked for (default 1 s)... */
  activeIntervalMs?: number;
  /** ...and once nobody asked for `idleAfterMs` (default 10 s, after 60 s). */
  idleIntervalMs?: number;
  idleAfterMs?: number;
  /** Writable layers are re-measured this often at most (default 5 s). */
  layerRefreshMs?: number;
  /** Cgroups per native call and native calls at once (see CgroupSampler). */
  batchSize?: number;
  concurrency?: number;
}

/** Network namespaces read at once: each read is a threadpool request. */
const NET_DEV_CONCURRENCY = 4;

const ms = (n: number): bigint => BigInt(Math.round(n * 1_000_000));

/**
 * Pod and container usage for the stats RPCs, in the manner of containerd's background stats
 * collector: cgroups are read in batches and cached, so listing stats for hundreds of containers
 * costs a few native calls, or none when the background pass read them within `maxAgeMs`.
 * The pass runs every `activeIntervalMs` while callers are asking for stats and slows to
 * `idleIntervalMs` when they stop, still often enough to keep CPU-rate baselines. Writable
 * layers are measured by their own, slower background walk.
 */
export class StatsCollector {
  readonly cgroups: CgroupSampler;
  readonly layers: LayerUsageCache;
  private readonly maxAgeNs: bigint;
  private readonly activeIntervalMs: number;
  private readonly idleIntervalMs: number;
  private readonly idleAfterMs: number;
  private targets?: () => StatsTargets;
  private timer?: NodeJS.Timeout;
  private nextTickAt = 0;
  private lastDemandAt = -Infinity;
  private pass?: Promise<void>;
  private layerPass?: Promise<void>;
  private closed = false;

  constructor(private readonly options: StatsCollectorOptions) {
    this.cgroups = new CgroupSampler({
      read: options.readCgroups,
      monotonicNs: options.monotonicNs,
      wallNs: options.wallNs,
      minRateWindowNs: options.minRateWindowNs,
      batchSize: options.batchSize,
      concurrency: options.concurrency,
    });
    this.layers = new LayerUsageCache({
      log: options.log,
      measure: options.measureLayer,
      monotonicNs: options.monotonicNs,
      wallNs: options.wallNs,
      refreshNs: ms(options.layerRefreshMs ?? 5_000),
    });
    this.maxAgeNs = ms(options.maxAgeMs ?? 2_000);
    this.activeIntervalMs = options.activeIntervalMs ?? 1_000;
    this.idleIntervalMs = options.idleIntervalMs ?? 10_000;
    this.idleAfterMs = options.idleAfterMs ?? 60_000;
  }

  /** Samples pods, in order; a pod whose cgroup could not be read is an Error in its place. */
  async samplePods(targets: readonly PodStatsTarget[]): Promise<Array<PodSample | Error>> {
    this.noteDemand();
    const [cgroups, netDevs] = await Promise.all([
      this.cgroups.get(
        targets.map((t) => t.cgroupPath),
        this.maxAgeNs,
      ),
      this.readNetDevs(targets),
    ]);
    return targets.map((target, i) => {
      const cgroup = cgroups.get(target.cgroupPath) ?? new Error(`cgroup ${target.cgroupPath} was not sampled`);
      if (cgroup instanceof Error) return cgroup;
      const sample: PodSample = { timestamp: cgroup.timestamp, cgroup: cgroup.stats };
      if (cgroup.usageNanoCores !== undefined) sample.usageNanoCores = cgroup.usageNanoCores;
      const netDev = netDevs[i];
      if (netDev !== undefined) sample.interfaces = parseNetDev(netDev);
      return sample;
    });
  }

  async samplePod(target: PodStatsTarget): Promise<PodSample> {
    const [sample] = await this.samplePods([target]);
    if (sample instanceof Error) throw sample;
    return sample!;
  }

  /** Samples containers, in order; a container whose cgroup could not be read is an Error. */
  async sampleContainers(targets: readonly ContainerStatsTarget[]): Promise<Array<ContainerSample | Error>> {
    this.noteDemand();
    const [cgroups, layers] = await Promise.all([
      this.cgroups.get(
        targets.map((t) => t.cgroupPath),
        this.maxAgeNs,
      ),
      this.layers.get(targets.map((t): LayerTarget => ({ id: t.id, dir: t.layerDir }))),
    ]);
    return targets.map((target) => {
      const cgroup = cgroups.get(target.cgroupPath) ?? new Error(`cgroup ${target.cgroupPath} was not sampled`);
      if (cgroup instanceof Error) return cgroup;
      const sample: ContainerSample = { cgroup };
      const layer = layers.get(target.id);
      if (layer) sample.layer = layer;
      return sample;
    });
  }

  /**
   * Keeps `targets()` warm in the background. The timer does not keep the process alive; a pass
   * reads the cgroups older than half an interval (an on-demand read may just have refreshed
   * the rest) and forgets cgroups and layers that are no longer targets.
   */
  startBackground(targets: () => StatsTargets): void {
    if (this.targets || this.closed) return;
    this.targets = targets;
    this.schedule(this.idleIntervalMs);
  }

  /** Stops the background passes and waits for those in progress. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    await Promise.all([this.pass, this.layerPass]);
    await this.layers.settle();
  }

  private active(): boolean {
    return Date.now() - this.lastDemandAt < this.idleAfterMs;
  }

  /** A stats call arrived: make sure the next pass comes within the active interval. */
  private noteDemand(): void {
    this.lastDemandAt = Date.now();
    if (this.timer && this.nextTickAt - Date.now() > this.activeIntervalMs) this.schedule(this.activeIntervalMs);
  }

  private schedule(delayMs: number): void {
    if (this.closed || !this.targets) return;
    if (this.timer) clearTimeout(this.timer);
    this.nextTickAt = Date.now() + delayMs;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.pass = this.backgroundPass().finally(() => {
        this.pass = undefined;
        this.schedule(this.active() ? this.activeIntervalMs : this.idleIntervalMs);
      });
    }, delayMs);
    this.timer.unref();
  }

  private async backgroundPass(): Promise<void> {
    try {
      const { pods, containers } = this.targets!();
      const paths = new Set([...pods.map((p) => p.cgroupPath), ...containers.map((c) => c.cgroupPath)]);
      this.cgroups.retain(paths);
      await this.cgroups.get([...paths], ms(this.activeIntervalMs / 2));
      // Walks can take longer than a pass: they run beside it, one walk pass at a time.
      this.layerPass ??= this.layers
        .refresh(
          containers.map((c) => ({ id: c.id, dir: c.layerDir })),
          () => this.closed,
        )
        .catch((err) => this.options.log.debug({ err: errorMessage(err) }, 'writable layer pass failed'))
        .finally(() => (this.layerPass = undefined));
    } catch (err) {
      this.options.log.debug({ err: errorMessage(err) }, 'background stats pass failed');
    }
  }

  private async readNetDevs(targets: readonly PodStatsTarget[]): Promise<Array<string | undefined>> {
    const out: Array<string | undefined> = new Array(targets.length);
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < targets.length) {
        const i = next++;
        const pid = targets[i]!.netnsPid;
        // A pod whose monitor just exited has no namespace to read: report it without network.
        if (pid !== undefined) out[i] = await this.options.readNetDev(pid).catch(() => undefined);
      }
    };
    await Promise.all(Array.from({ length: Math.min(NET_DEV_CONCURRENCY, targets.length) }, worker));
    return out;
  }
}
