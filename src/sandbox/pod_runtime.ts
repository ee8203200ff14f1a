import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import type { LinuxContainerResources } from '../generated/runtime/v1/api';
import type { Logger } from '../log';
import type { CgroupResources, NativeCore } from '../native';
import { errorMessage, internal, isCrispError } from '../util/errors';
import { procStatFields } from '../util/proc_stat';
import type { ContainerRuntime, RuntimeEvent } from '../runtime/container_runtime';
import { MonitorClient } from './monitor_client';
import { MONITOR_NS_DIR, MONITOR_SOCKET_FILE, type MonitorConfig, spawnMonitor } from './monitor_spawn';
import type { SandboxNamespaces } from './sandbox_spec';
import type { Sandbox } from './sandbox_store';

/** Where pods go when kubelet gives no cgroup_parent (crictl, tests). */
export const DEFAULT_CGROUP_PARENT = '/crisp';
/** /dev/shm of a pod, as containerd and Docker size it (64 MiB). */
const SHM_SIZE = '65536k';
/** kubelet's oom_score_adj for infrastructure containers; clamped by the monitor when not allowed. */
const SANDBOX_OOM_SCORE_ADJ = -998;
const STOP_GRACE_MS = 10_000;
const LIVENESS_TTL_MS = 1000;
/** How long a monitor that answered shutdown may take to close its connection. */
const EXIT_CLOSE_WAIT_MS = 1000;
/** After shutdown, when a monitor that has not exited is killed, and when we stop waiting. */
const EXIT_KILL_AFTER_MS = 1000;
const EXIT_GIVE_UP_MS = 3000;

/** CRI resources to cgroup file units; zero means "not set" in CRI. */
export function cgroupResources(r: LinuxContainerResources | undefined): CgroupResources {
  if (!r) return {};
  const out: CgroupResources = {};
  if (r.cpuShares) out.cpuShares = Number(r.cpuShares);
  if (r.cpuQuota) out.cpuQuota = Number(r.cpuQuota);
  if (r.cpuPeriod) out.cpuPeriod = Number(r.cpuPeriod);
  if (r.memoryLimitInBytes) out.memoryLimit = Number(r.memoryLimitInBytes);
  if (r.memorySwapLimitInBytes) out.memorySwapLimit = Number(r.memorySwapLimitInBytes);
  if (r.cpusetCpus) out.cpusetCpus = r.cpusetCpus;
  if (r.cpusetMems) out.cpusetMems = r.cpusetMems;
  if (r.hugepageLimits.length > 0) out.hugepageLimits = r.hugepageLimits.map((h) => ({ pageSize: h.pageSize, limit: Number(h.limit) }));
  if (Object.keys(r.unified).length > 0) out.unified = r.unified;
  return out;
}

/**
 * How pod monitors are started, reached and watched: real processes in the daemon
 * (`processMonitorHost`), an in-memory stand-in in unit tests.
 */
export interface MonitorHost {
  /** Starts the monitor for the pod in `sandboxDir`; resolves once it holds the pod's namespaces. */
  spawn(sandboxDir: string, config: MonitorConfig): Promise<{ pid: number; startTime: number }>;
  /** The control connection of the monitor serving the pod in `sandboxDir`. */
  connect(sandboxDir: string): Promise<ContainerRuntime>;
  /** Whether the monitor `pid` (started at `startTime`, when known) still runs. */
  running(pid: number, startTime: number | undefined): boolean;
  /** Collects a monitor this daemon started, once it has exited. */
  reap(pid: number): void;
  kill(pid: number): void;
}

/** Monitors as processes: `crisp-monitor` spawned through the native core, reached over its socket. */
export function processMonitorHost(native: NativeCore, monitorBinary?: string): MonitorHost {
  return {
    spawn: async (sandboxDir, config) => {
      const monitor = await spawnMonitor(sandboxDir, config, monitorBinary, { spawner: native });
      return { pid: monitor.pid, startTime: monitor.startTime ?? 0 };
    },
    connect: (sandboxDir) => MonitorClient.connect(path.join(sandboxDir, MONITOR_SOCKET_FILE)),
    running: processRunning,
    reap: (pid) => {
      native.reapChild(pid);
    },
    kill: (pid) => process.kill(pid, 'SIGKILL'),
  };
}

/**
 * What holds a pod's namespaces: its cgroup, its /dev/shm and its monitor process, which pins the
 * namespaces under `<sandbox dir>/ns/` and will parent the pod's containers.
 */
export class PodRuntime {
  private readonly liveness = new Map<string, { pid: number | undefined; at: number; alive: boolean }>();
  private readonly connectedClients = new Set<string>();
  /** Where primeCgroupMigration() writes: unknown yet, or null when it cannot. */
  private migrationPrimeFile: string | null | undefined;
  /** One connection per pod's monitor, subscribed to its events, opened on first use. */
  private readonly clients = new Map<string, Promise<ContainerRuntime>>();
  /** Receives every event a pod's monitor pushes (container exits). */
  onMonitorEvent?: (sandboxId: string, event: RuntimeEvent) => void;

  constructor(
    private readonly native: NativeCore,
    private readonly log: Logger,
    private readonly monitors: MonitorHost = processMonitorHost(native),
  ) {}

  /** The runtime of the pod's containers (its monitor's control connection); Unavailable if the monitor is gone. */
  runtimeOf(sandbox: Sandbox): Promise<ContainerRuntime> {
    let pending = this.clients.get(sandbox.id);
    if (!pending) {
      pending = (async () => {
        const client = await this.monitors.connect(sandbox.dir);
        client.onClose(() => {
          this.connectedClients.delete(sandbox.id);
          this.liveness.delete(sandbox.id);
          if (this.clients.get(sandbox.id) === pending) this.clients.delete(sandbox.id);
        });
        await client.onEvent((event) => this.onMonitorEvent?.(sandbox.id, event));
        if (!client.closed) this.connectedClients.add(sandbox.id);
        return client;
      })();
      pending.catch(() => {
        if (this.clients.get(sandbox.id) === pending) this.clients.delete(sandbox.id);
      });
      this.clients.set(sandbox.id, pending);
    }
    return pending;
  }

  private async dropClient(sandbox: Sandbox): Promise<void> {
    const pending = this.clients.get(sandbox.id);
    this.clients.delete(sandbox.id);
    const client = await pending?.catch(() => undefined);
    client?.close();
  }

  /** Closes every monitor connection (daemon shutdown); the monitors keep running. */
  async closeAll(): Promise<void> {
    const all = [...this.clients.values()];
    this.clients.clear();
    for (const pending of all) (await pending.catch(() => undefined))?.close();
  }

  /**
   * Starts taking the kernel's cgroup migration lock, without moving anything: the daemon's own
   * pid is written to the cgroup it is in. The first migration after an idle spell waits a full
   * RCU grace period (5-15 ms) for that lock; one already in progress or just finished lets the
   * next one through at once. Called when a process is about to be moved into a new cgroup (a
   * monitor, a container), so that the wait overlaps with the work before the move. Best effort.
   */
  primeCgroupMigration(): void {
    if (this.migrationPrimeFile === undefined) this.migrationPrimeFile = ownCgroupProcsFile();
    const file = this.migrationPrimeFile;
    if (!file) return;
    fsp.writeFile(file, String(process.pid)).catch((err: unknown) => {
      this.migrationPrimeFile = null;
      this.log.debug({ file, err: errorMessage(err) }, 'cannot prime cgroup migrations; not trying again');
    });
  }

  cgroupParentOf(sandbox: Sandbox): string {
    return sandbox.config.linux?.cgroupParent || DEFAULT_CGROUP_PARENT;
  }

  /**
   * The sandbox's own cgroup, `<cgroup_parent>/<id>` as containerd places the pause container;
   * the parent may be a path or a systemd slice name.
   */
  cgroupPathFor(sandbox: Sandbox): string {
    return this.native.cgroupResolvePath(this.cgroupParentOf(sandbox), sandbox.id);
  }

  cgroupPathForName(parent: string, name: string): string {
    return this.native.cgroupResolvePath(parent, name);
  }

  /** Where `createCgroup` will put a cgroup, known before it exists. */
  cgroupLayout(parent: string, name: string) {
    return this.native.cgroupLayout(parent, name);
  }

  createCgroup(parent: string, name: string, resources: CgroupResources) {
    return this.native.cgroupCreate(parent, name, resources);
  }

  updateCgroup(cgroupPath: string, resources: CgroupResources): Promise<void> {
    return this.native.cgroupUpdate(cgroupPath, resources);
  }

  async removeCgroup(cgroupPath: string): Promise<void> {
    if (cgroupPath) await this.native.cgroupRemove(cgroupPath);
  }

  /** The pinned namespace files containers of this pod join. */
  namespacePaths(sandbox: Sandbox): { net?: string; ipc?: string; uts?: string; pid?: string; user?: string } {
    const dir = path.join(sandbox.dir, MONITOR_NS_DIR);
    const out: { net?: string; ipc?: string; uts?: string; pid?: string; user?: string } = {};
    for (const kind of ['net', 'ipc', 'uts', 'pid', 'user'] as const) {
      const file = path.join(dir, kind);
      if (fs.existsSync(file)) out[kind] = file;
    }
    return out;
  }

  /** Sends `signal` to a container's main process through the monitor. */
  async signalContainer(sandbox: Sandbox, containerId: string, signal: number): Promise<void> {
    await (await this.runtimeOf(sandbox)).signal(containerId, signal);
  }

  /** Best-effort SIGKILL, for undoing a create: a monitor that is gone has no process to kill. */
  async killContainer(sandbox: Sandbox, containerId: string): Promise<void> {
    try {
      await this.signalContainer(sandbox, containerId, 9);
    } catch (err) {
      if (!isCrispError(err, 'Unavailable') && !isCrispError(err, 'NotFound')) throw err;
    }
  }

  shmPath(sandbox: Sandbox): string {
    return path.join(sandbox.dir, 'shm');
  }

  async start(sandbox: Sandbox, spec: { namespaces: SandboxNamespaces; sysctls: Record<string, string> }): Promise<{ pid: number; startTime: number }> {
    const linux = sandbox.config.linux;
    const cgroup = await this.native.cgroupCreate(this.cgroupParentOf(sandbox), sandbox.id, cgroupResources(linux?.resources));
    // Joining it is the monitor's first step.
    this.primeCgroupMigration();
    if (spec.namespaces.ipc === 'pod') {
      const shm = this.shmPath(sandbox);
      fs.mkdirSync(shm, { recursive: true, mode: 0o1777 });
      this.native.mountTmpfs(shm, `mode=1777,size=${SHM_SIZE}`);
    }
    return this.monitors.spawn(sandbox.dir, {
      sandboxId: sandbox.id,
      hostname: spec.namespaces.uts === 'pod' ? sandbox.config.hostname || sandbox.config.metadata!.name : undefined,
      namespaces: { network: spec.namespaces.network, ipc: spec.namespaces.ipc, uts: spec.namespaces.uts, pid: spec.namespaces.pid },
      cgroup: { version: cgroup.version, paths: cgroup.paths },
      sysctls: spec.sysctls,
      oomScoreAdj: SANDBOX_OOM_SCORE_ADJ,
      logLevel: 'info',
      userns: spec.namespaces.userns,
    });
  }

  /**
   * Whether the monitor still runs (the pod's namespaces are held and its containers parented):
   * its pid exists, is not a zombie, and started when the recorded monitor did (not a reused pid).
   */
  alive(sandbox: Sandbox): boolean {
    // An open, subscribed connection is the monitor itself: its death closes the socket, and the
    // close forgets it. Only pods without one (a daemon that just restarted) need /proc.
    if (this.connectedClients.has(sandbox.id)) return true;
    const now = Date.now();
    const cached = this.liveness.get(sandbox.id);
    // List and status calls ask for every pod every second; /proc is read at most once a second
    // per pod.
    if (cached && cached.pid === sandbox.record.resources.monitorPid && now - cached.at < LIVENESS_TTL_MS) return cached.alive;
    const { monitorPid, monitorStartTime } = sandbox.record.resources;
    const alive = monitorPid !== undefined && this.monitors.running(monitorPid, monitorStartTime);
    this.liveness.set(sandbox.id, { pid: monitorPid, at: now, alive });
    return alive;
  }

  /**
   * Whether this daemon holds a live, subscribed connection to the pod's monitor: container exits
   * then arrive as events, and nothing has to be read from disk to know a container still runs.
   */
  connected(sandboxId: string): boolean {
    return this.connectedClients.has(sandboxId);
  }

  /** Forgets what alive() knows about a pod, so the next call looks again. */
  forgetLiveness(sandboxId: string): void {
    this.liveness.delete(sandboxId);
  }

  /** Stops everything the monitor parents and the monitor itself. Idempotent. */
  async stop(sandbox: Sandbox): Promise<void> {
    const pid = sandbox.record.resources.monitorPid;
    if (!pid || !this.alive(sandbox)) {
      await this.dropClient(sandbox);
      return;
    }
    try {
      const client = await this.runtimeOf(sandbox);
      const closed = new Promise<void>((resolve) => client.onClose(() => resolve()));
      await client.shutdown(STOP_GRACE_MS);
      // The monitor exits right after its reply, and its end of the connection closes as it
      // does: waiting for that beats polling /proc for its exit.
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([closed, new Promise<void>((resolve) => (timer = setTimeout(resolve, EXIT_CLOSE_WAIT_MS)))]);
      clearTimeout(timer);
    } catch (err) {
      if (!isCrispError(err, 'Unavailable')) this.log.warn({ sandbox: sandbox.id, err: errorMessage(err) }, 'monitor shutdown failed; killing it');
    }
    await this.dropClient(sandbox);
    await this.waitGone(pid, sandbox.record.resources.monitorStartTime);
  }

  private async waitGone(pid: number, startTime: number | undefined): Promise<void> {
    for (const [id, entry] of this.liveness) if (entry.pid === pid) this.liveness.delete(id);
    // Short sleeps first: a monitor that closed its connection is gone within a millisecond.
    const killAt = Date.now() + EXIT_KILL_AFTER_MS;
    const giveUpAt = Date.now() + EXIT_GIVE_UP_MS;
    let killed = false;
    for (let sleepMs = 1; ; sleepMs = Math.min(sleepMs * 2, 10)) {
      if (!this.monitors.running(pid, startTime)) {
        // Started by this daemon, the monitor is our child until reaped.
        this.monitors.reap(pid);
        return;
      }
      const now = Date.now();
      if (now >= giveUpAt) break;
      if (!killed && now >= killAt) {
        this.monitors.kill(pid);
        killed = true;
      }
      await new Promise((r) => setTimeout(r, sleepMs));
    }
    throw internal(`monitor ${pid} did not exit`);
  }

  /** Releases what start() acquired: processes, pinned namespaces, /dev/shm, the cgroup. Idempotent. */
  async release(sandbox: Sandbox): Promise<void> {
    await this.stop(sandbox);
    await this.native.unpinNamespaces(path.join(sandbox.dir, MONITOR_NS_DIR));
    this.native.unmountPath(this.shmPath(sandbox));
    await this.native.cgroupRemove(this.cgroupPathFor(sandbox));
  }
}

/**
 * The daemon's own `cgroup.procs` in one hierarchy (the unified one on cgroup v2), or null when it
 * is not where the usual /sys/fs/cgroup layout puts it.
 */
function ownCgroupProcsFile(): string | null {
  let lines: string[];
  try {
    lines = fs.readFileSync('/proc/self/cgroup', 'utf8').split('\n');
  } catch {
    return null;
  }
  for (const line of lines) {
    const [, controllers, cgroupPath] = line.split(':', 3);
    if (cgroupPath === undefined) continue;
    const mount = controllers === '' ? '/sys/fs/cgroup' : controllers.startsWith('name=') ? '' : `/sys/fs/cgroup/${controllers}`;
    if (!mount) continue;
    const file = path.join(mount, cgroupPath, 'cgroup.procs');
    if (fs.existsSync(file)) return file;
  }
  return null;
}

/** Running means: exists, not a zombie, and (when known) the same start time, so not a reused pid. */
function processRunning(pid: number, startTime: number | undefined): boolean {
  const fields = procStatFields(pid);
  if (!fields || fields[0] === 'Z' || fields[0] === 'X') return false;
  return !startTime || Number(fields[19]) === startTime;
}
