import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { PodSandboxConfig } from '../generated/runtime/v1/api';
import { ObjectIndex } from '../state/object_index';
import type { SandboxState } from '../state/sandbox_state';
import { ensurePrivateDirSync, readJsonIfExists, removeTree, writeJsonAtomic } from '../util/fsutil';
import { checkpointRecord } from '../util/record_checkpoint';
import { sandboxNamespaces } from './sandbox_spec';

/** The states and their transitions: src/state/sandbox_state.ts. */
export type { SandboxState };

/** What a sandbox holds, recorded as it is acquired so cleanup knows what to release. */
export interface SandboxResources {
  cgroup?: string;
  monitorPid?: number;
  monitorStartTime?: number;
  /** Pinned namespace files (`<dir>/ns/net` …). */
  pinned?: boolean;
  network?: boolean;
  shmMounted?: boolean;
}

export interface SandboxRecord {
  version: 1;
  id: string;
  /** PodSandboxConfig as protobuf JSON. */
  config: unknown;
  state: SandboxState;
  /** Nanoseconds since the epoch, as a decimal string (JSON has no 64-bit integers). */
  createdAt: string;
  runtimeHandler: string;
  ips: string[];
  resources: SandboxResources;
  /** For diagnostics: the last step a create reached. */
  stage: string;
}

export class Sandbox {
  readonly config: PodSandboxConfig;

  constructor(
    public record: SandboxRecord,
    readonly dir: string,
  ) {
    this.config = PodSandboxConfig.fromJSON(record.config);
  }

  get id(): string {
    return this.record.id;
  }

  get state(): SandboxState {
    return this.record.state;
  }

  /** Whether the pod shares the node's network namespace (from its config, never stored). */
  get hostNetwork(): boolean {
    return sandboxNamespaces(this.config).network === 'node';
  }

  get netnsPath(): string {
    return path.join(this.dir, 'ns', 'net');
  }

  get logDirectory(): string {
    return this.config.logDirectory;
  }
}

/** `<name>_<namespace>_<uid>_<attempt>`: unique per kubelet pod attempt, like containerd's. */
export function sandboxNameKey(config: PodSandboxConfig): string {
  const m = config.metadata!;
  return `${m.name}_${m.namespace}_${m.uid}_${m.attempt}`;
}

/**
 * All sandboxes, in memory and persisted one file each under `<state>/sandboxes/<id>/sandbox.json`.
 */
export class SandboxStore {
  private readonly index = new ObjectIndex<Sandbox>('pod sandbox', (s) => sandboxNameKey(s.config));

  constructor(readonly dir: string) {}

  sandboxDir(id: string): string {
    return path.join(this.dir, id);
  }

  /** Reads every record; returns them for the recovery pass to reconcile. */
  async load(): Promise<Sandbox[]> {
    // Only root may enter: each pod's /dev/shm tmpfs (mode 1777, the pod's to write) is below.
    ensurePrivateDirSync(this.dir, 0o700);
    const out: Sandbox[] = [];
    for (const id of await fsp.readdir(this.dir)) {
      const dir = this.sandboxDir(id);
      const record = await readJsonIfExists<SandboxRecord>(path.join(dir, 'sandbox.json')).catch(() => undefined);
      if (!record || record.version !== 1) {
        out.push(new Sandbox(orphanRecord(id), dir));
        continue;
      }
      const sandbox = new Sandbox(record, dir);
      this.index.add(sandbox);
      out.push(sandbox);
    }
    return out;
  }

  async create(record: SandboxRecord): Promise<Sandbox> {
    const dir = this.sandboxDir(record.id);
    await fsp.mkdir(dir, { mode: 0o700 });
    const sandbox = new Sandbox(record, dir);
    await this.persist(sandbox);
    this.index.add(sandbox);
    return sandbox;
  }

  private async persist(sandbox: Sandbox): Promise<void> {
    await writeJsonAtomic(path.join(sandbox.dir, 'sandbox.json'), sandbox.record);
  }

  async update(sandbox: Sandbox, change: (r: SandboxRecord) => void): Promise<void> {
    await checkpointRecord(sandbox, path.join(sandbox.dir, 'sandbox.json'), `sandbox ${sandbox.id}`, change);
  }

  async delete(sandbox: Sandbox): Promise<void> {
    this.index.remove(sandbox);
    await removeTree(sandbox.dir);
  }

  get(id: string): Sandbox | undefined {
    return this.index.get(id);
  }

  idByName(key: string): string | undefined {
    return this.index.idByName(key);
  }

  list(): Sandbox[] {
    return this.index.list();
  }

  /** Like resolve(), but undefined for an unknown id: Stop and Remove of a gone pod succeed. */
  find(idOrPrefix: string): Sandbox | undefined {
    return this.index.find(idOrPrefix);
  }

  /** Resolves a full id or a unique prefix, as crictl passes truncated ids. */
  resolve(idOrPrefix: string): Sandbox {
    return this.index.resolve(idOrPrefix);
  }

  /** Whether a RunPodSandbox of the name key is in flight. */
  creating(nameKey: string): boolean {
    return this.index.creating(nameKey);
  }

  /** Runs `create` unless a create of the name key is in flight (joined) or done (its sandbox). */
  createOnce(nameKey: string, create: () => Promise<string>): Promise<{ id: string; via: 'created' | 'joined' | 'existing' }> {
    return this.index.createOnce(nameKey, create);
  }
}

/** A directory with no readable record: recovery removes whatever it can find in it. */
function orphanRecord(id: string): SandboxRecord {
  return {
    version: 1,
    id,
    config: PodSandboxConfig.toJSON(PodSandboxConfig.fromPartial({ metadata: { name: id, namespace: '', uid: id, attempt: 0 } })),
    state: 'creating',
    createdAt: '0',
    runtimeHandler: '',
    ips: [],
    resources: { pinned: true, shmMounted: true, network: true },
    stage: 'orphan',
  };
}
