import * as crypto from 'node:crypto';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import { promisify } from 'node:util';
import type { CgroupStats } from '../stats/cgroup_stats';
import {
  type CgroupResources,
  checkForwardPort,
  type CreatedCgroup,
  DEFAULT_NETNS_CONNECT_TIMEOUT_MS,
  fromNativeError,
  fromNetnsConnectError,
  type ImageEntry,
  type LayerMediaType,
  type NativeCore,
  type UnpackLayerResult,
} from './index';

const gunzip = promisify(zlib.gunzip);

export interface FakeNetnsConnectCall {
  nsPath: string | undefined;
  port: number;
  timeoutMs: number;
}

export interface FakeUnpackCall {
  blobPath: string;
  mediaType: LayerMediaType;
  dest: string;
}

/**
 * Stands in for the native addon in unit tests of the code above it. `unpackLayer` records each
 * call and reports what the addon would for gzip and plain layers (diffID, tar size, member
 * count), but writes nothing into `dest` unless `onUnpack` does. Failures injected with
 * `failNextUnpack` go through the same error conversion as the real addon's.
 */
export class FakeNativeCore implements NativeCore {
  readonly calls: FakeUnpackCall[] = [];
  /** Cgroups "created" and not yet removed, by path. */
  readonly cgroups = new Map<string, CgroupResources>();
  readonly unpinned: string[] = [];

  /** The fake starts nothing: code that spawns monitors is tested against the real addon. */
  spawnDetached(program: string): { pid: number; readyFd: number } {
    throw new Error(`FakeNativeCore cannot start ${program}`);
  }

  reapChild(): boolean {
    return true;
  }

  spawnPiped(program: string): { pid: number; stdin: number; stdout: number; stderr: number } {
    throw new Error(`FakeNativeCore cannot start ${program}`);
  }

  waitChild(): undefined {
    return undefined;
  }

  /** The fake archives nothing: the rootfs diff is tested against the real addon. */
  writeRootfsDiff(upperDir: string): Promise<{ entries: number; skipped: number }> {
    return Promise.reject(new Error(`FakeNativeCore cannot archive ${upperDir}`));
  }

  /** The fake locks nothing: the daemon lock is tested against the real addon. */
  lockFile(target: string): number {
    throw new Error(`FakeNativeCore cannot lock ${target}`);
  }

  async removeTree(target: string): Promise<void> {
    await fsp.rm(target, { recursive: true, force: true });
  }

  async writeFileAtomic(file: string, data: string, mode: number): Promise<void> {
    const tmp = `${file}.${crypto.randomBytes(4).toString('hex')}.tmp`;
    await fsp.writeFile(tmp, data, { mode, flag: 'wx' });
    await fsp.rename(tmp, file);
  }

  readonly mounts = new Set<string>();

  mountTmpfs(target: string): void {
    this.mounts.add(target);
  }

  unmountPath(target: string): void {
    this.mounts.delete(target);
  }

  /** Sizes a test assigns to directories; anything else is gone. */
  readonly usages = new Map<string, { bytes: bigint; inodes: bigint }>();

  async diskUsage(dir: string): Promise<{ bytes: bigint; inodes: bigint } | undefined> {
    return this.usages.get(dir);
  }

  cgroupResolvePath(parent: string, name: string): string {
    return `${parent.replace(/\/$/, '')}/${name}`;
  }

  cgroupLayout(parent: string, name: string): CreatedCgroup {
    const path = `${parent.replace(/\/$/, '')}/${name}`;
    return { path, version: 1, paths: { memory: `/sys/fs/cgroup/memory${path}` } };
  }

  async cgroupCreate(parent: string, name: string, resources: CgroupResources): Promise<CreatedCgroup> {
    const layout = this.cgroupLayout(parent, name);
    this.cgroups.set(layout.path, resources);
    return layout;
  }

  async cgroupRemove(path: string): Promise<void> {
    this.cgroups.delete(path);
  }

  /** Counters `cgroupStats` reports, by path; a path not here reads as a missing cgroup. */
  readonly stats = new Map<string, CgroupStats>();

  async cgroupUpdate(path: string, resources: CgroupResources): Promise<void> {
    if (!this.cgroups.has(path)) throw fromNativeError(Object.assign(new Error(`cgroup ${path} does not exist`), { code: 'ENOENT' }), `updating cgroup ${path}`);
    this.cgroups.set(path, { ...this.cgroups.get(path), ...resources });
  }

  async cgroupStats(path: string): Promise<CgroupStats> {
    return structuredClone(this.stats.get(path) ?? {});
  }

  /** Paths of each `cgroupStatsBatch` call, in call order. */
  readonly statsBatches: string[][] = [];
  /** Paths whose stats read fails, with the errno name the addon would report. */
  readonly statsFailures = new Map<string, string>();

  async cgroupStatsBatch(paths: readonly string[]): Promise<Array<CgroupStats | Error>> {
    this.statsBatches.push([...paths]);
    return paths.map((path) => {
      const code = this.statsFailures.get(path);
      if (code) return fromNativeError(Object.assign(new Error(`read ${path}: injected ${code}`), { code }), `stats of cgroup ${path}`);
      return structuredClone(this.stats.get(path) ?? {});
    });
  }

  async unpinNamespaces(dir: string): Promise<void> {
    this.unpinned.push(dir);
  }

  readonly netnsConnects: FakeNetnsConnectCall[] = [];
  /**
   * Supplies the descriptor `connectInNetns` resolves with. An error it throws with a `code`
   * (`ECONNREFUSED`, `ETIMEDOUT`, `ENOENT`, ...) is converted as the real core's would be.
   * Without it every port refuses, like a pod where nothing listens.
   */
  onConnectInNetns?: (call: FakeNetnsConnectCall) => number | Promise<number>;

  async connectInNetns(nsPath: string | undefined, port: number, timeoutMs = DEFAULT_NETNS_CONNECT_TIMEOUT_MS): Promise<number> {
    checkForwardPort(port);
    const call = { nsPath, port, timeoutMs };
    this.netnsConnects.push(call);
    try {
      if (!this.onConnectInNetns) {
        throw Object.assign(new Error(`connect to localhost:${port}: connection refused`), { code: 'ECONNREFUSED' });
      }
      return await this.onConnectInNetns(call);
    } catch (err) {
      throw fromNetnsConnectError(err, nsPath, port, timeoutMs);
    }
  }

  /** Runs after an unpack succeeded, e.g. to populate `dest`. */
  onUnpack?: (call: FakeUnpackCall) => void | Promise<void>;
  private readonly failures: Array<{ code: string; message: string }> = [];

  constructor(private readonly version = '0.0.0-fake') {}

  coreVersion(): string {
    return this.version;
  }

  /** The topmost layer with a regular file at `p` (no whiteouts, opaque markers or links: fixtures have none). */
  async locateImageFile(lowerDirs: readonly string[], p: string): Promise<{ path: string; size: number } | undefined> {
    for (const dir of lowerDirs) {
      const full = path.join(dir, p);
      const st = await fsp.lstat(full).catch(() => undefined);
      if (st) return st.isFile() ? { path: full, size: st.size } : undefined;
    }
    return undefined;
  }

  /** Plain lookups: the topmost layer's file, or every layer's directory (fixtures have no whiteouts). */
  async imageEntry(lowerDirs: readonly string[], p: string): Promise<ImageEntry> {
    const layers: string[] = [];
    for (const dir of lowerDirs) {
      const full = path.join(dir, p);
      const st = await fsp.lstat(full).catch(() => undefined);
      if (!st) continue;
      if (st.isDirectory()) layers.push(full);
      else if (layers.length === 0) return st.isFile() ? { kind: 'file', path: full } : { kind: 'other' };
      else break;
    }
    return layers.length > 0 ? { kind: 'dir', layers } : { kind: 'missing' };
  }

  /** Makes the next `unpackLayer` fail as if the addon had rejected with `code`. */
  failNextUnpack(code: string, message = `injected ${code}`): void {
    this.failures.push({ code, message });
  }

  async unpackLayer(blobPath: string, mediaType: LayerMediaType, dest: string): Promise<UnpackLayerResult> {
    const call = { blobPath, mediaType, dest };
    this.calls.push(call);
    try {
      const failure = this.failures.shift();
      if (failure) throw Object.assign(new Error(failure.message), { code: failure.code });
      const blob = await fsp.readFile(blobPath).catch((err: NodeJS.ErrnoException) => {
        throw Object.assign(new Error(`open layer ${blobPath}: ${err.message}`), { code: err.code ?? 'EIO' });
      });
      const { tar, compression } = await decompress(blob);
      const result: UnpackLayerResult = {
        entries: countMembers(tar),
        tarBytes: tar.length,
        bytesWritten: 0,
        xattrsSkipped: 0,
        diffId: `sha256:${crypto.createHash('sha256').update(tar).digest('hex')}`,
        compression,
      };
      await this.onUnpack?.(call);
      return result;
    } catch (err) {
      throw fromNativeError(err, `layer ${blobPath}`);
    }
  }
}

async function decompress(blob: Buffer): Promise<{ tar: Buffer; compression: UnpackLayerResult['compression'] }> {
  if (blob[0] === 0x1f && blob[1] === 0x8b) {
    const tar = await gunzip(blob).catch((err: Error) => {
      throw Object.assign(new Error(`read layer: ${err.message}`), { code: 'EFORMAT' });
    });
    return { tar, compression: 'gzip' };
  }
  if (blob.length >= 4 && blob.readUInt32LE(0) === 0xfd2fb528) {
    throw Object.assign(new Error('the fake native core cannot decode zstd'), { code: 'EUNSUPPORTED' });
  }
  return { tar: blob, compression: 'none' };
}

/** Members of a tar stream, not counting PAX and GNU long-name headers. */
function countMembers(tar: Buffer): number {
  let members = 0;
  for (let pos = 0; pos + 512 <= tar.length; ) {
    const header = tar.subarray(pos, pos + 512);
    if (header.every((b) => b === 0)) break;
    const sizeField = header.subarray(124, 136).toString('latin1').replace(/[\0 ]+/g, '');
    const size = sizeField === '' ? 0 : parseInt(sizeField, 8);
    if (!Number.isFinite(size)) {
      throw Object.assign(new Error(`tar header at offset ${pos}: invalid size field`), { code: 'EFORMAT' });
    }
    const typeflag = String.fromCharCode(header[156]!);
    if (!['x', 'g', 'L', 'K'].includes(typeflag)) members++;
    const dataBlocks = ['1', '2', '3', '4', '5', '6'].includes(typeflag) ? 0 : Math.ceil(size / 512);
    pos += 512 * (1 + dataBlocks);
  }
  return members;
}
