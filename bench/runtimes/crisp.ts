/**
 * crisp as the benchmark runs it: the compiled daemon, started through bin/crisp as installed, on
 * temporary directories, logging at info (as in production; the test daemon logs at debug), with
 * the run's CNI network and registry hosts.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { type ProcInfo, withDescendants } from '../env/proc';
import { DaemonRuntime } from './daemon_runtime';
import type { RuntimeVersion } from './runtime';

const REPO_ROOT = path.resolve(__dirname, '..', '..', '..');
/** The installed entry point, with the Node options the daemon runs with. */
const BIN = path.join(REPO_ROOT, 'bin', 'crisp');

export interface CrispRuntimeOptions {
  dir: string;
  cniConfDir: string;
  cniBinDir: string;
  registryConfigDir: string;
  cgroupParent: string;
}

export class CrispRuntime extends DaemonRuntime {
  readonly name = 'crisp' as const;

  constructor(private readonly options: CrispRuntimeOptions) {
    super(options, path.join(options.dir, 'crisp.sock'));
  }

  async start(): Promise<void> {
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
    await this.startDaemon([BIN, 'daemon', '--config', this.configFile]);
  }

  async version(): Promise<RuntimeVersion> {
    const v = await this.firstClient().call('version', {});
    return {
      runtimeName: v.runtimeName,
      runtimeVersion: v.runtimeVersion,
      runtimeApiVersion: v.runtimeApiVersion,
      details: { node: process.version },
    };
  }

  /**
   * Each pod's monitor with what it runs (the pod's init, containers). Monitors stay the daemon's
   * children (in their own session), so they are also among its descendants.
   */
  protected podTree(all: ProcInfo[]): number[] {
    const monitors = all.filter((p) => p.comm === 'crisp-monitor' && (p.argv[1] ?? '').startsWith(`${this.state}/`)).map((p) => p.pid);
    return withDescendants(monitors, all);
  }
}
