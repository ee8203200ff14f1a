/**
 * Requests for a repository's API paths (`manifests/…`, `blobs/…`) sent to the registry's
 * endpoints: endpoint URLs and configured headers, credentials and auth challenges per endpoint,
 * and the failover policy. Endpoints come from {@link RegistryHosts} (mirrors first, then
 * upstream) and are tried in order; mirrors are skipped past on connection errors, 404s and server
 * errors, and only the last endpoint is retried with backoff.
 */
import type * as http from 'node:http';
import type { Logger } from 'pino';
import { CrispError, errorMessage, failedPrecondition, notFound, unavailable } from '../util/errors';
import type { ImageReference } from './reference';
import {
  type AuthConfig,
  type AuthScope,
  type RegistryAuthenticator,
  type RegistryCredentials,
  type TokenHttp,
  credentialsForEndpoint,
  credentialsFromAuthConfig,
} from './registry_auth';
import type { HostCapability, RegistryEndpoint, RegistryHosts } from './registry_hosts';
import { type RegistryTransport, type SendInit, type TransferKind, discard, endpointOrigin, retryAfterMs, sleep } from './registry_transport';

export interface RequestOptions {
  /** Credentials from the CRI PullImageRequest. */
  auth?: AuthConfig;
  signal?: AbortSignal;
}

/** Everything needed to talk to one repository during one operation. */
export interface RepoContext {
  ref: ImageReference;
  requestCredentials?: RegistryCredentials;
  serverAddress?: string;
  signal?: AbortSignal;
}

export function repoContext(ref: ImageReference, opts: RequestOptions): RepoContext {
  const ctx: RepoContext = { ref };
  const creds = credentialsFromAuthConfig(opts.auth);
  if (creds) ctx.requestCredentials = creds;
  if (opts.auth?.serverAddress) ctx.serverAddress = opts.auth.serverAddress;
  if (opts.signal) ctx.signal = opts.signal;
  return ctx;
}

/**
 * A failed attempt against one endpoint that the caller may answer by retrying (if `retry`) or
 * by moving on to the next endpoint. `priority` ranks how informative the error is when every
 * endpoint fails: the most specific one is reported.
 */
export class EndpointFailure extends Error {
  constructor(
    readonly error: CrispError,
    readonly retry: boolean,
    readonly priority: number,
    readonly retryAfterMs?: number,
  ) {
    super(error.message);
  }
}

export const PRIORITY_CONNECTION = 1;
export const PRIORITY_NOT_FOUND = 2;
export const PRIORITY_STATUS = 3;
export const PRIORITY_CONTENT = 4;

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
const MAX_ERROR_BODY_BYTES = 16 * 1024;
const MAX_TOKEN_RESPONSE_BYTES = 1024 * 1024;

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

function asCrispError(err: unknown, prefix: string): CrispError {
  if (err instanceof CrispError) return err;
  return unavailable(`${prefix}: ${errorMessage(err)}`);
}

/** Content from `ep` whose digest is `got`, not what was asked for. */
export function verificationFailure(what: string, ep: RegistryEndpoint, got: string): CrispError {
  return failedPrecondition(`${what} from ${ep.host} failed verification: content has digest ${got}`);
}

/** CrispErrors (stall, cancel) pass through; anything else is a connection failure. */
export function networkFailure(err: unknown, ep: RegistryEndpoint, what: string): Error {
  if (err instanceof CrispError || err instanceof EndpointFailure) return err;
  const code = (err as NodeJS.ErrnoException).code ?? '';
  const e = unavailable(`${what} from ${ep.host}: ${errorMessage(err)}`);
  return new EndpointFailure(e, TRANSIENT_NETWORK_CODES.has(code), PRIORITY_CONNECTION);
}

export interface RepositoryRequesterOptions {
  transport: RegistryTransport;
  hosts: RegistryHosts;
  authn: RegistryAuthenticator;
  userAgent: string;
  maxAttempts: number;
  retryBaseDelayMs: number;
  retryMaxDelayMs: number;
  logger?: Logger;
}

export class RepositoryRequester {
  readonly transport: RegistryTransport;
  private readonly hosts: RegistryHosts;
  private readonly authn: RegistryAuthenticator;
  private readonly userAgent: string;
  private readonly maxAttempts: number;
  private readonly retryBaseDelayMs: number;
  private readonly retryMaxDelayMs: number;
  private readonly log?: Logger;

  constructor(opts: RepositoryRequesterOptions) {
    this.transport = opts.transport;
    this.hosts = opts.hosts;
    this.authn = opts.authn;
    this.userAgent = opts.userAgent;
    this.maxAttempts = opts.maxAttempts;
    this.retryBaseDelayMs = opts.retryBaseDelayMs;
    this.retryMaxDelayMs = opts.retryMaxDelayMs;
    if (opts.logger) this.log = opts.logger;
  }

  /**
   * Runs `attempt` against each endpoint with the capabilities, in order. Mirrors are passed over
   * on failure; the last endpoint is retried with backoff for transient failures. Reports the
   * most specific failure when all endpoints fail.
   */
  async tryEndpoints<T>(
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
            throw asCrispError(err, what);
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

  /**
   * Sends a request for `apiPath` of the repository to an endpoint, answering auth challenges.
   * Network failures become EndpointFailures; auth failures are CrispErrors.
   */
  async send(
    ctx: RepoContext,
    ep: RegistryEndpoint,
    method: 'GET' | 'HEAD',
    apiPath: string,
    extraHeaders: Record<string, string>,
    what: string,
  ): Promise<http.IncomingMessage> {
    const url = endpointUrl(ctx, ep, apiPath);
    const agent = await this.transport.agentFor(ep);
    const origin = endpointOrigin(ep);
    const credentials = credentialsForEndpoint({ credentials: ctx.requestCredentials, serverAddress: ctx.serverAddress }, ep, ctx.ref.domain);
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

    const exchanged = await this.authn.send(
      scope,
      async (authorization) => {
        if (authorization) headers.Authorization = authorization;
        else delete headers.Authorization;
        const init: SendInit = {
          method,
          headers,
          agent,
          what,
          ...(ctx.signal ? { signal: ctx.signal } : {}),
          ...(ep.dialTimeoutMs !== undefined ? { dialTimeoutMs: ep.dialTimeoutMs } : {}),
        };
        try {
          return await this.transport.exchangeFollowing(url, init, origin);
        } catch (err) {
          throw networkFailure(err, ep, what);
        }
      },
      ({ res, url: finalUrl }) => ({
        status: res.statusCode ?? 0,
        wwwAuthenticate: res.headers['www-authenticate'],
        fromScopeOrigin: finalUrl.origin === origin,
      }),
      ({ res }) => discard(res),
    );
    return exchanged.res;
  }

  /** Turns a non-success response into an EndpointFailure, reading the registry's error body. */
  async statusFailure(res: http.IncomingMessage, ep: RegistryEndpoint, ctx: RepoContext, what: string, kind: TransferKind): Promise<EndpointFailure> {
    const status = res.statusCode ?? 0;
    let detail = '';
    try {
      detail = describeRegistryError(await this.transport.readBody(res, MAX_ERROR_BODY_BYTES, ep.host, what, kind, true, ctx.signal));
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

  /** The transport the authenticator reaches token realms with, sharing the endpoint's agent for its own origin. */
  private tokenHttp(ctx: RepoContext, ep: RegistryEndpoint, agent: http.Agent): TokenHttp {
    const origin = endpointOrigin(ep);
    return async (url, init) => {
      const sameOrigin = url.origin === origin;
      const headers: Record<string, string> = { 'User-Agent': this.userAgent, Accept: 'application/json', ...init.headers };
      const send: SendInit = {
        method: init.method,
        headers,
        agent: sameOrigin ? agent : this.transport.defaultAgent(url.protocol),
        what: `authenticating to ${ctx.ref.domain}`,
        ...(init.body !== undefined ? { body: init.body } : {}),
        ...(ctx.signal ? { signal: ctx.signal } : {}),
      };
      let res: http.IncomingMessage;
      try {
        // Realms take credentials of their own (Authorization is set for the realm's origin).
        ({ res } = await this.transport.exchangeFollowing(url, send, url.origin));
      } catch (err) {
        throw asCrispError(err, `${send.what}: token server ${url.origin}`);
      }
      const body = await this.transport.readBody(res, MAX_TOKEN_RESPONSE_BYTES, url.host, send.what, undefined, false, ctx.signal);
      return { status: res.statusCode ?? 0, headers: res.headers, body };
    };
  }
}

function endpointUrl(ctx: RepoContext, ep: RegistryEndpoint, apiPath: string): URL {
  const base = ep.path.replace(/\/+$/, '');
  const url = new URL(`${ep.scheme}://${ep.host}${base}/${ctx.ref.path}/${apiPath}`);
  if (ep.mirror) url.searchParams.set('ns', ctx.ref.domain);
  return url;
}
