import type { Capability } from '../generated/runtime/v1/api';
import { invalidArgument } from '../util/errors';
import type { OciCapabilities } from './spec_opts';

/** Linux capability names indexed by their number (linux/capability.h). */
export const KNOWN_CAPABILITIES: readonly string[] = [
  'CAP_CHOWN',
  'CAP_DAC_OVERRIDE',
  'CAP_DAC_READ_SEARCH',
  'CAP_FOWNER',
  'CAP_FSETID',
  'CAP_KILL',
  'CAP_SETGID',
  'CAP_SETUID',
  'CAP_SETPCAP',
  'CAP_LINUX_IMMUTABLE',
  'CAP_NET_BIND_SERVICE',
  'CAP_NET_BROADCAST',
  'CAP_NET_ADMIN',
  'CAP_NET_RAW',
  'CAP_IPC_LOCK',
  'CAP_IPC_OWNER',
  'CAP_SYS_MODULE',
  'CAP_SYS_RAWIO',
  'CAP_SYS_CHROOT',
  'CAP_SYS_PTRACE',
  'CAP_SYS_PACCT',
  'CAP_SYS_ADMIN',
  'CAP_SYS_BOOT',
  'CAP_SYS_NICE',
  'CAP_SYS_RESOURCE',
  'CAP_SYS_TIME',
  'CAP_SYS_TTY_CONFIG',
  'CAP_MKNOD',
  'CAP_LEASE',
  'CAP_AUDIT_WRITE',
  'CAP_AUDIT_CONTROL',
  'CAP_SETFCAP',
  'CAP_MAC_OVERRIDE',
  'CAP_MAC_ADMIN',
  'CAP_SYSLOG',
  'CAP_WAKE_ALARM',
  'CAP_BLOCK_SUSPEND',
  'CAP_AUDIT_READ',
  'CAP_PERFMON',
  'CAP_BPF',
  'CAP_CHECKPOINT_RESTORE',
];

/** The set a container gets by default: the long-standing Docker/containerd 1.x set. */
export const DEFAULT_CAPABILITIES: readonly string[] = [
  'CAP_CHOWN',
  'CAP_DAC_OVERRIDE',
  'CAP_FSETID',
  'CAP_FOWNER',
  'CAP_MKNOD',
  'CAP_NET_RAW',
  'CAP_SETGID',
  'CAP_SETUID',
  'CAP_SETFCAP',
  'CAP_SETPCAP',
  'CAP_NET_BIND_SERVICE',
  'CAP_SYS_CHROOT',
  'CAP_KILL',
  'CAP_AUDIT_WRITE',
];

/** Every capability the running kernel knows (0..cap_last_cap) that has a name here. */
export function capabilitiesUpTo(lastCap: number): string[] {
  return KNOWN_CAPABILITIES.slice(0, Math.max(0, Math.min(lastCap, KNOWN_CAPABILITIES.length - 1)) + 1);
}

/**
 * "net_admin", "NET_ADMIN" and "CAP_NET_ADMIN" all name CAP_NET_ADMIN (kubelet sends the bare
 * form, other clients the prefixed one). Unknown names are rejected up front rather than left for
 * the launcher to fail on.
 */
export function normalizeCapability(name: string): string {
  const upper = name.trim().toUpperCase();
  const full = upper.startsWith('CAP_') ? upper : `CAP_${upper}`;
  if (!KNOWN_CAPABILITIES.includes(full)) throw invalidArgument(`unknown capability "${name}"`);
  return full;
}

const isAll = (name: string): boolean => name.trim().toUpperCase() === 'ALL';

function sortByNumber(caps: Iterable<string>): string[] {
  return [...new Set(caps)].sort((a, b) => KNOWN_CAPABILITIES.indexOf(a) - KNOWN_CAPABILITIES.indexOf(b));
}

export interface CapabilityRequest {
  capabilities: Capability | undefined;
  privileged: boolean;
  /** Every capability the host supports; what "ALL" and privileged mean. */
  allCapabilities: readonly string[];
}

/**
 * The container's capability sets, as containerd computes them: start from the default set,
 * apply "ALL" adds/drops first so individual entries still refine them (add ALL + drop CHOWN is
 * everything but CHOWN), then individual adds, then individual drops. Privileged containers get
 * everything. Capabilities go into bounding, effective and permitted; inheritable stays empty
 * (an inheritable set lets file capabilities escalate, CVE-2022-24769). Ambient capabilities
 * are only what the request asks for explicitly; the kernel requires them to be permitted and
 * inheritable too, so they are added there.
 */
export function resolveCapabilities(req: CapabilityRequest): OciCapabilities {
  const add = req.capabilities?.addCapabilities ?? [];
  const drop = req.capabilities?.dropCapabilities ?? [];
  const ambientRequest = req.capabilities?.addAmbientCapabilities ?? [];

  let set = new Set<string>(DEFAULT_CAPABILITIES);
  if (req.privileged) {
    set = new Set(req.allCapabilities);
  } else {
    if (add.some(isAll)) set = new Set(req.allCapabilities);
    if (drop.some(isAll)) set = new Set();
    for (const name of add) if (!isAll(name)) set.add(normalizeCapability(name));
    for (const name of drop) if (!isAll(name)) set.delete(normalizeCapability(name));
  }

  const ambient = new Set<string>();
  for (const name of ambientRequest) {
    const caps = isAll(name) ? req.allCapabilities : [normalizeCapability(name)];
    for (const cap of caps) {
      ambient.add(cap);
      set.add(cap);
    }
  }

  const main = sortByNumber(set);
  return {
    bounding: main,
    effective: [...main],
    permitted: [...main],
    inheritable: sortByNumber(ambient),
    ambient: sortByNumber(ambient),
  };
}
