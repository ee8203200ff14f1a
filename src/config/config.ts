import * as fs from 'node:fs';
import { parse as parseToml, TomlError } from 'smol-toml';

/**
 * The daemon's configuration. Every key has an embedded default so crisp runs with no file at all;
 * a file (TOML, snake_case keys as in containerd and CRI-O) overrides what it names.
 */
export interface Config {
  socket: string;
  root: string;
  state: string;
  logLevel: LogLevel;
  grpc: {
    /** CRI API versions served; a call through another one answers UNIMPLEMENTED. */
    apiVersions: CriApiVersion[];
  };
  streaming: {
    address: string;
    port: number;
    /** How long an Exec/Attach/PortForward URL stays valid, in milliseconds. */
    tokenTtlMs: number;
  };
  cni: {
    confDir: string;
    binDirs: string[];
    pluginTimeoutMs: number;
  };
  registry: {
    configPath: string;
    /** A transfer that receives no bytes for this long is aborted. */
    stallTimeoutMs: number;
    maxConcurrentDownloads: number;
    /** Credentials per registry host, as in Docker's config.json `auths`. */
    auths: Record<string, RegistryAuth>;
  };
  cgroup: {
    driver: 'cgroupfs' | 'systemd';
  };
  runtime: {
    /** Handler used when kubelet sends an empty runtime_handler. */
    defaultHandler: string;
    /** Further RuntimeClass handler names accepted and advertised in Status. */
    handlers: string[];
  };
  metrics: {
    /** host:port for the Prometheus endpoint; empty disables it. */
    address: string;
  };
  cdi: {
    /** Directories of CDI spec files, lowest priority first. */
    specDirs: string[];
  };
}

export interface RegistryAuth {
  username?: string;
  password?: string;
  /** base64 of "username:password". */
  auth?: string;
  identitytoken?: string;
}

/** CRI API packages crisp can serve: runtime.v1, and runtime.v1alpha2 for kubelets 1.20–1.25. */
export type CriApiVersion = 'v1' | 'v1alpha2';
export const CRI_API_VERSIONS: readonly CriApiVersion[] = ['v1', 'v1alpha2'];

export type LogLevel = 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal';
export const LOG_LEVELS: readonly LogLevel[] = ['trace', 'debug', 'info', 'warn', 'error', 'fatal'];

export function defaultConfig(): Config {
  return {
    socket: '/run/crisp/crisp.sock',
    root: '/var/lib/crisp',
    state: '/run/crisp',
    logLevel: 'info',
    grpc: { apiVersions: [...CRI_API_VERSIONS] },
    streaming: { address: '127.0.0.1', port: 0, tokenTtlMs: 60_000 },
    cni: { confDir: '/etc/cni/net.d', binDirs: ['/opt/cni/bin', '/usr/lib/cni'], pluginTimeoutMs: 60_000 },
    registry: { configPath: '/etc/crisp/certs.d', stallTimeoutMs: 60_000, maxConcurrentDownloads: 3, auths: {} },
    cgroup: { driver: 'cgroupfs' },
    runtime: { defaultHandler: 'crisp', handlers: [] },
    metrics: { address: '' },
    // Where containerd and CRI-O look for CDI specs; the later directory wins.
    cdi: { specDirs: ['/etc/cdi', '/var/run/cdi'] },
  };
}

/** A configuration problem the CLI reports as one line and exit code 2. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

type Kind = 'string' | 'port' | 'duration' | 'string[]' | 'positive' | 'loglevel' | 'driver' | 'address' | 'auths' | 'apiversions';

/** Where each file key lands in Config, and what it must be. */
interface KeySpec {
  path: string[];
  kind: Kind;
  doc: string;
}

const SCHEMA: Record<string, Record<string, KeySpec> | KeySpec> = {
  socket: { path: ['socket'], kind: 'string', doc: 'gRPC unix socket kubelet and crictl connect to.' },
  root: { path: ['root'], kind: 'string', doc: 'Persistent data: images, snapshots, container layers.' },
  state: { path: ['state'], kind: 'string', doc: 'Runtime state that does not survive a reboot: sandboxes, containers, monitors.' },
  log_level: { path: ['logLevel'], kind: 'loglevel', doc: 'One of trace, debug, info, warn, error, fatal.' },
  grpc: {
    api_versions: {
      path: ['grpc', 'apiVersions'],
      kind: 'apiversions',
      doc: 'CRI API versions served: "v1" and "v1alpha2" (kubelet 1.20-1.25); calls through another one answer UNIMPLEMENTED.',
    },
  },
  streaming: {
    address: { path: ['streaming', 'address'], kind: 'address', doc: 'Address of the Exec/Attach/PortForward server.' },
    port: { path: ['streaming', 'port'], kind: 'port', doc: 'Its port; 0 picks a free one.' },
    token_ttl: { path: ['streaming', 'tokenTtlMs'], kind: 'duration', doc: 'How long a streaming URL stays valid.' },
  },
  cni: {
    conf_dir: { path: ['cni', 'confDir'], kind: 'string', doc: 'Network configuration (.conflist, .conf, .json); the first by name is used.' },
    bin_dirs: { path: ['cni', 'binDirs'], kind: 'string[]', doc: 'Where CNI plugin binaries are looked up, in order.' },
    plugin_timeout: { path: ['cni', 'pluginTimeoutMs'], kind: 'duration', doc: 'A plugin invocation running longer is killed.' },
  },
  registry: {
    config_path: { path: ['registry', 'configPath'], kind: 'string', doc: 'Directory of <host>/hosts.toml files (containerd format).' },
    stall_timeout: { path: ['registry', 'stallTimeoutMs'], kind: 'duration', doc: 'Abort a download that receives no bytes for this long.' },
    max_concurrent_downloads: { path: ['registry', 'maxConcurrentDownloads'], kind: 'positive', doc: 'Layers downloaded in parallel per pull.' },
    auths: {
      path: ['registry', 'auths'],
      kind: 'auths',
      doc: 'Credentials per registry host: [registry.auths."host"] with username/password, auth or identitytoken.',
    },
  },
  cgroup: {
    driver: { path: ['cgroup', 'driver'], kind: 'driver', doc: 'cgroupfs, or systemd (needs systemd as PID 1).' },
  },
  runtime: {
    default_handler: { path: ['runtime', 'defaultHandler'], kind: 'string', doc: 'Handler for pods without a RuntimeClass.' },
    handlers: { path: ['runtime', 'handlers'], kind: 'string[]', doc: 'Additional RuntimeClass handler names.' },
  },
  metrics: {
    address: { path: ['metrics', 'address'], kind: 'string', doc: 'host:port of the Prometheus endpoint; empty disables it.' },
  },
  cdi: {
    spec_dirs: { path: ['cdi', 'specDirs'], kind: 'string[]', doc: 'CDI spec file directories (JSON or YAML), lowest priority first.' },
  },
};

function isSpec(v: KeySpec | Record<string, KeySpec>): v is KeySpec {
  return Array.isArray((v as KeySpec).path);
}

const DURATION = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/;
const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** Parses "90s", "1m", "500ms" (Go-style single-unit durations) into milliseconds. */
export function parseDuration(text: string): number | undefined {
  const m = DURATION.exec(text.trim());
  if (!m) return undefined;
  return Math.round(Number(m[1]) * UNIT_MS[m[2]]);
}

function formatDuration(ms: number): string {
  if (ms % 3_600_000 === 0) return `${ms / 3_600_000}h`;
  if (ms % 60_000 === 0) return `${ms / 60_000}m`;
  if (ms % 1000 === 0) return `${ms / 1000}s`;
  return `${ms}ms`;
}

function convert(value: unknown, spec: KeySpec, where: string): unknown {
  const bad = (what: string): never => {
    throw new ConfigError(`${where}: ${what}`);
  };
  switch (spec.kind) {
    case 'string':
    case 'address':
      if (typeof value !== 'string') bad(`expected a string, got ${describe(value)}`);
      return value;
    case 'loglevel':
      if (typeof value !== 'string' || !LOG_LEVELS.includes(value as LogLevel)) {
        bad(`expected one of ${LOG_LEVELS.join(', ')}, got ${describe(value)}`);
      }
      return value;
    case 'driver':
      if (value !== 'cgroupfs' && value !== 'systemd') bad(`expected "cgroupfs" or "systemd", got ${describe(value)}`);
      return value;
    case 'port':
      if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > 65535) {
        bad(`expected a port number 0-65535, got ${describe(value)}`);
      }
      return value;
    case 'positive':
      if (typeof value !== 'number' || !Number.isInteger(value) || value < 1) {
        bad(`expected a positive integer, got ${describe(value)}`);
      }
      return value;
    case 'duration': {
      const ms = typeof value === 'string' ? parseDuration(value) : undefined;
      if (ms === undefined) bad(`expected a duration such as "30s" or "1m", got ${describe(value)}`);
      return ms;
    }
    case 'string[]':
      if (!Array.isArray(value) || value.some((v) => typeof v !== 'string')) {
        bad(`expected an array of strings, got ${describe(value)}`);
      }
      return value;
    case 'apiversions': {
      const expected = `a non-empty array of ${CRI_API_VERSIONS.map((v) => JSON.stringify(v)).join(', ')}`;
      if (!Array.isArray(value) || value.length === 0) bad(`expected ${expected}, got ${describe(value)}`);
      const versions = value as unknown[];
      for (const v of versions) {
        if (!CRI_API_VERSIONS.includes(v as CriApiVersion)) bad(`expected ${expected}, got ${describe(v)} in the array`);
      }
      const duplicate = versions.find((v, i) => versions.indexOf(v) !== i);
      if (duplicate !== undefined) bad(`${describe(duplicate)} is listed twice`);
      return versions;
    }
    case 'auths': {
      if (typeof value !== 'object' || value === null || Array.isArray(value)) bad(`expected a table of registry hosts, got ${describe(value)}`);
      const out: Record<string, RegistryAuth> = {};
      for (const [host, entry] of Object.entries(value as Record<string, unknown>)) {
        if (typeof entry !== 'object' || entry === null || Array.isArray(entry)) bad(`"${host}": expected a table, got ${describe(entry)}`);
        const auth: RegistryAuth = {};
        for (const [k, v] of Object.entries(entry as Record<string, unknown>)) {
          if (!['username', 'password', 'auth', 'identitytoken'].includes(k)) bad(`"${host}": unknown key "${k}"`);
          if (typeof v !== 'string') bad(`"${host}.${k}": expected a string, got ${describe(v)}`);
          auth[k as keyof RegistryAuth] = v as string;
        }
        out[host] = auth;
      }
      return out;
    }
  }
}

function describe(value: unknown): string {
  if (Array.isArray(value)) return 'an array';
  if (value === null) return 'null';
  if (typeof value === 'object') return 'a table';
  if (typeof value === 'string') return JSON.stringify(value);
  return `${typeof value} ${String(value)}`;
}

function setPath(target: Config, path: string[], value: unknown): void {
  let obj = target as unknown as Record<string, unknown>;
  for (const key of path.slice(0, -1)) obj = obj[key] as Record<string, unknown>;
  obj[path[path.length - 1]] = value;
}

/** Applies a parsed TOML document onto `base`, rejecting unknown keys and wrong types. */
export function applyDocument(base: Config, doc: Record<string, unknown>, file: string): Config {
  const out = structuredClone(base);
  for (const [key, value] of Object.entries(doc)) {
    const spec = SCHEMA[key];
    if (!spec) throw new ConfigError(`${file}: unknown key "${key}"`);
    if (isSpec(spec)) {
      setPath(out, spec.path, convert(value, spec, `${file}: key "${key}"`));
      continue;
    }
    if (typeof value !== 'object' || value === null || Array.isArray(value)) {
      throw new ConfigError(`${file}: key "${key}": expected a table [${key}], got ${describe(value)}`);
    }
    for (const [sub, subValue] of Object.entries(value as Record<string, unknown>)) {
      const subSpec = spec[sub];
      if (!subSpec) throw new ConfigError(`${file}: unknown key "${key}.${sub}"`);
      setPath(out, subSpec.path, convert(subValue, subSpec, `${file}: key "${key}.${sub}"`));
    }
  }
  return out;
}

/** Reads and validates a config file on top of the embedded defaults. */
export function loadConfigFile(file: string, base: Config = defaultConfig()): Config {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new ConfigError(`${file}: cannot read config file: ${code === 'ENOENT' ? 'no such file' : String(err)}`);
  }
  let doc: Record<string, unknown>;
  try {
    doc = parseToml(text) as Record<string, unknown>;
  } catch (err) {
    if (err instanceof TomlError) {
      const firstLine = err.message.split('\n')[0];
      throw new ConfigError(`${file}:${err.line}:${err.column}: invalid TOML: ${firstLine}`);
    }
    throw new ConfigError(`${file}: invalid TOML: ${String(err)}`);
  }
  return applyDocument(base, doc, file);
}

function tomlValue(value: unknown, kind: Kind): string {
  if (kind === 'duration') return JSON.stringify(formatDuration(value as number));
  if (kind === 'auths') {
    const hosts = Object.entries(value as Record<string, RegistryAuth>).map(
      ([host, auth]) => `${JSON.stringify(host)} = { ${Object.entries(auth).map(([k, v]) => `${k} = ${JSON.stringify(v)}`).join(', ')} }`,
    );
    return `{ ${hosts.join(', ')} }`;
  }
  return JSON.stringify(value);
}

function getPath(config: Config, path: string[]): unknown {
  let obj: unknown = config;
  for (const key of path) obj = (obj as Record<string, unknown>)[key];
  return obj;
}

/** The effective configuration as a commented TOML document (`crisp config default`). */
export function renderConfig(config: Config): string {
  const lines: string[] = ['# crisp configuration. Every key is optional; shown are the values in effect.', ''];
  const tables: [string, Record<string, KeySpec>][] = [];
  for (const [key, spec] of Object.entries(SCHEMA)) {
    if (!isSpec(spec)) {
      tables.push([key, spec]);
      continue;
    }
    lines.push(`# ${spec.doc}`, `${key} = ${tomlValue(getPath(config, spec.path), spec.kind)}`, '');
  }
  for (const [table, keys] of tables) {
    lines.push(`[${table}]`);
    for (const [key, spec] of Object.entries(keys)) {
      lines.push(`# ${spec.doc}`, `${key} = ${tomlValue(getPath(config, spec.path), spec.kind)}`);
    }
    lines.push('');
  }
  return lines.join('\n');
}
