/**
 * HTTP transport to registries: keep-alive agents per endpoint (with its TLS settings), single
 * exchanges bounded by the stall timeout and an optional dial timeout, redirects followed under
 * the header and scheme rules below, and response bodies read with the stall timeout between
 * chunks. Nothing here knows about repositories, credentials or manifests.
 */
import { promises as fsp } from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import * as tls from 'node:tls';
import { CrispError, deadlineExceeded, errorMessage, failedPrecondition, unavailable } from '../util/errors';
import type { RegistryEndpoint } from './registry_hosts';

/** What a registry transfer carries, for byte counters. */
export type TransferKind = 'manifest' | 'blob';

export type ByteCounter = (bytes: number, info: { host: string; kind: TransferKind }) => void;

export interface SendInit {
  method: 'GET' | 'HEAD' | 'POST';
  headers: Record<string, string>;
  body?: string;
  agent: http.Agent;
  signal?: AbortSignal;
  /** What is being transferred, for timeout messages. */
  what: string;
  /** Limit on establishing a new connection. */
  dialTimeoutMs?: number;
}

const REDIRECT_STATUS = new Set([301, 302, 303, 307, 308]);
const MAX_REDIRECTS = 10;
/** Headers a redirect to another origin still carries: they describe the request, not the caller. */
const CROSS_ORIGIN_HEADERS = new Set(['user-agent', 'accept', 'range', 'content-type', 'content-length']);

export function formatDuration(ms: number): string {
  return ms >= 1000 ? `${Number((ms / 1000).toFixed(1))}s` : `${ms}ms`;
}

/** The abort reason when it is a CrispError (a deadline, a shutdown), else a plain cancellation. */
export function canceled(what: string, signal?: AbortSignal): CrispError {
  const reason = signal?.reason instanceof CrispError ? signal.reason : undefined;
  return reason ?? new CrispError('Canceled', `${what}: canceled`);
}

export function sleep(ms: number, signal: AbortSignal | undefined, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(canceled(what, signal));
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(canceled(what, signal));
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** Delay requested by Retry-After (seconds or an HTTP date), if any. */
export function retryAfterMs(res: http.IncomingMessage): number | undefined {
  const v = res.headers['retry-after'];
  if (!v) return undefined;
  if (/^\d+$/.test(v)) return Number(v) * 1000;
  const at = Date.parse(v);
  return Number.isNaN(at) ? undefined : Math.max(0, at - Date.now());
}

export function headerString(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v;
}

/** Drains a response whose body is not wanted, so its connection can be reused. */
export function discard(res: http.IncomingMessage): void {
  res.on('error', () => {});
  res.resume();
}

/** The origin of an endpoint, e.g. `https://registry-1.docker.io`. */
export function endpointOrigin(ep: RegistryEndpoint): string {
  return new URL(`${ep.scheme}://${ep.host}`).origin;
}

const AGENT_DEFAULTS = { keepAlive: true, maxSockets: 16, maxFreeSockets: 4, scheduling: 'lifo' as const };

export class RegistryTransport {
  private readonly agents = new Map<string, http.Agent>();
  private closed = false;

  constructor(
    /** Abort a transfer when no bytes arrive for this long. */
    readonly stallTimeoutMs: number,
    private readonly onBytes?: ByteCounter,
  ) {}

  /** Closes pooled connections. In-flight requests fail. */
  close(): void {
    this.closed = true;
    for (const agent of this.agents.values()) agent.destroy();
    this.agents.clear();
  }

  /** Reports bytes received from a registry to the byte counter. */
  countBytes(bytes: number, host: string, kind: TransferKind): void {
    this.onBytes?.(bytes, { host, kind });
  }

  /** Keep-alive agent for an endpoint, keyed by everything that affects its connections. */
  async agentFor(ep: RegistryEndpoint): Promise<http.Agent> {
    const key = JSON.stringify([ep.scheme, ep.host, ep.skipVerify, ep.caFiles, ep.clientCertificates]);
    let agent = this.agents.get(key);
    if (!agent) {
      agent = ep.scheme === 'https' ? new https.Agent({ ...AGENT_DEFAULTS, ...(await tlsOptions(ep)) }) : new http.Agent({ ...AGENT_DEFAULTS });
      const existing = this.agents.get(key);
      if (existing) {
        agent.destroy();
        agent = existing;
      } else {
        this.agents.set(key, agent);
      }
    }
    return agent;
  }

  /** Agent for hosts that are not configured endpoints (redirect targets, token realms). */
  defaultAgent(protocol: string): http.Agent {
    const key = `default:${protocol}`;
    let agent = this.agents.get(key);
    if (!agent) {
      agent = protocol === 'https:' ? new https.Agent({ ...AGENT_DEFAULTS }) : new http.Agent({ ...AGENT_DEFAULTS });
      this.agents.set(key, agent);
    }
    return agent;
  }

  /**
   * One HTTP exchange. Resolves when response headers arrive; the stall timeout covers the wait
   * for them (connection, TLS, server think time).
   */
  exchange(url: URL, init: SendInit): Promise<http.IncomingMessage> {
    if (this.closed) return Promise.reject(unavailable('registry client is closed'));
    return new Promise((resolve, reject) => {
      if (init.signal?.aborted) return reject(canceled(init.what, init.signal));
      const mod = url.protocol === 'https:' ? https : http;
      const req = mod.request(url, { method: init.method, headers: init.headers, agent: init.agent });
      let settled = false;
      const cleanup = () => {
        settled = true;
        clearTimeout(timer);
        init.signal?.removeEventListener('abort', onAbort);
      };
      const timer = setTimeout(() => {
        req.destroy(deadlineExceeded(`${init.what} from ${url.host}: no response for ${formatDuration(this.stallTimeoutMs)}`));
      }, this.stallTimeoutMs);
      const onAbort = () => req.destroy(canceled(init.what, init.signal));
      init.signal?.addEventListener('abort', onAbort, { once: true });
      const dialTimeoutMs = init.dialTimeoutMs;
      if (dialTimeoutMs !== undefined) {
        req.on('socket', (socket) => {
          if (!socket.connecting) return; // reused keep-alive connection
          const dial = setTimeout(() => {
            req.destroy(Object.assign(new Error(`connecting to ${url.host} timed out after ${formatDuration(dialTimeoutMs)}`), { code: 'ETIMEDOUT' }));
          }, dialTimeoutMs);
          socket.once('connect', () => clearTimeout(dial));
          socket.once('close', () => clearTimeout(dial));
        });
      }
      req.on('response', (res) => {
        cleanup();
        resolve(res);
      });
      req.on('error', (err) => {
        if (settled) return;
        cleanup();
        reject(err);
      });
      req.end(init.body);
    });
  }

  /**
   * Follows redirects. Authorization is only ever sent to the origin it was issued for, and the
   * other headers the request was configured with (hosts.toml `header`, which may carry keys)
   * only to the origin it was made for: elsewhere only those describing the request itself go.
   * A redirect from https to plain http is refused: it would hand the rest of the exchange to
   * anyone on the path.
   */
  async exchangeFollowing(url: URL, init: SendInit, authOrigin: string): Promise<{ res: http.IncomingMessage; url: URL }> {
    let current = url;
    let agent = init.agent;
    for (let hops = 0; ; hops++) {
      let headers = { ...init.headers };
      if (current.origin !== url.origin) {
        headers = Object.fromEntries(Object.entries(headers).filter(([name]) => CROSS_ORIGIN_HEADERS.has(name.toLowerCase())));
      }
      if (current.origin !== authOrigin) delete headers.Authorization;
      const res = await this.exchange(current, { ...init, headers, agent });
      const location = res.headers.location;
      if (!REDIRECT_STATUS.has(res.statusCode ?? 0) || !location) return { res, url: current };
      discard(res);
      if (hops >= MAX_REDIRECTS) throw unavailable(`${init.what}: more than ${MAX_REDIRECTS} redirects from ${url.host}`);
      const next = new URL(location, current);
      if (next.protocol !== 'http:' && next.protocol !== 'https:') {
        throw unavailable(`${init.what}: ${current.host} redirected to unsupported URL ${next.protocol}`);
      }
      if (current.protocol === 'https:' && next.protocol === 'http:') {
        throw unavailable(`${init.what}: ${current.host} redirected from https to plain http (${next.host}); refused`);
      }
      agent = next.origin === url.origin ? init.agent : this.defaultAgent(next.protocol);
      current = next;
    }
  }

  /**
   * Reads a whole response body of at most `limit` bytes, with the stall timeout between chunks.
   * With `truncate`, longer bodies are cut instead of failing. Bytes are counted when `kind` is set.
   */
  async readBody(
    res: http.IncomingMessage,
    limit: number,
    host: string,
    what: string,
    kind: TransferKind | undefined,
    truncate = false,
    signal?: AbortSignal,
  ): Promise<Buffer> {
    const chunks: Buffer[] = [];
    let total = 0;
    await this.consume(res, host, what, signal, async (chunk) => {
      if (kind) this.countBytes(chunk.length, host, kind);
      if (total + chunk.length > limit) {
        if (truncate) {
          chunks.push(chunk.subarray(0, limit - total));
          total = limit;
          return false;
        }
        throw failedPrecondition(`${what} from ${host}: response larger than ${limit} bytes`);
      }
      chunks.push(chunk);
      total += chunk.length;
      return true;
    });
    return Buffer.concat(chunks, total);
  }

  /**
   * Feeds a response body to `onChunk`, destroying the response if no data arrives within the
   * stall timeout. The timer is paused while `onChunk` runs so slow disks do not count as a
   * stalled server. `onChunk` returns false to stop reading.
   */
  async consume(
    res: http.IncomingMessage,
    host: string,
    what: string,
    signal: AbortSignal | undefined,
    onChunk: (chunk: Buffer) => Promise<boolean>,
  ): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const arm = () => {
      timer = setTimeout(() => {
        res.destroy(deadlineExceeded(`${what} from ${host}: no data received for ${formatDuration(this.stallTimeoutMs)}`));
      }, this.stallTimeoutMs);
    };
    const onAbort = () => res.destroy(canceled(what, signal));
    if (signal?.aborted) onAbort();
    signal?.addEventListener('abort', onAbort, { once: true });
    arm();
    try {
      for await (const chunk of res as AsyncIterable<Buffer>) {
        clearTimeout(timer);
        if (!(await onChunk(chunk))) {
          res.destroy();
          return;
        }
        arm();
      }
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
    }
  }
}

async function tlsOptions(ep: RegistryEndpoint): Promise<https.AgentOptions> {
  const opts: https.AgentOptions = { rejectUnauthorized: !ep.skipVerify };
  const read = async (file: string, what: string) => {
    try {
      return await fsp.readFile(file, 'utf8');
    } catch (err) {
      throw failedPrecondition(`reading ${what} ${file} for registry ${ep.host}: ${errorMessage(err)}`);
    }
  };
  if (ep.caFiles.length > 0) {
    // Configured CAs add to the system roots, as in containerd.
    opts.ca = [...tls.rootCertificates, ...(await Promise.all(ep.caFiles.map((f) => read(f, 'CA certificate'))))];
  }
  if (ep.clientCertificates.length > 0) {
    const certs: string[] = [];
    const keys: string[] = [];
    for (const c of ep.clientCertificates) {
      const cert = await read(c.certFile, 'client certificate');
      certs.push(cert);
      keys.push(c.keyFile ? await read(c.keyFile, 'client key') : cert);
    }
    opts.cert = certs;
    opts.key = keys;
  }
  return opts;
}
