import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { PodSandboxConfig } from '../generated/runtime/v1/api';
import { CrispError, failedPrecondition, notFound } from '../util/errors';
import { ensurePrivateDirSync, readJsonIfExists, removeTree, writeJsonAtomic } from '../util/fsutil';
import { checkpointRecord } from '../util/record_checkpoint';

/**
 * Sandbox lifecycle:
 *
 *   RunPodSandbox ──► creating ──(all steps done)──► ready ──StopPodSandbox──► stopped
 *                        │                             │                          │
 *                        └─(a step failed / crash)─► undone, record deleted      RemovePodSandbox ─► gone
 *
 * `creating` is persisted before the first side effect, so a daemon that dies half-way finds the
 * record at start-up and undoes what it lists in `resources` (see sandbox_recover.ts).
 * A ready sandbox whose monitor died is reported NOTREADY, as a dead pause container would be.
 */
export type SandboxState = 'creating' | 'ready' | 'stopped';

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
  /** Node or pod, per namespace, as decided at creation. */
  hostNetwork: boolean;
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

  /** Whether the pod shares the node's network namespace. */
  get hostNetwork(): boolean {
    return this.record.hostNetwork;
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
  private readonly byId = new Map<string, Sandbox>();
  private readonly byName = new Map<string, string>();

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
      this.index(sandbox);
      out.push(sandbox);
    }
    return out;
  }

  private index(sandbox: Sandbox): void {
    this.byId.set(sandbox.id, sandbox);
    this.byName.set(sandboxNameKey(sandbox.config), sandbox.id);
  }

  async create(record: SandboxRecord): Promise<Sandbox> {
    const dir = this.sandboxDir(record.id);
    await fsp.mkdir(dir, { mode: 0o700 });
    const sandbox = new Sandbox(record, dir);
    await this.persist(sandbox);
    this.index(sandbox);
    return sandbox;
  }

  async persist(sandbox: Sandbox): Promise<void> {
    await writeJsonAtomic(path.join(sandbox.dir, 'sandbox.json'), sandbox.record);
  }

  async update(sandbox: Sandbox, change: (r: SandboxRecord) => void): Promise<void> {
    await checkpointRecord(sandbox, path.join(sandbox.dir, 'sandbox.json'), `sandbox ${sandbox.id}`, change);
  }

  async delete(sandbox: Sandbox): Promise<void> {
    this.byId.delete(sandbox.id);
    if (this.byName.get(sandboxNameKey(sandbox.config)) === sandbox.id) this.byName.delete(sandboxNameKey(sandbox.config));
    await removeTree(sandbox.dir);
  }

  get(id: string): Sandbox | undefined {
    return this.byId.get(id);
  }

  idByName(key: string): string | undefined {
    return this.byName.get(key);
  }

  list(): Sandbox[] {
    return [...this.byId.values()];
  }

  /** Like resolve(), but undefined for an unknown id: Stop and Remove of a gone pod succeed. */
  find(idOrPrefix: string): Sandbox | undefined {
    try {
      return this.resolve(idOrPrefix);
    } catch (err) {
      if (err instanceof CrispError && err.code === 'NotFound') return undefined;
      throw err;
    }
  }

  /** Resolves a full id or a unique prefix, as crictl passes truncated ids. */
  resolve(idOrPrefix: string): Sandbox {
    if (!idOrPrefix) throw notFound('pod sandbox id is empty');
    const exact = this.byId.get(idOrPrefix);
    if (exact) return exact;
    const matches = [...this.byId.keys()].filter((id) => id.startsWith(idOrPrefix));
    if (matches.length === 1) return this.byId.get(matches[0])!;
    if (matches.length > 1) throw failedPrecondition(`pod sandbox id prefix "${idOrPrefix}" is ambiguous`);
    throw notFound(`pod sandbox "${idOrPrefix}" not found`);
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
    hostNetwork: false,
    ips: [],
    resources: { pinned: true, shmMounted: true, network: true },
    stage: 'orphan',
  };
}
