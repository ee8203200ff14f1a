/**
 * CNI manager: runs network config lists against pod network namespaces as the CNI spec
 * prescribes (ADD in order with prevResult chaining, DEL in reverse order, CHECK), one operation
 * per sandbox at a time, keeps each attachment's record for DEL/CHECK, and reports whether the
 * network is usable. Config loading and watching is `cni_config`, the plugin call
 * `cni_invocation`, what it is passed `cni_args`, the records `cni_attachment_cache`, result
 * parsing `cni_result`.
 */
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import pino, { type Logger } from 'pino';
import { CrispError, errorMessage } from '../util/errors';
import {
  capabilityArgsOf,
  cniArgsOf,
  DEFAULT_POD_IFNAME,
  formatCniArgs,
  pluginExecConfig,
  validateAttachParams,
  type CniAttachParams,
} from './cni_args';
import { CniAttachmentCache } from './cni_attachment_cache';
import {
  CniConfigWatcher,
  compareCniVersions,
  isLoadedCniConfig,
  NETWORK_NOT_READY_REASON,
  type CniNetworkConfigList,
  type CniConfigState,
  type CniPluginConfig,
  type LoadedCniConfig,
} from './cni_config';
import {
  CniPluginError,
  DEFAULT_CNI_BIN_DIRS,
  DEFAULT_PLUGIN_TIMEOUT_MS,
  findPlugin,
  invokePlugin,
  isObject,
  parsePluginOutput,
} from './cni_invocation';
import { bringUpLoopback } from './cni_loopback';
import { parseCniResult, type CniResult } from './cni_result';
import { isNamespacePath } from './netns_util';
import { childProcessLauncher, type PluginLauncher } from './plugin_launcher';

export interface CniNetworkStatus {
  ready: boolean;
  /** Set when not ready: the condition reason and a human-readable message. */
  reason?: string;
  message?: string;
  network?: string;
  file?: string;
  cniVersion?: string;
}

export interface CniManagerOptions {
  /** Where ADD results are kept for DEL/CHECK, one directory per sandbox. */
  cacheDir: string;
  confDir?: string;
  binDirs?: readonly string[];
  pluginTimeoutMs?: number;
  logger?: Logger;
  /** A watcher to share; by default the manager watches `confDir` itself. */
  watcher?: CniConfigWatcher;
  /** How plugin processes are started (default: node's child_process). */
  launcher?: PluginLauncher;
}

/**
 * The network configuration as verbose Status reports it under `cniconfig`, in the shape containerd
 * reports its go-cni configuration (PluginDirs, PluginConfDir, Networks with Config.Name,
 * Config.CNIVersion, Config.Plugins[].Network and IFName), which scripts read from `crictl info`.
 * crisp uses one config file (containerd's max_conf_num 1) and sets up loopback itself. `file` or
 * `error` say which file is in use or why none is.
 */
export function cniStatusInfo(state: CniConfigState, confDir: string, binDirs: readonly string[]): Record<string, unknown> {
  const info: Record<string, unknown> = { PluginDirs: [...binDirs], PluginConfDir: confDir, PluginMaxConfNum: 1, Prefix: 'eth', Networks: [] };
  if (!isLoadedCniConfig(state)) return { ...info, error: state.error };
  const { config, file } = state;
  const network = {
    Config: { Name: config.name, CNIVersion: config.cniVersion, Plugins: config.plugins.map((plugin) => ({ Network: plugin })) },
    IFName: DEFAULT_POD_IFNAME,
  };
  return { ...info, Networks: [network], file };
}

/** containerd's `lastCNILoadStatus`: "OK" once a usable config is loaded, else why not. */
export function cniLoadStatus(state: CniConfigState): string {
  return isLoadedCniConfig(state) ? 'OK' : state.error;
}

interface ListCall {
  config: CniNetworkConfigList;
  containerId: string;
  ifName: string;
  netns: string;
  cniArgs: [string, string][];
  capabilityArgs: Record<string, unknown>;
  signal?: AbortSignal;
}

export class CniManager {
  readonly watcher: CniConfigWatcher;
  readonly cacheDir: string;
  private readonly attachments: CniAttachmentCache;
  readonly binDirs: readonly string[];
  readonly pluginTimeoutMs: number;
  private readonly logger: Logger;
  private readonly ownsWatcher: boolean;
  /** Operations on one sandbox run one at a time, as the spec requires. */
  private readonly locks = new Map<string, Promise<unknown>>();
  private readonly versionCache = new Map<string, { stamp: string; supported: string[] }>();
  private readonly launcher: PluginLauncher;

  constructor(opts: CniManagerOptions) {
    this.launcher = opts.launcher ?? childProcessLauncher;
    this.cacheDir = opts.cacheDir;
    this.binDirs = opts.binDirs ?? DEFAULT_CNI_BIN_DIRS;
    this.pluginTimeoutMs = opts.pluginTimeoutMs ?? DEFAULT_PLUGIN_TIMEOUT_MS;
    this.logger = opts.logger ?? pino({ level: 'silent' });
    this.ownsWatcher = opts.watcher === undefined;
    this.watcher = opts.watcher ?? new CniConfigWatcher({ confDir: opts.confDir, logger: this.logger });
    this.attachments = new CniAttachmentCache(this.cacheDir, this.logger);
  }

  async start(): Promise<void> {
    await this.attachments.init();
    if (this.ownsWatcher) await this.watcher.start();
  }

  close(): void {
    if (this.ownsWatcher) this.watcher.close();
  }

  /** Attaches the sandbox to the network. On failure the partial attachment is deleted again. */
  async add(params: CniAttachParams): Promise<CniResult> {
    const ifName = validateAttachParams(params);
    const cniArgs = cniArgsOf(params);
    return this.serialize(params.containerId, async () => {
      const { config, file } = await this.requireConfig();
      const recordFile = this.attachments.recordPath(params.containerId, config.name, ifName);
      if (await this.attachments.has(recordFile)) {
        throw new CrispError(
          'AlreadyExists',
          `sandbox ${params.containerId} is already attached to network ${config.name} as ${ifName}; delete it first`,
        );
      }
      if (!(await isNamespacePath(params.netnsPath))) {
        throw new CrispError('FailedPrecondition', `network namespace ${params.netnsPath} does not exist`);
      }
      if (params.signal?.aborted) throw new CrispError('Canceled', `network setup of sandbox ${params.containerId} canceled`);
      const call: ListCall = {
        config,
        containerId: params.containerId,
        ifName,
        netns: params.netnsPath,
        cniArgs,
        capabilityArgs: capabilityArgsOf(params.runtimeConfig),
        signal: params.signal,
      };
      try {
        const raw = await this.runAdd(call);
        const result = parseCniResult(raw, config.cniVersion);
        await this.attachments.write(recordFile, {
          network: config.name,
          containerId: params.containerId,
          ifName,
          netnsPath: params.netnsPath,
          configFile: file,
          config,
          cniArgs,
          capabilityArgs: call.capabilityArgs,
          result: raw,
        });
        return result;
      } catch (err) {
        this.logger.warn({ err, sandbox: params.containerId, network: config.name }, 'CNI ADD failed; deleting the partial attachment');
        try {
          await this.runDel({ ...call, signal: undefined }, undefined);
        } catch (delErr) {
          this.logger.error({ err: delErr, sandbox: params.containerId }, 'cleaning up after a failed CNI ADD failed');
        }
        throw err;
      }
    });
  }

  /**
   * Detaches the sandbox. Idempotent: succeeds when the attachment, the cached result or the network
   * namespace is already gone. Uses the config and arguments recorded at ADD when available.
   */
  async del(params: CniAttachParams): Promise<void> {
    const ifName = validateAttachParams(params);
    return this.serialize(params.containerId, async () => {
      // Plugins skip their in-namespace cleanup on an empty CNI_NETNS but still release IPs and host state.
      const netns = (await isNamespacePath(params.netnsPath)) ? params.netnsPath : '';
      const records = await this.attachments.read(params.containerId, ifName);
      if (records.length === 0) {
        let state = this.watcher.current();
        if (!isLoadedCniConfig(state)) state = await this.watcher.refresh();
        if (!isLoadedCniConfig(state)) {
          this.logger.warn({ sandbox: params.containerId, reason: state.error }, 'no cached CNI attachment and no network config; nothing to delete');
          return;
        }
        await this.runDel(
          {
            config: state.config,
            containerId: params.containerId,
            ifName,
            netns,
            cniArgs: cniArgsOf(params),
            capabilityArgs: capabilityArgsOf(params.runtimeConfig),
            signal: params.signal,
          },
          undefined,
        );
        return;
      }
      for (const { file, record } of records) {
        await this.runDel(
          {
            config: record.config,
            containerId: params.containerId,
            ifName,
            netns,
            cniArgs: record.cniArgs,
            capabilityArgs: record.capabilityArgs,
            signal: params.signal,
          },
          record.result,
        );
        await this.attachments.remove(file);
      }
    });
  }

  /** Asks every plugin to verify the attachment made by ADD. */
  async check(params: CniAttachParams): Promise<void> {
    const ifName = validateAttachParams(params);
    return this.serialize(params.containerId, async () => {
      const records = await this.attachments.read(params.containerId, ifName);
      if (records.length === 0) {
        throw new CrispError('FailedPrecondition', `sandbox ${params.containerId} has no network attachment on ${ifName}`);
      }
      for (const { record } of records) {
        const { config } = record;
        if (config.disableCheck) continue;
        if (compareCniVersions(config.cniVersion, '0.4.0') < 0) {
          throw new CrispError('FailedPrecondition', `network ${config.name} has cniVersion ${config.cniVersion}, which has no CHECK command`);
        }
        const call: ListCall = {
          config,
          containerId: params.containerId,
          ifName,
          netns: params.netnsPath,
          cniArgs: record.cniArgs,
          capabilityArgs: record.capabilityArgs,
          signal: params.signal,
        };
        for (const plugin of config.plugins) {
          await this.invoke(call, plugin, 'CHECK', record.result);
        }
      }
    });
  }

  /** The result of the ADD that attached the sandbox, if it is still attached. */
  async cachedResult(containerId: string, ifName = DEFAULT_POD_IFNAME): Promise<CniResult | undefined> {
    const records = await this.attachments.read(containerId, ifName);
    const first = records[0];
    return first === undefined ? undefined : parseCniResult(first.record.result, first.record.config.cniVersion);
  }

  /**
   * Whether pods can be attached: a valid config exists, its plugins are installed and support its
   * version, and (for 1.1.0 networks) every plugin answers STATUS successfully.
   */
  async status(): Promise<CniNetworkStatus> {
    let state = this.watcher.current();
    if (!isLoadedCniConfig(state)) state = await this.watcher.refresh();
    if (!isLoadedCniConfig(state)) return { ready: false, reason: NETWORK_NOT_READY_REASON, message: state.error };
    const { config, file } = state;
    const notReady = (message: string): CniNetworkStatus => ({
      ready: false,
      reason: NETWORK_NOT_READY_REASON,
      message: `network ${config.name} (${file}): ${message}`,
      network: config.name,
      file,
      cniVersion: config.cniVersion,
    });
    for (const plugin of config.plugins) {
      const binary = await findPlugin(plugin.type, this.binDirs);
      if (binary === undefined) return notReady(`plugin ${plugin.type} not found in ${this.binDirs.join(', ')}`);
      const ipamType = isObject(plugin.ipam) ? plugin.ipam.type : undefined;
      if (typeof ipamType === 'string' && (await findPlugin(ipamType, this.binDirs)) === undefined) {
        return notReady(`IPAM plugin ${ipamType} not found in ${this.binDirs.join(', ')}`);
      }
      try {
        const supported = await this.supportedVersions(plugin.type, binary, config.cniVersion);
        if (!supported.includes(config.cniVersion)) {
          return notReady(`plugin ${plugin.type} does not support cniVersion ${config.cniVersion} (supports ${supported.join(', ')})`);
        }
      } catch (err) {
        return notReady(errorMessage(err));
      }
    }
    if (compareCniVersions(config.cniVersion, '1.1.0') >= 0) {
      for (const plugin of config.plugins) {
        try {
          await invokePlugin({
            plugin: plugin.type,
            command: 'STATUS',
            cniEnv: { CNI_COMMAND: 'STATUS', CNI_PATH: this.binDirs.join(':') },
            stdin: JSON.stringify(pluginExecConfig(config, plugin, {})),
            binDirs: this.binDirs,
            timeoutMs: this.pluginTimeoutMs,
            launcher: this.launcher,
            logger: this.logger,
          });
        } catch (err) {
          return notReady(errorMessage(err));
        }
      }
    }
    return { ready: true, network: config.name, file, cniVersion: config.cniVersion };
  }

  /** See {@link bringUpLoopback}; uses this manager's plugin dirs and timeout. */
  bringUpLoopback(netnsPath: string, containerId?: string, signal?: AbortSignal): Promise<void> {
    return bringUpLoopback(netnsPath, {
      binDirs: this.binDirs,
      timeoutMs: this.pluginTimeoutMs,
      containerId,
      signal,
      logger: this.logger,
    });
  }

  private async requireConfig(): Promise<LoadedCniConfig> {
    let state = this.watcher.current();
    // The file may have appeared since the last reload; look again before refusing.
    if (!isLoadedCniConfig(state)) state = await this.watcher.refresh();
    if (!isLoadedCniConfig(state)) {
      throw new CrispError('FailedPrecondition', `${NETWORK_NOT_READY_REASON}: ${state.error}`);
    }
    return state;
  }

  private async runAdd(call: ListCall): Promise<Record<string, unknown>> {
    let prev: Record<string, unknown> | undefined;
    for (const plugin of call.config.plugins) {
      const out = await this.invoke(call, plugin, 'ADD', prev);
      prev = parsePluginOutput(out, plugin.type, 'ADD');
    }
    // A validated config list has at least one plugin.
    return prev as Record<string, unknown>;
  }

  private async runDel(call: ListCall, prevResult: Record<string, unknown> | undefined): Promise<void> {
    // prevResult on DEL arrived with spec 0.4.0; older plugins do not expect it.
    const prev = compareCniVersions(call.config.cniVersion, '0.4.0') >= 0 ? prevResult : undefined;
    for (const plugin of [...call.config.plugins].reverse()) {
      await this.invoke(call, plugin, 'DEL', prev);
    }
  }

  private invoke(
    call: ListCall,
    plugin: CniPluginConfig,
    command: 'ADD' | 'DEL' | 'CHECK',
    prevResult: Record<string, unknown> | undefined,
  ): Promise<string> {
    return invokePlugin({
      plugin: plugin.type,
      command,
      cniEnv: {
        CNI_COMMAND: command,
        CNI_CONTAINERID: call.containerId,
        CNI_NETNS: call.netns,
        CNI_IFNAME: call.ifName,
        CNI_ARGS: formatCniArgs(call.cniArgs),
        CNI_PATH: this.binDirs.join(':'),
      },
      stdin: JSON.stringify(pluginExecConfig(call.config, plugin, call.capabilityArgs, prevResult)),
      binDirs: this.binDirs,
      timeoutMs: this.pluginTimeoutMs,
      launcher: this.launcher,
      signal: call.signal,
      logger: this.logger.child({ sandbox: call.containerId, network: call.config.name }),
    });
  }

  private async supportedVersions(plugin: string, binary: string, configVersion: string): Promise<string[]> {
    const st = await fsp.stat(binary);
    const stamp = `${st.ino}:${st.size}:${st.mtimeMs}`;
    const cached = this.versionCache.get(binary);
    if (cached !== undefined && cached.stamp === stamp) return cached.supported;
    const out = await invokePlugin({
      plugin,
      command: 'VERSION',
      cniEnv: { CNI_COMMAND: 'VERSION' },
      stdin: JSON.stringify({ cniVersion: configVersion }),
      binDirs: [path.dirname(binary)],
      timeoutMs: this.pluginTimeoutMs,
      launcher: this.launcher,
      logger: this.logger,
    });
    const info = parsePluginOutput(out, plugin, 'VERSION');
    const supported = info.supportedVersions;
    if (!Array.isArray(supported) || !supported.every((v) => typeof v === 'string')) {
      throw new CniPluginError('Internal', `plugin ${plugin} returned no supportedVersions (VERSION)`, plugin, 'VERSION');
    }
    this.versionCache.set(binary, { stamp, supported: supported as string[] });
    return supported as string[];
  }

  private async serialize<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const previous = this.locks.get(key) ?? Promise.resolve();
    const run = previous.then(fn);
    const tail = run.catch(() => undefined);
    this.locks.set(key, tail);
    try {
      return await run;
    } finally {
      if (this.locks.get(key) === tail) this.locks.delete(key);
    }
  }
}
