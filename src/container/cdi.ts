import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import type { ContainerConfig } from '../generated/runtime/v1/api';
import { CrispError, errorMessage, invalidArgument, notFound } from '../util/errors';

/**
 * Container Device Interface (CDI): vendors describe devices in spec files (JSON or YAML) under a
 * few directories; a container asks for `vendor.com/class=name` (kubelet's CDI_devices field, or a
 * `cdi.k8s.io/...` annotation from a device plugin) and gets the edits those files describe.
 */

/** Annotations device plugins use to ask for CDI devices (comma-separated qualified names). */
const ANNOTATION_PREFIX = 'cdi.k8s.io/';

export interface CdiDeviceNode {
  /** Path inside the container. */
  path: string;
  /** The node on the host; `path` when absent. */
  hostPath?: string;
  type?: string;
  major?: number;
  minor?: number;
  fileMode?: number;
  /** Device cgroup access: any of r, w, m (default rwm). */
  permissions?: string;
  uid?: number;
  gid?: number;
}

export interface CdiMount {
  hostPath: string;
  containerPath: string;
  type?: string;
  options?: string[];
}

/** The edits a set of devices brings, merged in request order (spec-wide edits once per spec). */
export interface CdiEdits {
  env: string[];
  deviceNodes: CdiDeviceNode[];
  mounts: CdiMount[];
  additionalGids: number[];
  /** OCI hooks by kind (createRuntime, createContainer, startContainer, poststart, poststop). */
  hooks: Partial<Record<CdiHookKind, CdiHook[]>>;
  /** Edits crisp cannot carry out (intelRdt, netDevices, unknown hook kinds): requesting them fails. */
  unsupported: string[];
}

/** The OCI hook kinds a CDI spec may name. */
export const CDI_HOOK_KINDS = ['createRuntime', 'createContainer', 'startContainer', 'poststart', 'poststop'] as const;
export type CdiHookKind = (typeof CDI_HOOK_KINDS)[number];

export interface CdiHook {
  path: string;
  args?: string[];
  env?: string[];
  timeout?: number;
}

interface ContainerEditsDoc {
  env?: unknown;
  deviceNodes?: unknown;
  mounts?: unknown;
  hooks?: unknown;
  additionalGids?: unknown;
  additionalGIDs?: unknown;
  intelRdt?: unknown;
  netDevices?: unknown;
}

export interface CdiSpec {
  file: string;
  kind: string;
  edits: CdiEdits;
  devices: Map<string, CdiEdits>;
}

const VENDOR = /^[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)*$/;
const NAME = /^[a-zA-Z0-9]([a-zA-Z0-9_.:-]*[a-zA-Z0-9])?$/;
const CLASS = /^[a-zA-Z0-9]([a-zA-Z0-9_.-]*[a-zA-Z0-9])?$/;

/** Splits `vendor.com/class=name`; InvalidArgument for anything else. */
export function parseQualifiedName(qualified: string): { kind: string; name: string } {
  const eq = qualified.indexOf('=');
  const slash = qualified.indexOf('/');
  const vendor = qualified.slice(0, slash);
  const cls = qualified.slice(slash + 1, eq);
  const name = qualified.slice(eq + 1);
  if (slash <= 0 || eq < slash || !VENDOR.test(vendor) || !CLASS.test(cls) || cls.length > 63 || !NAME.test(name)) {
    throw invalidArgument(`CDI device "${qualified}" is not a qualified name (vendor.com/class=name)`);
  }
  return { kind: `${vendor}/${cls}`, name };
}

/** The CDI devices a container asks for: the CRI field first, then device-plugin annotations. */
export function requestedCdiDevices(config: Pick<ContainerConfig, 'CDIDevices' | 'annotations'>): string[] {
  const out: string[] = [];
  for (const d of config.CDIDevices ?? []) if (d.name) out.push(d.name);
  for (const key of Object.keys(config.annotations ?? {}).sort()) {
    if (!key.startsWith(ANNOTATION_PREFIX)) continue;
    for (const name of config.annotations[key]!.split(',')) if (name.trim()) out.push(name.trim());
  }
  return [...new Set(out)];
}

/** Parses one spec file's text (JSON, or YAML by extension); InvalidArgument naming the file. */
export function parseCdiSpec(text: string, file: string): CdiSpec {
  const bad = (why: string): CrispError => invalidArgument(`CDI spec ${file}: ${why}`);
  let doc: unknown;
  try {
    // The YAML parser is loaded only for YAML specs: most nodes never read one.
    doc = /\.ya?ml$/.test(file) ? (require('yaml') as typeof import('yaml')).parse(text) : JSON.parse(text);
  } catch (err) {
    throw bad(`not valid ${/\.ya?ml$/.test(file) ? 'YAML' : 'JSON'}: ${errorMessage(err)}`);
  }
  if (!isObject(doc)) throw bad('not an object');
  if (typeof doc.cdiVersion !== 'string' || !/^\d+\.\d+\.\d+$/.test(doc.cdiVersion)) throw bad('cdiVersion is missing or not a version');
  const kind = doc.kind;
  if (typeof kind !== 'string') throw bad('kind is missing');
  parseQualifiedName(`${kind}=x`);
  if (!Array.isArray(doc.devices) || doc.devices.length === 0) throw bad('devices must list at least one device');
  const devices = new Map<string, CdiEdits>();
  for (const d of doc.devices) {
    if (!isObject(d) || typeof d.name !== 'string' || !NAME.test(d.name)) throw bad(`device name ${JSON.stringify(isObject(d) ? d.name : d)} is invalid`);
    if (devices.has(d.name)) throw bad(`device ${d.name} is declared twice`);
    devices.set(d.name, parseEdits(d.containerEdits, `${file}: device ${d.name}`));
  }
  return { file, kind, edits: parseEdits(doc.containerEdits, file), devices };
}

function parseEdits(value: unknown, where: string): CdiEdits {
  const bad = (why: string): CrispError => invalidArgument(`CDI spec ${where}: ${why}`);
  const edits = emptyEdits();
  if (value === undefined || value === null) return edits;
  if (!isObject(value)) throw bad('containerEdits is not an object');
  const doc = value as ContainerEditsDoc;
  for (const h of list(doc.hooks, 'hooks', bad)) {
    if (!isObject(h) || typeof h.path !== 'string' || !path.posix.isAbsolute(h.path)) throw bad('a hook needs an absolute path');
    const kind = CDI_HOOK_KINDS.find((k) => k === h.hookName);
    if (!kind) {
      // Edits crisp cannot carry out: a device that needs them is refused rather than half-given.
      edits.unsupported.push(`${where}: hook kind ${JSON.stringify(h.hookName)} is not an OCI hook crisp runs`);
      continue;
    }
    const hook: CdiHook = { path: h.path };
    if (h.args !== undefined) hook.args = list(h.args, 'hook args', bad).map((a) => str(a, 'hook args', bad));
    if (h.env !== undefined) hook.env = list(h.env, 'hook env', bad).map((e) => str(e, 'hook env', bad));
    if (h.timeout !== undefined) {
      hook.timeout = int(h.timeout, 'hook timeout', bad);
      if (hook.timeout === 0) throw bad('a hook timeout must be greater than zero');
    }
    (edits.hooks[kind] ??= []).push(hook);
  }
  if (doc.intelRdt) edits.unsupported.push(`${where}: intelRdt edits are not supported by crisp`);
  if (Array.isArray(doc.netDevices) && doc.netDevices.length > 0) edits.unsupported.push(`${where}: netDevices edits are not supported by crisp`);
  for (const e of list(doc.env, 'env', bad)) {
    if (typeof e !== 'string' || !e.includes('=')) throw bad(`env entry ${JSON.stringify(e)} is not NAME=value`);
    edits.env.push(e);
  }
  for (const n of list(doc.deviceNodes, 'deviceNodes', bad)) {
    if (!isObject(n) || typeof n.path !== 'string' || !path.posix.isAbsolute(n.path)) throw bad('a device node needs an absolute path');
    const node: CdiDeviceNode = { path: n.path };
    if (n.hostPath !== undefined) node.hostPath = str(n.hostPath, 'hostPath', bad);
    if (n.type !== undefined) node.type = str(n.type, 'type', bad);
    for (const k of ['major', 'minor', 'fileMode', 'uid', 'gid'] as const) if (n[k] !== undefined) node[k] = int(n[k], k, bad);
    if (n.permissions !== undefined) {
      const p = str(n.permissions, 'permissions', bad);
      if (!/^[rwm]{1,3}$/.test(p) || new Set(p).size !== p.length) throw bad(`device ${n.path} has invalid permissions "${p}"`);
      node.permissions = p;
    }
    edits.deviceNodes.push(node);
  }
  for (const m of list(doc.mounts, 'mounts', bad)) {
    if (!isObject(m) || typeof m.hostPath !== 'string' || typeof m.containerPath !== 'string' || !path.posix.isAbsolute(m.containerPath)) {
      throw bad('a mount needs hostPath and an absolute containerPath');
    }
    const mount: CdiMount = { hostPath: m.hostPath, containerPath: m.containerPath };
    if (m.type !== undefined) mount.type = str(m.type, 'type', bad);
    if (m.options !== undefined) mount.options = list(m.options, 'options', bad).map((o) => str(o, 'options', bad));
    edits.mounts.push(mount);
  }
  for (const g of [...list(doc.additionalGids, 'additionalGids', bad), ...list(doc.additionalGIDs, 'additionalGIDs', bad)]) {
    const gid = int(g, 'additionalGids', bad);
    if (gid !== 0) edits.additionalGids.push(gid);
  }
  return edits;
}

/**
 * The spec files of `dirs` (lowest priority first). A device declared in a later directory
 * replaces the same device from an earlier one; within one directory two files declaring it
 * conflict. Specs are read on every resolution: device plugins rewrite them as devices come and go.
 */
export class CdiRegistry {
  constructor(readonly dirs: readonly string[]) {}

  /**
   * Merged edits of `names`: NotFound for an unknown device (naming spec files that could not be
   * read), InvalidArgument for a bad name or conflicting specs, Unimplemented for edits crisp
   * cannot make.
   */
  async resolve(names: readonly string[]): Promise<CdiEdits> {
    const out = emptyEdits();
    if (names.length === 0) return out;
    const wanted = names.map((n) => ({ qualified: n, ...parseQualifiedName(n) }));
    const kinds = new Set(wanted.map((w) => w.kind));
    const found = new Map<string, { spec: CdiSpec; dir: string }>();
    const broken: string[] = [];
    for (const dir of this.dirs) {
      const inDir = new Map<string, CdiSpec>();
      const { specs, errors } = await readSpecs(dir, kinds);
      broken.push(...errors);
      for (const spec of specs) {
        for (const device of spec.devices.keys()) {
          const qualified = `${spec.kind}=${device}`;
          const other = inDir.get(qualified);
          if (other) throw invalidArgument(`CDI device ${qualified} is declared by both ${other.file} and ${spec.file}`);
          inDir.set(qualified, spec);
          found.set(qualified, { spec, dir });
        }
      }
    }
    const specsApplied = new Set<CdiSpec>();
    for (const w of wanted) {
      const hit = found.get(`${w.kind}=${w.name}`);
      if (!hit) {
        const unreadable = broken.length > 0 ? ` (unreadable: ${broken.join('; ')})` : '';
        throw notFound(`CDI device ${w.qualified} is not declared by any spec in ${this.dirs.join(', ')}${unreadable}`);
      }
      if (!specsApplied.has(hit.spec)) {
        specsApplied.add(hit.spec);
        merge(out, hit.spec.edits);
      }
      merge(out, hit.spec.devices.get(w.name)!);
    }
    if (out.unsupported.length > 0) throw new CrispError('Unimplemented', `CDI devices ${names.join(', ')}: ${out.unsupported.join('; ')}`);
    return out;
  }
}

/** The specs of `kinds` in `dir`; a file that cannot be read or parsed is reported, not fatal. */
async function readSpecs(dir: string, kinds: ReadonlySet<string>): Promise<{ specs: CdiSpec[]; errors: string[] }> {
  let entries: string[];
  try {
    entries = (await fsp.readdir(dir)).filter((f) => /\.(json|ya?ml)$/.test(f)).sort();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { specs: [], errors: [] };
    return { specs: [], errors: [`${dir}: ${errorMessage(err)}`] };
  }
  const specs: CdiSpec[] = [];
  const errors: string[] = [];
  for (const name of entries) {
    const file = path.join(dir, name);
    try {
      const spec = parseCdiSpec(await fsp.readFile(file, 'utf8'), file);
      if (kinds.has(spec.kind)) specs.push(spec);
    } catch (err) {
      errors.push(errorMessage(err));
    }
  }
  return { specs, errors };
}

function emptyEdits(): CdiEdits {
  return { env: [], deviceNodes: [], mounts: [], additionalGids: [], hooks: {}, unsupported: [] };
}

function merge(into: CdiEdits, edits: CdiEdits): void {
  into.env.push(...edits.env);
  into.deviceNodes.push(...edits.deviceNodes);
  into.mounts.push(...edits.mounts);
  for (const g of edits.additionalGids) if (!into.additionalGids.includes(g)) into.additionalGids.push(g);
  for (const kind of CDI_HOOK_KINDS) if (edits.hooks[kind]) (into.hooks[kind] ??= []).push(...edits.hooks[kind]!);
  into.unsupported.push(...edits.unsupported);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function list(v: unknown, what: string, bad: (why: string) => CrispError): unknown[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) throw bad(`${what} is not a list`);
  return v;
}

function str(v: unknown, what: string, bad: (why: string) => CrispError): string {
  if (typeof v !== 'string') throw bad(`${what} is not a string`);
  return v;
}

function int(v: unknown, what: string, bad: (why: string) => CrispError): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) throw bad(`${what} is not a non-negative integer`);
  return v;
}
