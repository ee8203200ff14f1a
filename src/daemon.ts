import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Config } from './config/config';
import { DaemonLock } from './daemon_lock';
import { ContainerEvents } from './events/container_events';
import type { Logger } from './log';
import { ImageManager } from './image/image_manager';
import { RegistryClient } from './image/registry_client';
import { RegistryHosts } from './image/registry_hosts';
import type { CriMetrics } from './metrics/cri_metrics';
import { MetricsServer } from './metrics/metrics_server';
import { loadNative } from './native';
import { CniManager, cniLoadStatus, cniStatusInfo } from './network/cni';
import { nativeLauncher } from './network/plugin_launcher';
import { ContainerExits } from './container/container_exits';
import { recoverContainers } from './container/container_recover';
import { ContainerStore } from './container/container_store';
import { PodRuntime } from './sandbox/pod_runtime';
import { CrispStreamingBackend } from './streaming/crisp_backend';
import { StreamingServer } from './streaming/server';
import { recoverSandboxes } from './sandbox/sandbox_recover';
import { SandboxStore } from './sandbox/sandbox_store';
import { GrpcServer } from './server/grpc_server';
import { podEventSnapshot } from './server/container_events';
import { buildRpcTable } from './server/rpc_table';
import { servedApiVersions } from './server/api_versions';
import { containerStatsTarget, runningContainers } from './server/container_stats';
import { podStatsTarget, readySandboxes } from './server/sandbox_stats';
import { CriService } from './server/service';
import { procNetDev } from './stats/pod_stats';
import { StatsCollector } from './stats/stats_collector';
import { packageVersion } from './version';
import { ImageFileCache, readFileInLayers } from './container/image_fs';
import { useAtomicFileWriter, useMemoryBackedRoot, useTreeRemover } from './util/fsutil';

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
    const lock = await DaemonLock.acquire(config.root, config.state, (file) => loadNative().lockFile(file));
    let daemon: Daemon | undefined;
    try {
      const service = new CriService(config, log, packageVersion());
      // Without an endpoint nothing reads metrics: prom-client is then not even loaded.
      const criMetrics = config.metrics.address ? new (loadCriMetrics())({ processMetrics: true }) : undefined;
      if (criMetrics) service.metrics = criMetrics;
      const server = new GrpcServer({
        socket: config.socket,
        table: servedApiVersions(buildRpcTable(service), config.grpc.apiVersions),
        log,
        isReady: () => daemon?.ready === true,
        onFinished: (method, code, seconds) => service.metrics.observeRpc(method, code, seconds),
      });
      daemon = new Daemon(config, log, service, lock, server);
      await daemon.initSubsystems();
      await daemon.initObservability();
      await server.listen();
      if (config.grpc.apiVersions.length < 2) log.info({ apiVersions: config.grpc.apiVersions }, 'CRI API versions limited by [grpc] api_versions');
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
    service.native = native;
    fs.mkdirSync(service.emptyLowerDir, { recursive: true, mode: 0o555 });
    service.imageFiles = new ImageFileCache((dirs, p) => readFileInLayers((d, f) => native.locateImageFile(d, f), dirs, p));
    useAtomicFileWriter((file, data, mode, durable) => native.writeFileAtomic(file, data, mode, durable));
    useTreeRemover((target) => native.removeTree(target));
    for (const dir of [config.state, config.root]) {
      if (useMemoryBackedRoot(dir)) log.info({ dir }, 'state files under this directory are in memory: written without the threadpool');
    }

    const registry = new RegistryClient({
      hosts: new RegistryHosts({ configDir: config.registry.configPath, credentials: config.registry.auths }),
      stallTimeoutMs: config.registry.stallTimeoutMs,
      maxConcurrentDownloads: config.registry.maxConcurrentDownloads,
      userAgent: `crisp/${service.version}`,
      logger: log.child({ subsystem: 'registry' }),
      onBytes: (bytes, info) => service.metrics.observePullBytes(bytes, info),
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
      recover: () => images.load(),
      close: async () => registry.close(),
    });

    const cni = new CniManager({
      cacheDir: path.join(config.root, 'cni-cache'),
      confDir: config.cni.confDir,
      binDirs: config.cni.binDirs,
      pluginTimeoutMs: config.cni.pluginTimeoutMs,
      logger: log.child({ subsystem: 'cni' }),
      launcher: nativeLauncher(native),
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
    service.addStatusInfo('cniconfig', () => cniStatusInfo(cni.watcher.current(), config.cni.confDir, config.cni.binDirs));
    service.addStatusInfo('lastCNILoadStatus', () => cniLoadStatus(cni.watcher.current()));

    service.sandboxes = new SandboxStore(path.join(config.state, 'sandboxes'));
    service.pods = new PodRuntime(native, log.child({ subsystem: 'pods' }));
    this.subsystems.push({ name: 'sandboxes', recover: () => recoverSandboxes(service), close: () => service.pods.closeAll() });

    service.containers = new ContainerStore(path.join(config.state, 'containers'), path.join(config.root, 'containers'));
    service.exits = new ContainerExits(service);
    service.pods.onMonitorEvent = (_sandboxId, event) => {
      if (event.event === 'container_exit' && !event.execId) service.exits.onExit(event.containerId);
    };
    images.setSnapshotUsers(() => service.containers.chainIdsInUse());
    this.subsystems.push({ name: 'containers', recover: () => recoverContainers(service) });
    const streaming = new StreamingServer({
      address: config.streaming.address,
      port: config.streaming.port,
      tokenTtlMs: config.streaming.tokenTtlMs,
      backend: new CrispStreamingBackend(service),
      log: log.child({ subsystem: 'streaming' }),
    });
    await streaming.start();
    service.streaming = streaming;
    this.subsystems.push({ name: 'streaming', close: () => streaming.close() });

    // Only once containers are known: snapshots a container still uses must survive collection.
    this.subsystems.push({ name: 'image-gc', recover: () => images.collectGarbage() });
  }

  /** Events, pod stats and the Prometheus endpoint: they read the stores the subsystems above fill. */
  private async initObservability(): Promise<void> {
    const { config, log, service } = this;
    service.events = new ContainerEvents({ snapshot: podEventSnapshot(service), log: log.child({ subsystem: 'events' }) });

    const stats = new StatsCollector({
      readCgroups: (paths) => service.native.cgroupStatsBatch(paths),
      measureLayer: (dir) => service.native.diskUsage(dir),
      readNetDev: procNetDev,
      log: log.child({ subsystem: 'stats' }),
    });
    service.stats = stats;
    stats.startBackground(() => ({
      pods: readySandboxes(service).map((s) => podStatsTarget(service, s)),
      containers: runningContainers(service).map(containerStatsTarget),
    }));
    this.subsystems.push({ name: 'stats', close: () => stats.close() });

    service.metrics.countRunning('pods', () => readySandboxes(service).length);
    service.metrics.countRunning('containers', () => service.containers.list().filter((c) => c.state === 'running').length);
    if (config.metrics.address) {
      // The CriMetrics set in start() whenever an address is configured.
      const metricsServer = new MetricsServer(service.metrics as CriMetrics, log.child({ subsystem: 'metrics' }));
      await metricsServer.listen(config.metrics.address);
      this.subsystems.push({ name: 'metrics', close: () => metricsServer.close() });
    }
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
      // Event streams never end by themselves; end them so the server's graceful close can finish.
      this.service.events?.close();
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

/** prom-client, loaded only when a metrics endpoint is configured. */
function loadCriMetrics(): typeof CriMetrics {
  return (require('./metrics/cri_metrics') as typeof import('./metrics/cri_metrics')).CriMetrics;
}
