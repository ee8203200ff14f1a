/**
 * OCI distribution (registry API v2) client for pulling: resolving references, fetching
 * manifests, and streaming blobs to disk with verification.
 *
 * Endpoints for a registry come from {@link RegistryHosts} (mirrors first, then upstream) and are
 * tried in order; mirrors are skipped past on connection errors, 404s and server errors, and only
 * the last endpoint is retried with backoff. Blob downloads are verified while streaming, resumed
 * with Range requests after connection drops, bounded by a per-client concurrency limit,
 * de-duplicated across concurrent callers, and aborted when the server stops sending data.
 */
import { createHash, type Hash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import * as tls from 'node:tls';
import type { Logger } from 'pino';
import { CrispError, deadlineExceeded, errorMessage, failedPrecondition, internal, notFound, unavailable } from '../util/errors';
import {
  type Descriptor,
  type ImageIndex,
  type ImageManifest,
  MANIFEST_ACCEPT,
  MAX_MANIFEST_BYTES,
  bareMediaType,
  isIndexMediaType,
  isManifestMediaType,
  isSchema1MediaType,
  parseManifest,
} from './media_types';
import { type Platform, formatPlatform, hostPlatform, selectPlatformEntry } from './platform';
import { type ImageReference, isDigest, parseDigest } from './reference';
import {
  type AuthConfig,
  type AuthScope,
  type RegistryCredentials,
  RegistryAuthenticator,
  TokenCache,
  type TokenHttp,
  credentialsFromAuthConfig,
  serverAddressMatches,
} from './registry_auth';
import type { HostCapability, RegistryEndpoint, RegistryHosts } from './registry_hosts';

export interface RegistryClientOptions {
  hosts: RegistryHosts;
  userAgent?: string;
  /** Abort a transfer when no bytes arrive for this long. Default 60 s. */
  stallTimeoutMs?: number;
  /** Attempts per request against the last endpoint (the first try included). Default 4. */
  maxAttempts?: number;
  /** First retry delay; doubles per attempt, with jitter. Default 500 ms. */
  retryBaseDelayMs?: number;
  /** Longest wait between attempts, including a server's Retry-After. Default 10 s. */
  retryMaxDelayMs?: number;
  /** Blob downloads in flight at once across all pulls. Default 3 (containerd's default). */
  maxConcurrentDownloads?: number;
  /** Platform to select from image indexes. Default: this host. */
  platform?: Platform;
  maxManifestBytes?: number;
  logger?: Logger;
  /** Called with every chunk of bytes received from a registry (for metrics). */
  onBytes?: (bytes: number, info: { host: string; kind: 'manifest' | 'blob' }) => void;
}

export interface RequestOptions {
  /** Credentials from the CRI PullImageRequest. */
  auth?: AuthConfig;
  signal?: AbortSignal;
}

export type FetchedManifest = { descriptor: Descriptor; bytes: Buffer } & (
  | { kind: 'index'; index: ImageIndex }
  | { kind: 'manifest'; manifest: ImageManifest }
);

export interface ResolvedImage {
  /** The descriptor the reference resolves to (an index or a manifest). */
  target: Descriptor;
  /** Every manifest document walked from the target down to the image manifest, in that order. */
  documents: FetchedManifest[];
  /** The platform-specific image manifest (the last of `documents`). */
  manifest: FetchedManifest & { kind: 'manifest' };
}

export interface BlobFetchOptions extends RequestOptions {
  /** Bytes received so far for this blob, and its size. */
  onProgress?: (received: number, total: number) => void;
  /**
   * Moves the verified file into place and returns where it ended up (e.g. a content store's
   * commit). It runs once per transfer, inside it, so every caller sharing the transfer sees the
   * blob already committed; with a shared transfer the first caller's function is used.
   */
  finalize?: (verifiedPath: string) => Promise<string>;
}

export interface BlobFetchResult {
  digest: string;
  size: number;
  /**
   * Where the verified, synced blob is: what `finalize` returned, or else the destination. When a
   * fetch of the same digest was already in flight this is that fetch's result, not necessarily
   * the caller's destination.
   */
  path: string;
}

/** Counting semaphore for bounding parallel downloads. */
export class Semaphore {
  private available: number;
  private readonly waiters: Array<() => void> = [];

  constructor(permits: number) {
    this.available = Math.max(1, Math.floor(permits));
  }

  async acquire(signal?: AbortSignal): Promise<() => void> {
    signal?.throwIfAborted();
    if (this.available > 0) {
      this.available--;
      return this.releaser();
    }
    return new Promise((resolve, reject) => {
      const grant = () => {
        signal?.removeEventListener('abort', onAbort);
        resolve(this.releaser());
      };
      const onAbort = () => {
        const i = this.waiters.indexOf(grant);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(signal?.reason);
      };
      this.waiters.push(grant);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  private releaser(): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.waiters.shift();
      if (next) next();
      else this.available++;
    };
  }
}

/**
 * A failed attempt against one endpoint that the caller may answer by retrying (if `retry`) or
 * by moving on to the next endpoint. `priority` ranks how informative the error is when every
 * endpoint fails: the most specific one is reported.
 */
class EndpointFailure extends Error {
  constructor(
    readonly error: CrispError,
    readonly retry: boolean,
    readonly priority: number,
    readonly retryAfterMs?: number,
  ) {
    super(error.message);
  }
}

const PRIORITY_CONNECTION = 1;
const PRIORITY_NOT_FOUND = 2;
const PRIORITY_STATUS = 3;
const PRIORITY_CONTENT = 4;

/** Network errors worth retrying on the same endpoint. */
const TRANSIENT_NETWORK_CODES = new Set([
  'ECONNRESET',
  'ETIMEDOUT',
  'EPIPE',
  'ECONNABORTED',
  'ECONNREFUSED',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EAI_AGAIN',
  'ENOTFOUND',
  'ERR_STREAM_PREMATURE_CLOSE',
]);

const RETRYABLE_STATUS = new Set([408, 429, 500, 502, 503, 504]);
const REDIRECT_STATUS = new Set([301, 302, 303, 307, 308]);
const MAX_REDIRECTS = 10;
/** Headers a redirect to another origin still carries: they describe the request, not the caller. */
const CROSS_ORIGIN_HEADERS = new Set(['user-agent', 'accept', 'range', 'content-type', 'content-length']);
const MAX_ERROR_BODY_BYTES = 16 * 1024;

/** `manifest sha256:…` or `manifest for tag "v1"`, for messages. */
function describeManifest(object: string): string {
  return isDigest(object) ? `manifest ${object}` : `manifest for tag "${object}"`;
}

function formatDuration(ms: number): string {
  return ms >= 1000 ? `${Number((ms / 1000).toFixed(1))}s` : `${ms}ms`;
}

function canceled(what: string, signal?: AbortSignal): CrispError {
  const reason = signal?.reason instanceof CrispError ? signal.reason : undefined;
  return reason ?? new CrispError('Canceled', `${what}: canceled`);
}

function sleep(ms: number, signal: AbortSignal | undefined, what: string): Promise<void> {
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
function retryAfterMs(res: http.IncomingMessage): number | undefined {
  const v = res.headers['retry-after'];
  if (!v) return undefined;
  if (/^\d+$/.test(v)) return Number(v) * 1000;
  const at = Date.parse(v);
  return Number.isNaN(at) ? undefined : Math.max(0, at - Date.now());
}

function headerString(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v;
}

function discard(res: http.IncomingMessage): void {
  res.on('error', () => {});
  res.resume();
}

/** The distribution error codes and messages in an error response body, for messages. */
function describeRegistryError(body: Buffer): string {
  if (body.length === 0) return '';
  try {
    const parsed = JSON.parse(body.toString('utf8')) as { errors?: Array<{ code?: string; message?: string }> };
    if (Array.isArray(parsed.errors) && parsed.errors.length > 0) {
      return parsed.errors.map((e) => [e.code, e.message].filter((x) => x).join(': ')).join('; ');
    }
  } catch {
    // Not JSON; fall through to the raw text.
  }
  return body.toString('utf8', 0, Math.min(body.length, 200)).replace(/\s+/g, ' ').trim();
}

interface Transfer {
  promise: Promise<BlobFetchResult>;
  controller: AbortController;
  /** Callers that can cancel; the transfer is aborted when all of them have. */
  cancellable: number;
  /** Set when some caller cannot cancel, so the transfer must run to completion. */
  pinned: boolean;
  listeners: Set<(received: number, total: number) => void>;
}

/** Everything needed to talk to one repository during one operation. */
interface RepoContext {
  ref: ImageReference;
  requestCredentials?: RegistryCredentials;
  serverAddress?: string;
  signal?: AbortSignal;
}

interface SendInit {
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

export class RegistryClient {
  private readonly hosts: RegistryHosts;
  private readonly userAgent: string;
  private readonly stallTimeoutMs: number;
  private readonly maxAttempts: number;
  private readonly retryBaseDelayMs: number;
  private readonly retryMaxDelayMs: number;
  private readonly platform: Platform;
  private readonly maxManifestBytes: number;
  private readonly log?: Logger;
  private readonly onBytes?: RegistryClientOptions['onBytes'];
  private readonly downloads: Semaphore;
  private readonly authn: RegistryAuthenticator;
  private readonly agents = new Map<string, http.Agent>();
  private readonly transfers = new Map<string, Transfer>();
  private closed = false;

  constructor(opts: RegistryClientOptions) {
    this.hosts = opts.hosts;
    this.userAgent = opts.userAgent ?? 'crisp';
    this.stallTimeoutMs = opts.stallTimeoutMs ?? 60_000;
    this.maxAttempts = Math.max(1, opts.maxAttempts ?? 4);
    this.retryBaseDelayMs = opts.retryBaseDelayMs ?? 500;
    this.retryMaxDelayMs = opts.retryMaxDelayMs ?? 10_000;
    this.platform = opts.platform ?? hostPlatform();
    this.maxManifestBytes = opts.maxManifestBytes ?? MAX_MANIFEST_BYTES;
    this.log = opts.logger;
    this.onBytes = opts.onBytes;
    this.downloads = new Semaphore(opts.maxConcurrentDownloads ?? 3);
    this.authn = new RegistryAuthenticator({ tokenCache: new TokenCache(), clientId: this.userAgent.split('/')[0] });
  }

  /** Closes pooled connections. In-flight requests fail. */
  close(): void {
    this.closed = true;
    for (const agent of this.agents.values()) agent.destroy();
    this.agents.clear();
  }

  /**
   * Resolves a reference to the descriptor of what it names (an index or a manifest), preferring
   * HEAD and falling back to GET when the registry does not report the digest.
   */
  async resolve(ref: ImageReference, opts: RequestOptions = {}): Promise<Descriptor> {
    const ctx = this.context(ref, opts);
    const caps: HostCapability[] = ref.digest ? ['pull'] : ['pull', 'resolve'];
    const object = ref.object();
    return this.tryEndpoints(ctx, caps, `resolving image "${ref.toString()}"`, async (ep) => {
      const res = await this.send(ctx, ep, 'HEAD', `manifests/${object}`, { Accept: MANIFEST_ACCEPT }, describeManifest(object));
      if (res.statusCode === 405) {
        // Some registries do not implement HEAD on manifests.
        discard(res);
        return (await this.getManifest(ctx, ep, object, undefined)).descriptor;
      }
      if (res.statusCode !== 200) throw await this.statusFailure(res, ep, ctx, describeManifest(object), 'manifest');
      discard(res);
      const mediaType = bareMediaType(res.headers['content-type']);
      if (isSchema1MediaType(mediaType)) {
        // Let the manifest parser produce the canonical error.
        return (await this.getManifest(ctx, ep, object, undefined)).descriptor;
      }
      const headerDigest = headerString(res.headers['docker-content-digest']);
      const length = res.headers['content-length'];
      const size = length !== undefined && /^\d+$/.test(length) ? Number(length) : undefined;
      if (ref.digest && headerDigest && headerDigest !== ref.digest && headerDigest.split(':')[0] === ref.digest.split(':')[0]) {
        throw new EndpointFailure(this.mismatch(`manifest ${ref.digest}`, ep, headerDigest), false, PRIORITY_CONTENT);
      }
      const digest = ref.digest ?? (headerDigest && isDigest(headerDigest) ? headerDigest : undefined);
      if (!digest || size === undefined || !(isIndexMediaType(mediaType) || isManifestMediaType(mediaType))) {
        return (await this.getManifest(ctx, ep, object, undefined)).descriptor;
      }
      if (size > this.maxManifestBytes) throw this.manifestTooLarge(ep, object, size);
      return { mediaType, digest, size };
    });
  }

  /**
   * Fetches and verifies a manifest or index. `target` is a descriptor (as found in an index), a
   * digest, or a tag; it defaults to what `ref` names. Documents fetched by digest are checked
   * against it; documents fetched by tag are checked against the registry's
   * Docker-Content-Digest header when it uses the same algorithm.
   */
  async fetchManifest(ref: ImageReference, target?: Descriptor | string, opts: RequestOptions = {}): Promise<FetchedManifest> {
    const ctx = this.context(ref, opts);
    const desc = typeof target === 'object' ? target : undefined;
    const object = desc?.digest ?? (typeof target === 'string' ? target : ref.object());
    const byDigest = isDigest(object);
    const caps: HostCapability[] = byDigest ? ['pull'] : ['pull', 'resolve'];
    return this.tryEndpoints(ctx, caps, `fetching manifest ${object} of "${ref.toString()}"`, (ep) =>
      this.getManifest(ctx, ep, object, desc),
    );
  }

  /**
   * Resolves `ref` to the image manifest for the configured platform (or `platform`), walking
   * through indexes. Returns every document on the way so the caller can store them all.
   */
  async fetchImageManifest(ref: ImageReference, opts: RequestOptions & { platform?: Platform } = {}): Promise<ResolvedImage> {
    const platform = opts.platform ?? this.platform;
    const documents: FetchedManifest[] = [];
    let current = await this.fetchManifest(ref, undefined, opts);
    documents.push(current);
    while (current.kind === 'index') {
      if (documents.length > 4) throw failedPrecondition(`image "${ref.toString()}": indexes nested too deeply`);
      const entry = selectPlatformEntry(current.index.manifests, platform);
      if (!entry) {
        const available = current.index.manifests
          .filter((m) => m.platform)
          .map((m) => formatPlatform(m.platform as Platform))
          .join(', ');
        throw notFound(
          `image "${ref.toString()}" has no manifest for platform ${formatPlatform(platform)}` +
            (available ? ` (available: ${available})` : ''),
        );
      }
      current = await this.fetchManifest(ref, entry, opts);
      documents.push(current);
    }
    return { target: documents[0].descriptor, documents, manifest: current };
  }

  /**
   * Downloads a blob of `ref`'s repository to `destination`, verifying size and digest as it
   * streams. The file is synced before the promise resolves and removed if the download fails;
   * the caller moves it into place. Concurrent fetches of the same digest share one transfer (and
   * without a signal receive the very same promise).
   */
  fetchBlob(ref: ImageReference, desc: Descriptor, destination: string, opts: BlobFetchOptions = {}): Promise<BlobFetchResult> {
    let baseContext: RepoContext;
    try {
      parseDigest(desc.digest, 'blob digest');
      baseContext = this.context(ref, { ...(opts.auth ? { auth: opts.auth } : {}) });
    } catch (err) {
      return Promise.reject(err);
    }
    if (!Number.isSafeInteger(desc.size) || desc.size < 0) {
      return Promise.reject(failedPrecondition(`blob ${desc.digest} has an invalid size ${desc.size}`));
    }
    const what = `pulling ${desc.digest}`;
    if (opts.signal?.aborted) return Promise.reject(canceled(what, opts.signal));

    let t = this.transfers.get(desc.digest);
    if (!t) {
      const controller = new AbortController();
      const transfer: Transfer = { controller, cancellable: 0, pinned: false, listeners: new Set(), promise: undefined as never };
      transfer.promise = this.download({ ...baseContext, signal: controller.signal }, desc, destination, transfer, opts.finalize).finally(() => {
        if (this.transfers.get(desc.digest) === transfer) this.transfers.delete(desc.digest);
      });
      // Failures are delivered to callers; a transfer everyone abandoned must not be unhandled.
      transfer.promise.catch(() => {});
      this.transfers.set(desc.digest, transfer);
      t = transfer;
    }
    const transfer = t;
    if (opts.onProgress) transfer.listeners.add(opts.onProgress);
    const signal = opts.signal;
    if (!signal) {
      transfer.pinned = true;
      return transfer.promise;
    }
    transfer.cancellable++;
    return new Promise<BlobFetchResult>((resolve, reject) => {
      let done = false;
      const finish = () => {
        done = true;
        signal.removeEventListener('abort', onAbort);
        if (opts.onProgress) transfer.listeners.delete(opts.onProgress);
      };
      const onAbort = () => {
        if (done) return;
        finish();
        transfer.cancellable--;
        if (transfer.cancellable === 0 && !transfer.pinned) transfer.controller.abort(canceled(what));
        reject(canceled(what, signal));
      };
      signal.addEventListener('abort', onAbort, { once: true });
      transfer.promise.then(
        (v) => {
          if (done) return;
          finish();
          resolve(v);
        },
        (err) => {
          if (done) return;
          finish();
          reject(err);
        },
      );
    });
  }

  // ---- internals ----

  private context(ref: ImageReference, opts: RequestOptions): RepoContext {
    const ctx: RepoContext = { ref };
    const creds = credentialsFromAuthConfig(opts.auth);
    if (creds) ctx.requestCredentials = creds;
    if (opts.auth?.serverAddress) ctx.serverAddress = opts.auth.serverAddress;
    if (opts.signal) ctx.signal = opts.signal;
    return ctx;
  }

  /** Request credentials apply to the endpoint their server address names; config fills in. */
  private credentialsFor(ctx: RepoContext, ep: RegistryEndpoint): RegistryCredentials | undefined {
    if (
      ctx.requestCredentials &&
      (serverAddressMatches(ctx.serverAddress, ep.host) || (!ep.mirror && serverAddressMatches(ctx.serverAddress, ctx.ref.domain)))
    ) {
      return ctx.requestCredentials;
    }
    return ep.credentials;
  }

  private origin(ep: RegistryEndpoint): string {
    return new URL(`${ep.scheme}://${ep.host}`).origin;
  }

  private endpointUrl(ctx: RepoContext, ep: RegistryEndpoint, apiPath: string): URL {
    const base = ep.path.replace(/\/+$/, '');
    const url = new URL(`${ep.scheme}://${ep.host}${base}/${ctx.ref.path}/${apiPath}`);
    if (ep.mirror) url.searchParams.set('ns', ctx.ref.domain);
    return url;
  }

  private async tlsOptions(ep: RegistryEndpoint): Promise<https.AgentOptions> {
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

  /** Keep-alive agent for an endpoint, keyed by everything that affects its connections. */
  private async agentFor(ep: RegistryEndpoint): Promise<http.Agent> {
    const key = JSON.stringify([ep.scheme, ep.host, ep.skipVerify, ep.caFiles, ep.clientCertificates]);
    let agent = this.agents.get(key);
    if (!agent) {
      const base = { keepAlive: true, maxSockets: 16, maxFreeSockets: 4, scheduling: 'lifo' as const };
      agent = ep.scheme === 'https' ? new https.Agent({ ...base, ...(await this.tlsOptions(ep)) }) : new http.Agent(base);
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
  private defaultAgent(protocol: string): http.Agent {
    const key = `default:${protocol}`;
    let agent = this.agents.get(key);
    if (!agent) {
      const base = { keepAlive: true, maxSockets: 16, maxFreeSockets: 4, scheduling: 'lifo' as const };
      agent = protocol === 'https:' ? new https.Agent(base) : new http.Agent(base);
      this.agents.set(key, agent);
    }
    return agent;
  }

  /**
   * One HTTP exchange. Resolves when response headers arrive; the stall timeout covers the wait
   * for them (connection, TLS, server think time).
   */
  private exchange(url: URL, init: SendInit): Promise<http.IncomingMessage> {
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
  private async exchangeFollowing(
    url: URL,
    init: SendInit,
    authOrigin: string,
  ): Promise<{ res: http.IncomingMessage; url: URL }> {
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

  private tokenHttp(ctx: RepoContext, ep: RegistryEndpoint, agent: http.Agent): TokenHttp {
    const origin = this.origin(ep);
    return async (url, init) => {
      const sameOrigin = url.origin === origin;
      const headers: Record<string, string> = { 'User-Agent': this.userAgent, Accept: 'application/json', ...init.headers };
      const send: SendInit = {
        method: init.method,
        headers,
        agent: sameOrigin ? agent : this.defaultAgent(url.protocol),
        what: `authenticating to ${ctx.ref.domain}`,
        ...(init.body !== undefined ? { body: init.body } : {}),
        ...(ctx.signal ? { signal: ctx.signal } : {}),
      };
      let res: http.IncomingMessage;
      try {
        // Realms take credentials of their own (Authorization is set for the realm's origin).
        ({ res } = await this.exchangeFollowing(url, send, url.origin));
      } catch (err) {
        throw this.asCrispError(err, `${send.what}: token server ${url.origin}`);
      }
      const body = await this.readBody(res, 1024 * 1024, url.host, send.what, undefined, false, ctx.signal);
      return { status: res.statusCode ?? 0, headers: res.headers, body };
    };
  }

  /**
   * Sends a request for `apiPath` of the repository to an endpoint, answering auth challenges.
   * Network failures become EndpointFailures; auth failures are CrispErrors.
   */
  private async send(
    ctx: RepoContext,
    ep: RegistryEndpoint,
    method: 'GET' | 'HEAD',
    apiPath: string,
    extraHeaders: Record<string, string>,
    what: string,
  ): Promise<http.IncomingMessage> {
    const url = this.endpointUrl(ctx, ep, apiPath);
    const agent = await this.agentFor(ep);
    const origin = this.origin(ep);
    const credentials = this.credentialsFor(ctx, ep);
    const scope: AuthScope = {
      origin,
      registry: ctx.ref.domain,
      repository: ctx.ref.path,
      http: this.tokenHttp(ctx, ep, agent),
      ...(credentials ? { credentials } : {}),
    };
    const headers: Record<string, string> = {};
    for (const [name, values] of Object.entries(ep.headers)) headers[name] = values.join(', ');
    headers['User-Agent'] = this.userAgent;
    Object.assign(headers, extraHeaders);

    let challenged = false;
    for (;;) {
      const authorization = await this.authn.authorization(scope);
      if (authorization) headers.Authorization = authorization;
      else delete headers.Authorization;
      let res: http.IncomingMessage;
      let finalUrl: URL;
      try {
        ({ res, url: finalUrl } = await this.exchangeFollowing(
          url,
          {
            method,
            headers,
            agent,
            what,
            ...(ctx.signal ? { signal: ctx.signal } : {}),
            ...(ep.dialTimeoutMs !== undefined ? { dialTimeoutMs: ep.dialTimeoutMs } : {}),
          },
          origin,
        ));
      } catch (err) {
        throw this.networkFailure(err, ep, what);
      }
      if (res.statusCode === 401 && finalUrl.origin === origin) {
        discard(res);
        if (challenged) throw this.authn.rejected(scope, 401);
        this.authn.onUnauthorized(scope, res.headers['www-authenticate']);
        challenged = true;
        continue;
      }
      if (res.statusCode === 403) {
        discard(res);
        throw this.authn.rejected(scope, 403);
      }
      return res;
    }
  }

  /** CrispErrors (stall, cancel) pass through; anything else is a connection failure. */
  private networkFailure(err: unknown, ep: RegistryEndpoint, what: string): Error {
    if (err instanceof CrispError || err instanceof EndpointFailure) return err;
    const code = (err as NodeJS.ErrnoException).code ?? '';
    const e = unavailable(`${what} from ${ep.host}: ${errorMessage(err)}`);
    return new EndpointFailure(e, TRANSIENT_NETWORK_CODES.has(code), PRIORITY_CONNECTION);
  }

  private asCrispError(err: unknown, prefix: string): CrispError {
    if (err instanceof CrispError) return err;
    return unavailable(`${prefix}: ${errorMessage(err)}`);
  }

  /** Turns a non-success response into an EndpointFailure, reading the registry's error body. */
  private async statusFailure(
    res: http.IncomingMessage,
    ep: RegistryEndpoint,
    ctx: RepoContext,
    what: string,
    kind: 'manifest' | 'blob',
  ): Promise<EndpointFailure> {
    const status = res.statusCode ?? 0;
    let detail = '';
    try {
      detail = describeRegistryError(await this.readBody(res, MAX_ERROR_BODY_BYTES, ep.host, what, kind, true, ctx.signal));
    } catch {
      // The status says enough.
    }
    const suffix = detail ? ` (${detail})` : '';
    if (status === 404) {
      const msg =
        kind === 'manifest'
          ? `image "${ctx.ref.toString()}" not found: ${what} not found at ${ep.host}${suffix}`
          : `${what} not found in ${ctx.ref.repository()} at ${ep.host}${suffix}`;
      return new EndpointFailure(notFound(msg), false, PRIORITY_NOT_FOUND);
    }
    if (RETRYABLE_STATUS.has(status)) {
      return new EndpointFailure(
        unavailable(`${what} from ${ep.host}: HTTP ${status}${suffix}`),
        true,
        PRIORITY_STATUS,
        retryAfterMs(res),
      );
    }
    const err =
      status >= 500
        ? unavailable(`${what} from ${ep.host}: HTTP ${status}${suffix}`)
        : failedPrecondition(`${what} from ${ep.host}: unexpected HTTP ${status}${suffix}`);
    return new EndpointFailure(err, false, PRIORITY_STATUS);
  }

  /**
   * Runs `attempt` against each endpoint with the capabilities, in order. Mirrors are passed over
   * on failure; the last endpoint is retried with backoff for transient failures. Reports the
   * most specific failure when all endpoints fail.
   */
  private async tryEndpoints<T>(
    ctx: RepoContext,
    caps: HostCapability[],
    what: string,
    attempt: (ep: RegistryEndpoint) => Promise<T>,
  ): Promise<T> {
    const endpoints = (await this.hosts.endpoints(ctx.ref.domain)).filter((ep) => caps.every((c) => ep.capabilities.includes(c)));
    if (endpoints.length === 0) {
      throw failedPrecondition(`${what}: no endpoint configured for ${ctx.ref.domain} allows ${caps.join(' and ')}`);
    }
    let best: EndpointFailure | undefined;
    for (let i = 0; i < endpoints.length; i++) {
      const ep = endpoints[i];
      const last = i === endpoints.length - 1;
      for (let n = 1; ; n++) {
        try {
          return await attempt(ep);
        } catch (err) {
          let failure: EndpointFailure;
          if (err instanceof EndpointFailure) failure = err;
          else if (err instanceof CrispError && (err.code === 'Unauthenticated' || err.code === 'PermissionDenied' || err.code === 'Unavailable')) {
            // Auth failures and unreachable token servers: another endpoint may still serve us.
            failure = new EndpointFailure(err, false, err.code === 'Unavailable' ? PRIORITY_CONNECTION : PRIORITY_STATUS);
          } else if (err instanceof CrispError) {
            throw err;
          } else {
            throw this.asCrispError(err, what);
          }
          if (!best || failure.priority >= best.priority) best = failure;
          const retry = last && failure.retry && n < this.maxAttempts;
          const level = failure.priority === PRIORITY_NOT_FOUND ? 'debug' : 'warn';
          this.log?.[level](
            { host: ep.host, attempt: n, err: failure.error.message },
            retry ? `${what}: retrying` : last ? `${what}: failed` : `${what}: trying next endpoint`,
          );
          if (!retry) break;
          const backoff = Math.min(this.retryMaxDelayMs, this.retryBaseDelayMs * 2 ** (n - 1) * (0.5 + Math.random() / 2));
          const delay = Math.min(this.retryMaxDelayMs, Math.max(backoff, failure.retryAfterMs ?? 0));
          await sleep(delay, ctx.signal, what);
        }
      }
    }
    throw (best as EndpointFailure).error;
  }

  private mismatch(what: string, ep: RegistryEndpoint, got: string): CrispError {
    return failedPrecondition(`${what} from ${ep.host} failed verification: content has digest ${got}`);
  }

  private manifestTooLarge(ep: RegistryEndpoint, object: string, size: number): EndpointFailure {
    return new EndpointFailure(
      failedPrecondition(`manifest ${object} from ${ep.host} is ${size} bytes, more than the ${this.maxManifestBytes} allowed`),
      false,
      PRIORITY_CONTENT,
    );
  }

  /**
   * Reads a whole response body of at most `limit` bytes, with the stall timeout between chunks.
   * With `truncate`, longer bodies are cut instead of failing.
   */
  private async readBody(
    res: http.IncomingMessage,
    limit: number,
    host: string,
    what: string,
    kind: 'manifest' | 'blob' | undefined,
    truncate = false,
    signal?: AbortSignal,
  ): Promise<Buffer> {
    const chunks: Buffer[] = [];
    let total = 0;
    await this.consume(res, host, what, signal, async (chunk) => {
      if (kind) this.onBytes?.(chunk.length, { host, kind });
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
  private async consume(
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

  /** GET a manifest from one endpoint, verify it and parse it. */
  private async getManifest(ctx: RepoContext, ep: RegistryEndpoint, object: string, desc: Descriptor | undefined): Promise<FetchedManifest> {
    const what = describeManifest(object);
    const accept = desc?.mediaType && (isIndexMediaType(desc.mediaType) || isManifestMediaType(desc.mediaType)) ? `${desc.mediaType}, ${MANIFEST_ACCEPT}` : MANIFEST_ACCEPT;
    const res = await this.send(ctx, ep, 'GET', `manifests/${object}`, { Accept: accept }, what);
    if (res.statusCode !== 200) throw await this.statusFailure(res, ep, ctx, what, 'manifest');
    const length = res.headers['content-length'];
    if (length !== undefined && Number(length) > this.maxManifestBytes) {
      discard(res);
      throw this.manifestTooLarge(ep, object, Number(length));
    }
    let bytes: Buffer;
    try {
      bytes = await this.readBody(res, this.maxManifestBytes, ep.host, `pulling ${what}`, 'manifest', false, ctx.signal);
    } catch (err) {
      throw this.networkFailure(err, ep, `pulling ${what}`);
    }

    let digest: string;
    if (isDigest(object)) {
      const { algorithm } = parseDigest(object);
      const got = `${algorithm}:${createHash(algorithm).update(bytes).digest('hex')}`;
      if (got !== object) throw new EndpointFailure(this.mismatch(what, ep, got), false, PRIORITY_CONTENT);
      digest = object;
    } else {
      digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
      const header = headerString(res.headers['docker-content-digest']);
      if (header && header.startsWith('sha256:') && header !== digest) {
        throw new EndpointFailure(
          failedPrecondition(`${what} from ${ep.host} failed verification: registry says ${header}, content has digest ${digest}`),
          false,
          PRIORITY_CONTENT,
        );
      }
    }
    if (desc && desc.size !== bytes.length) {
      throw new EndpointFailure(
        failedPrecondition(`${what} from ${ep.host} is ${bytes.length} bytes, the descriptor says ${desc.size}`),
        false,
        PRIORITY_CONTENT,
      );
    }
    const parsed = parseManifest(bytes, desc?.mediaType ?? headerString(res.headers['content-type']), `${what} of "${ctx.ref.toString()}"`);
    const descriptor: Descriptor = { mediaType: parsed.mediaType, digest, size: bytes.length };
    return parsed.kind === 'index'
      ? { kind: 'index', index: parsed.index, descriptor, bytes }
      : { kind: 'manifest', manifest: parsed.manifest, descriptor, bytes };
  }

  /** The body of a shared blob transfer. */
  private async download(
    ctx: RepoContext,
    desc: Descriptor,
    destination: string,
    transfer: Transfer,
    finalize: BlobFetchOptions['finalize'],
  ): Promise<BlobFetchResult> {
    const what = `pulling ${desc.digest}`;
    const release = await this.downloads.acquire(ctx.signal).catch((err) => {
      throw err instanceof CrispError ? err : canceled(what, ctx.signal);
    });
    const { algorithm } = parseDigest(desc.digest);
    let fh: fsp.FileHandle | undefined;
    let hash: Hash = createHash(algorithm);
    let written = 0;
    const reset = async () => {
      hash = createHash(algorithm);
      written = 0;
      await fh?.truncate(0);
    };
    try {
      fh = await fsp.open(destination, 'w', 0o644);
      const file = fh;
      await this.tryEndpoints(ctx, ['pull'], what, async (ep) => {
        const headers: Record<string, string> = { Accept: '*/*' };
        if (written > 0) headers.Range = `bytes=${written}-`;
        const res = await this.send(ctx, ep, 'GET', `blobs/${desc.digest}`, headers, what);
        if (res.statusCode === 206) {
          const range = headerString(res.headers['content-range']) ?? '';
          if (written === 0 || !range.startsWith(`bytes ${written}-`)) {
            discard(res);
            await reset();
            throw new EndpointFailure(unavailable(`${what} from ${ep.host}: unexpected Content-Range "${range}"`), true, PRIORITY_CONNECTION);
          }
        } else if (res.statusCode === 200) {
          if (written > 0) await reset(); // the server ignored our Range; start over
          const length = res.headers['content-length'];
          if (length !== undefined && Number(length) !== desc.size) {
            discard(res);
            throw new EndpointFailure(
              failedPrecondition(`${what} from ${ep.host}: size ${length} does not match the expected ${desc.size}`),
              false,
              PRIORITY_CONTENT,
            );
          }
        } else {
          throw await this.statusFailure(res, ep, ctx, `blob ${desc.digest}`, 'blob');
        }

        try {
          await this.consume(res, ep.host, what, ctx.signal, async (chunk) => {
            if (written + chunk.length > desc.size) {
              throw new EndpointFailure(
                failedPrecondition(`${what} from ${ep.host}: more data than the expected ${desc.size} bytes`),
                false,
                PRIORITY_CONTENT,
              );
            }
            await file.write(chunk, 0, chunk.length, written);
            hash.update(chunk);
            written += chunk.length;
            this.onBytes?.(chunk.length, { host: ep.host, kind: 'blob' });
            for (const l of transfer.listeners) l(written, desc.size);
            return true;
          });
        } catch (err) {
          if (err instanceof EndpointFailure) {
            await reset();
            throw err;
          }
          // Keep what was received: the retry resumes with a Range request.
          throw this.networkFailure(err, ep, what);
        }
        if (written < desc.size) {
          throw new EndpointFailure(
            unavailable(`${what} from ${ep.host}: connection ended after ${written} of ${desc.size} bytes`),
            true,
            PRIORITY_CONNECTION,
          );
        }
        const got = `${algorithm}:${hash.digest('hex')}`;
        if (got !== desc.digest) {
          await reset();
          throw new EndpointFailure(this.mismatch(`blob ${desc.digest}`, ep, got), false, PRIORITY_CONTENT);
        }
      });
      await file.sync();
      await file.close();
      fh = undefined;
      const finalPath = finalize ? await finalize(destination) : destination;
      return { digest: desc.digest, size: desc.size, path: finalPath };
    } catch (err) {
      await fh?.close().catch(() => {});
      fh = undefined;
      await fsp.rm(destination, { force: true }).catch(() => {});
      if (err instanceof CrispError) throw err;
      if ((err as NodeJS.ErrnoException).code === 'ENOSPC') {
        throw new CrispError('ResourceExhausted', `${what}: no space left writing ${destination}`, { cause: err });
      }
      throw internal(`${what}: ${errorMessage(err)}`, err);
    } finally {
      release();
    }
  }
}
