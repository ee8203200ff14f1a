/**
 * containerd (Debian's 1.6 with its CRI plugin) started side by side with crisp: its own config
 * file, root, state and socket, the same CNI network and registry hosts, cgroupfs, overlayfs, and a
 * locally built sandbox image.
 */
import type { ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CriClient } from '../../src/client/cri_client';
import { mountStateTmpfs, run } from '../env/host';
import { listProcesses, type ProcInfo, withDescendants } from '../env/proc';
import { tearDownRuntime } from './teardown';
import { type BenchRuntime, exited, OutputTail, type RuntimeVersion, spawnDaemon, waitForReady, waitForSocket } from './runtime';

export const CONTAINERD_BINARY = '/usr/bin/containerd';
const SHIM_NAME = 'containerd-shim-runc-v2';
/**
 * containerd 1.6 puts shim sockets under its compiled-in state directory whatever `state` says;
 * the shims remove them when they exit normally.
 */
const SHIM_SOCKET_DIR = '/run/containerd/s';

/** Plugins the CRI workload does not use: other snapshotters, the /opt installer, tracing. */
const DISABLED_PLUGINS = [
  'io.containerd.snapshotter.v1.aufs',
  'io.containerd.snapshotter.v1.btrfs',
  'io.containerd.snapshotter.v1.devmapper',
  'io.containerd.snapshotter.v1.zfs',
  'io.containerd.internal.v1.opt',
  'io.containerd.internal.v1.tracing',
  'io.containerd.tracing.processor.v1.otlp',
];

/** The kernel truncates comm to 15 characters: the shim is recognised by its argv[0]. */
function isShim(p: ProcInfo): boolean {
  return path.basename(p.argv[0] ?? '') === SHIM_NAME;
}

export interface ContainerdRuntimeOptions {
  dir: string;
  cniConfDir: string;
  cniBinDir: string;
  registryConfigDir: string;
  sandboxImage: string;
  cgroupParent: string;
}

const q = (s: string): string => JSON.stringify(s);

export function containerdAvailable(): boolean {
  return fs.existsSync(CONTAINERD_BINARY);
}

export class ContainerdRuntime implements BenchRuntime {
  readonly name = 'containerd' as const;
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
  private shimSocketsBefore?: Set<string>;

  constructor(private readonly options: ContainerdRuntimeOptions) {
    this.cgroupParent = options.cgroupParent;
    this.socket = path.join(options.dir, 'containerd.sock');
    this.root = path.join(options.dir, 'root');
    this.state = path.join(options.dir, 'state');
    this.logRoot = path.join(options.dir, 'pod-logs');
    this.configFile = path.join(options.dir, 'config.toml');
  }

  private config(): string {
    const cri = 'plugins."io.containerd.grpc.v1.cri"';
    const o = this.options;
    return [
      'version = 2',
      `root = ${q(this.root)}`,
      `state = ${q(this.state)}`,
      'oom_score = 0',
      `disabled_plugins = ${JSON.stringify(DISABLED_PLUGINS)}`,
      '',
      '[grpc]',
      `  address = ${q(this.socket)}`,
      '[ttrpc]',
      `  address = ${q(`${this.socket}.ttrpc`)}`,
      '[debug]',
      '  level = "info"',
      '',
      `[${cri}]`,
      `  sandbox_image = ${q(o.sandboxImage)}`,
      // Without CAP_SYS_RESOURCE a negative oom_score_adj cannot be set: clamp instead of failing.
      '  restrict_oom_score_adj = true',
      '  disable_apparmor = true',
      // Keeps each pod's network namespace under this run's state, not in the host's /run/netns.
      '  netns_mounts_under_state_dir = true',
      '  stream_server_address = "127.0.0.1"',
      '  stream_server_port = "0"',
      `[${cri}.cni]`,
      `  bin_dir = ${q(o.cniBinDir)}`,
      `  conf_dir = ${q(o.cniConfDir)}`,
      '  max_conf_num = 1',
      `[${cri}.containerd]`,
      '  snapshotter = "overlayfs"',
      '  default_runtime_name = "runc"',
      `[${cri}.containerd.runtimes.runc]`,
      '  runtime_type = "io.containerd.runc.v2"',
      `[${cri}.containerd.runtimes.runc.options]`,
      '  SystemdCgroup = false',
      `  Root = ${q(path.join(this.state, 'runc'))}`,
      `[${cri}.registry]`,
      `  config_path = ${q(o.registryConfigDir)}`,
      '',
    ].join('\n');
  }

  async start(): Promise<void> {
    await mountStateTmpfs(this.state);
    fs.mkdirSync(this.logRoot, { recursive: true });
    fs.writeFileSync(this.configFile, this.config());
    this.shimSocketsBefore = new Set(fs.existsSync(SHIM_SOCKET_DIR) ? fs.readdirSync(SHIM_SOCKET_DIR) : []);
    this.child = spawnDaemon([CONTAINERD_BINARY, '--config', this.configFile], this.tail);
    await waitForSocket(this.socket, this.child, 20_000, 'containerd', this.tail);
    const client = this.client();
    await waitForReady(client, this.child, 30_000, 'containerd', this.tail);
  }

  client(): CriClient {
    const client = new CriClient(this.socket);
    this.clients.push(client);
    return client;
  }

  async version(): Promise<RuntimeVersion> {
    const v = await this.clients[0]!.call('version', {});
    const details: Record<string, string> = {};
    for (const [name, cmd] of [
      ['containerd', CONTAINERD_BINARY],
      ['runc', 'runc'],
    ] as const) {
      try {
        details[name] = (await run(cmd, ['--version'])).split('\n')[0]!.trim();
      } catch (err) {
        details[name] = `unknown (${String(err)})`;
      }
    }
    return { runtimeName: v.runtimeName, runtimeVersion: v.runtimeVersion, runtimeApiVersion: v.runtimeApiVersion, details };
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

  /** Each shim of this containerd with what it runs (pause and container processes). */
  private podTree(all: ProcInfo[]): number[] {
    const shims = all
      .filter(isShim)
      .filter((p) => {
        const i = p.argv.indexOf('-address');
        return i >= 0 && p.argv[i + 1] === this.socket;
      })
      .map((p) => p.pid);
    return withDescendants(shims, all);
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
    if (this.shimSocketsBefore) removeStaleShimSockets(this.shimSocketsBefore);
  }

}

/**
 * Removes shim sockets of shims that are gone — all but `keep` — and then the socket directory
 * and /run/containerd if that leaves them empty. Does nothing while any containerd or shim runs:
 * their sockets cannot be told apart from ours.
 */
export function removeStaleShimSockets(keep: ReadonlySet<string> = new Set()): void {
  if (listProcesses().some((p) => p.comm === 'containerd' || isShim(p))) return;
  if (fs.existsSync(SHIM_SOCKET_DIR)) {
    for (const name of fs.readdirSync(SHIM_SOCKET_DIR)) {
      if (!keep.has(name)) fs.rmSync(path.join(SHIM_SOCKET_DIR, name), { force: true });
    }
  }
  for (const dir of [SHIM_SOCKET_DIR, path.dirname(SHIM_SOCKET_DIR)]) {
    try {
      fs.rmdirSync(dir);
    } catch {
      // missing, or not empty: something else lives there
    }
  }
}
