/**
 * Registry endpoint configuration in containerd's hosts.toml format, so operators can reuse their
 * existing `certs.d` trees:
 *
 *   <configDir>/<host>/hosts.toml    (host as in the reference: `docker.io`, `localhost:5000`;
 *                                     `host_port_` is accepted too; `_default` applies to any
 *                                     registry without its own directory)
 *
 *   server = "https://registry.example.com"      # upstream, tried last
 *   capabilities = ["pull", "resolve"]
 *   ca = "/path/ca.pem"  |  ["a.pem", "b.pem"]   # relative paths are relative to the host dir
 *   client = "cert.pem"  |  ["both.pem"]  |  [["cert.pem", "key.pem"]]
 *   skip_verify = false
 *   override_path = false
 *   dial_timeout = "10s"
 *   [header]  x-custom = "v" | ["v1", "v2"]
 *   [host."https://mirror.example.com"]          # mirrors, tried first, in file order
 *     (the same keys)
 *
 * A host directory without hosts.toml is read in Docker's certs.d layout instead (`*.crt` CAs,
 * `*.cert`/`*.key` client pairs) and applies to the upstream server.
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import * as net from 'node:net';
import { parse as parseToml, TomlError } from 'smol-toml';
import { failedPrecondition } from '../util/errors';
import {
  type ConfiguredCredentials,
  type RegistryCredentials,
  credentialsFromConfig,
  normalizeServerAddress,
} from './registry_auth';

export const DEFAULT_REGISTRY_CONFIG_DIR = '/etc/crisp/certs.d';
const DOCKER_HUB_DOMAIN = 'docker.io';
const DOCKER_HUB_REGISTRY = 'registry-1.docker.io';

export type HostCapability = 'pull' | 'resolve' | 'push';
const ALL_CAPABILITIES: readonly HostCapability[] = ['pull', 'resolve', 'push'];

export interface ClientCertificate {
  certFile: string;
  /** Absent when the certificate file also holds the private key. */
  keyFile?: string;
}

export interface RegistryEndpoint {
  scheme: 'http' | 'https';
  /** host[:port] */
  host: string;
  /** API root: `/v2` (or `<prefix>/v2`), or exactly the configured path with override_path. */
  path: string;
  capabilities: readonly HostCapability[];
  skipVerify: boolean;
  caFiles: string[];
  clientCertificates: ClientCertificate[];
  /** Extra request headers, names as configured. */
  headers: Record<string, string[]>;
  dialTimeoutMs?: number;
  /**
   * The endpoint serves the registry on behalf of another name, so requests carry `?ns=<registry>`
   * (containerd's convention for pull-through mirrors).
   */
  mirror: boolean;
  /** Credentials configured in the daemon for this endpoint. */
  credentials?: RegistryCredentials;
  /** The hosts.toml (or directory) this endpoint was configured by, for messages. */
  source?: string;
}

export interface RegistryHostsOptions {
  /** Directory of per-registry host directories; empty string disables host files. */
  configDir?: string;
  /** Credentials by registry host (as in Docker's config.json `auths`). */
  credentials?: Record<string, ConfiguredCredentials>;
}

/** Host part of a host[:port], without IPv6 brackets. */
function hostnameOf(hostport: string): { hostname: string; port?: string } {
  const m = /^\[([^\]]+)\](?::(\d+))?$/.exec(hostport);
  if (m) return { hostname: m[1], port: m[2] };
  const colon = hostport.lastIndexOf(':');
  if (colon >= 0 && hostport.indexOf(':') === colon) return { hostname: hostport.slice(0, colon), port: hostport.slice(colon + 1) };
  return { hostname: hostport };
}

/** localhost, 127.0.0.0/8 and ::1, with or without a port. */
export function isLoopbackHost(hostport: string): boolean {
  const { hostname } = hostnameOf(hostport);
  if (hostname === 'localhost') return true;
  if (net.isIPv4(hostname)) return hostname.startsWith('127.');
  if (net.isIPv6(hostname)) return hostname === '::1' || hostname === '0:0:0:0:0:0:0:1';
  return false;
}

/** Whether requests to `endpointHost` for `registry` go through a mirror (containerd's isProxy). */
function isMirrorOf(endpointHost: string, registry: string): boolean {
  if (endpointHost === registry) return false;
  return !(registry === DOCKER_HUB_DOMAIN && endpointHost === DOCKER_HUB_REGISTRY);
}

/** One host entry as written in a hosts.toml, before defaults for the upstream are applied. */
export interface HostFileEntry {
  /** Undefined for a root section without `server`. */
  url?: { scheme: 'http' | 'https'; host: string; path: string };
  capabilities?: HostCapability[];
  skipVerify?: boolean;
  caFiles: string[];
  clientCertificates: ClientCertificate[];
  headers: Record<string, string[]>;
  overridePath: boolean;
  dialTimeoutMs?: number;
}

const DURATION_UNITS_MS: Record<string, number> = { ns: 1e-6, us: 1e-3, 'µs': 1e-3, ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** Go duration syntax as containerd accepts it (`10s`, `1m30s`, `500ms`). */
function parseGoDuration(s: string): number | undefined {
  if (!/^(?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h))+$/.test(s)) return undefined;
  let total = 0;
  for (const m of s.matchAll(/(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)/g)) total += Number(m[1]) * DURATION_UNITS_MS[m[2]];
  return total;
}

function parseHostSection(
  table: Record<string, unknown>,
  server: string | undefined,
  baseDir: string,
  problem: (msg: string) => never,
  where: string,
): HostFileEntry {
  const abs = (p: string) => (path.isAbsolute(p) ? p : path.join(baseDir, p));
  const entry: HostFileEntry = { caFiles: [], clientCertificates: [], headers: {}, overridePath: false };

  const override = table.override_path;
  if (override !== undefined) {
    if (typeof override !== 'boolean') problem(`${where}override_path must be a boolean`);
    entry.overridePath = override;
  }

  if (server !== undefined) {
    const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(server) ? server : `https://${server}`;
    let u: URL;
    try {
      u = new URL(withScheme);
    } catch {
      return problem(`${where}invalid server URL "${server}"`);
    }
    if (u.protocol !== 'http:' && u.protocol !== 'https:') problem(`${where}server "${server}" must use http or https`);
    if (u.search || u.hash || u.username || u.password) problem(`${where}server "${server}" must not carry a query, fragment or credentials`);
    let p = path.posix.normalize(u.pathname);
    if (p === '/' || p === '.') p = '';
    p = p.replace(/\/+$/, '');
    if (!entry.overridePath && !p.endsWith('/v2')) p += '/v2';
    entry.url = { scheme: u.protocol === 'http:' ? 'http' : 'https', host: u.host, path: p || '/' };
  }

  const caps = table.capabilities;
  if (caps !== undefined) {
    if (!Array.isArray(caps)) problem(`${where}capabilities must be an array of strings`);
    const list = caps as unknown[];
    if (list.length > 0) {
      const out = new Set<HostCapability>();
      for (const c of list) {
        const name = typeof c === 'string' ? c.toLowerCase() : '';
        if (!(ALL_CAPABILITIES as readonly string[]).includes(name)) problem(`${where}unknown capability ${JSON.stringify(c)} (allowed: pull, resolve, push)`);
        out.add(name as HostCapability);
      }
      entry.capabilities = [...out];
    }
  }

  const skip = table.skip_verify;
  if (skip !== undefined) {
    if (typeof skip !== 'boolean') problem(`${where}skip_verify must be a boolean`);
    entry.skipVerify = skip;
  }

  const ca = table.ca;
  if (ca !== undefined) {
    if (typeof ca === 'string') entry.caFiles = [abs(ca)];
    else if (Array.isArray(ca) && ca.every((x) => typeof x === 'string')) entry.caFiles = (ca as string[]).map(abs);
    else problem(`${where}ca must be a path or an array of paths`);
  }

  const client = table.client;
  if (client !== undefined) {
    if (typeof client === 'string') {
      entry.clientCertificates = [{ certFile: abs(client) }];
    } else if (Array.isArray(client)) {
      for (const item of client as unknown[]) {
        if (typeof item === 'string') entry.clientCertificates.push({ certFile: abs(item) });
        else if (Array.isArray(item) && item.length === 2 && item.every((x) => typeof x === 'string')) {
          entry.clientCertificates.push({ certFile: abs(item[0] as string), keyFile: abs(item[1] as string) });
        } else problem(`${where}client entries must be a path or a [certificate, key] pair`);
      }
    } else problem(`${where}client must be a path, an array of paths, or an array of [certificate, key] pairs`);
  }

  const header = table.header;
  if (header !== undefined) {
    if (typeof header !== 'object' || header === null || Array.isArray(header)) problem(`${where}header must be a table`);
    for (const [name, value] of Object.entries(header as Record<string, unknown>)) {
      if (typeof value === 'string') entry.headers[name] = [value];
      else if (Array.isArray(value) && value.every((x) => typeof x === 'string')) entry.headers[name] = value as string[];
      else problem(`${where}header "${name}" must be a string or an array of strings`);
    }
  }

  const dial = table.dial_timeout;
  if (dial !== undefined) {
    const ms = typeof dial === 'string' ? parseGoDuration(dial) : undefined;
    if (ms === undefined) problem(`${where}dial_timeout must be a duration such as "10s"`);
    entry.dialTimeoutMs = ms;
  }
  return entry;
}

/**
 * Parses a hosts.toml: the mirror entries in file order followed by the root entry (whose `url`
 * is undefined when the file sets no `server`). Throws FailedPrecondition naming `file`.
 */
export function parseHostsToml(text: string, file: string): HostFileEntry[] {
  const problem = (msg: string): never => {
    throw failedPrecondition(`invalid registry host configuration ${file}: ${msg}`);
  };
  let doc: Record<string, unknown>;
  try {
    doc = parseToml(text) as Record<string, unknown>;
  } catch (err) {
    if (err instanceof TomlError) problem(`line ${err.line}, column ${err.column}: ${err.message.split('\n')[0]}`);
    return problem((err as Error).message);
  }
  const baseDir = path.dirname(file);
  const server = doc.server;
  if (server !== undefined && (typeof server !== 'string' || server === '')) problem('server must be a non-empty string');

  const entries: HostFileEntry[] = [];
  const hosts = doc.host;
  if (hosts !== undefined) {
    if (typeof hosts !== 'object' || hosts === null || Array.isArray(hosts)) problem('host must be a table of [host."<url>"] sections');
    // TOML tables keep their keys in document order, which is the order mirrors are tried.
    for (const [url, section] of Object.entries(hosts as Record<string, unknown>)) {
      if (typeof section !== 'object' || section === null || Array.isArray(section)) problem(`host."${url}" must be a table`);
      entries.push(parseHostSection(section as Record<string, unknown>, url, baseDir, problem, `host."${url}": `));
    }
  }
  entries.push(parseHostSection(doc, server as string | undefined, baseDir, problem, ''));
  return entries;
}

async function exists(p: string): Promise<boolean> {
  try {
    await fsp.stat(p);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT' || (err as NodeJS.ErrnoException).code === 'ENOTDIR') return false;
    throw err;
  }
}

/** Docker's certs.d layout: `*.crt` are CAs, `x.cert` with optional `x.key` are client pairs. */
async function loadCertDirectory(dir: string): Promise<HostFileEntry> {
  const entry: HostFileEntry = { caFiles: [], clientCertificates: [], headers: {}, overridePath: false };
  const names = (await fsp.readdir(dir, { withFileTypes: true })).filter((d) => !d.isDirectory()).map((d) => d.name).sort();
  for (const name of names) {
    if (name.endsWith('.crt')) entry.caFiles.push(path.join(dir, name));
    if (name.endsWith('.cert')) {
      const key = path.join(dir, `${name.slice(0, -'.cert'.length)}.key`);
      entry.clientCertificates.push({ certFile: path.join(dir, name), ...((await exists(key)) ? { keyFile: key } : {}) });
    }
  }
  return entry;
}

/** Resolves a registry name to the endpoints to try, in order. */
export class RegistryHosts {
  readonly configDir: string;
  private readonly credentials = new Map<string, RegistryCredentials>();

  constructor(opts: RegistryHostsOptions = {}) {
    this.configDir = opts.configDir ?? DEFAULT_REGISTRY_CONFIG_DIR;
    for (const [host, c] of Object.entries(opts.credentials ?? {})) {
      const creds = credentialsFromConfig(c, host);
      if (creds) this.credentials.set(normalizeServerAddress(host), creds);
    }
  }

  /** The host directory for `registry`, as containerd looks it up. */
  async hostDirectory(registry: string): Promise<string | undefined> {
    if (!this.configDir) return undefined;
    const candidates: string[] = [];
    const colon = registry.lastIndexOf(':');
    if (colon > 0) candidates.push(`${registry.slice(0, colon)}_${registry.slice(colon + 1)}_`);
    candidates.push(registry, '_default');
    for (const c of candidates) {
      const dir = path.join(this.configDir, c);
      if (await exists(dir)) return dir;
    }
    return undefined;
  }

  /**
   * Endpoints for `registry` (a reference domain such as `docker.io` or `localhost:5000`): the
   * configured mirrors in file order, then the upstream server.
   */
  async endpoints(registry: string): Promise<RegistryEndpoint[]> {
    let entries: HostFileEntry[] | undefined;
    let source: string | undefined;
    const dir = await this.hostDirectory(registry);
    if (dir) {
      const file = path.join(dir, 'hosts.toml');
      let text: string | undefined;
      try {
        text = await fsp.readFile(file, 'utf8');
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
          throw failedPrecondition(`reading registry host configuration ${file}: ${(err as Error).message}`);
        }
      }
      if (text !== undefined && text.trim() !== '') {
        entries = parseHostsToml(text, file);
        source = file;
      } else {
        entries = [await loadCertDirectory(dir)];
        source = dir;
      }
    }
    entries ??= [{ caFiles: [], clientCertificates: [], headers: {}, overridePath: false }];

    return entries.map((e, i) => {
      const isRoot = i === entries.length - 1;
      let url = e.url;
      let skipVerify = e.skipVerify ?? false;
      let capabilities = e.capabilities ?? ALL_CAPABILITIES;
      if (isRoot && !url) {
        // No `server`: the registry itself, with containerd's defaults.
        capabilities = ALL_CAPABILITIES;
        if (registry === DOCKER_HUB_DOMAIN) {
          url = { scheme: 'https', host: DOCKER_HUB_REGISTRY, path: '/v2' };
        } else if (isLoopbackHost(registry)) {
          // Local registries are nearly always plain HTTP; an explicit :443 means TLS with a
          // self-signed certificate.
          const tls = hostnameOf(registry).port === '443';
          url = { scheme: tls ? 'https' : 'http', host: registry, path: '/v2' };
          if (tls && e.skipVerify === undefined) skipVerify = true;
        } else {
          url = { scheme: 'https', host: registry, path: '/v2' };
        }
      }
      const endpointUrl = url as NonNullable<HostFileEntry['url']>;
      const mirror = isMirrorOf(endpointUrl.host, registry);
      const credentials =
        this.credentials.get(normalizeServerAddress(endpointUrl.host)) ??
        (mirror ? undefined : this.credentials.get(normalizeServerAddress(registry)));
      const endpoint: RegistryEndpoint = {
        scheme: endpointUrl.scheme,
        host: endpointUrl.host,
        path: endpointUrl.path,
        capabilities,
        skipVerify,
        caFiles: e.caFiles,
        clientCertificates: e.clientCertificates,
        headers: e.headers,
        mirror,
      };
      if (e.dialTimeoutMs !== undefined) endpoint.dialTimeoutMs = e.dialTimeoutMs;
      if (credentials) endpoint.credentials = credentials;
      if (source) endpoint.source = source;
      return endpoint;
    });
  }
}
