/**
 * crisp as the benchmark runs it: the compiled daemon on temporary directories, logging at info
 * (as in production; the test daemon logs at debug), with the run's CNI network and registry hosts.
 */
import type { ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CriClient } from '../../src/client/cri_client';
import { mountStateTmpfs } from '../env/host';
import { listProcesses, type ProcInfo, withDescendants } from '../env/proc';
import { tearDownRuntime } from './teardown';
import { type BenchRuntime, exited, OutputTail, type RuntimeVersion, spawnDaemon, waitForReady, waitForSocket } from './runtime';

const REPO_ROOT = path.resolve(__dirname, '..', '..', '..');
const CLI = path.join(REPO_ROOT, 'dist', 'src', 'cli', 'main.js');

export interface CrispRuntimeOptions {
  dir: string;
  cniConfDir: string;
  cniBinDir: string;
  registryConfigDir: string;
  cgroupParent: string;
}

export class CrispRuntime implements BenchRuntime {
  readonly name = 'crisp' as const;
  readonly cgroupParent: string;
  readonly logRoot: string;
  private readonly socket: string;
  private readonly root: string;
  private readonly state: string;
  private readonly configFile: string;
  private readonly tail = new OutputTail();
  private readonly clients: CriClient[] = [];
  private child?: ChildProcess;
  private destroyed = false;

  constructor(private readonly options: CrispRuntimeOptions) {
    this.cgroupParent = options.cgroupParent;
    this.socket = path.join(options.dir, 'crisp.sock');
    this.root = path.join(options.dir, 'root');
    this.state = path.join(options.dir, 'state');
    this.logRoot = path.join(options.dir, 'pod-logs');
    this.configFile = path.join(options.dir, 'config.toml');
  }

  async start(): Promise<void> {
    await mountStateTmpfs(this.state);
    fs.mkdirSync(this.logRoot, { recursive: true });
    fs.writeFileSync(
      this.configFile,
      [
        `socket = ${JSON.stringify(this.socket)}`,
        `root = ${JSON.stringify(this.root)}`,
        `state = ${JSON.stringify(this.state)}`,
        `log_level = "info"`,
        `[cni]`,
        `conf_dir = ${JSON.stringify(this.options.cniConfDir)}`,
        `bin_dirs = ${JSON.stringify([this.options.cniBinDir])}`,
        `[registry]`,
        `config_path = ${JSON.stringify(this.options.registryConfigDir)}`,
        '',
      ].join('\n'),
    );
    this.child = spawnDaemon([process.execPath, CLI, 'daemon', '--config', this.configFile], this.tail);
    await waitForSocket(this.socket, this.child, 20_000, 'crisp', this.tail);
    const client = this.client();
    await waitForReady(client, this.child, 30_000, 'crisp', this.tail);
  }

  client(): CriClient {
    const client = new CriClient(this.socket);
    this.clients.push(client);
    return client;
  }

  async version(): Promise<RuntimeVersion> {
    const v = await this.clients[0]!.call('version', {});
    return {
      runtimeName: v.runtimeName,
      runtimeVersion: v.runtimeVersion,
      runtimeApiVersion: v.runtimeApiVersion,
      details: { node: process.version },
    };
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

  /**
   * Each pod's monitor with what it runs (the pod's init, containers). Monitors stay the daemon's
   * children (in their own session), so they are also among its descendants.
   */
  private podTree(all: ProcInfo[]): number[] {
    const monitors = all.filter((p) => p.comm === 'crisp-monitor' && (p.argv[1] ?? '').startsWith(`${this.state}/`)).map((p) => p.pid);
    return withDescendants(monitors, all);
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
      dir: this.options.dir,
      cgroupParent: this.cgroupParent,
    });
  }

}
