/**
 * CNI ADD results, normalized across the result formats of spec versions 0.3.0 through 1.1.0.
 *
 * 0.3.x/0.4.0 results tag each IP with `version: "4" | "6"`; 1.x results drop that field. Both carry
 * interfaces, ips (with an optional index into interfaces), routes and dns. Older formats (0.1/0.2,
 * with `ip4`/`ip6` objects) are rejected: crisp never configures a network at those versions.
 */
import * as net from 'node:net';
import { CrispError } from '../util/errors';

export interface CniInterface {
  name: string;
  mac?: string;
  mtu?: number;
  /** The netns path for interfaces inside the sandbox; absent for host-side interfaces. */
  sandbox?: string;
}

export interface CniIpConfig {
  /** Address with prefix length, e.g. "10.88.0.5/24". */
  address: string;
  /** The bare address, e.g. "10.88.0.5". */
  ip: string;
  prefixLength: number;
  family: 4 | 6;
  gateway?: string;
  /** Index into `interfaces`, when the plugin said which interface carries the address. */
  interface?: number;
}

export interface CniRoute {
  dst: string;
  gw?: string;
  mtu?: number;
  advmss?: number;
  priority?: number;
  table?: number;
  scope?: number;
}

export interface CniDns {
  nameservers: string[];
  domain?: string;
  search: string[];
  options: string[];
}

export interface CniResult {
  cniVersion: string;
  interfaces: CniInterface[];
  ips: CniIpConfig[];
  routes: CniRoute[];
  dns: CniDns;
  /** The result exactly as the last plugin printed it; this is what later calls get as `prevResult`. */
  raw: Record<string, unknown>;
}

const RESULT_VERSIONS = /^(0\.3\.[01]|0\.4\.0|1\.[01]\.0)$/;

function invalid(message: string): CrispError {
  return new CrispError('Internal', `invalid CNI result: ${message}`);
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function optionalString(obj: Record<string, unknown>, key: string, where: string): string | undefined {
  const value = obj[key];
  if (value === undefined || value === null || value === '') return undefined;
  if (typeof value !== 'string') throw invalid(`${where}.${key} must be a string`);
  return value;
}

function optionalNumber(obj: Record<string, unknown>, key: string, where: string): number | undefined {
  const value = obj[key];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'number' || !Number.isInteger(value)) throw invalid(`${where}.${key} must be an integer`);
  return value;
}

function stringList(obj: Record<string, unknown>, key: string, where: string): string[] {
  const value = obj[key];
  if (value === undefined || value === null) return [];
  if (!Array.isArray(value) || !value.every((v) => typeof v === 'string')) {
    throw invalid(`${where}.${key} must be a list of strings`);
  }
  return value as string[];
}

function objectList(obj: Record<string, unknown>, key: string): Record<string, unknown>[] {
  const value = obj[key];
  if (value === undefined || value === null) return [];
  if (!Array.isArray(value)) throw invalid(`${key} must be a list`);
  return value.map((item, i) => {
    if (!isObject(item)) throw invalid(`${key}[${i}] must be an object`);
    return item;
  });
}

/** Splits "addr/len" into its parts; throws on anything that is not a valid CIDR address. */
export function parseCidr(cidr: string): { ip: string; prefixLength: number; family: 4 | 6 } {
  const slash = cidr.lastIndexOf('/');
  const ip = slash < 0 ? '' : cidr.slice(0, slash);
  const lenText = slash < 0 ? '' : cidr.slice(slash + 1);
  const family = net.isIP(ip);
  const prefixLength = /^\d{1,3}$/.test(lenText) ? Number(lenText) : NaN;
  if ((family !== 4 && family !== 6) || !(prefixLength <= (family === 4 ? 32 : 128))) {
    throw invalid(`"${cidr}" is not an address in CIDR notation`);
  }
  return { ip, prefixLength, family };
}

/**
 * Parses a plugin's ADD output. `configVersion` is the cniVersion the network was invoked with; a
 * result without its own cniVersion is read as that version.
 */
export function parseCniResult(raw: unknown, configVersion?: string): CniResult {
  if (!isObject(raw)) throw invalid('not a JSON object');
  const cniVersion = typeof raw.cniVersion === 'string' && raw.cniVersion !== '' ? raw.cniVersion : configVersion;
  if (cniVersion === undefined || !RESULT_VERSIONS.test(cniVersion)) {
    throw invalid(`unsupported result version ${JSON.stringify(cniVersion ?? null)}`);
  }

  const interfaces = objectList(raw, 'interfaces').map((iface, i): CniInterface => {
    const where = `interfaces[${i}]`;
    const name = optionalString(iface, 'name', where);
    if (name === undefined) throw invalid(`${where}.name is missing`);
    const out: CniInterface = { name };
    const mac = optionalString(iface, 'mac', where);
    if (mac !== undefined) out.mac = mac;
    const mtu = optionalNumber(iface, 'mtu', where);
    if (mtu !== undefined) out.mtu = mtu;
    const sandbox = optionalString(iface, 'sandbox', where);
    if (sandbox !== undefined) out.sandbox = sandbox;
    return out;
  });

  const ips = objectList(raw, 'ips').map((entry, i): CniIpConfig => {
    const where = `ips[${i}]`;
    const address = optionalString(entry, 'address', where);
    if (address === undefined) throw invalid(`${where}.address is missing`);
    const { ip, prefixLength, family } = parseCidr(address);
    // 0.3.x/0.4.0 label the family explicitly; a label that disagrees with the address is corrupt.
    const version = entry.version;
    if (version !== undefined && version !== '' && version !== String(family)) {
      throw invalid(`${where}.version ${JSON.stringify(version)} does not match address ${address}`);
    }
    const out: CniIpConfig = { address, ip, prefixLength, family };
    const gateway = optionalString(entry, 'gateway', where);
    if (gateway !== undefined) {
      if (net.isIP(gateway) === 0) throw invalid(`${where}.gateway "${gateway}" is not an IP address`);
      out.gateway = gateway;
    }
    const index = optionalNumber(entry, 'interface', where);
    if (index !== undefined) {
      if (index < 0 || index >= interfaces.length) throw invalid(`${where}.interface ${index} is out of range`);
      out.interface = index;
    }
    return out;
  });

  const routes = objectList(raw, 'routes').map((entry, i): CniRoute => {
    const where = `routes[${i}]`;
    const dst = optionalString(entry, 'dst', where);
    if (dst === undefined) throw invalid(`${where}.dst is missing`);
    parseCidr(dst);
    const out: CniRoute = { dst };
    const gw = optionalString(entry, 'gw', where);
    if (gw !== undefined) out.gw = gw;
    for (const key of ['mtu', 'advmss', 'priority', 'table', 'scope'] as const) {
      const value = optionalNumber(entry, key, where);
      if (value !== undefined) out[key] = value;
    }
    return out;
  });

  const dnsRaw = raw.dns;
  if (dnsRaw !== undefined && dnsRaw !== null && !isObject(dnsRaw)) throw invalid('dns must be an object');
  const dnsObj = isObject(dnsRaw) ? dnsRaw : {};
  const dns: CniDns = {
    nameservers: stringList(dnsObj, 'nameservers', 'dns'),
    search: stringList(dnsObj, 'search', 'dns'),
    options: stringList(dnsObj, 'options', 'dns'),
  };
  const domain = optionalString(dnsObj, 'domain', 'dns');
  if (domain !== undefined) dns.domain = domain;

  return { cniVersion, interfaces, ips, routes, dns, raw };
}

/**
 * The pod's addresses as kubelet expects them: the first is the pod IP, the rest are additional IPs.
 * Only addresses on the sandbox interface `ifName` count when the result says where addresses live;
 * IPv4 addresses come first (kubelet's primary family on dual-stack), each family in result order.
 */
export function podIPs(result: CniResult, ifName = 'eth0'): string[] {
  const onSandboxIface = (cfg: CniIpConfig): boolean => {
    if (cfg.interface === undefined) return false;
    const iface = result.interfaces[cfg.interface];
    return iface !== undefined && iface.name === ifName && iface.sandbox !== undefined;
  };
  let selected = result.ips.filter(onSandboxIface);
  // Plugins that do not index their addresses (IPAM-style output) only report pod addresses.
  if (selected.length === 0) selected = result.ips.filter((cfg) => cfg.interface === undefined);
  const v4 = selected.filter((cfg) => cfg.family === 4).map((cfg) => cfg.ip);
  const v6 = selected.filter((cfg) => cfg.family === 6).map((cfg) => cfg.ip);
  return [...new Set([...v4, ...v6])];
}
