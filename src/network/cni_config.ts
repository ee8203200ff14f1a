/**
 * CNI network configuration: loading from the conf dir and following changes to it.
 *
 * As libcni-based runtimes do, the conf dir is read in file-name order and the first valid file wins;
 * a single-plugin `.conf`/`.json` file is treated as a list holding that one plugin.
 */
import { EventEmitter } from 'node:events';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import pino, { type Logger } from 'pino';
import { errorMessage } from '../util/errors';

export const DEFAULT_CNI_CONF_DIR = '/etc/cni/net.d';
export const CNI_CONFIG_EXTENSIONS: readonly string[] = ['.conflist', '.conf', '.json'];
/** Spec versions crisp can drive. 1.1.0 networks work only with plugins that declare it (they reject it otherwise). */
export const SUPPORTED_CNI_VERSIONS: readonly string[] = ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'];
/** The Status condition reason kubelet (and containerd) use while no usable network config exists. */
export const NETWORK_NOT_READY_REASON = 'NetworkPluginNotReady';

/** Config files are small; anything larger is not a network config. */
const MAX_CONFIG_BYTES = 1 << 20;
const NAME_PATTERN = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;

export interface CniPluginConfig {
  readonly type: string;
  readonly [key: string]: unknown;
}

export interface CniNetworkConfigList {
  name: string;
  /** The version every plugin of the list is invoked with (chosen from `cniVersions` when present). */
  cniVersion: string;
  disableCheck: boolean;
  plugins: CniPluginConfig[];
}

export interface LoadedCniConfig {
  config: CniNetworkConfigList;
  /** Absolute path of the file the config came from. */
  file: string;
}

export interface CniConfigUnavailable {
  /** Why there is no usable config, suitable for the NetworkReady condition message. */
  error: string;
}

export type CniConfigState = LoadedCniConfig | CniConfigUnavailable;

export class CniConfigError extends Error {
  override readonly name = 'CniConfigError';
}

export function isLoadedCniConfig(state: CniConfigState): state is LoadedCniConfig {
  return 'config' in state;
}

/** Orders CNI spec versions ("x.y.z"); returns <0, 0, >0 like a sort comparator. */
export function compareCniVersions(a: string, b: string): number {
  const pa = a.split('.').map(Number);
  const pb = b.split('.').map(Number);
  for (let i = 0; i < 3; i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** A plugin type names a file in the bin dirs, so it must be a plain file name. */
export function isValidPluginType(type: unknown): type is string {
  return typeof type === 'string' && type !== '' && type !== '.' && type !== '..' && !/[/\\\0]/.test(type);
}

function selectVersion(obj: Record<string, unknown>): string {
  const list = obj.cniVersions;
  if (list !== undefined) {
    if (!Array.isArray(list) || !list.every((v) => typeof v === 'string')) {
      throw new CniConfigError('cniVersions must be a list of strings');
    }
    const usable = (list as string[]).filter((v) => SUPPORTED_CNI_VERSIONS.includes(v)).sort(compareCniVersions);
    const best = usable[usable.length - 1];
    if (best === undefined) {
      throw new CniConfigError(`none of cniVersions ${JSON.stringify(list)} is supported (${SUPPORTED_CNI_VERSIONS.join(', ')})`);
    }
    return best;
  }
  const version = obj.cniVersion;
  if (version === undefined || version === '') throw new CniConfigError('cniVersion is missing');
  if (typeof version !== 'string') throw new CniConfigError('cniVersion must be a string');
  if (!SUPPORTED_CNI_VERSIONS.includes(version)) {
    throw new CniConfigError(`cniVersion ${JSON.stringify(version)} is not supported (${SUPPORTED_CNI_VERSIONS.join(', ')})`);
  }
  return version;
}

function parseDisableCheck(value: unknown): boolean {
  if (value === undefined || value === false || value === 'false') return false;
  if (value === true || value === 'true') return true;
  // The 0.4.0 spec described it as a string; both forms are accepted.
  throw new CniConfigError('disableCheck must be true or false');
}

function validatePlugin(plugin: unknown, where: string): CniPluginConfig {
  if (!isObject(plugin)) throw new CniConfigError(`${where} must be an object`);
  if (plugin.type === undefined || plugin.type === '') throw new CniConfigError(`${where}.type is missing`);
  if (!isValidPluginType(plugin.type)) throw new CniConfigError(`${where}.type ${JSON.stringify(plugin.type)} is not a valid plugin name`);
  if (plugin.capabilities !== undefined && !isObject(plugin.capabilities)) {
    throw new CniConfigError(`${where}.capabilities must be an object`);
  }
  if (plugin.ipam !== undefined) {
    if (!isObject(plugin.ipam)) throw new CniConfigError(`${where}.ipam must be an object`);
    if (plugin.ipam.type !== undefined && !isValidPluginType(plugin.ipam.type)) {
      throw new CniConfigError(`${where}.ipam.type ${JSON.stringify(plugin.ipam.type)} is not a valid plugin name`);
    }
  }
  return plugin as CniPluginConfig;
}

/**
 * Validates a network config list (the `.conflist` shape). Also used to re-validate configs read back
 * from the attachment cache.
 */
export function validateCniConfigList(obj: unknown): CniNetworkConfigList {
  if (!isObject(obj)) throw new CniConfigError('not a JSON object');
  const name = obj.name;
  if (name === undefined || name === '') throw new CniConfigError('name is missing');
  if (typeof name !== 'string' || !NAME_PATTERN.test(name)) {
    throw new CniConfigError(`name ${JSON.stringify(name)} is invalid (letters, digits, "_", "." and "-", starting with a letter or digit)`);
  }
  const cniVersion = selectVersion(obj);
  const disableCheck = parseDisableCheck(obj.disableCheck);
  const plugins = obj.plugins;
  if (!Array.isArray(plugins)) throw new CniConfigError('plugins must be a list');
  if (plugins.length === 0) throw new CniConfigError('plugins is empty');
  return { name, cniVersion, disableCheck, plugins: plugins.map((p, i) => validatePlugin(p, `plugins[${i}]`)) };
}

/**
 * Parses one config file. `.conflist` files are lists; `.conf`/`.json` files hold a single plugin
 * config, which becomes a one-plugin list carrying its name and version (a `.conf`/`.json` that is
 * already a list, i.e. has `plugins` and no `type`, is taken as a list).
 */
export function parseCniConfig(file: string, text: string): CniNetworkConfigList {
  let obj: unknown;
  try {
    obj = JSON.parse(text);
  } catch (err) {
    throw new CniConfigError(`invalid JSON: ${errorMessage(err)}`);
  }
  if (!isObject(obj)) throw new CniConfigError('not a JSON object');
  if (path.extname(file) === '.conflist' || (obj.plugins !== undefined && obj.type === undefined)) {
    return validateCniConfigList(obj);
  }
  if (obj.plugins !== undefined) throw new CniConfigError('a single-plugin config must not have plugins');
  const plugin = validatePlugin(obj, 'config');
  const list = validateCniConfigList({
    name: obj.name,
    cniVersion: obj.cniVersion,
    cniVersions: obj.cniVersions,
    disableCheck: obj.disableCheck,
    plugins: [plugin],
  });
  return list;
}

/** The candidate config files of `confDir`, as absolute paths in the order they are tried. */
export async function listCniConfigFiles(confDir: string): Promise<string[]> {
  const entries = await fsp.readdir(confDir);
  const files = entries.filter((name) => CNI_CONFIG_EXTENSIONS.includes(path.extname(name)));
  // Code-unit order, as Go's sort.Strings orders them, so every runtime picks the same file.
  files.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  return files.map((name) => path.join(path.resolve(confDir), name));
}

async function readConfigFile(file: string): Promise<string> {
  const stat = await fsp.stat(file);
  if (!stat.isFile()) throw new CniConfigError('not a regular file');
  if (stat.size > MAX_CONFIG_BYTES) throw new CniConfigError(`larger than ${MAX_CONFIG_BYTES} bytes`);
  return fsp.readFile(file, 'utf8');
}

/**
 * Loads the effective network config of `confDir`: the first valid file by name. Invalid files are
 * logged and skipped. Never throws; a missing or unusable config is reported as `{ error }`.
 */
export async function loadCniConfig(confDir: string, logger?: Logger): Promise<CniConfigState> {
  let files: string[];
  try {
    files = await listCniConfigFiles(confDir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { error: `no network config found in ${confDir}` };
    return { error: `failed to read network config dir ${confDir}: ${errorMessage(err)}` };
  }
  const skipped: string[] = [];
  for (const file of files) {
    try {
      const config = parseCniConfig(file, await readConfigFile(file));
      return { config, file };
    } catch (err) {
      // A file removed between readdir and read is simply gone, not invalid.
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
      const reason = errorMessage(err);
      logger?.warn({ file, reason }, 'skipping invalid CNI network config');
      skipped.push(`${path.basename(file)}: ${reason}`);
    }
  }
  if (skipped.length === 0) return { error: `no network config found in ${confDir}` };
  return { error: `no valid network config found in ${confDir}: ${skipped.join('; ')}` };
}

export interface CniConfigWatcherOptions {
  confDir?: string;
  logger?: Logger;
  /** Quiet time after the last directory event before reloading; editors write files in several steps. */
  debounceMs?: number;
  /** current() triggers a background re-read when the state is older than this, covering missed events. */
  staleAfterMs?: number;
  /** Create the conf dir on start so it can be watched before any network plugin is installed. */
  createDir?: boolean;
}

function sameState(a: CniConfigState, b: CniConfigState): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

/**
 * Keeps the effective network config of a conf dir up to date. Emits `change` with the new state
 * whenever the effective config (or the reason there is none) changes.
 */
export class CniConfigWatcher extends EventEmitter {
  readonly confDir: string;
  private readonly logger: Logger;
  private readonly debounceMs: number;
  private readonly staleAfterMs: number;
  private readonly createDir: boolean;
  private state: CniConfigState = { error: 'network config not loaded yet' };
  private loadedAt = 0;
  private watcher: fs.FSWatcher | undefined;
  private watchedIno: number | undefined;
  private debounceTimer: NodeJS.Timeout | undefined;
  private rewatchTimer: NodeJS.Timeout | undefined;
  private inflight: Promise<CniConfigState> | undefined;
  private rerun: Promise<CniConfigState> | undefined;
  private closed = false;

  constructor(opts: CniConfigWatcherOptions = {}) {
    super();
    this.confDir = opts.confDir ?? DEFAULT_CNI_CONF_DIR;
    this.logger = opts.logger ?? pino({ level: 'silent' });
    this.debounceMs = opts.debounceMs ?? 200;
    this.staleAfterMs = opts.staleAfterMs ?? 5_000;
    this.createDir = opts.createDir ?? true;
  }

  /** Loads the config once and starts following the directory. */
  async start(): Promise<CniConfigState> {
    if (this.createDir) await fsp.mkdir(this.confDir, { recursive: true, mode: 0o755 });
    await this.ensureWatch();
    return this.refresh();
  }

  /** The last loaded state; schedules a background re-read if it may be stale. */
  current(): CniConfigState {
    if (!this.closed && this.inflight === undefined && Date.now() - this.loadedAt > this.staleAfterMs) {
      void this.refresh();
    }
    return this.state;
  }

  /** Re-reads the directory now. Concurrent callers share reads; a call made during a read gets a fresh one. */
  refresh(): Promise<CniConfigState> {
    if (this.inflight !== undefined) {
      this.rerun ??= this.inflight.then(() => {
        this.rerun = undefined;
        return this.refresh();
      });
      return this.rerun;
    }
    this.inflight = this.reload().finally(() => {
      this.inflight = undefined;
    });
    return this.inflight;
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.debounceTimer);
    clearTimeout(this.rewatchTimer);
    this.stopWatch();
  }

  private async reload(): Promise<CniConfigState> {
    const next = await loadCniConfig(this.confDir, this.logger);
    this.loadedAt = Date.now();
    await this.ensureWatch();
    if (!sameState(this.state, next)) {
      this.state = next;
      if (isLoadedCniConfig(next)) {
        this.logger.info({ file: next.file, network: next.config.name, cniVersion: next.config.cniVersion }, 'CNI network config loaded');
      } else {
        this.logger.warn({ reason: next.error }, 'no usable CNI network config');
      }
      this.emit('change', next);
    }
    return this.state;
  }

  private scheduleReload(): void {
    if (this.closed) return;
    clearTimeout(this.debounceTimer);
    this.debounceTimer = setTimeout(() => {
      this.refresh().catch((err) => this.logger.error({ err }, 'CNI config reload failed'));
    }, this.debounceMs);
    this.debounceTimer.unref();
  }

  /**
   * (Re)creates the directory watch when there is none or the directory was replaced: an inotify
   * watch follows the inode, so a deleted and recreated conf dir would otherwise go unnoticed.
   */
  private async ensureWatch(): Promise<void> {
    if (this.closed) return;
    let ino: number | undefined;
    try {
      ino = (await fsp.stat(this.confDir)).ino;
    } catch {
      ino = undefined;
    }
    if (this.watcher !== undefined && ino === this.watchedIno) return;
    this.stopWatch();
    if (ino === undefined) {
      this.scheduleRewatch();
      return;
    }
    try {
      const watcher = fs.watch(this.confDir, { persistent: false }, () => this.scheduleReload());
      watcher.on('error', (err) => {
        this.logger.warn({ err, dir: this.confDir }, 'watching the CNI config dir failed; retrying');
        if (this.watcher === watcher) this.stopWatch();
        this.scheduleRewatch();
        this.scheduleReload();
      });
      this.watcher = watcher;
      this.watchedIno = ino;
    } catch (err) {
      this.logger.warn({ err, dir: this.confDir }, 'cannot watch the CNI config dir; retrying');
      this.scheduleRewatch();
    }
  }

  private stopWatch(): void {
    this.watcher?.close();
    this.watcher = undefined;
    this.watchedIno = undefined;
  }

  private scheduleRewatch(): void {
    if (this.closed || this.rewatchTimer !== undefined) return;
    this.rewatchTimer = setTimeout(() => {
      this.rewatchTimer = undefined;
      // The directory may have appeared meanwhile: reloading re-establishes the watch.
      this.refresh().catch((err) => this.logger.error({ err }, 'CNI config reload failed'));
    }, 1_000);
    this.rewatchTimer.unref();
  }
}
