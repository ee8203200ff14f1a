/**
 * CNI client: runs network config lists against pod network namespaces as the CNI spec prescribes
 * (ADD in order with prevResult chaining, DEL in reverse order, CHECK), caches ADD results per
 * attachment for DEL/CHECK, and reports whether the network is usable.
 */
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import pino, { type Logger } from 'pino';
import { CrispError, errorMessage, type ErrorCode } from '../util/errors';
import { isErrno, readJsonIfExists, syncDir, writeJsonAtomic } from '../util/fsutil';
import {
  CniConfigWatcher,
  compareCniVersions,
  isLoadedCniConfig,
  NETWORK_NOT_READY_REASON,
  validateCniConfigList,
  type CniNetworkConfigList,
  type CniConfigState,
  type CniPluginConfig,
  type LoadedCniConfig,
} from './cni_config';
import { parseCniResult, type CniResult } from './cni_result';
import { isNamespacePath } from './netns_util';
import { childProcessLauncher, type PluginLauncher } from './plugin_launcher';

export const DEFAULT_CNI_BIN_DIRS: readonly string[] = ['/opt/cni/bin', '/usr/lib/cni'];
/** Per plugin invocation; a hung plugin is killed after this long. */
export const DEFAULT_PLUGIN_TIMEOUT_MS = 60_000;
export const DEFAULT_POD_IFNAME = 'eth0';

/** Plugins find helpers (iptables, ip, ...) through PATH; a daemon started with an empty PATH still needs them. */
const FALLBACK_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
const MAX_STDOUT_BYTES = 4 << 20;
const MAX_STDERR_BYTES = 64 << 10;
const CACHE_KIND = 'crisp.cni.attachment/v1';
const CONTAINER_ID_PATTERN = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;

export type CniCommand = 'ADD' | 'DEL' | 'CHECK' | 'VERSION' | 'STATUS';

export interface CniPortMapping {
  hostPort: number;
  containerPort: number;
  /** tcp, udp or sctp, any case (the portmap convention is lower case). */
  protocol: string;
  /** Empty or absent binds all host addresses. */
  hostIP?: string;
}

/** Rates in bits per second, bursts in bits, as the bandwidth capability convention defines them. */
export interface CniBandwidth {
  ingressRate?: number;
  ingressBurst?: number;
  egressRate?: number;
  egressBurst?: number;
}

export interface CniDnsConfig {
  servers?: string[];
  searches?: string[];
  options?: string[];
}

/** Capability arguments; each reaches only the plugins whose config declares that capability. */
export interface CniRuntimeConfig {
  portMappings?: CniPortMapping[];
  bandwidth?: CniBandwidth;
  dns?: CniDnsConfig;
  /** Requested pod IPs (the "ips" capability), in CIDR or plain form as the plugin accepts. */
  ips?: string[];
  cgroupPath?: string;
  /** Passed as the `io.kubernetes.cri.pod-annotations` capability, as containerd does. */
  podAnnotations?: Record<string, string>;
}

export interface CniAttachParams {
  /** The sandbox id; CNI_CONTAINERID. */
  containerId: string;
  netnsPath: string;
  /** Interface inside the pod; defaults to eth0. */
  ifName?: string;
  podName: string;
  podNamespace: string;
  podUid: string;
  runtimeConfig?: CniRuntimeConfig;
  /** Aborts the operation (e.g. the RPC deadline passed); running plugins are killed. */
  signal?: AbortSignal;
}

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

/** A failed plugin invocation; `cniCode` is the CNI error code when the plugin reported one. */
export class CniPluginError extends CrispError {
  override readonly name = 'CniPluginError';
  constructor(
    code: ErrorCode,
    message: string,
    readonly plugin: string,
    readonly command: CniCommand,
    readonly cniCode?: number,
    readonly stderr = '',
  ) {
    super(code, message);
  }
}

interface AttachmentRecord {
  kind: typeof CACHE_KIND;
  network: string;
  containerId: string;
  ifName: string;
  netnsPath: string;
  configFile: string;
  /** The network config the attachment was made with; DEL and CHECK use it even if the conf dir changed. */
  config: CniNetworkConfigList;
  cniArgs: [string, string][];
  capabilityArgs: Record<string, unknown>;
  result: Record<string, unknown>;
  createdAt: string;
}

interface Invocation {
  plugin: string;
  command: CniCommand;
  /** The CNI_* variables of this call. */
  cniEnv: Record<string, string>;
  stdin: string;
  binDirs: readonly string[];
  timeoutMs: number;
  signal?: AbortSignal;
  logger: Logger;
  launcher: PluginLauncher;
}

async function pathExists(file: string): Promise<boolean> {
  try {
    await fsp.lstat(file);
    return true;
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return false;
    throw err;
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** The first executable regular file named `plugin` in `binDirs`. */
export async function findPlugin(plugin: string, binDirs: readonly string[]): Promise<string | undefined> {
  for (const dir of binDirs) {
    const candidate = path.join(dir, plugin);
    try {
      const st = await fsp.stat(candidate);
      if (!st.isFile()) continue;
      await fsp.access(candidate, fsp.constants.X_OK);
      return candidate;
    } catch {
      // Not in this directory (or not executable): keep looking.
    }
  }
  return undefined;
}

function pluginEnvironment(cniEnv: Record<string, string>): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [key, value] of Object.entries(process.env)) {
    // Stray CNI_* variables in the daemon's environment must not leak into a call.
    if (value !== undefined && !key.startsWith('CNI_')) env[key] = value;
  }
  if (!env.PATH) env.PATH = FALLBACK_PATH;
  return Object.assign(env, cniEnv);
}

/** Keeps at most `limit` bytes: the head of stdout (a result) or the tail of stderr (the latest log lines). */
class OutputBuffer {
  private chunks: Buffer[] = [];
  private size = 0;
  truncated = false;
  constructor(
    private readonly limit: number,
    private readonly keep: 'head' | 'tail',
  ) {}

  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.size += chunk.length;
    if (this.size <= this.limit) return;
    this.truncated = true;
    const all = Buffer.concat(this.chunks);
    const kept = this.keep === 'head' ? all.subarray(0, this.limit) : all.subarray(all.length - this.limit);
    this.chunks = [kept];
    this.size = kept.length;
  }

  text(): string {
    return Buffer.concat(this.chunks).toString('utf8');
  }
}

function describeStderr(stderr: string): string {
  const trimmed = stderr.trim();
  return trimmed === '' ? '' : `; stderr: ${trimmed}`;
}

/** The error a plugin printed ({code, msg, details}), from stdout or, failing that, stderr. */
function parsePluginError(stdout: string, stderr: string): { code?: number; msg: string; details?: string } | undefined {
  for (const text of [stdout, stderr]) {
    const trimmed = text.trim();
    if (!trimmed.startsWith('{')) continue;
    try {
      const obj: unknown = JSON.parse(trimmed);
      if (isObject(obj) && (typeof obj.msg === 'string' || typeof obj.code === 'number')) {
        return {
          code: typeof obj.code === 'number' ? obj.code : undefined,
          msg: typeof obj.msg === 'string' ? obj.msg : '',
          details: typeof obj.details === 'string' && obj.details !== '' ? obj.details : undefined,
        };
      }
    } catch {
      // Not a JSON error object; reported verbatim below.
    }
  }
  return undefined;
}

/**
 * Runs one plugin binary: CNI variables in the environment, config on stdin, result on stdout.
 * The plugin runs in its own process group so a timeout also kills the IPAM plugin it delegated to.
 */
async function invokePlugin(inv: Invocation): Promise<string> {
  const { plugin, command } = inv;
  const binary = await findPlugin(plugin, inv.binDirs);
  if (binary === undefined) {
    throw new CniPluginError('FailedPrecondition', `plugin ${plugin} not found in ${inv.binDirs.join(', ')}`, plugin, command);
  }
  if (inv.signal?.aborted) {
    throw new CniPluginError('Canceled', `plugin ${plugin} (${command}) not started: operation canceled`, plugin, command);
  }
  const started = Date.now();
  return new Promise<string>((resolve, reject) => {
    const child = inv.launcher(binary, pluginEnvironment(inv.cniEnv));
    const stdout = new OutputBuffer(MAX_STDOUT_BYTES, 'head');
    const stderr = new OutputBuffer(MAX_STDERR_BYTES, 'tail');
    let settled = false;
    let stopReason: 'timeout' | 'canceled' | undefined;

    const killGroup = (): void => {
      if (child.pid === undefined) return;
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {
        try {
          process.kill(child.pid, 'SIGKILL');
        } catch {
          // Gone already.
        }
      }
    };
    const onAbort = (): void => {
      stopReason ??= 'canceled';
      killGroup();
    };
    const timer = setTimeout(() => {
      stopReason ??= 'timeout';
      killGroup();
    }, inv.timeoutMs);
    inv.signal?.addEventListener('abort', onAbort, { once: true });

    const finish = (err: Error | undefined, out?: string): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      inv.signal?.removeEventListener('abort', onAbort);
      if (err !== undefined) reject(err);
      else resolve(out ?? '');
    };

    child.stdout.on('data', (chunk: Buffer) => stdout.push(chunk));
    child.stderr.on('data', (chunk: Buffer) => stderr.push(chunk));
    // A plugin may exit without reading its config (e.g. a usage error); that is reported via its exit.
    child.stdin.on('error', () => undefined);
    const onClose = (code: number | null, sig: NodeJS.Signals | null): void => {
      const out = stdout.text();
      const errText = stderr.text();
      const elapsed = Date.now() - started;
      if (stopReason === 'timeout') {
        finish(
          new CniPluginError(
            'DeadlineExceeded',
            `plugin ${plugin} timed out after ${inv.timeoutMs} ms (${command}) and was killed${describeStderr(errText)}`,
            plugin,
            command,
            undefined,
            errText,
          ),
        );
        return;
      }
      if (stopReason === 'canceled') {
        finish(new CniPluginError('Canceled', `plugin ${plugin} (${command}) canceled and killed`, plugin, command, undefined, errText));
        return;
      }
      if (code === 0) {
        inv.logger.debug({ plugin, command, elapsedMs: elapsed, stderr: errText.trim() || undefined }, 'CNI plugin succeeded');
        if (stdout.truncated) {
          finish(new CniPluginError('Internal', `plugin ${plugin} (${command}) printed more than ${MAX_STDOUT_BYTES} bytes`, plugin, command));
          return;
        }
        finish(undefined, out);
        return;
      }
      const reported = parsePluginError(out, errText);
      let message: string;
      if (reported !== undefined) {
        message = `plugin ${plugin} failed (${command}): ${reported.msg}`;
        if (reported.details !== undefined) message += `: ${reported.details}`;
      } else {
        const how = code !== null ? `exit status ${code}` : `killed by signal ${sig}`;
        const said = out.trim();
        message = `plugin ${plugin} failed (${command}): ${how}${said === '' ? '' : `: ${said}`}`;
      }
      message += describeStderr(errText);
      inv.logger.debug({ plugin, command, elapsedMs: elapsed, code, signal: sig }, 'CNI plugin failed');
      finish(new CniPluginError('Internal', message, plugin, command, reported?.code, errText));
    };
    child.done.then(
      ({ code, signal: sig }) => onClose(code, sig),
      (err: Error) => finish(new CniPluginError('Internal', `plugin ${plugin} (${command}) could not be started: ${err.message}`, plugin, command)),
    );

    child.stdin.end(inv.stdin);
  });
}

function parseJsonObject(text: string, plugin: string, command: CniCommand): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new CniPluginError('Internal', `plugin ${plugin} returned an invalid result (${command}): ${errorMessage(err)}`, plugin, command);
  }
  if (!isObject(value)) {
    throw new CniPluginError('Internal', `plugin ${plugin} returned an invalid result (${command}): not a JSON object`, plugin, command);
  }
  return value;
}

/**
 * The stdin config of one plugin of a list: the plugin's own config with the list's name and
 * version, `capabilities` replaced by the matching capability arguments in `runtimeConfig`, and
 * `prevResult` when there is one.
 */
export function pluginExecConfig(
  list: Pick<CniNetworkConfigList, 'name' | 'cniVersion'>,
  plugin: CniPluginConfig,
  capabilityArgs: Record<string, unknown>,
  prevResult?: Record<string, unknown>,
): Record<string, unknown> {
  const { capabilities, ...rest } = structuredClone(plugin) as Record<string, unknown>;
  const conf: Record<string, unknown> = { ...rest, name: list.name, cniVersion: list.cniVersion };
  delete conf.prevResult;
  const runtimeConfig: Record<string, unknown> = {};
  if (isObject(capabilities)) {
    for (const [capability, enabled] of Object.entries(capabilities)) {
      if (enabled === true && capabilityArgs[capability] !== undefined) runtimeConfig[capability] = capabilityArgs[capability];
    }
  }
  if (Object.keys(runtimeConfig).length > 0) conf.runtimeConfig = runtimeConfig;
  if (prevResult !== undefined) conf.prevResult = prevResult;
  return conf;
}

/** Maps the runtime's view of a pod's network options to CNI capability arguments. */
export function capabilityArgsOf(rc: CniRuntimeConfig | undefined): Record<string, unknown> {
  const args: Record<string, unknown> = {};
  if (rc === undefined) return args;
  // kubelet lists container ports without a host port too; those are not port mappings.
  const mappings = (rc.portMappings ?? [])
    .filter((pm) => pm.hostPort > 0)
    .map((pm) => {
      const entry: Record<string, unknown> = {
        hostPort: pm.hostPort,
        containerPort: pm.containerPort,
        protocol: (pm.protocol || 'tcp').toLowerCase(),
      };
      if (pm.hostIP) entry.hostIP = pm.hostIP;
      return entry;
    });
  if (mappings.length > 0) args.portMappings = mappings;
  if (rc.bandwidth !== undefined && Object.values(rc.bandwidth).some((v) => v !== undefined && v > 0)) {
    args.bandwidth = rc.bandwidth;
  }
  if (rc.dns !== undefined) args.dns = rc.dns;
  if (rc.ips !== undefined && rc.ips.length > 0) args.ips = rc.ips;
  if (rc.cgroupPath) args.cgroupPath = rc.cgroupPath;
  if (rc.podAnnotations !== undefined) args['io.kubernetes.cri.pod-annotations'] = rc.podAnnotations;
  return args;
}

function cniArgsOf(params: CniAttachParams): [string, string][] {
  const pairs: [string, string][] = [
    ['IgnoreUnknown', '1'],
    ['K8S_POD_NAMESPACE', params.podNamespace],
    ['K8S_POD_NAME', params.podName],
    ['K8S_POD_INFRA_CONTAINER_ID', params.containerId],
    ['K8S_POD_UID', params.podUid],
  ];
  for (const [key, value] of pairs) {
    if (/[;=]/.test(value)) throw new CrispError('InvalidArgument', `${key} ${JSON.stringify(value)} cannot be passed in CNI_ARGS`);
  }
  return pairs;
}

function formatCniArgs(pairs: [string, string][]): string {
  return pairs.map(([k, v]) => `${k}=${v}`).join(';');
}

function validateAttachParams(params: CniAttachParams): string {
  if (!CONTAINER_ID_PATTERN.test(params.containerId)) {
    throw new CrispError('InvalidArgument', `invalid CNI container id ${JSON.stringify(params.containerId)}`);
  }
  const ifName = params.ifName ?? DEFAULT_POD_IFNAME;
  if (ifName.length > 15 || ifName === '.' || ifName === '..' || !/^[^/:\s]+$/.test(ifName)) {
    throw new CrispError('InvalidArgument', `invalid interface name ${JSON.stringify(ifName)}`);
  }
  return ifName;
}

export interface LoopbackOptions {
  binDirs?: readonly string[];
  timeoutMs?: number;
  /** The sandbox id, for CNI_CONTAINERID; the loopback plugin keeps no state under it. */
  containerId?: string;
  signal?: AbortSignal;
  logger?: Logger;
  launcher?: PluginLauncher;
}

/**
 * Brings up `lo` inside the network namespace at `netnsPath`. Uses the standard `loopback` plugin;
 * the only contract callers rely on is "lo is up with 127.0.0.1/::1 when this resolves".
 */
export async function bringUpLoopback(netnsPath: string, opts: LoopbackOptions = {}): Promise<void> {
  const config = { cniVersion: '0.3.1', name: 'cni-loopback', type: 'loopback' };
  await invokePlugin({
    plugin: 'loopback',
    command: 'ADD',
    cniEnv: {
      CNI_COMMAND: 'ADD',
      CNI_CONTAINERID: opts.containerId ?? 'loopback',
      CNI_NETNS: netnsPath,
      CNI_IFNAME: 'lo',
      CNI_ARGS: '',
      CNI_PATH: (opts.binDirs ?? DEFAULT_CNI_BIN_DIRS).join(':'),
    },
    stdin: JSON.stringify(config),
    binDirs: opts.binDirs ?? DEFAULT_CNI_BIN_DIRS,
    timeoutMs: opts.timeoutMs ?? DEFAULT_PLUGIN_TIMEOUT_MS,
    signal: opts.signal,
    logger: opts.logger ?? pino({ level: 'silent' }),
    launcher: opts.launcher ?? childProcessLauncher,
  });
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
  }

  async start(): Promise<void> {
    await fsp.mkdir(this.cacheDir, { recursive: true, mode: 0o700 });
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
      const recordFile = this.recordPath(params.containerId, config.name, ifName);
      if (await pathExists(recordFile)) {
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
        const record: AttachmentRecord = {
          kind: CACHE_KIND,
          network: config.name,
          containerId: params.containerId,
          ifName,
          netnsPath: params.netnsPath,
          configFile: file,
          config,
          cniArgs,
          capabilityArgs: call.capabilityArgs,
          result: raw,
          createdAt: new Date().toISOString(),
        };
        await this.writeRecord(recordFile, record);
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
      const records = await this.readRecords(params.containerId, ifName);
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
        await this.removeRecord(file);
      }
    });
  }

  /** Asks every plugin to verify the attachment made by ADD. */
  async check(params: CniAttachParams): Promise<void> {
    const ifName = validateAttachParams(params);
    return this.serialize(params.containerId, async () => {
      const records = await this.readRecords(params.containerId, ifName);
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
    const records = await this.readRecords(containerId, ifName);
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
      prev = parseJsonObject(out, plugin.type, 'ADD');
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
    const info = parseJsonObject(out, plugin, 'VERSION');
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

  private sandboxCacheDir(containerId: string): string {
    return path.join(this.cacheDir, containerId);
  }

  private recordPath(containerId: string, network: string, ifName: string): string {
    return path.join(this.sandboxCacheDir(containerId), `${network}-${ifName}.json`);
  }

  private async writeRecord(file: string, record: AttachmentRecord): Promise<void> {
    const dir = path.dirname(file);
    let created = false;
    try {
      await fsp.mkdir(dir, { mode: 0o700 });
      created = true;
    } catch (err) {
      if (!isErrno(err, 'EEXIST')) throw err;
    }
    if (created) await syncDir(this.cacheDir);
    await writeJsonAtomic(file, record);
  }

  private async removeRecord(file: string): Promise<void> {
    await fsp.rm(file, { force: true });
    const dir = path.dirname(file);
    await syncDir(dir).catch(() => undefined);
    try {
      await fsp.rmdir(dir);
      await syncDir(this.cacheDir);
    } catch (err) {
      if (!isErrno(err, 'ENOTEMPTY') && !isErrno(err, 'ENOENT')) throw err;
    }
  }

  /** The cached attachments of a sandbox on `ifName`, in file-name order. Unreadable records are skipped. */
  private async readRecords(containerId: string, ifName: string): Promise<{ file: string; record: AttachmentRecord }[]> {
    const dir = this.sandboxCacheDir(containerId);
    let names: string[];
    try {
      names = (await fsp.readdir(dir)).filter((n) => n.endsWith('.json') && !n.startsWith('.')).sort();
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return [];
      throw err;
    }
    const records: { file: string; record: AttachmentRecord }[] = [];
    for (const name of names) {
      const file = path.join(dir, name);
      try {
        const raw = await readJsonIfExists<AttachmentRecord>(file);
        if (raw === undefined || raw.kind !== CACHE_KIND || raw.ifName !== ifName || !isObject(raw.result)) continue;
        records.push({ file, record: { ...raw, config: validateCniConfigList(raw.config) } });
      } catch (err) {
        this.logger.warn({ err, file }, 'ignoring unreadable CNI attachment cache entry');
      }
    }
    return records;
  }
}
