import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { ContainerConfig } from '../generated/runtime/v1/api';
import type { ContainerState } from '../state/container_state';
import { ObjectIndex } from '../state/object_index';
import { ensurePrivateDirSync, readJsonIfExists, removeTree, writeJsonAtomic } from '../util/fsutil';
import { checkpointRecord } from '../util/record_checkpoint';

/** The states and their transitions: src/state/container_state.ts. */
export type { ContainerState };

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

/** All containers, in memory and persisted one file each under `<state>/containers/<id>/container.json`. */
export class ContainerStore {
  private readonly index = new ObjectIndex<Container>('container', (c) => containerNameKey(c.record.sandboxId, c.config));

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
      this.index.add(container);
      out.push(container);
    }
    // Writable layers whose container record is gone.
    for (const id of await fsp.readdir(this.layerRoot)) {
      if (!this.index.has(id)) await fsp.rm(path.join(this.layerRoot, id), { recursive: true, force: true });
    }
    return out;
  }

  private wrap(record: ContainerRecord): Container {
    return new Container(record, path.join(this.stateDir, record.id), path.join(this.layerRoot, record.id));
  }

  async create(record: ContainerRecord): Promise<Container> {
    const container = this.wrap(record);
    // Two local mkdirs take microseconds; a trip to the threadpool each costs more.
    fs.mkdirSync(container.bundleDir, { mode: 0o700 });
    fs.mkdirSync(container.layerDir, { mode: 0o700 });
    await this.persist(container);
    this.index.add(container);
    return container;
  }

  private async persist(c: Container): Promise<void> {
    await writeJsonAtomic(path.join(c.bundleDir, 'container.json'), c.record);
  }

  async update(c: Container, change: (r: ContainerRecord) => void): Promise<void> {
    await checkpointRecord(c, path.join(c.bundleDir, 'container.json'), `container ${c.id}`, change);
  }

  async delete(c: Container): Promise<void> {
    this.index.remove(c);
    await Promise.all([removeTree(c.bundleDir), removeTree(c.layerDir)]);
  }

  get(id: string): Container | undefined {
    return this.index.get(id);
  }

  idByName(key: string): string | undefined {
    return this.index.idByName(key);
  }

  list(): Container[] {
    return this.index.list();
  }

  bySandbox(sandboxId: string): Container[] {
    return this.list().filter((c) => c.record.sandboxId === sandboxId);
  }

  /** Resolves a full id or a unique prefix, as crictl passes truncated ids. */
  resolve(idOrPrefix: string): Container {
    return this.index.resolve(idOrPrefix);
  }

  /** Like resolve(), but undefined for an unknown id: removing a gone container succeeds. */
  find(idOrPrefix: string): Container | undefined {
    return this.index.find(idOrPrefix);
  }

  /** Runs `create` unless a create of the name key is in flight (joined) or done (its container). */
  createOnce(nameKey: string, create: () => Promise<string>): Promise<{ id: string; via: 'created' | 'joined' | 'existing' }> {
    return this.index.createOnce(nameKey, create);
  }

  /** Chain ids used by any container's rootfs or image volumes. */
  *chainIdsInUse(): Iterable<string> {
    for (const c of this.index.values()) {
      yield* c.record.chainIds;
      yield* c.record.imageVolumeChainIds ?? [];
    }
  }
}
