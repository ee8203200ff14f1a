import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import * as crypto from 'node:crypto';

export interface WriteOptions {
  /**
   * fsync file and directory (the default): the write survives a machine crash. Files that are
   * regenerated or whose owner is undone after a crash anyway only need the atomic rename.
   */
  durable?: boolean;
}

/**
 * Replaces `file` with `data` so that a crash at any point leaves either the old or the new content:
 * write a temp file in the same directory, fsync it, rename over the target, fsync the directory.
 * Under a memory-backed root (`useMemoryBackedRoot`) the same steps run in place, without fsync.
 */
export async function writeFileAtomic(file: string, data: string | Uint8Array, mode = 0o600, options: WriteOptions = {}): Promise<void> {
  if (inMemoryBackedRoot(file)) {
    writeFileAtomicInMemory(file, data, mode);
    return;
  }
  const durable = options.durable ?? true;
  if (fileWriter && typeof data === 'string') return fileWriter(file, data, mode, durable);
  const dir = path.dirname(file);
  const tmp = path.join(dir, `.${path.basename(file)}.${crypto.randomBytes(4).toString('hex')}.tmp`);
  const handle = await fsp.open(tmp, 'wx', mode);
  try {
    await handle.writeFile(data);
    if (durable) await handle.sync();
  } catch (err) {
    await handle.close().catch(() => undefined);
    await fsp.rm(tmp, { force: true });
    throw err;
  }
  await handle.close();
  try {
    await fsp.rename(tmp, file);
  } catch (err) {
    await fsp.rm(tmp, { force: true });
    throw err;
  }
  if (durable) await syncDir(dir);
}

/** statfs(2) f_type of tmpfs and ramfs: files there live in memory only. */
const TMPFS_MAGIC = 0x01021994;
const RAMFS_MAGIC = 0x858458f6;

/** Directories (with a trailing slash) whose files are in memory; see `useMemoryBackedRoot`. */
const memoryBackedRoots: string[] = [];

/**
 * Records that files under `dir` live on tmpfs or ramfs when they do, and returns whether.
 * Writes there skip the threadpool: fsync is a no-op on such a filesystem and a few kilobytes are
 * a memory copy, while two trips through the threadpool cost a few hundred microseconds on every
 * state record a CRI call persists. Atomicity (temp file, rename) is kept.
 */
export function useMemoryBackedRoot(dir: string): boolean {
  let type: number;
  try {
    type = Number(fs.statfsSync(dir).type);
  } catch {
    return false;
  }
  if (type !== TMPFS_MAGIC && type !== RAMFS_MAGIC) return false;
  const root = path.resolve(dir) + path.sep;
  if (!memoryBackedRoots.includes(root)) memoryBackedRoots.push(root);
  return true;
}

/** Forgets every root `useMemoryBackedRoot` recorded (for tests). */
export function clearMemoryBackedRoots(): void {
  memoryBackedRoots.length = 0;
}

function inMemoryBackedRoot(file: string): boolean {
  // Usually empty or one or two entries.
  for (const root of memoryBackedRoots) if (file.startsWith(root)) return true;
  return false;
}

function writeFileAtomicInMemory(file: string, data: string | Uint8Array, mode: number): void {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${crypto.randomBytes(4).toString('hex')}.tmp`);
  const fd = fs.openSync(tmp, 'wx', mode);
  try {
    try {
      fs.writeFileSync(fd, data);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, file);
  } catch (err) {
    fs.rmSync(tmp, { force: true });
    throw err;
  }
}

/** Same contract as `writeFileAtomic`; rejects with an errno-coded error. */
export type AtomicFileWriter = (file: string, data: string, mode: number, durable: boolean) => Promise<void>;

let fileWriter: AtomicFileWriter | undefined;

/**
 * Routes text writes through `writer` (the daemon installs the native core's, which does the
 * whole sequence in one worker-thread task instead of one per system call); `undefined` restores
 * the built-in one.
 */
export function useAtomicFileWriter(writer: AtomicFileWriter | undefined): void {
  fileWriter = writer;
}

/** `fs.rm(target, { recursive: true, force: true })`, through the installed remover if any. */
export function removeTree(target: string): Promise<void> {
  return treeRemover ? treeRemover(target) : fsp.rm(target, { recursive: true, force: true });
}

let treeRemover: ((target: string) => Promise<void>) | undefined;

/**
 * Routes `removeTree` through `remover` (the daemon installs the native core's: one worker task
 * instead of one per entry); `undefined` restores the built-in one.
 */
export function useTreeRemover(remover: ((target: string) => Promise<void>) | undefined): void {
  treeRemover = remover;
}

export async function syncDir(dir: string): Promise<void> {
  const handle = await fsp.open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

export async function writeJsonAtomic(file: string, value: unknown, mode = 0o600, options: WriteOptions = {}): Promise<void> {
  await writeFileAtomic(file, JSON.stringify(value, bigintReplacer), mode, options);
}

/** JSON cannot carry bigint; state files store them as decimal strings. */
export function bigintReplacer(_key: string, value: unknown): unknown {
  return typeof value === 'bigint' ? value.toString() : value;
}

export async function readJsonIfExists<T>(file: string): Promise<T | undefined> {
  try {
    return JSON.parse(await fsp.readFile(file, 'utf8')) as T;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

export function mkdirpSync(dir: string, mode: number): void {
  fs.mkdirSync(dir, { recursive: true, mode });
}

/**
 * Creates `dir` (and missing parents) and forces its own mode to `mode` even when it already
 * existed: a directory left by an older version (or tampered with) keeps the mode it was created
 * with otherwise, and these modes are what keeps unprivileged host users out of container files.
 * Refuses a symlink or non-directory there, and makes root its owner (with `gid` as group when
 * given, so a user-namespaced pod's root can be let through with a group bit).
 */
export function ensurePrivateDirSync(dir: string, mode: number, gid = 0): void {
  fs.mkdirSync(dir, { recursive: true, mode });
  const st = fs.lstatSync(dir);
  if (!st.isDirectory()) throw new Error(`${dir} exists and is not a directory`);
  if (process.getuid?.() === 0 && (st.uid !== 0 || st.gid !== gid)) fs.chownSync(dir, 0, gid);
  if ((st.mode & 0o7777) !== mode) fs.chmodSync(dir, mode);
}

export function isErrno(err: unknown, code: string): boolean {
  return (err as NodeJS.ErrnoException | undefined)?.code === code;
}
