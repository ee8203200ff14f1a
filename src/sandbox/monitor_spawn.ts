/**
 * Starting a pod's monitor (`crisp-monitor`, crates/monitor): the process that holds the pod's
 * namespaces and will parent its containers. The monitor runs in its own session and outlives
 * the daemon; a restarted daemon finds it again through `<bundle>/monitor.sock`.
 *
 * The configuration and readiness shapes mirror `crates/core/src/monitor_proto.rs`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as net from 'node:net';
import * as path from 'node:path';
import type { Readable } from 'node:stream';
import { procStatFields } from '../util/proc_stat';
import { CrispError, deadlineExceeded, errorMessage, internal, invalidArgument } from '../util/errors';
import { writeJsonAtomic } from '../util/fsutil';

export const MONITOR_CONFIG_FILE = 'monitor.json';
export const MONITOR_SOCKET_FILE = 'monitor.sock';
export const MONITOR_LOG_FILE = 'monitor.log';
/** Directory under the bundle holding the pinned namespace files. */
export const MONITOR_NS_DIR = 'ns';

/** Env var overriding where the monitor binary is. */
export const MONITOR_BIN_ENV = 'CRISP_MONITOR_BIN';

export type NamespaceMode = 'pod' | 'node';
export type PidNamespaceMode = 'pod' | 'node' | 'container';
export type MonitorLogLevel = 'error' | 'warn' | 'info' | 'debug';

/** `<bundle>/monitor.json`. */
export interface MonitorConfig {
  sandboxId: string;
  /** Set in the pod's UTS namespace; only with `namespaces.uts === 'pod'`. */
  hostname?: string;
  namespaces: {
    network: NamespaceMode;
    ipc: NamespaceMode;
    uts: NamespaceMode;
    pid: PidNamespaceMode;
  };
  /**
   * The cgroup the monitor joins before anything else (its pod init inherits it): the
   * `version`/`paths` of the native `cgroupCreate` result. On cgroup v2 this must be a leaf
   * (e.g. `<pod cgroup>/crisp-sandbox`), since container cgroups will be the pod cgroup's children.
   */
  cgroup?: { version: 1 | 2; paths: Record<string, string> };
  /** Namespaced sysctls only (net, IPC: kernel.shm-, kernel.msg-, kernel.sem, fs.mqueue), of pod-owned namespaces. */
  sysctls?: Record<string, string>;
  /** Kept at the current value when lowering it is not permitted. */
  oomScoreAdj?: number;
  logLevel?: MonitorLogLevel;
  /** A pod user namespace: the pod's network, IPC and UTS namespaces are created inside it. */
  userns?: { uidMappings: { containerId: number; hostId: number; size: number }[]; gidMappings: { containerId: number; hostId: number; size: number }[] };
}

/** Pinned namespace files of a pod, by kind. */
export interface PinnedNamespaces {
  net?: string;
  ipc?: string;
  uts?: string;
  pid?: string;
  user?: string;
}

export interface MonitorProcess {
  pid: number;
  /** The pod's init (PID 1 of its PID namespace) when `namespaces.pid === 'pod'`. */
  initPid?: number;
  namespaces: PinnedNamespaces;
  /** The monitor's start time (/proc/<pid>/stat field 22), to tell it from a reused pid. */
  startTime?: number;
}

/** The readiness line the monitor writes on descriptor 3. */
interface ReadyLine {
  ok: boolean;
  pid?: number;
  initPid?: number;
  namespaces?: PinnedNamespaces;
  error?: string;
  stage?: string;
}

/** The native core's process primitives, when monitors are spawned without forking the daemon. */
export interface MonitorSpawner {
  spawnDetached(program: string, arg: string, logPath: string): { pid: number; readyFd: number };
  reapChild(pid: number): boolean;
}

export interface SpawnMonitorOptions {
  /** How long to wait for the readiness line (default 10 s). */
  timeoutMs?: number;
  /** posix_spawn via the native core instead of node's fork-based child_process. */
  spawner?: MonitorSpawner;
}

const DEFAULT_READY_TIMEOUT_MS = 10_000;
/** How long a failed or killed monitor may take to exit before we stop waiting. */
const EXIT_WAIT_MS = 5_000;
/** Setup stages whose failure is the request's fault rather than the node's. */
const CALLER_STAGES = new Set(['config', 'sysctls', 'hostname']);

/**
 * The monitor binary: `$CRISP_MONITOR_BIN`, or `<package root>/target/release/crisp-monitor`
 * (built by `cargo build --release -p crisp-monitor`). This file runs from
 * `<package root>/dist/src/sandbox/`.
 */
export function monitorBinaryPath(env: NodeJS.ProcessEnv = process.env): string {
  const override = env[MONITOR_BIN_ENV];
  if (override) return path.resolve(override);
  return path.resolve(__dirname, '..', '..', '..', 'target', 'release', 'crisp-monitor');
}

/** The start time of a process in clock ticks since boot, or undefined if it is gone. */
export async function processStartTime(pid: number): Promise<number | undefined> {
  const value = Number(procStatFields(pid)?.[19]);
  return Number.isFinite(value) ? value : undefined;
}

/**
 * Writes `<bundleDir>/monitor.json` and starts the monitor on it, detached from the daemon (own
 * session, stdio not tied to the daemon: stdin /dev/null, stdout/stderr appended to
 * `<bundleDir>/monitor.log`). Resolves once the sandbox is set up and the control socket
 * listens. On failure or timeout the monitor is killed and reaped, and the error says which setup
 * stage failed: InvalidArgument for problems with the request (bad sysctl, hostname),
 * DeadlineExceeded on timeout, Internal otherwise.
 */
export async function spawnMonitor(
  bundleDir: string,
  config: MonitorConfig,
  monitorBinary: string = monitorBinaryPath(),
  options: SpawnMonitorOptions = {},
): Promise<MonitorProcess> {
  const timeoutMs = options.timeoutMs ?? DEFAULT_READY_TIMEOUT_MS;
  try {
    fs.accessSync(monitorBinary, fs.constants.X_OK);
  } catch {
    throw new CrispError(
      'FailedPrecondition',
      `monitor binary ${monitorBinary} is missing: build it with "cargo build --release -p crisp-monitor" or set ${MONITOR_BIN_ENV}`,
    );
  }
  // Read once, by the monitor as it starts: a crash of the machine takes the monitor with it,
  // so there is nothing for an fsync to protect.
  await writeJsonAtomic(path.join(bundleDir, MONITOR_CONFIG_FILE), config, 0o600, { durable: false });

  const logPath = path.join(bundleDir, MONITOR_LOG_FILE);
  const child = options.spawner ? nativeChild(options.spawner, monitorBinary, bundleDir, logPath) : await nodeChild(monitorBinary, bundleDir, logPath);

  let line: string;
  try {
    line = await readReadyLine(child, timeoutMs);
  } catch (err) {
    await child.killAndReap();
    if (err instanceof CrispError) throw err;
    throw internal(`monitor for sandbox ${config.sandboxId}: ${errorMessage(err)}`, err);
  }

  let ready: ReadyLine;
  try {
    ready = JSON.parse(line) as ReadyLine;
  } catch {
    await child.killAndReap();
    throw internal(`monitor for sandbox ${config.sandboxId} sent a malformed readiness line: ${line.slice(0, 200)}`);
  }
  if (!ready.ok || typeof ready.pid !== 'number') {
    await child.killAndReap();
    const stage = ready.stage ?? 'unknown';
    const message = `monitor for sandbox ${config.sandboxId} failed at ${stage}: ${ready.error ?? 'no reason given'}`;
    throw CALLER_STAGES.has(stage) ? invalidArgument(message) : internal(message);
  }

  // From here on the monitor lives on its own: nothing of ours keeps it (or our event loop)
  // attached.
  child.detach();
  return {
    pid: ready.pid,
    initPid: ready.initPid,
    namespaces: ready.namespaces ?? {},
    startTime: await processStartTime(ready.pid),
  };
}

/** A monitor process being started, however it was spawned. */
interface StartingMonitor {
  /**
   * The first line read from the readiness pipe (descriptor 3 in the child). Collection starts
   * as the child is created: node resumes a child's extra stdio pipes once it exits and drops
   * whatever nobody listens to yet, so a monitor that fails at once would otherwise lose its line.
   */
  readyLine: Promise<string>;
  /** Stops reading the readiness pipe. */
  closeReady(): void;
  /** Resolves if the child could not be started at all. */
  failed: Promise<Error>;
  killAndReap(): Promise<void>;
  detach(): void;
  /** What the process is doing, for an error message ("pid 12: state S, waiting in do_epoll_wait"). */
  describe(): string;
}

/**
 * posix_spawn through the native core: no fork of the daemon on the event loop. The monitor stays
 * the daemon's child, so whoever sees it gone reaps it (PodRuntime does).
 */
function nativeChild(spawner: MonitorSpawner, binary: string, bundleDir: string, logPath: string): StartingMonitor {
  const { pid, readyFd } = spawner.spawnDetached(binary, bundleDir, logPath);
  const ready = new net.Socket({ fd: readyFd, readable: true, writable: false });
  return {
    readyLine: firstLine(ready),
    closeReady: () => ready.destroy(),
    failed: new Promise<Error>(() => undefined),
    async killAndReap() {
      ready.destroy();
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // Already gone.
      }
      for (const until = Date.now() + EXIT_WAIT_MS; !spawner.reapChild(pid) && Date.now() < until; ) {
        await new Promise((r) => setTimeout(r, 5));
      }
    },
    detach() {
      ready.destroy();
    },
    describe: () => describeProcess(pid),
  };
}

async function nodeChild(binary: string, bundleDir: string, logPath: string): Promise<StartingMonitor> {
  const log = await fsp.open(logPath, 'a', 0o600);
  let starting: StartingMonitor;
  try {
    const child = spawn(binary, [bundleDir], {
      detached: true,
      cwd: '/',
      // The monitor and what it starts must not inherit the daemon's environment.
      env: { PATH: process.env.PATH ?? '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' },
      stdio: ['ignore', log.fd, log.fd, 'pipe'],
    });
    // Listeners go on before anything else is awaited (see StartingMonitor.readyLine).
    const pipe = child.stdio[3] as Readable;
    starting = {
      readyLine: firstLine(pipe),
      closeReady: () => pipe.destroy(),
      failed: new Promise<Error>((resolve) => child.once('error', (err) => resolve(new Error(`cannot start monitor: ${err.message}`)))),
      killAndReap: () => killAndReap(child),
      // While the daemon runs, node still reaps it when it exits.
      detach: () => child.unref(),
      describe: () =>
        child.exitCode !== null || child.signalCode !== null
          ? `pid ${child.pid} exited (${child.exitCode ?? child.signalCode})`
          : child.pid === undefined
            ? 'not started'
            : describeProcess(child.pid),
    };
  } finally {
    await log.close();
  }
  return starting;
}

/** The scheduler state and kernel wait channel of a process, from procfs. */
export function describeProcess(pid: number): string {
  const state = procStatFields(pid)?.[0];
  if (state === undefined) return `pid ${pid} is gone`;
  let wchan = '';
  try {
    wchan = fs.readFileSync(`/proc/${pid}/wchan`, 'utf8').trim();
  } catch {
    // Not available on every kernel.
  }
  return `pid ${pid}: state ${state}${wchan && wchan !== '0' ? `, waiting in ${wchan}` : ''}`;
}

/** Collects the first line of a stream from now on; EOF before a line and stream errors reject. */
function firstLine(pipe: Readable): Promise<string> {
  return new Promise<string>((resolve, reject) => {
    let buffer = '';
    pipe.setEncoding('utf8');
    pipe.on('data', (chunk: string) => {
      buffer += chunk;
      const newline = buffer.indexOf('\n');
      if (newline >= 0) {
        pipe.removeAllListeners('data');
        resolve(buffer.slice(0, newline));
      }
    });
    pipe.on('end', () => {
      if (buffer.trim() !== '') resolve(buffer.trim());
      else reject(new Error('monitor exited before reporting readiness (see its monitor.log)'));
    });
    pipe.on('error', (err: Error) => reject(new Error(`readiness pipe: ${err.message}`)));
  });
}

/** Waits for the readiness line, failing on EOF, spawn error or timeout; the pipe is closed after. */
function readReadyLine(child: StartingMonitor, timeoutMs: number): Promise<string> {
  let timer: NodeJS.Timeout | undefined;
  // If the event loop itself stalled past the deadline, the readiness line may be waiting to be
  // read: let the poll phase deliver it (setImmediate runs after it) before giving up.
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => setImmediate(() => reject(deadlineExceeded(`monitor did not report readiness within ${timeoutMs} ms (${child.describe()})`))),
      timeoutMs,
    );
  });
  const failed = child.failed.then((err) => Promise.reject(err));
  return Promise.race([child.readyLine, failed, deadline]).finally(() => {
    clearTimeout(timer);
    child.closeReady();
  });
}

/** SIGKILLs the monitor unless it already exited, and waits (bounded) until node reaped it. */
async function killAndReap(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  if (child.pid !== undefined) {
    try {
      process.kill(child.pid, 'SIGKILL');
    } catch {
      // Already gone.
    }
  }
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([exited, new Promise<void>((resolve) => (timer = setTimeout(resolve, EXIT_WAIT_MS)))]);
  clearTimeout(timer);
}
