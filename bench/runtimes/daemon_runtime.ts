/**
 * What crisp and containerd have in common as the benchmark runs them: a daemon process on its
 * own socket, root and state (state on tmpfs) under one temporary directory, CRI clients, and one
 * way to find its processes and to tear everything down.
 */
import type { ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import { CriClient } from '../../src/client/cri_client';
import { mountStateTmpfs } from '../env/host';
import { listProcesses, type ProcInfo, withDescendants } from '../env/proc';
import { type BenchRuntime, exited, OutputTail, type RuntimeName, type RuntimeVersion, spawnDaemon, waitForReady, waitForSocket } from './runtime';
import { tearDownRuntime } from './teardown';

export interface DaemonRuntimeOptions {
  /** Everything of this runtime goes below it. */
  dir: string;
  cgroupParent: string;
}

export abstract class DaemonRuntime implements BenchRuntime {
  abstract readonly name: RuntimeName;
  readonly cgroupParent: string;
  readonly logRoot: string;
  protected readonly root: string;
  protected readonly state: string;
  protected readonly configFile: string;
  protected readonly tail = new OutputTail();
  private readonly clients: CriClient[] = [];
  private child?: ChildProcess;
  private destroyed = false;

  constructor(
    private readonly base: DaemonRuntimeOptions,
    protected readonly socket: string,
  ) {
    this.cgroupParent = base.cgroupParent;
    this.root = path.join(base.dir, 'root');
    this.state = path.join(base.dir, 'state');
    this.logRoot = path.join(base.dir, 'pod-logs');
    this.configFile = path.join(base.dir, 'config.toml');
  }

  abstract start(): Promise<void>;
  abstract version(): Promise<RuntimeVersion>;
  /** The runtime's per-pod processes (with what they run) among `all`. */
  protected abstract podTree(all: ProcInfo[]): number[];

  /** Mounts the state tmpfs, starts `argv` and waits until it serves CRI. */
  protected async startDaemon(argv: string[]): Promise<void> {
    await mountStateTmpfs(this.state);
    this.child = spawnDaemon(argv, this.tail);
    await waitForSocket(this.socket, this.child, 20_000, this.name, this.tail);
    await waitForReady(this.client(), this.child, 30_000, this.name, this.tail);
  }

  /** The first client, opened by start(). */
  protected firstClient(): CriClient {
    return this.clients[0]!;
  }

  client(): CriClient {
    const client = new CriClient(this.socket);
    this.clients.push(client);
    return client;
  }

  /** The daemon and its children, except pod processes it spawned directly. */
  daemonProcesses(): number[] {
    if (this.child?.pid === undefined || exited(this.child)) return [];
    const all = listProcesses();
    const pods = new Set(this.podTree(all));
    return withDescendants([this.child.pid], all).filter((pid) => !pods.has(pid));
  }

  podProcesses(): number[] {
    return this.podTree(listProcesses());
  }

  logTail(): string {
    return this.tail.toString();
  }

  async destroy(): Promise<void> {
    if (this.destroyed) return;
    this.destroyed = true;
    await tearDownRuntime({
      child: this.child,
      clients: this.clients,
      client: () => this.client(),
      podProcesses: () => this.podProcesses(),
      dir: this.base.dir,
      cgroupParent: this.cgroupParent,
    });
    this.afterTeardown();
  }

  /** What is left on the host that the common teardown does not know about. */
  protected afterTeardown(): void {}
}
