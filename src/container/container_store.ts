import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { ContainerConfig } from '../generated/runtime/v1/api';
import { CrispError, failedPrecondition, notFound } from '../util/errors';
import { ensurePrivateDirSync, readJsonIfExists, removeTree, writeJsonAtomic } from '../util/fsutil';
import { checkpointRecord } from '../util/record_checkpoint';

/**
 * Container lifecycle:
 *
 *   CreateContainer ─► creating ─(monitor set the process up)─► created ─StartContainer─► running ─(exit)─► exited
 *                          │                                       │                                         │
 *                          └─(failure / crash: undone)─► gone      └──────────── RemoveContainer ────────────┴─► gone
 *
 * `creating` is persisted before the first side effect so recovery can undo an interrupted create.
 * The exit itself is recorded by the pod's monitor (`<bundle>/exit.json`), so exits that happen
 * while the daemon is down are found at start-up.
 */
export type ContainerState = 'creating' | 'created' | 'running' | 'exited';

export interface ExitRecord {
  exitCode: number;
  signal?: number | null;
  oomKilled?: boolean;
  startedAtMs?: number;
  finishedAtMs: number;
  /** Why the process never ran its program (a failed set-up or exec); exit code 128 then. */
  startError?: string | null;
}

export interface ContainerRecord {
  version: 1;
  id: string;
  sandboxId: string;
  /** ContainerConfig as protobuf JSON. */
  config: unknown;
  state: ContainerState;
  /** Nanoseconds since the epoch as decimal strings (0 = not yet). */
  createdAt: string;
  startedAt: string;
  finishedAt: string;
  /** The image as kubelet named it, and its id (config digest). */
  image: string;
  imageId: string;
  /** Snapshots this container's rootfs stacks, so image GC keeps them. */
  chainIds: string[];
  /** Snapshots its image volumes show (absent in records written before image volumes). */
  imageVolumeChainIds?: string[];
  /** Absolute path of the CRI log file ("" when kubelet gave none). */
  logPath: string;
  cgroupPath: string;
  pid: number;
  exitCode: number;
  reason: string;
  message: string;
  stage: string;
  /** The user the process runs as, resolved at create time (ContainerStatus.user). */
  user?: { uid: number; gid: number; additionalGids: number[] };
}

export class Container {
  private parsed?: { from: ContainerRecord; config: ContainerConfig };

  constructor(
    public record: ContainerRecord,
    /** `<state>/containers/<id>`: config.json, rootfs mountpoint, exit.json. */
    readonly bundleDir: string,
    /** `<root>/containers/<id>`: the writable layer (upper/work). */
    readonly layerDir: string,
  ) {}

  /** The CRI config, re-read whenever the record was replaced (UpdateContainerResources). */
  get config(): ContainerConfig {
    if (this.parsed?.from !== this.record) this.parsed = { from: this.record, config: ContainerConfig.fromJSON(this.record.config) };
    return this.parsed.config;
  }

  get id(): string {
    return this.record.id;
  }

  get state(): ContainerState {
    return this.record.state;
  }

  get upperDir(): string {
    return path.join(this.layerDir, 'upper');
  }

  get workDir(): string {
    return path.join(this.layerDir, 'work');
  }
}

/** `<name>_<attempt>` is unique within a pod, as kubelet requires. */
export function containerNameKey(sandboxId: string, config: ContainerConfig): string {
  return `${sandboxId}/${config.metadata!.name}_${config.metadata!.attempt}`;
}

export class ContainerStore {
  private readonly byId = new Map<string, Container>();
  private readonly byName = new Map<string, string>();

  constructor(
    readonly stateDir: string,
    readonly layerRoot: string,
  ) {}

  async load(): Promise<Container[]> {
    // Only root may enter: writable layers hold whatever a container's root put there (setuid
    // binaries, device nodes), reachable by path from the host (CVE-2021-41091).
    ensurePrivateDirSync(this.stateDir, 0o700);
    ensurePrivateDirSync(this.layerRoot, 0o700);
    const out: Container[] = [];
    for (const id of await fsp.readdir(this.stateDir)) {
      const record = await readJsonIfExists<ContainerRecord>(path.join(this.stateDir, id, 'container.json')).catch(() => undefined);
      if (!record || record.version !== 1) {
        // Unreadable: nothing can be reconciled, so its directories are simply removed.
        await fsp.rm(path.join(this.stateDir, id), { recursive: true, force: true });
        await fsp.rm(path.join(this.layerRoot, id), { recursive: true, force: true });
        continue;
      }
      const container = this.wrap(record);
      this.index(container);
      out.push(container);
    }
    // Writable layers whose container record is gone.
    for (const id of await fsp.readdir(this.layerRoot)) {
      if (!this.byId.has(id)) await fsp.rm(path.join(this.layerRoot, id), { recursive: true, force: true });
    }
    return out;
  }

  private wrap(record: ContainerRecord): Container {
    return new Container(record, path.join(this.stateDir, record.id), path.join(this.layerRoot, record.id));
  }

  private index(c: Container): void {
    this.byId.set(c.id, c);
    this.byName.set(containerNameKey(c.record.sandboxId, c.config), c.id);
  }

  async create(record: ContainerRecord): Promise<Container> {
    const container = this.wrap(record);
    // Two local mkdirs take microseconds; a trip to the threadpool each costs more.
    fs.mkdirSync(container.bundleDir, { mode: 0o700 });
    fs.mkdirSync(container.layerDir, { mode: 0o700 });
    await this.persist(container);
    this.index(container);
    return container;
  }

  private async persist(c: Container): Promise<void> {
    await writeJsonAtomic(path.join(c.bundleDir, 'container.json'), c.record);
  }

  async update(c: Container, change: (r: ContainerRecord) => void): Promise<void> {
    await checkpointRecord(c, path.join(c.bundleDir, 'container.json'), `container ${c.id}`, change);
  }

  async delete(c: Container): Promise<void> {
    this.byId.delete(c.id);
    const key = containerNameKey(c.record.sandboxId, c.config);
    if (this.byName.get(key) === c.id) this.byName.delete(key);
    await Promise.all([removeTree(c.bundleDir), removeTree(c.layerDir)]);
  }

  get(id: string): Container | undefined {
    return this.byId.get(id);
  }

  idByName(key: string): string | undefined {
    return this.byName.get(key);
  }

  list(): Container[] {
    return [...this.byId.values()];
  }

  bySandbox(sandboxId: string): Container[] {
    return this.list().filter((c) => c.record.sandboxId === sandboxId);
  }

  resolve(idOrPrefix: string): Container {
    if (!idOrPrefix) throw notFound('container id is empty');
    const exact = this.byId.get(idOrPrefix);
    if (exact) return exact;
    const matches = [...this.byId.keys()].filter((id) => id.startsWith(idOrPrefix));
    if (matches.length === 1) return this.byId.get(matches[0])!;
    if (matches.length > 1) throw failedPrecondition(`container id prefix "${idOrPrefix}" is ambiguous`);
    throw notFound(`container "${idOrPrefix}" not found`);
  }

  find(idOrPrefix: string): Container | undefined {
    try {
      return this.resolve(idOrPrefix);
    } catch (err) {
      if (err instanceof CrispError && err.code === 'NotFound') return undefined;
      throw err;
    }
  }

  /** Chain ids used by any container's rootfs or image volumes. */
  *chainIdsInUse(): Iterable<string> {
    for (const c of this.byId.values()) {
      yield* c.record.chainIds;
      yield* c.record.imageVolumeChainIds ?? [];
    }
  }
}

/** The exit the monitor recorded for a container, if it has exited. */
export async function readExitRecord(c: Container): Promise<ExitRecord | undefined> {
  return readJsonIfExists<ExitRecord>(path.join(c.bundleDir, 'exit.json')).catch(() => undefined);
}

/** CRI reason for an exit: OOMKilled, Completed (code 0) or Error, as kubelet shows them. */
export function exitReason(exit: ExitRecord): string {
  if (exit.startError) return 'StartError';
  if (exit.oomKilled) return 'OOMKilled';
  return exit.exitCode === 0 ? 'Completed' : 'Error';
}
