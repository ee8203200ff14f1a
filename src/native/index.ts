import * as path from 'node:path';
import { CrispError, errorMessage, failedPrecondition, internal } from '../util/errors';
import { type CgroupStats, decodeCgroupStats, decodeCgroupStatsBatch } from '../stats/cgroup_stats';
import type { NativeAddon, RawMediaType, RawUnpackResult } from './addon';

export type LayerMediaType = RawMediaType;
export type UnpackLayerResult = RawUnpackResult;

/** What the rest of crisp uses from the native addon; `FakeNativeCore` stands in for it in tests. */
/** What an image's merged layers hold at a path (see `NativeCore.imageEntry`). */
export type ImageEntry = { kind: 'file'; path: string } | { kind: 'dir'; layers: string[] } | { kind: 'other' } | { kind: 'missing' };

export interface NativeCore {
  /** Version of the Rust core the addon was built from. */
  coreVersion(): string;
  /**
   * Unpacks the layer blob at `blobPath` into `dest`, which must be a fresh empty directory the
   * caller renames into place on success and deletes on failure. Runs off the event loop.
   * Rejects with a `CrispError`: InvalidArgument for a hostile or corrupt layer,
   * ResourceExhausted when the disk is full, Internal otherwise.
   */
  unpackLayer(blobPath: string, mediaType: LayerMediaType, dest: string): Promise<UnpackLayerResult>;
  /**
   * Where the container's overlay root would have a regular file at `path` (absolute, inside the
   * image), looked up through the unpacked `lowerDirs`, topmost first: the first layer that has
   * the path wins; whiteouts, opaque directories and non-directories above hide lower layers;
   * links are not followed. Undefined when there is no regular file there.
   */
  locateImageFile(lowerDirs: readonly string[], path: string): Promise<{ path: string; size: number } | undefined>;
  /**
   * What the container's overlay root would have at `path` (absolute; `/` is the whole image):
   * a regular file (where it is), a directory (the layer directories that make it up, topmost
   * first, whiteouts and opaque markers respected), something else, or nothing.
   */
  imageEntry(lowerDirs: readonly string[], path: string): Promise<ImageEntry>;
  /** Starts `program arg` in its own session without forking the daemon (see crates/core/src/spawn.rs). */
  spawnDetached(program: string, arg: string, logPath: string): { pid: number; readyFd: number };
  /**
   * Starts `program` in its own session with its standard streams on pipes, without forking the
   * daemon; the caller owns the returned descriptors and collects the child with `waitChild`.
   */
  spawnPiped(program: string, args: readonly string[], env: readonly string[]): { pid: number; stdin: number; stdout: number; stderr: number };
  /** How a `spawnPiped` child ended, once it has; undefined while it runs. */
  waitChild(pid: number): { code: number } | { signal: number } | undefined;
  /** Collects an exited child; true when it is gone (or not ours). */
  reapChild(pid: number): boolean;
  mountTmpfs(target: string, options: string): void;
  unmountPath(target: string): void;
  /** Allocated bytes and inodes of a directory tree (hard links once, one filesystem); undefined if gone. */
  diskUsage(dir: string): Promise<{ bytes: bigint; inodes: bigint } | undefined>;
  /**
   * `writeFileAtomic` of util/fsutil in one worker-thread task. Rejects with the errno-coded
   * error unchanged, as Node's fs would, so callers can test `code`.
   */
  writeFileAtomic(file: string, data: string, mode: number, durable: boolean): Promise<void>;
  /** `fs.rm(path, {recursive, force})` in one worker-thread task; errno-coded errors. */
  removeTree(path: string): Promise<void>;
  /**
   * An exclusive lock on the 0600 file at `path`, held by the returned descriptor until it is
   * closed or the process dies; throws with code `EAGAIN` while another process holds it.
   */
  lockFile(path: string): number;
  /**
   * The listed entries of a running container's writable layer as a tar at `out`, each resolved
   * beneath `upperDir` without following symlinks and read through its own descriptor.
   */
  writeRootfsDiff(upperDir: string, members: readonly string[], out: string): Promise<{ entries: number; skipped: number }>;
  /** The cgroupfs path of `name` under `parent` (a path or a systemd slice name). */
  cgroupResolvePath(parent: string, name: string): string;
  /** Creates (idempotently) a cgroup under `parent` with `resources` applied. */
  cgroupCreate(parent: string, name: string, resources: CgroupResources): Promise<CreatedCgroup>;
  /** The path, version and per-controller directories `cgroupCreate` would give, without I/O. */
  cgroupLayout(parent: string, name: string): CreatedCgroup;
  /** Removes a cgroup and its descendants, SIGKILLing what still runs there. Idempotent. */
  cgroupRemove(path: string): Promise<void>;
  /** Applies `resources` to an existing cgroup; NotFound-like ENOENT if it does not exist. */
  cgroupUpdate(path: string, resources: CgroupResources): Promise<void>;
  /** Usage counters of a cgroup; sections are absent for a missing cgroup or controller. */
  cgroupStats(path: string): Promise<CgroupStats>;
  /**
   * Usage counters of many cgroups in one threadpool task, in the order of `paths`. A cgroup that
   * could not be read is a `CrispError` in its place; only a failure of the whole call rejects.
   */
  cgroupStatsBatch(paths: readonly string[]): Promise<Array<CgroupStats | Error>>;
  /** Releases the pinned namespace files in `dir` and the directory. Idempotent. */
  unpinNamespaces(dir: string): Promise<void>;
  /**
   * Opens a TCP connection to localhost:`port` (127.0.0.1, then [::1]) inside the network
   * namespace pinned at `nsPath`, or the host's for a host-network pod (`undefined`), as
   * port-forwarding needs. Resolves with the connected socket's descriptor, which the caller
   * owns (`new net.Socket({ fd })`, or close it). Rejects with InvalidArgument for a bad port,
   * Unavailable when nothing accepts on the port, DeadlineExceeded after `timeoutMs` (default
   * `DEFAULT_NETNS_CONNECT_TIMEOUT_MS`), NotFound when the namespace file is gone,
   * FailedPrecondition when it is not a network namespace.
   */
  connectInNetns(nsPath: string | undefined, port: number, timeoutMs?: number): Promise<number>;
}

/** Limits in the units of the cgroup files (crates/core/src/cgroup Resources). */
export interface CgroupResources {
  cpuShares?: number;
  cpuWeight?: number;
  cpuQuota?: number;
  cpuPeriod?: number;
  cpusetCpus?: string;
  cpusetMems?: string;
  memoryLimit?: number;
  memorySwapLimit?: number;
  hugepageLimits?: { pageSize: string; limit: number }[];
  pidsLimit?: number;
  unified?: Record<string, string>;
}

export interface CreatedCgroup {
  /** Path relative to the hierarchy root, e.g. `/kubepods/pod<uid>/<id>`. */
  path: string;
  version: 1 | 2;
  /** Directory per controller, as the monitor joins them. */
  paths: Record<string, string>;
}

/** `<package root>/native/crisp.node`; this file runs from `<package root>/dist/src/native/`. */
export const NATIVE_ADDON_PATH = path.resolve(__dirname, '..', '..', '..', 'native', 'crisp.node');

const REQUIRED_EXPORTS: ReadonlyArray<keyof NativeAddon> = [
  'coreVersion',
  'unpackLayer',
  'locateImageFile',
  'imageEntry',
  'cgroupCreate',
  'cgroupLayout',
  'cgroupUpdate',
  'cgroupRemove',
  'cgroupStats',
  'cgroupStatsBatch',
  'nsUnpinDir',
  'netnsConnect',
  'spawnDetached',
  'spawnPiped',
  'waitChild',
  'reapChild',
  'mountTmpfs',
  'unmountPath',
  'diskUsage',
  'writeFileAtomic',
  'removeTree',
  'lockFile',
  'writeRootfsDiff',
];

/** The error code the addon attached to an error, if any. */
export function nativeErrorCode(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return err instanceof Error && typeof code === 'string' ? code : undefined;
}

/**
 * Converts an error from the addon into a `CrispError` the RPC layer can report; `subject`
 * names what was being worked on ("layer <path>"). The original error stays the `cause`.
 * Argument errors (TypeError) are bugs in the caller and pass through unchanged.
 */
export function fromNativeError(err: unknown, subject: string): Error {
  if (err instanceof TypeError) return err;
  const message = errorMessage(err);
  const code = nativeErrorCode(err);
  switch (code) {
    case 'EPATHESCAPE':
      return new CrispError('InvalidArgument', `${subject} escapes the directory it is unpacked into (${message})`, {
        cause: err,
      });
    case 'EFORMAT':
      return new CrispError('InvalidArgument', `${subject} is not a valid layer archive: ${message}`, { cause: err });
    case 'EINVAL':
      return new CrispError('InvalidArgument', `${subject}: ${message}`, { cause: err });
    case 'EUNSUPPORTED':
      return new CrispError('InvalidArgument', `${subject} uses an unsupported archive feature: ${message}`, { cause: err });
    case 'ENOSPC':
    case 'EDQUOT':
      return new CrispError('ResourceExhausted', `${subject}: ${message}`, { cause: err });
    case undefined:
      return internal(`${subject}: ${message}`, err);
    default:
      return internal(`${subject}: ${message} (${code})`, err);
  }
}

/** How long `connectInNetns` waits for the connection unless told otherwise. */
export const DEFAULT_NETNS_CONNECT_TIMEOUT_MS = 10_000;

/** Rejects a port that cannot be forwarded (CRI ports are int32 on the wire). */
export function checkForwardPort(port: number): void {
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw new CrispError('InvalidArgument', `port ${port} is not a TCP port number (1-65535)`);
  }
}

/**
 * Converts a failed `netnsConnect` into the error port-forwarding reports. `nsPath` is
 * undefined for the host's namespace. The original error stays the `cause`.
 */
export function fromNetnsConnectError(err: unknown, nsPath: string | undefined, port: number, timeoutMs: number): Error {
  if (err instanceof TypeError) return err;
  const where = nsPath ? 'the pod network namespace' : 'the host network namespace';
  const options = { cause: err };
  switch (nativeErrorCode(err)) {
    case 'ECONNREFUSED':
      return new CrispError('Unavailable', `connection refused on port ${port} in ${where}`, options);
    case 'ETIMEDOUT':
      return new CrispError('DeadlineExceeded', `connecting to port ${port} in ${where} timed out after ${timeoutMs}ms`, options);
    case 'ENETUNREACH':
    case 'EHOSTUNREACH':
    case 'EADDRNOTAVAIL':
      return new CrispError('Unavailable', `port ${port} is unreachable in ${where}: ${errorMessage(err)}`, options);
    case 'ENOENT':
      return new CrispError('NotFound', `network namespace ${nsPath} does not exist`, options);
    case 'EINVAL':
      return new CrispError('FailedPrecondition', `${nsPath} is not a network namespace`, options);
    default:
      return fromNativeError(err, `connecting to port ${port} in ${where}`);
  }
}

class AddonCore implements NativeCore {
  constructor(private readonly addon: NativeAddon) {}

  coreVersion(): string {
    return this.addon.coreVersion();
  }

  spawnDetached(program: string, arg: string, logPath: string): { pid: number; readyFd: number } {
    try {
      return this.addon.spawnDetached(program, arg, logPath);
    } catch (err) {
      throw fromNativeError(err, `starting ${program}`);
    }
  }

  reapChild(pid: number): boolean {
    return this.addon.reapChild(pid);
  }

  spawnPiped(program: string, args: readonly string[], env: readonly string[]): { pid: number; stdin: number; stdout: number; stderr: number } {
    // Errno-coded, like child_process's spawn errors, so callers can tell ENOENT from EACCES.
    return this.addon.spawnPiped(program, JSON.stringify(args), JSON.stringify(env));
  }

  waitChild(pid: number): { code: number } | { signal: number } | undefined {
    return this.addon.waitChild(pid);
  }

  writeFileAtomic(file: string, data: string, mode: number, durable: boolean): Promise<void> {
    return this.addon.writeFileAtomic(file, data, mode, durable);
  }

  removeTree(target: string): Promise<void> {
    return this.addon.removeTree(target);
  }

  async writeRootfsDiff(upperDir: string, members: readonly string[], out: string): Promise<{ entries: number; skipped: number }> {
    return JSON.parse(await this.addon.writeRootfsDiff(upperDir, JSON.stringify(members), out)) as { entries: number; skipped: number };
  }

  lockFile(target: string): number {
    // Errno-coded, so the caller can tell a held lock (EAGAIN) from a failure.
    return this.addon.lockFile(target);
  }

  mountTmpfs(target: string, options: string): void {
    try {
      this.addon.mountTmpfs(target, options);
    } catch (err) {
      throw fromNativeError(err, `mounting tmpfs on ${target}`);
    }
  }

  async diskUsage(dir: string): Promise<{ bytes: bigint; inodes: bigint } | undefined> {
    let text: string;
    try {
      text = await this.addon.diskUsage(dir);
    } catch (err) {
      throw fromNativeError(err, `disk usage of ${dir}`);
    }
    const parsed = JSON.parse(text) as { bytes: string; inodes: string } | null;
    return parsed ? { bytes: BigInt(parsed.bytes), inodes: BigInt(parsed.inodes) } : undefined;
  }

  unmountPath(target: string): void {
    try {
      this.addon.unmountPath(target);
    } catch (err) {
      throw fromNativeError(err, `unmounting ${target}`);
    }
  }

  cgroupResolvePath(parent: string, name: string): string {
    try {
      return this.addon.cgroupResolvePath(parent, name);
    } catch (err) {
      throw fromNativeError(err, `cgroup parent ${parent}`);
    }
  }

  async cgroupCreate(parent: string, name: string, resources: CgroupResources): Promise<CreatedCgroup> {
    try {
      return JSON.parse(await this.addon.cgroupCreate(parent, name, JSON.stringify(resources))) as CreatedCgroup;
    } catch (err) {
      throw fromNativeError(err, `cgroup ${parent}/${name}`);
    }
  }

  cgroupLayout(parent: string, name: string): CreatedCgroup {
    try {
      return JSON.parse(this.addon.cgroupLayout(parent, name)) as CreatedCgroup;
    } catch (err) {
      throw fromNativeError(err, `cgroup ${parent}/${name}`);
    }
  }

  async cgroupRemove(path: string): Promise<void> {
    try {
      await this.addon.cgroupRemove(path, { kill: true });
    } catch (err) {
      throw fromNativeError(err, `removing cgroup ${path}`);
    }
  }

  async cgroupUpdate(path: string, resources: CgroupResources): Promise<void> {
    try {
      await this.addon.cgroupUpdate(path, JSON.stringify(resources));
    } catch (err) {
      throw fromNativeError(err, `updating cgroup ${path}`);
    }
  }

  async cgroupStats(path: string): Promise<CgroupStats> {
    let text: string;
    try {
      text = await this.addon.cgroupStats(path);
    } catch (err) {
      throw fromNativeError(err, `stats of cgroup ${path}`);
    }
    return decodeCgroupStats(text);
  }

  async cgroupStatsBatch(paths: readonly string[]): Promise<Array<CgroupStats | Error>> {
    if (paths.length === 0) return [];
    let text: string;
    try {
      text = await this.addon.cgroupStatsBatch(JSON.stringify(paths));
    } catch (err) {
      throw fromNativeError(err, `stats of ${paths.length} cgroups`);
    }
    return decodeCgroupStatsBatch(text, paths.length).map((r, i) => (r instanceof Error ? fromNativeError(r, `stats of cgroup ${paths[i]}`) : r));
  }

  async unpinNamespaces(dir: string): Promise<void> {
    try {
      await this.addon.nsUnpinDir(dir);
    } catch (err) {
      throw fromNativeError(err, `unpinning namespaces in ${dir}`);
    }
  }

  async connectInNetns(nsPath: string | undefined, port: number, timeoutMs = DEFAULT_NETNS_CONNECT_TIMEOUT_MS): Promise<number> {
    checkForwardPort(port);
    try {
      return await this.addon.netnsConnect(nsPath ?? '', port, timeoutMs);
    } catch (err) {
      throw fromNetnsConnectError(err, nsPath, port, timeoutMs);
    }
  }

  locateImageFile(lowerDirs: readonly string[], path: string): Promise<{ path: string; size: number } | undefined> {
    return this.addon.locateImageFile(JSON.stringify(lowerDirs), path);
  }

  async imageEntry(lowerDirs: readonly string[], path: string): Promise<ImageEntry> {
    return JSON.parse(await this.addon.imageEntry(JSON.stringify(lowerDirs), path)) as ImageEntry;
  }

  async unpackLayer(blobPath: string, mediaType: LayerMediaType, dest: string): Promise<UnpackLayerResult> {
    try {
      return await this.addon.unpackLayer(blobPath, mediaType, dest);
    } catch (err) {
      throw fromNativeError(err, `layer ${blobPath}`);
    }
  }
}

const cores = new Map<string, NativeCore>();

/**
 * Loads the native addon (once per path). Throws a FailedPrecondition `CrispError` telling the
 * operator to build it if it is missing, stale or built for another Node ABI.
 */
export function loadNative(addonPath: string = NATIVE_ADDON_PATH): NativeCore {
  const cached = cores.get(addonPath);
  if (cached) return cached;
  let addon: NativeAddon;
  try {
    addon = require(addonPath) as NativeAddon;
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    if (code === 'MODULE_NOT_FOUND') {
      throw failedPrecondition(`the native addon ${addonPath} has not been built: run "npm run build"`);
    }
    throw new CrispError(
      'FailedPrecondition',
      `the native addon ${addonPath} cannot be loaded (${errorMessage(err)}): rebuild it with "npm run build"`,
      { cause: err },
    );
  }
  const missing = REQUIRED_EXPORTS.filter((name) => typeof addon[name] !== 'function');
  if (missing.length > 0) {
    throw failedPrecondition(
      `the native addon ${addonPath} is out of date (missing ${missing.join(', ')}): rebuild it with "npm run build"`,
    );
  }
  const core = new AddonCore(addon);
  cores.set(addonPath, core);
  return core;
}
