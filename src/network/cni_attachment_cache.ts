/**
 * The record of each network attachment of a sandbox, kept from ADD until DEL: the config and
 * arguments the attachment was made with and the plugins' result, so DEL and CHECK use them even
 * after the conf dir changed, and the pod's IPs survive a daemon restart. One directory per
 * sandbox, one file per network and interface, written atomically.
 */
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import type { Logger } from 'pino';
import { isErrno, readJsonIfExists, syncDir, writeJsonAtomic } from '../util/fsutil';
import { validateCniConfigList, type CniNetworkConfigList } from './cni_config';
import { isObject } from './cni_invocation';

const CACHE_KIND = 'crisp.cni.attachment/v1';

export interface AttachmentRecord {
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

/** A record with its file. */
export interface CachedAttachment {
  file: string;
  record: AttachmentRecord;
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

export class CniAttachmentCache {
  constructor(
    readonly dir: string,
    private readonly logger: Logger,
  ) {}

  async init(): Promise<void> {
    await fsp.mkdir(this.dir, { recursive: true, mode: 0o700 });
  }

  recordPath(containerId: string, network: string, ifName: string): string {
    return path.join(this.sandboxDir(containerId), `${network}-${ifName}.json`);
  }

  has(file: string): Promise<boolean> {
    return pathExists(file);
  }

  /** A new record: everything but its kind and creation time. */
  async write(file: string, fields: Omit<AttachmentRecord, 'kind' | 'createdAt'>): Promise<void> {
    const record: AttachmentRecord = { kind: CACHE_KIND, ...fields, createdAt: new Date().toISOString() };
    const dir = path.dirname(file);
    let created = false;
    try {
      await fsp.mkdir(dir, { mode: 0o700 });
      created = true;
    } catch (err) {
      if (!isErrno(err, 'EEXIST')) throw err;
    }
    if (created) await syncDir(this.dir);
    await writeJsonAtomic(file, record);
  }

  async remove(file: string): Promise<void> {
    await fsp.rm(file, { force: true });
    const dir = path.dirname(file);
    await syncDir(dir).catch(() => undefined);
    try {
      await fsp.rmdir(dir);
      await syncDir(this.dir);
    } catch (err) {
      if (!isErrno(err, 'ENOTEMPTY') && !isErrno(err, 'ENOENT')) throw err;
    }
  }

  /** The cached attachments of a sandbox on `ifName`, in file-name order. Unreadable records are skipped. */
  async read(containerId: string, ifName: string): Promise<CachedAttachment[]> {
    const dir = this.sandboxDir(containerId);
    let names: string[];
    try {
      names = (await fsp.readdir(dir)).filter((n) => n.endsWith('.json') && !n.startsWith('.')).sort();
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return [];
      throw err;
    }
    const records: CachedAttachment[] = [];
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

  private sandboxDir(containerId: string): string {
    return path.join(this.dir, containerId);
  }
}
