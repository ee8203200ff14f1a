import * as os from 'node:os';
import * as path from 'node:path';
import type { ImageFileCache } from '../container/image_fs';
import { CdiRegistry } from '../container/cdi';
import type { Config } from '../config/config';
import type { Logger } from '../log';
import type { ContainerExits } from '../container/container_exits';
import type { ContainerStore } from '../container/container_store';
import type { ContainerEvents } from '../events/container_events';
import type { ImageManager } from '../image/image_manager';
import type { StreamingServer } from '../streaming/server';
import { noMetrics, type RuntimeMetrics } from '../metrics/runtime_metrics';
import type { NativeCore } from '../native';
import type { CniManager } from '../network/cni';
import type { PodRuntime } from '../sandbox/pod_runtime';
import type { SandboxStore } from '../sandbox/sandbox_store';
import type { StatsCollector } from '../stats/stats_collector';
import { KeyedLock } from '../util/keyed_lock';

/** A condition reported by the Status RPC. */
export interface RuntimeCondition {
  type: string;
  status: boolean;
  reason: string;
  message: string;
}

/** Something that contributes a condition to Status (network readiness, for example). */
export interface ConditionSource {
  condition(): Promise<RuntimeCondition>;
}

/**
 * Shared context of all RPC implementations (containerd's criService, CRI-O's Server): the
 * configuration and the subsystems. Each RPC lives in its own file as a function of this.
 */
export class CriService {
  readonly startedAt = Date.now();
  /** Pod CIDR pushed by kubelet through UpdateRuntimeConfig. */
  podCidr = '';
  /** Set during daemon start-up, before any call is admitted. */
  cni!: CniManager;
  images!: ImageManager;
  sandboxes!: SandboxStore;
  pods!: PodRuntime;
  native!: NativeCore;
  /** GetContainerEvents fan-out; RPCs that change a pod or container publish here. */
  events!: ContainerEvents;
  metrics: RuntimeMetrics = noMetrics;
  /** Cached, batched pod and container usage for the stats and metrics RPCs. */
  stats!: StatsCollector;
  readonly sandboxLocks = new KeyedLock();
  containers!: ContainerStore;
  /** Small image files (/etc/passwd, /etc/group) read through layers; set once the native core is loaded. */
  imageFiles!: ImageFileCache;
  /** CDI spec files, read when a container asks for a CDI device. */
  get cdi(): CdiRegistry {
    this.cdiRegistry ??= new CdiRegistry(this.config.cdi.specDirs);
    return this.cdiRegistry;
  }
  private cdiRegistry?: CdiRegistry;
  /** Stays empty: the second lower layer of a one-layer image volume's overlay. */
  get emptyLowerDir(): string {
    return path.join(this.config.root, 'empty');
  }
  readonly containerLocks = new KeyedLock();
  exits!: ContainerExits;
  streaming!: StreamingServer;
  private readonly conditionSources: ConditionSource[] = [];

  constructor(
    readonly config: Config,
    readonly log: Logger,
    readonly version: string,
  ) {}

  addConditionSource(source: ConditionSource): void {
    this.conditionSources.push(source);
  }

  conditions(): Promise<RuntimeCondition[]> {
    return Promise.all(this.conditionSources.map((s) => s.condition()));
  }

  /** Extra sections of verbose Status info, by subsystem. */
  private readonly infoSources = new Map<string, () => unknown>();

  addStatusInfo(key: string, source: () => unknown): void {
    this.infoSources.set(key, source);
  }

  statusInfo(): Record<string, unknown> {
    return Object.fromEntries([...this.infoSources].map(([key, source]) => [key, source()]));
  }

  /** What each handler supports, as far as the running kernel allows. */
  handlerFeatures(): { recursiveReadOnlyMounts: boolean; userNamespaces: boolean } {
    return HANDLER_FEATURES;
  }

  runtimeFeatures(): { supplementalGroupsPolicy: boolean; userNamespacesHostNetwork: boolean } {
    // Strict (only the requested groups) and Merge (plus the image's /etc/group) are both
    // honoured; kubelet refuses Strict pods on a runtime that does not say so.
    return { supplementalGroupsPolicy: true, userNamespacesHostNetwork: false };
  }

  /** Handler names accepted in runtime_handler, the default first. */
  runtimeHandlers(): string[] {
    return [this.config.runtime.defaultHandler, ...this.config.runtime.handlers.filter((h) => h !== this.config.runtime.defaultHandler)];
  }
}

/** Whether the running kernel is at least `major.minor`. */
function kernelAtLeast(wantMajor: number, wantMinor: number): boolean {
  const [major = 0, minor = 0] = os.release().split('.').map((n) => parseInt(n, 10));
  return major > wantMajor || (major === wantMajor && minor >= wantMinor);
}

/**
 * Recursive read-only mounts need mount_setattr(2) (Linux 5.12); pod user namespaces need
 * overlayfs over id-mapped layers for the root filesystem (5.19). The kernel does not change
 * under a running daemon, and kubelet asks for Status every few seconds.
 */
const HANDLER_FEATURES = Object.freeze({ recursiveReadOnlyMounts: kernelAtLeast(5, 12), userNamespaces: kernelAtLeast(5, 19) });
