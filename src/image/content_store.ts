import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { syncDir } from '../util/fsutil';
import { hexOf } from './snapshot_store';

/**
 * Blobs by digest (`<dir>/blobs/<alg>/<hex>`): manifests and configs are kept; layer blobs live
 * here only until unpacked. Downloads land in `<dir>/ingest/` and are renamed in once verified, so
 * a blob under its digest name is always complete.
 */
export class ContentStore {
  constructor(readonly dir: string) {}

  async load(): Promise<void> {
    await fsp.mkdir(path.join(this.dir, 'blobs', 'sha256'), { recursive: true, mode: 0o700 });
    // Whatever is in ingest/ belonged to a pull that did not finish.
    await fsp.rm(path.join(this.dir, 'ingest'), { recursive: true, force: true });
    await fsp.mkdir(path.join(this.dir, 'ingest'), { mode: 0o700 });
  }

  blobPath(digest: string): string {
    const [alg] = digest.split(':');
    return path.join(this.dir, 'blobs', alg, hexOf(digest));
  }

  has(digest: string): boolean {
    return fs.existsSync(this.blobPath(digest));
  }

  /** A fresh temp path for a download in progress. */
  ingestPath(digest: string): string {
    return path.join(this.dir, 'ingest', `${hexOf(digest).slice(0, 16)}-${crypto.randomBytes(6).toString('hex')}`);
  }

  /** Moves a verified download to its digest name. */
  async commit(tmp: string, digest: string): Promise<string> {
    const final = this.blobPath(digest);
    await fsp.mkdir(path.dirname(final), { recursive: true, mode: 0o700 });
    await fsp.rename(tmp, final);
    await syncDir(path.dirname(final));
    return final;
  }

  async write(digest: string, data: Uint8Array): Promise<void> {
    const tmp = this.ingestPath(digest);
    const handle = await fsp.open(tmp, 'wx', 0o600);
    try {
      await handle.writeFile(data);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await this.commit(tmp, digest);
  }

  async read(digest: string): Promise<Buffer> {
    return fsp.readFile(this.blobPath(digest));
  }

  /** Bytes the stored blob holds. */
  async size(digest: string): Promise<number> {
    return (await fsp.stat(this.blobPath(digest))).size;
  }

  async remove(digest: string): Promise<void> {
    await fsp.rm(this.blobPath(digest), { force: true });
  }

  async list(): Promise<string[]> {
    const out: string[] = [];
    for (const alg of await fsp.readdir(path.join(this.dir, 'blobs'))) {
      for (const hex of await fsp.readdir(path.join(this.dir, 'blobs', alg))) out.push(`${alg}:${hex}`);
    }
    return out;
  }
}
