import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Config } from './config/config';
import { DaemonLock } from './daemon_lock';
import type { Logger } from './log';
import { ImageManager } from './image/image_manager';
import { RegistryClient } from './image/registry_client';
import { RegistryHosts } from './image/registry_hosts';
import { loadNative } from './native';
import { CniManager } from './network/cni';
import { PodRuntime } from './sandbox/pod_runtime';
import { recoverSandboxes } from './sandbox/sandbox_recover';
import { SandboxStore } from './sandbox/sandbox_store';
import { GrpcServer } from './server/grpc_server';
import { buildRpcTable } from './server/rpc_table';
import { CriService } from './server/service';
import { packageVersion } from './version';

/** Something with a start-up recovery pass and a clean shutdown, owned by the daemon. */
export interface Subsystem {
  readonly name: string;
  /** Rebuilds in-memory state from disk; runs before calls are admitted. */
  recover?(): Promise<void>;
  close?(): Promise<void>;
}

/**
 * The daemon: takes the root lock, serves the socket right away (answering UNAVAILABLE until
 * recovery finished, so kubelet sees a live but not-yet-ready runtime), recovers, then admits calls.
 */
export class Daemon {
  private ready = false;
  private closing?: Promise<void>;
  private readonly subsystems: Subsystem[] = [];

  private constructor(
    readonly config: Config,
    readonly log: Logger,
    readonly service: CriService,
    private readonly lock: DaemonLock,
    private readonly server: GrpcServer,
  ) {}

  static async start(config: Config, log: Logger): Promise<Daemon> {
    fs.mkdirSync(config.root, { recursive: true, mode: 0o711 });
    fs.mkdirSync(config.state, { recursive: true, mode: 0o711 });
    const lock = await DaemonLock.acquire(config.root, config.state);
    let daemon: Daemon | undefined;
    try {
      const service = new CriService(config, log, packageVersion());
      const server = new GrpcServer({
        socket: config.socket,
        table: buildRpcTable(service),
        log,
        isReady: () => daemon?.ready === true,
      });
      daemon = new Daemon(config, log, service, lock, server);
      await daemon.initSubsystems();
      await server.listen();
      await daemon.recover();
      daemon.ready = true;
      log.info({ root: config.root, state: config.state, version: service.version }, 'crisp is ready');
      return daemon;
    } catch (err) {
      if (daemon) await daemon.stop();
      else lock.release();
      throw err;
    }
  }

  /** Creates the subsystems in dependency order; each one's recovery runs before calls are admitted. */
  private async initSubsystems(): Promise<void> {
    const { config, log, service } = this;
    const native = loadNative();
    log.info({ core: native.coreVersion() }, 'native core loaded');

    const registry = new RegistryClient({
      hosts: new RegistryHosts({ configDir: config.registry.configPath, credentials: config.registry.auths }),
      stallTimeoutMs: config.registry.stallTimeoutMs,
      maxConcurrentDownloads: config.registry.maxConcurrentDownloads,
      userAgent: `crisp/${service.version}`,
      logger: log.child({ subsystem: 'registry' }),
    });
    const images = new ImageManager({
      root: config.root,
      registry,
      unpackLayer: (blob, compression, dest) => native.unpackLayer(blob, compression, dest),
      log: log.child({ subsystem: 'images' }),
    });
    service.images = images;
    this.subsystems.push({
      name: 'images',
      recover: async () => {
        await images.load();
        await images.collectGarbage();
      },
      close: async () => registry.close(),
    });

    const cni = new CniManager({
      cacheDir: path.join(config.root, 'cni-cache'),
      confDir: config.cni.confDir,
      binDirs: config.cni.binDirs,
      pluginTimeoutMs: config.cni.pluginTimeoutMs,
      logger: log.child({ subsystem: 'cni' }),
    });
    await cni.start();
    this.subsystems.push({ name: 'cni', close: async () => cni.close() });
    service.cni = cni;
    service.addConditionSource({
      condition: async () => {
        const st = await cni.status();
        return { type: 'NetworkReady', status: st.ready, reason: st.reason ?? '', message: st.message ?? '' };
      },
    });
    service.addStatusInfo('cniconfig', () => cni.watcher.current());

    service.sandboxes = new SandboxStore(path.join(config.state, 'sandboxes'));
    service.pods = new PodRuntime(native, log.child({ subsystem: 'pods' }));
    this.subsystems.push({ name: 'sandboxes', recover: () => recoverSandboxes(service) });
  }

  private async recover(): Promise<void> {
    for (const sub of this.subsystems) {
      if (!sub.recover) continue;
      const started = Date.now();
      await sub.recover();
      this.log.info({ subsystem: sub.name, ms: Date.now() - started }, 'recovered');
    }
  }

  /** Stops accepting calls, lets in-flight ones finish, removes the socket and releases the lock. */
  stop(): Promise<void> {
    this.closing ??= (async () => {
      this.ready = false;
      await this.server.close();
      for (const sub of [...this.subsystems].reverse()) {
        try {
          await sub.close?.();
        } catch (err) {
          this.log.error({ err, subsystem: sub.name }, 'closing failed');
        }
      }
      this.lock.release();
      this.log.info('crisp stopped');
    })();
    return this.closing;
  }
}
