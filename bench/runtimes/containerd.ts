/**
 * containerd (Debian's 1.6 with its CRI plugin) started side by side with crisp: its own config
 * file, root, state and socket, the same CNI network and registry hosts, cgroupfs, overlayfs, and a
 * locally built sandbox image.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { run } from '../env/host';
import { listProcesses, type ProcInfo, withDescendants } from '../env/proc';
import { DaemonRuntime } from './daemon_runtime';
import type { RuntimeVersion } from './runtime';

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

export class ContainerdRuntime extends DaemonRuntime {
  readonly name = 'containerd' as const;
  private shimSocketsBefore?: Set<string>;

  constructor(private readonly options: ContainerdRuntimeOptions) {
    super(options, path.join(options.dir, 'containerd.sock'));
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
    fs.mkdirSync(this.logRoot, { recursive: true });
    fs.writeFileSync(this.configFile, this.config());
    this.shimSocketsBefore = new Set(fs.existsSync(SHIM_SOCKET_DIR) ? fs.readdirSync(SHIM_SOCKET_DIR) : []);
    await this.startDaemon([CONTAINERD_BINARY, '--config', this.configFile]);
  }

  async version(): Promise<RuntimeVersion> {
    const v = await this.firstClient().call('version', {});
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

  /** Each shim of this containerd with what it runs (pause and container processes). */
  protected podTree(all: ProcInfo[]): number[] {
    const shims = all
      .filter(isShim)
      .filter((p) => {
        const i = p.argv.indexOf('-address');
        return i >= 0 && p.argv[i + 1] === this.socket;
      })
      .map((p) => p.pid);
    return withDescendants(shims, all);
  }

  protected override afterTeardown(): void {
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
