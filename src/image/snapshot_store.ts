import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { readJsonIfExists, removeTree, syncDir, writeJsonAtomic } from '../util/fsutil';

/** chainID(L0) = diffID(L0); chainID(Ln) = sha256(chainID(Ln-1) + " " + diffID(Ln)), per the OCI image spec. */
export function chainIds(diffIds: string[]): string[] {
  const out: string[] = [];
  for (const diffId of diffIds) {
    const prev = out[out.length - 1];
    out.push(prev === undefined ? diffId : `sha256:${crypto.createHash('sha256').update(`${prev} ${diffId}`).digest('hex')}`);
  }
  return out;
}

export interface Usage {
  bytes: number;
  inodes: number;
}

export interface SnapshotMeta {
  chainId: string;
  diffId: string;
  /** Bytes and inodes of the unpacked layer, measured once when it was unpacked. */
  bytes: number;
  inodes: number;
  createdAt: number;
}

const TMP_PREFIX = '.tmp-';

/**
 * Unpacked layers, one directory per chain id (`<dir>/<hex>/fs`), used as overlay lower dirs.
 * Keyed by chain id so identical layer stacks are shared between images. A snapshot appears under
 * its final name only once complete (unpacked into a temp dir, then renamed).
 */
export class SnapshotStore {
  private readonly inflight = new Map<string, Promise<SnapshotMeta>>();
  private readonly metas = new Map<string, SnapshotMeta>();

  constructor(readonly dir: string) {}

  /** Loads metadata and removes what an interrupted unpack left behind. */
  async load(): Promise<void> {
    await fsp.mkdir(this.dir, { recursive: true, mode: 0o700 });
    this.metas.clear();
    for (const name of await fsp.readdir(this.dir)) {
      const full = path.join(this.dir, name);
      if (name.startsWith(TMP_PREFIX)) {
        await fsp.rm(full, { recursive: true, force: true });
        continue;
      }
      const meta = await readJsonIfExists<SnapshotMeta>(path.join(full, 'meta.json'));
      if (meta && fs.existsSync(path.join(full, 'fs'))) this.metas.set(meta.chainId, meta);
      else await fsp.rm(full, { recursive: true, force: true });
    }
  }

  fsPath(chainId: string): string {
    return path.join(this.dir, hexOf(chainId), 'fs');
  }

  has(chainId: string): boolean {
    return this.metas.has(chainId);
  }

  get(chainId: string): SnapshotMeta | undefined {
    return this.metas.get(chainId);
  }

  list(): SnapshotMeta[] {
    return [...this.metas.values()];
  }

  /**
   * Makes sure the snapshot exists, running `fill(tmpFsDir)` to populate it if not. Concurrent calls
   * for the same chain id share one fill.
   */
  ensure(
    chainId: string,
    diffId: string,
    fill: (fsDir: string) => Promise<Usage | void>,
  ): Promise<SnapshotMeta> {
    const existing = this.metas.get(chainId);
    if (existing) return Promise.resolve(existing);
    let pending = this.inflight.get(chainId);
    if (!pending) {
      pending = this.create(chainId, diffId, fill).finally(() => this.inflight.delete(chainId));
      this.inflight.set(chainId, pending);
    }
    return pending;
  }

  private async create(chainId: string, diffId: string, fill: (fsDir: string) => Promise<Usage | void>): Promise<SnapshotMeta> {
    const tmp = await fsp.mkdtemp(path.join(this.dir, TMP_PREFIX));
    try {
      const fsDir = path.join(tmp, 'fs');
      await fsp.mkdir(fsDir, { mode: 0o755 });
      const usage = (await fill(fsDir)) ?? (await measure(fsDir));
      const meta: SnapshotMeta = { chainId, diffId, bytes: usage.bytes, inodes: usage.inodes, createdAt: Date.now() };
      await writeJsonAtomic(path.join(tmp, 'meta.json'), meta);
      const final = path.join(this.dir, hexOf(chainId));
      await fsp.rm(final, { recursive: true, force: true });
      await fsp.rename(tmp, final);
      await syncDir(this.dir);
      this.metas.set(chainId, meta);
      return meta;
    } catch (err) {
      await fsp.rm(tmp, { recursive: true, force: true });
      throw err;
    }
  }

  async remove(chainId: string): Promise<void> {
    this.metas.delete(chainId);
    const final = path.join(this.dir, hexOf(chainId));
    // Rename first so a crash mid-delete leaves a temp dir that load() clears, not a broken snapshot.
    const doomed = path.join(this.dir, `${TMP_PREFIX}rm-${hexOf(chainId)}`);
    try {
      await fsp.rename(final, doomed);
    } catch {
      return;
    }
    await removeTree(doomed);
  }

  usage(): { bytes: number; inodes: number } {
    let bytes = 0;
    let inodes = 0;
    for (const m of this.metas.values()) {
      bytes += m.bytes;
      inodes += m.inodes;
    }
    return { bytes, inodes };
  }
}

export function hexOf(digest: string): string {
  const i = digest.indexOf(':');
  return i < 0 ? digest : digest.slice(i + 1);
}

/** Bytes and inodes below a directory, hard links counted once. */
export async function measure(dir: string): Promise<Usage> {
  let bytes = 0;
  let inodes = 1;
  const seen = new Set<string>();
  const walk = async (d: string): Promise<void> => {
    for (const entry of await fsp.readdir(d, { withFileTypes: true })) {
      const p = path.join(d, entry.name);
      const st = await fsp.lstat(p);
      const key = `${st.ino}`;
      if (seen.has(key)) continue;
      seen.add(key);
      inodes++;
      bytes += st.blocks * 512;
      if (entry.isDirectory()) await walk(p);
    }
  };
  await walk(dir);
  return { bytes, inodes };
}
