/**
 * What one attachment passes to the plugins of a network: the pod's identity in CNI_ARGS, the
 * runtime's network options as capability arguments, and each plugin's stdin config.
 */
import { CrispError } from '../util/errors';
import type { CniNetworkConfigList, CniPluginConfig } from './cni_config';
import { isObject } from './cni_invocation';

export const DEFAULT_POD_IFNAME = 'eth0';
const CONTAINER_ID_PATTERN = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;

export interface CniPortMapping {
  hostPort: number;
  containerPort: number;
  /** tcp, udp or sctp, any case (the portmap convention is lower case). */
  protocol: string;
  /** Empty or absent binds all host addresses. */
  hostIP?: string;
}

/** Rates in bits per second, bursts in bits, as the bandwidth capability convention defines them. */
export interface CniBandwidth {
  ingressRate?: number;
  ingressBurst?: number;
  egressRate?: number;
  egressBurst?: number;
}

export interface CniDnsConfig {
  servers?: string[];
  searches?: string[];
  options?: string[];
}

/** Capability arguments; each reaches only the plugins whose config declares that capability. */
export interface CniRuntimeConfig {
  portMappings?: CniPortMapping[];
  bandwidth?: CniBandwidth;
  dns?: CniDnsConfig;
  /** Requested pod IPs (the "ips" capability), in CIDR or plain form as the plugin accepts. */
  ips?: string[];
  cgroupPath?: string;
  /** Passed as the `io.kubernetes.cri.pod-annotations` capability, as containerd does. */
  podAnnotations?: Record<string, string>;
}

export interface CniAttachParams {
  /** The sandbox id; CNI_CONTAINERID. */
  containerId: string;
  netnsPath: string;
  /** Interface inside the pod; defaults to eth0. */
  ifName?: string;
  podName: string;
  podNamespace: string;
  podUid: string;
  runtimeConfig?: CniRuntimeConfig;
  /** Aborts the operation (e.g. the RPC deadline passed); running plugins are killed. */
  signal?: AbortSignal;
}

/**
 * The stdin config of one plugin of a list: the plugin's own config with the list's name and
 * version, `capabilities` replaced by the matching capability arguments in `runtimeConfig`, and
 * `prevResult` when there is one.
 */
export function pluginExecConfig(
  list: Pick<CniNetworkConfigList, 'name' | 'cniVersion'>,
  plugin: CniPluginConfig,
  capabilityArgs: Record<string, unknown>,
  prevResult?: Record<string, unknown>,
): Record<string, unknown> {
  const { capabilities, ...rest } = structuredClone(plugin) as Record<string, unknown>;
  const conf: Record<string, unknown> = { ...rest, name: list.name, cniVersion: list.cniVersion };
  delete conf.prevResult;
  const runtimeConfig: Record<string, unknown> = {};
  if (isObject(capabilities)) {
    for (const [capability, enabled] of Object.entries(capabilities)) {
      if (enabled === true && capabilityArgs[capability] !== undefined) runtimeConfig[capability] = capabilityArgs[capability];
    }
  }
  if (Object.keys(runtimeConfig).length > 0) conf.runtimeConfig = runtimeConfig;
  if (prevResult !== undefined) conf.prevResult = prevResult;
  return conf;
}

/** Maps the runtime's view of a pod's network options to CNI capability arguments. */
export function capabilityArgsOf(rc: CniRuntimeConfig | undefined): Record<string, unknown> {
  const args: Record<string, unknown> = {};
  if (rc === undefined) return args;
  // kubelet lists container ports without a host port too; those are not port mappings.
  const mappings = (rc.portMappings ?? [])
    .filter((pm) => pm.hostPort > 0)
    .map((pm) => {
      const entry: Record<string, unknown> = {
        hostPort: pm.hostPort,
        containerPort: pm.containerPort,
        protocol: (pm.protocol || 'tcp').toLowerCase(),
      };
      if (pm.hostIP) entry.hostIP = pm.hostIP;
      return entry;
    });
  if (mappings.length > 0) args.portMappings = mappings;
  if (rc.bandwidth !== undefined && Object.values(rc.bandwidth).some((v) => v !== undefined && v > 0)) {
    args.bandwidth = rc.bandwidth;
  }
  if (rc.dns !== undefined) args.dns = rc.dns;
  if (rc.ips !== undefined && rc.ips.length > 0) args.ips = rc.ips;
  if (rc.cgroupPath) args.cgroupPath = rc.cgroupPath;
  if (rc.podAnnotations !== undefined) args['io.kubernetes.cri.pod-annotations'] = rc.podAnnotations;
  return args;
}

export function cniArgsOf(params: CniAttachParams): [string, string][] {
  const pairs: [string, string][] = [
    ['IgnoreUnknown', '1'],
    ['K8S_POD_NAMESPACE', params.podNamespace],
    ['K8S_POD_NAME', params.podName],
    ['K8S_POD_INFRA_CONTAINER_ID', params.containerId],
    ['K8S_POD_UID', params.podUid],
  ];
  for (const [key, value] of pairs) {
    if (/[;=]/.test(value)) throw new CrispError('InvalidArgument', `${key} ${JSON.stringify(value)} cannot be passed in CNI_ARGS`);
  }
  return pairs;
}

export function formatCniArgs(pairs: [string, string][]): string {
  return pairs.map(([k, v]) => `${k}=${v}`).join(';');
}

/** Checks the sandbox id and interface name of an attachment; returns the interface name. */
export function validateAttachParams(params: CniAttachParams): string {
  if (!CONTAINER_ID_PATTERN.test(params.containerId)) {
    throw new CrispError('InvalidArgument', `invalid CNI container id ${JSON.stringify(params.containerId)}`);
  }
  const ifName = params.ifName ?? DEFAULT_POD_IFNAME;
  if (ifName.length > 15 || ifName === '.' || ifName === '..' || !/^[^/:\s]+$/.test(ifName)) {
    throw new CrispError('InvalidArgument', `invalid interface name ${JSON.stringify(ifName)}`);
  }
  return ifName;
}
