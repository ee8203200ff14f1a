/**
 * The subset of the OCI runtime-spec config.json that crisp writes for a container, plus the
 * crisp-specific top-level keys the launcher reads, and small composable options that edit a spec
 * in place (each option does one thing, so the builder reads as a list of decisions).
 */
import type { LinuxSeccomp } from './seccomp_profile';

export const OCI_VERSION = '1.2.0';

export interface OciUser {
  uid: number;
  gid: number;
  additionalGids?: number[];
}

export interface OciCapabilities {
  bounding: string[];
  effective: string[];
  inheritable: string[];
  permitted: string[];
  ambient: string[];
}

export interface OciRlimit {
  type: string;
  hard: number;
  soft: number;
}

export interface OciProcess {
  terminal: boolean;
  user: OciUser;
  args: string[];
  env: string[];
  cwd: string;
  capabilities: OciCapabilities;
  rlimits: OciRlimit[];
  noNewPrivileges: boolean;
  oomScoreAdj?: number;
  apparmorProfile?: string;
  selinuxLabel?: string;
}

export interface OciMount {
  destination: string;
  type: string;
  source: string;
  options: string[];
}

export type OciNamespaceType = 'pid' | 'network' | 'mount' | 'ipc' | 'uts' | 'user' | 'cgroup';

export interface OciNamespace {
  type: OciNamespaceType;
  path?: string;
}

export interface OciDevice {
  path: string;
  type: 'c' | 'b' | 'p';
  major: number;
  minor: number;
  fileMode: number;
  uid: number;
  gid: number;
}

export interface OciDeviceCgroup {
  allow: boolean;
  type?: 'a' | 'c' | 'b';
  major?: number;
  minor?: number;
  access: string;
}

export interface OciResources {
  devices: OciDeviceCgroup[];
  cpu?: { shares?: number; quota?: number; period?: number; cpus?: string; mems?: string };
  memory?: { limit?: number; swap?: number };
  hugepageLimits?: { pageSize: string; limit: number }[];
  unified?: Record<string, string>;
}

export interface OciLinux {
  namespaces: OciNamespace[];
  devices: OciDevice[];
  resources: OciResources;
  maskedPaths: string[];
  readonlyPaths: string[];
  rootfsPropagation?: 'rprivate' | 'rslave' | 'rshared';
  seccomp?: LinuxSeccomp;
  sysctl?: Record<string, string>;
  /** The pod user namespace's mappings (the namespace itself is joined by path). */
  uidMappings?: OciIdMapping[];
  gidMappings?: OciIdMapping[];
  /** SELinux label of the container's own filesystems (tmpfs, devpts, mqueue). */
  mountLabel?: string;
}

export interface OciIdMapping {
  containerID: number;
  hostID: number;
  size: number;
}

export interface CrispRootfs {
  /** Top layer first, as overlayfs lowerdir= wants them. */
  lowerDirs: string[];
  upperDir: string;
  workDir: string;
}

export interface CrispCgroup {
  version: 1 | 2;
  paths: Record<string, string>;
}

export interface OciSpec {
  ociVersion: string;
  process: OciProcess;
  root: { path: string; readonly: boolean };
  hostname?: string;
  mounts: OciMount[];
  linux: OciLinux;
  annotations: Record<string, string>;
  crispRootfs: CrispRootfs;
  crispCgroup: CrispCgroup;
  /** OCI lifecycle hooks (from CDI device specs; CRI never sends any). */
  hooks?: Partial<Record<'createRuntime' | 'createContainer' | 'startContainer' | 'poststart' | 'poststop', OciHook[]>>;
}

export interface OciHook {
  path: string;
  args?: string[];
  env?: string[];
  /** Seconds. */
  timeout?: number;
}

export type SpecOpt = (spec: OciSpec) => void;

export function applyOpts(spec: OciSpec, ...opts: SpecOpt[]): OciSpec {
  for (const opt of opts) opt(spec);
  return spec;
}

/**
 * Layers `overrides` onto `base` the way OCI tooling does: a later KEY=VALUE replaces an earlier
 * KEY in place, a bare KEY (no '=') removes it.
 */
export function mergeEnv(base: string[], overrides: string[]): string[] {
  const out = [...base];
  const keyOf = (entry: string): string => {
    const eq = entry.indexOf('=');
    return eq < 0 ? entry : entry.slice(0, eq);
  };
  for (const entry of overrides) {
    const key = keyOf(entry);
    const at = out.findIndex((e) => keyOf(e) === key);
    if (!entry.includes('=')) {
      if (at >= 0) out.splice(at, 1);
    } else if (at >= 0) {
      out[at] = entry;
    } else {
      out.push(entry);
    }
  }
  return out;
}

export const withProcessArgs =
  (args: string[]): SpecOpt =>
  (s) => {
    s.process.args = [...args];
  };

export const withEnv =
  (env: string[]): SpecOpt =>
  (s) => {
    s.process.env = mergeEnv(s.process.env, env);
  };

export const withCwd =
  (cwd: string): SpecOpt =>
  (s) => {
    s.process.cwd = cwd;
  };

export const withTerminal =
  (terminal: boolean): SpecOpt =>
  (s) => {
    s.process.terminal = terminal;
  };

export const withUser =
  (user: OciUser): SpecOpt =>
  (s) => {
    s.process.user = { uid: user.uid, gid: user.gid, additionalGids: [...(user.additionalGids ?? [])] };
  };

export const withNoNewPrivileges =
  (enabled: boolean): SpecOpt =>
  (s) => {
    s.process.noNewPrivileges = enabled;
  };

export const withRootReadonly =
  (readonly: boolean): SpecOpt =>
  (s) => {
    s.root.readonly = readonly;
  };

export const withCapabilities =
  (caps: OciCapabilities): SpecOpt =>
  (s) => {
    s.process.capabilities = {
      bounding: [...caps.bounding],
      effective: [...caps.effective],
      inheritable: [...caps.inheritable],
      permitted: [...caps.permitted],
      ambient: [...caps.ambient],
    };
  };

export const withRlimit =
  (type: string, soft: number, hard: number): SpecOpt =>
  (s) => {
    s.process.rlimits = s.process.rlimits.filter((r) => r.type !== type);
    s.process.rlimits.push({ type, hard, soft });
  };

export const withMaskedPaths =
  (paths: string[]): SpecOpt =>
  (s) => {
    s.linux.maskedPaths = [...paths];
  };

export const withReadonlyPaths =
  (paths: string[]): SpecOpt =>
  (s) => {
    s.linux.readonlyPaths = [...paths];
  };

/** Adds a namespace, replacing an existing entry of the same type. */
export const withNamespace =
  (ns: OciNamespace): SpecOpt =>
  (s) => {
    s.linux.namespaces = s.linux.namespaces.filter((n) => n.type !== ns.type);
    s.linux.namespaces.push(ns.path ? { type: ns.type, path: ns.path } : { type: ns.type });
  };

export const withoutNamespace =
  (type: OciNamespaceType): SpecOpt =>
  (s) => {
    s.linux.namespaces = s.linux.namespaces.filter((n) => n.type !== type);
  };

/** Drops "ro" from the options of every mount of `type` (privileged containers get writable sysfs/cgroupfs). */
export const withWritableMountType =
  (type: string): SpecOpt =>
  (s) => {
    for (const m of s.mounts) {
      if (m.type !== type) continue;
      m.options = m.options.filter((o) => o !== 'ro');
      if (!m.options.includes('rw')) m.options.push('rw');
    }
  };

export const withAnnotations =
  (annotations: Record<string, string>): SpecOpt =>
  (s) => {
    Object.assign(s.annotations, annotations);
  };

export const withSeccomp =
  (seccomp: LinuxSeccomp | undefined): SpecOpt =>
  (s) => {
    if (seccomp) s.linux.seccomp = seccomp;
    else delete s.linux.seccomp;
  };

export const withDevices =
  (devices: OciDevice[], cgroupRules: OciDeviceCgroup[]): SpecOpt =>
  (s) => {
    for (const d of devices) {
      s.linux.devices = s.linux.devices.filter((existing) => existing.path !== d.path);
      s.linux.devices.push(d);
    }
    s.linux.resources.devices.push(...cgroupRules);
  };

/** The rootfs propagation only ever widens: rshared beats rslave beats the rprivate default. */
export const withRootfsPropagation =
  (propagation: 'rslave' | 'rshared'): SpecOpt =>
  (s) => {
    if (s.linux.rootfsPropagation === 'rshared') return;
    s.linux.rootfsPropagation = propagation;
  };
