/**
 * The raw exports of `native/crisp.node`, built from `crates/napi`. Written by hand: keep it in
 * step with the `register` functions in `crates/napi/src/*.rs`.
 *
 * Errors: synchronous argument errors are thrown as `TypeError` with Node's codes
 * (`ERR_INVALID_ARG_TYPE`, `ERR_INVALID_ARG_VALUE`). Everything else is an `Error` — thrown, or
 * the rejection of a returned promise — whose string `code` is one of:
 *   - `EPATHESCAPE`   an archive path tried to leave the destination directory
 *   - `EFORMAT`       the data is not a valid (compressed) tar stream
 *   - `EUNSUPPORTED`  a tar feature the unpacker refuses (sparse files, unknown entry types)
 *   - an errno name (`ENOENT`, `ENOSPC`, `EPERM`, ...) for a failed system call
 *   - `EIO`           an I/O failure without an errno
 *   - `EPANIC`        a bug in the addon (a caught Rust panic)
 *   - `ENAPI`         a failed Node-API call
 */

export type RawMediaType = 'gzip' | 'zstd' | 'none' | 'auto';

export interface RawUnpackOptions {
  /** Flush the destination's filesystem before resolving (default true). */
  sync?: boolean;
}

export interface RawUnpackResult {
  /** Archive members, whiteouts included. */
  entries: number;
  /** Length of the uncompressed tar stream. */
  tarBytes: number;
  /** Regular-file bytes written. */
  bytesWritten: number;
  /** Extended attributes that were not applied (unsupported or reserved names). */
  xattrsSkipped: number;
  /** `sha256:<hex>` of the uncompressed stream: the layer's diffID. */
  diffId: string;
  /** The compression the stream's magic bytes showed; it decides the decoder, not `mediaType`. */
  compression: 'gzip' | 'zstd' | 'none';
}

export interface NativeAddon {
  /** Version of the Rust core the addon was built from. */
  coreVersion(): string;
  /**
   * Unpacks the layer blob at `path` into the empty directory `dest` (overlayfs layer format),
   * on libuv's threadpool. On rejection `dest` holds a partial tree the caller must delete.
   */
  unpackLayer(path: string, mediaType: RawMediaType, dest: string, options?: RawUnpackOptions): Promise<RawUnpackResult>;
  /**
   * Where the merged view of `lowerDirs` (a JSON array, topmost layer first) has a regular file
   * at the absolute `path`: whiteouts, opaque directories and links respected. Off the event loop.
   */
  locateImageFile(lowerDirs: string, path: string): Promise<{ path: string; size: number } | undefined>;
  /**
   * What the merged view of `lowerDirs` (JSON array, topmost first) has at the absolute `path`,
   * as JSON: {kind:"file",path} | {kind:"dir",layers:[...]} | {kind:"other"} | {kind:"missing"}.
   */
  imageEntry(lowerDirs: string, path: string): Promise<string>;
  /** `{"version":1|2,"controllers":[...]}` of this host's cgroup setup. */
  cgroupDriverInfo(): string;
  /** The cgroupfs path of `name` under `parent` (a path or a systemd slice name). */
  cgroupResolvePath(parent: string, name: string): string;
  /** Creates the cgroup and applies `resources` (JSON); resolves with `{"path","version","paths"}` JSON. */
  cgroupCreate(parent: string, name: string, resources: string): Promise<string>;
  /** What `cgroupCreate` resolves with, computed without creating anything. */
  cgroupLayout(parent: string, name: string): string;
  cgroupUpdate(path: string, resources: string): Promise<void>;
  /** Removes the cgroup and its descendants (killing their processes with `kill`). Idempotent. */
  cgroupRemove(path: string, options?: { kill?: boolean }): Promise<void>;
  /** Raw stats JSON; counters are decimal strings. */
  cgroupStats(path: string): Promise<string>;
  /**
   * `paths` is a JSON array of cgroup paths; resolves with a JSON array of the same length whose
   * elements are `cgroupStats` documents or `{"error":{"code","message"}}`. One threadpool task.
   */
  cgroupStatsBatch(paths: string): Promise<string>;
  cgroupPids(path: string): Promise<string>;
  /** Unmounts and deletes every pinned namespace file in `dir`, then `dir`. Idempotent. */
  nsUnpinDir(dir: string): Promise<void>;
  /**
   * Connects to `127.0.0.1:<port>`, falling back to `[::1]:<port>`, inside the network namespace
   * pinned at `nsPath` (`''`: the daemon's own namespace), within `timeoutMs`. Resolves with the
   * connected socket's descriptor (close-on-exec), which the caller owns: wrap it in
   * `new net.Socket({ fd })` or close it. Codes: `ECONNREFUSED`, `ETIMEDOUT`, `ENOENT` (no such
   * namespace file), `EINVAL` (not a network namespace), other errno names.
   */
  netnsConnect(nsPath: string, port: number, timeoutMs: number): Promise<number>;
  /** posix_spawn in a new session: stdin /dev/null, stdout+stderr appended to logPath, fd 3 a pipe whose read end is returned. */
  spawnDetached(program: string, arg: string, logPath: string): { pid: number; readyFd: number };
  /**
   * posix_spawn of `program` with `args` and `env` (JSON string arrays, env as `KEY=value`) in a
   * new session, stdin/stdout/stderr on pipes whose daemon ends (close-on-exec) are returned.
   * Throws with the errno code when the program cannot be exec'd. Collect it with `waitChild`.
   */
  spawnPiped(program: string, args: string, env: string): { pid: number; stdin: number; stdout: number; stderr: number };
  /** waitpid(WNOHANG) of a `spawnPiped` child: undefined while it runs, else how it ended. */
  waitChild(pid: number): undefined | { code: number } | { signal: number };
  /** waitpid(WNOHANG): true once the child has exited and was collected (or is not ours). */
  reapChild(pid: number): boolean;
  /** tmpfs with nosuid,nodev,noexec and the given data options. */
  mountTmpfs(target: string, options: string): void;
  /** Lazy unmount; not mounted or missing is fine. */
  unmountPath(target: string): void;
  /** JSON `{"bytes","inodes"}` (decimal strings) of a directory tree, or `null` if it is gone; off the event loop. */
  diskUsage(dir: string): Promise<string>;
  /**
   * Replaces `path` with `data` through a temporary file in the same directory and a rename,
   * fsyncing file and directory when `durable`, in one threadpool task. Rejects with an errno
   * code; the temporary file is gone on failure.
   */
  writeFileAtomic(path: string, data: string, mode: number, durable: boolean): Promise<void>;
  /** Removes the tree at `path` in one threadpool task, never following symlinks; missing is fine. */
  removeTree(path: string): Promise<void>;
  /**
   * Takes an exclusive `flock` on the regular file at `path` (created 0600 if missing, made 0600
   * if not, never through a symlink) and returns the close-on-exec descriptor holding it. Code
   * `EAGAIN` when another open file holds the lock.
   */
  lockFile(path: string): number;
  /**
   * Writes `members` (a JSON array of paths relative to `upperDir`, parents first) as a tar at
   * `out` (created 0600, synced), reading each through descriptors, never through a symlink;
   * resolves with JSON `{"entries","skipped"}`. One threadpool task.
   */
  writeRootfsDiff(upperDir: string, members: string, out: string): Promise<string>;
}
