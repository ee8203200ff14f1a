import { type ChildProcess, spawn } from 'node:child_process';
import * as net from 'node:net';
import type { CriClient } from '../../src/client/cri_client';

export type RuntimeName = 'crisp' | 'containerd';
export const RUNTIME_NAMES: readonly RuntimeName[] = ['crisp', 'containerd'];

export interface RuntimeVersion {
  /** From the CRI Version RPC. */
  runtimeName: string;
  runtimeVersion: string;
  runtimeApiVersion: string;
  /** Extra detail, e.g. the runc version behind containerd. */
  details: Record<string, string>;
}

/** A CRI runtime the benchmark started, with everything needed to measure it and to remove it. */
export interface BenchRuntime {
  readonly name: RuntimeName;
  /** Cgroup parent of this runtime's pods (one per runtime, removed at the end). */
  readonly cgroupParent: string;
  /** Directory for pod log directories. */
  readonly logRoot: string;
  client(): CriClient;
  start(): Promise<void>;
  version(): Promise<RuntimeVersion>;
  /** The daemon and its children (e.g. CNI plugins while they run). */
  daemonProcesses(): number[];
  /** Every process the runtime keeps per pod (monitors, shims, pause, containers). */
  podProcesses(): number[];
  /** The daemon's recent output, for diagnostics. */
  logTail(): string;
  /**
   * Removes every pod through CRI, stops the daemon, then whatever is left on the host: helper
   * processes, mounts, cgroups, directories. Safe to call more than once and after a failed start.
   */
  destroy(): Promise<void>;
}

/** Keeps the last `limit` characters a process printed. */
export class OutputTail {
  private text = '';
  constructor(private readonly limit = 64 * 1024) {}
  attach(child: ChildProcess): void {
    const add = (d: Buffer): void => {
      this.text += d.toString();
      if (this.text.length > 2 * this.limit) this.text = this.text.slice(-this.limit);
    };
    child.stdout?.on('data', add);
    child.stderr?.on('data', add);
  }
  toString(): string {
    return this.text.slice(-this.limit);
  }
}

/**
 * Starts a daemon through `setpriv --pdeathsig KILL`: if the benchmark itself is killed, the
 * kernel stops the daemon too instead of leaving it serving a socket in a deleted directory. The
 * daemon gets its own process group so that Ctrl-C reaches only the benchmark, which then removes
 * the pods through the still-running daemon before stopping it.
 */
export function spawnDaemon(argv: string[], tail: OutputTail, env: NodeJS.ProcessEnv = process.env): ChildProcess {
  const child = spawn('/usr/bin/setpriv', ['--pdeathsig', 'KILL', '--', ...argv], { stdio: ['ignore', 'pipe', 'pipe'], env, detached: true });
  tail.attach(child);
  return child;
}

export function exited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

/** Waits until something accepts connections on the unix socket. */
export async function waitForSocket(socket: string, child: ChildProcess, timeoutMs: number, what: string, tail: OutputTail): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (exited(child)) throw new Error(`${what} exited early (${child.exitCode ?? child.signalCode}):\n${tail}`);
    const ok = await new Promise<boolean>((resolve) => {
      const conn = net.connect({ path: socket });
      conn.once('connect', () => {
        conn.destroy();
        resolve(true);
      });
      conn.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`${what} did not serve ${socket} within ${timeoutMs} ms:\n${tail}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Waits until the runtime answers Status with RuntimeReady and NetworkReady. */
export async function waitForReady(client: CriClient, child: ChildProcess, timeoutMs: number, what: string, tail: OutputTail): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  for (;;) {
    if (exited(child)) throw new Error(`${what} exited early (${child.exitCode ?? child.signalCode}):\n${tail}`);
    try {
      const { status } = await client.call('status', {}, { timeoutMs: 2000 });
      const conditions = status?.conditions ?? [];
      const notReady = ['RuntimeReady', 'NetworkReady'].filter((t) => !conditions.find((c) => c.type === t)?.status);
      if (notReady.length === 0) return;
      last = `not ready: ${notReady.join(', ')} ${JSON.stringify(conditions)}`;
    } catch (err) {
      last = String(err);
    }
    if (Date.now() > deadline) throw new Error(`${what} did not become ready within ${timeoutMs} ms (${last}):\n${tail}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** SIGTERM, then SIGKILL after `graceMs`; resolves when the process has exited. */
export async function stopProcess(child: ChildProcess | undefined, graceMs: number): Promise<void> {
  if (!child || exited(child)) return;
  const done = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await done;
  clearTimeout(timer);
}
