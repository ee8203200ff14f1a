import { NamespaceMode, type PodSandboxConfig } from '../generated/runtime/v1/api';
import { invalidArgument } from '../util/errors';
import { validateHostname } from './pod_files';

export type PodNamespace = 'pod' | 'node';

export interface SandboxNamespaces {
  network: PodNamespace;
  ipc: PodNamespace;
  uts: PodNamespace;
  pid: 'pod' | 'node' | 'container';
  /** The pod's user namespace (kubelet's hostUsers: false) with its id mappings. */
  userns?: PodUserns;
}

/** One line of a uid_map or gid_map. */
export interface IdMapping {
  containerId: number;
  hostId: number;
  size: number;
}

export interface PodUserns {
  uidMappings: IdMapping[];
  gidMappings: IdMapping[];
}

/** The namespaces a pod gets. UTS follows the network, as kubelet has no separate option for it. */
export function sandboxNamespaces(config: PodSandboxConfig): SandboxNamespaces {
  const opts = config.linux?.securityContext?.namespaceOptions;
  const node = (mode: NamespaceMode | undefined): PodNamespace => (mode === NamespaceMode.NODE ? 'node' : 'pod');
  const network = node(opts?.network);
  let pid: SandboxNamespaces['pid'] = 'container';
  if (opts?.pid === NamespaceMode.NODE) pid = 'node';
  else if (opts?.pid === NamespaceMode.POD) pid = 'pod';
  const out: SandboxNamespaces = { network, ipc: node(opts?.ipc), uts: network, pid };
  const userns = opts?.usernsOptions;
  if (userns?.mode === NamespaceMode.POD) {
    const map = (list: { hostId: number; containerId: number; length: number }[]): IdMapping[] =>
      list.map((m) => ({ containerId: m.containerId, hostId: m.hostId, size: m.length }));
    out.userns = { uidMappings: map(userns.uids), gidMappings: map(userns.gids) };
  }
  return out;
}

const IPC_SYSCTLS = new Set([
  'kernel.shmall',
  'kernel.shmmax',
  'kernel.shmmni',
  'kernel.shm_rmid_forced',
  'kernel.msgmax',
  'kernel.msgmnb',
  'kernel.msgmni',
  'kernel.sem',
]);

/**
 * Checks and normalises the pod's sysctls (kubelet also accepts `/` as the separator). Only
 * namespaced ones can be set per pod, and not in a namespace the pod shares with the node.
 */
export function validateSysctls(sysctls: Record<string, string>, ns: SandboxNamespaces): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [rawKey, value] of Object.entries(sysctls)) {
    const key = rawKey.includes('/') ? rawKey.replaceAll('/', '.') : rawKey;
    if (!/^[a-z0-9_]+(\.[a-zA-Z0-9_-]+)+$/.test(key)) throw invalidArgument(`sysctl "${rawKey}" is not a valid sysctl name`);
    if (/[\n\0]/.test(value)) throw invalidArgument(`sysctl "${rawKey}" has an invalid value`);
    if (key.startsWith('net.')) {
      if (ns.network === 'node') throw invalidArgument(`sysctl "${rawKey}" is not allowed: the pod uses the host network namespace`);
    } else if (IPC_SYSCTLS.has(key) || key.startsWith('fs.mqueue.')) {
      if (ns.ipc === 'node') throw invalidArgument(`sysctl "${rawKey}" is not allowed: the pod uses the host IPC namespace`);
    } else {
      throw invalidArgument(`sysctl "${rawKey}" is not namespaced and cannot be set for a pod`);
    }
    out[key] = value;
  }
  return out;
}

/** Rejects what kubelet never sends but a buggy client might, before anything is created. */
export function validateSandboxConfig(config: PodSandboxConfig | undefined): asserts config is PodSandboxConfig & { metadata: NonNullable<PodSandboxConfig['metadata']> } {
  if (!config) throw invalidArgument('sandbox config is required');
  const m = config.metadata;
  if (!m) throw invalidArgument('sandbox config metadata is required');
  if (!m.name) throw invalidArgument('sandbox metadata.name is empty');
  if (!m.namespace) throw invalidArgument('sandbox metadata.namespace is empty');
  if (!m.uid) throw invalidArgument('sandbox metadata.uid is empty');
  const ns = sandboxNamespaces(config);
  if (ns.uts === 'pod' && config.hostname) validateHostname(config.hostname);
  const userns = config.linux?.securityContext?.namespaceOptions?.usernsOptions;
  if (userns && userns.mode !== NamespaceMode.NODE) {
    if (userns.mode !== NamespaceMode.POD) throw invalidArgument(`user namespace mode ${NamespaceMode[userns.mode] ?? userns.mode} is not valid for a pod (NODE or POD)`);
    if (ns.network === 'node' || ns.ipc === 'node' || ns.pid === 'node') {
      throw invalidArgument('a pod user namespace cannot be combined with the host network, IPC or PID namespace');
    }
    for (const [what, list] of [['uid', userns.uids], ['gid', userns.gids]] as const) {
      if (list.length === 0 || list.length > 340) throw invalidArgument(`user namespace ${what} mappings: between 1 and 340 are needed, got ${list.length}`);
      // The container's root owns its writable layer through this mapping.
      if (!list.some((m) => m.containerId === 0)) throw invalidArgument(`user namespace ${what} mappings do not map ${what} 0`);
      for (const m of list) {
        if (m.length <= 0 || m.hostId < 0 || m.containerId < 0 || m.hostId + m.length > 2 ** 32 || m.containerId + m.length > 2 ** 32) {
          throw invalidArgument(`user namespace ${what} mapping ${m.containerId}:${m.hostId}:${m.length} is out of range`);
        }
      }
    }
  }
}
