/**
 * Registry authentication: credentials from the CRI request or the daemon configuration, and the
 * distribution token protocol (RFC 7235 challenges, Basic, Bearer tokens fetched from the realm
 * the registry names, OAuth2 refresh-token exchange for identity tokens).
 */
import { createHash } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import { CrispError, invalidArgument, unauthenticated, unavailable } from '../util/errors';

/** The CRI AuthConfig message (runtime.v1.AuthConfig), camelCased. */
export interface AuthConfig {
  username?: string;
  password?: string;
  /** base64 of "username:password". */
  auth?: string;
  serverAddress?: string;
  /** An OAuth2 refresh token, exchanged at the token realm for access tokens. */
  identityToken?: string;
  /** A bearer token sent to the registry as is. */
  registryToken?: string;
}

/** Per-registry credentials in the daemon configuration (keys as in Docker's config.json). */
export interface ConfiguredCredentials {
  username?: string;
  password?: string;
  auth?: string;
  identitytoken?: string;
}

export type RegistryCredentials =
  | { kind: 'basic'; username: string; password: string }
  | { kind: 'identityToken'; token: string; username?: string }
  | { kind: 'registryToken'; token: string };

function decodeBasicAuth(auth: string, what: string): { username: string; password: string } {
  const compact = auth.trim();
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(compact)) throw invalidArgument(`${what}: "auth" is not valid base64`);
  const decoded = Buffer.from(compact, 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon < 0) throw invalidArgument(`${what}: "auth" must encode "username:password"`);
  return { username: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
}

/**
 * Credentials carried by a CRI AuthConfig, in containerd's order of precedence: username and
 * password, then identity token, then the base64 `auth` pair, then a registry token. Returns
 * undefined when the config carries nothing.
 */
export function credentialsFromAuthConfig(auth: AuthConfig | undefined): RegistryCredentials | undefined {
  if (!auth) return undefined;
  if (auth.username) return { kind: 'basic', username: auth.username, password: auth.password ?? '' };
  if (auth.identityToken) return { kind: 'identityToken', token: auth.identityToken };
  if (auth.auth) return { kind: 'basic', ...decodeBasicAuth(auth.auth, 'image pull auth config') };
  if (auth.registryToken) return { kind: 'registryToken', token: auth.registryToken };
  return undefined;
}

/** Credentials from the daemon configuration for `host`. */
export function credentialsFromConfig(c: ConfiguredCredentials, host: string): RegistryCredentials | undefined {
  const what = `credentials configured for registry ${host}`;
  if (c.identitytoken) {
    const user = c.username || (c.auth ? decodeBasicAuth(c.auth, what).username : undefined);
    return { kind: 'identityToken', token: c.identitytoken, ...(user ? { username: user } : {}) };
  }
  if (c.username) return { kind: 'basic', username: c.username, password: c.password ?? '' };
  if (c.auth) return { kind: 'basic', ...decodeBasicAuth(c.auth, what) };
  return undefined;
}

/** Hosts that all mean Docker Hub. */
const DOCKER_HUB_ALIASES = new Set(['docker.io', 'index.docker.io', 'registry-1.docker.io']);

/** `https://index.docker.io/v1/` or `registry:5000` → the bare host[:port], lowercased. */
export function normalizeServerAddress(address: string): string {
  let s = address.trim().toLowerCase();
  s = s.replace(/^[a-z][a-z0-9+.-]*:\/\//, '');
  s = s.split('/')[0];
  return DOCKER_HUB_ALIASES.has(s) ? 'docker.io' : s;
}

/**
 * Whether credentials from a request whose AuthConfig names `serverAddress` may be sent to
 * `host`. The kubelet sets server_address to the registry the pull secret was written for; an
 * empty address applies everywhere (as containerd treats it).
 */
export function serverAddressMatches(serverAddress: string | undefined, host: string): boolean {
  if (!serverAddress) return true;
  return normalizeServerAddress(serverAddress) === normalizeServerAddress(host);
}

/**
 * The credentials to send to one endpoint: a request's own credentials go to the endpoint their
 * server address names, or to the reference's registry itself (not a mirror of it) when the
 * address names that; otherwise the endpoint's configured credentials apply.
 */
export function credentialsForEndpoint(
  request: { credentials?: RegistryCredentials; serverAddress?: string },
  ep: { host: string; mirror: boolean; credentials?: RegistryCredentials },
  registry: string,
): RegistryCredentials | undefined {
  if (
    request.credentials &&
    (serverAddressMatches(request.serverAddress, ep.host) || (!ep.mirror && serverAddressMatches(request.serverAddress, registry)))
  ) {
    return request.credentials;
  }
  return ep.credentials;
}

export interface AuthChallenge {
  /** Lowercased scheme, e.g. "bearer", "basic". */
  scheme: string;
  /** Parameters with lowercased names; a token68 value is stored under "". */
  params: Record<string, string>;
}

const TOKEN_CHAR = /[!#$%&'*+.^_`|~0-9A-Za-z-]/;
/** A token68 credential standing alone after the scheme (then end of value or a comma). */
const TOKEN68 = /^([A-Za-z0-9\-._~+/]+=*)[ \t]*(?=,|$)/;

/**
 * Parses WWW-Authenticate header values (RFC 7235 §4.1): several challenges may share one value,
 * separated by commas, and parameter values may be quoted strings containing commas.
 */
export function parseWwwAuthenticate(values: string | readonly string[] | undefined): AuthChallenge[] {
  if (values === undefined) return [];
  const list = typeof values === 'string' ? [values] : values;
  const out: AuthChallenge[] = [];
  for (const value of list) {
    let i = 0;
    const n = value.length;
    const skipWs = () => {
      while (i < n && (value[i] === ' ' || value[i] === '\t')) i++;
    };
    const readToken = (): string => {
      const start = i;
      while (i < n && TOKEN_CHAR.test(value[i])) i++;
      return value.slice(start, i);
    };
    const readQuoted = (): string => {
      // Caller saw the opening quote.
      i++;
      let s = '';
      while (i < n && value[i] !== '"') {
        if (value[i] === '\\' && i + 1 < n) i++;
        s += value[i++];
      }
      i++; // closing quote (or end of input for malformed values)
      return s;
    };
    let current: AuthChallenge | undefined;
    while (i < n) {
      skipWs();
      if (value[i] === ',') {
        i++;
        continue;
      }
      const token = readToken();
      if (token === '') {
        i++; // a character that cannot start anything; skip it
        continue;
      }
      skipWs();
      if (current && value[i] === '=') {
        i++;
        skipWs();
        current.params[token.toLowerCase()] = value[i] === '"' ? readQuoted() : readToken();
        continue;
      }
      // A token not followed by "=" starts a new challenge.
      current = { scheme: token.toLowerCase(), params: {} };
      out.push(current);
      const t68 = TOKEN68.exec(value.slice(i));
      if (t68) {
        current.params[''] = t68[1];
        i += t68[0].length;
      }
    }
  }
  return out;
}

export interface TokenHttpResponse {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
}

/** The HTTP transport used to reach token realms (the registry client supplies it). */
export type TokenHttp = (
  url: URL,
  init: { method: 'GET' | 'POST'; headers: Record<string, string>; body?: string },
) => Promise<TokenHttpResponse>;

/** Bearer tokens by (realm, service, scopes, credentials), held until shortly before they expire. */
export class TokenCache {
  private readonly entries = new Map<string, { token: string; expiresAt: number }>();
  private readonly inflight = new Map<string, Promise<string>>();

  constructor(private readonly now: () => number = Date.now) {}

  get(key: string): string | undefined {
    const e = this.entries.get(key);
    if (!e) return undefined;
    if (e.expiresAt <= this.now()) {
      this.entries.delete(key);
      return undefined;
    }
    return e.token;
  }

  set(key: string, token: string, lifetimeMs: number): void {
    // Renew a little early so a token does not expire between lookup and use.
    const margin = Math.min(10_000, lifetimeMs / 10);
    this.entries.set(key, { token, expiresAt: this.now() + lifetimeMs - margin });
  }

  delete(key: string): void {
    this.entries.delete(key);
  }

  /** Returns the cached token or fetches one; concurrent callers share a single fetch. */
  async getOrFetch(key: string, fetch: () => Promise<{ token: string; lifetimeMs: number }>): Promise<string> {
    const cached = this.get(key);
    if (cached !== undefined) return cached;
    let p = this.inflight.get(key);
    if (!p) {
      p = (async () => {
        try {
          const { token, lifetimeMs } = await fetch();
          this.set(key, token, lifetimeMs);
          return token;
        } finally {
          this.inflight.delete(key);
        }
      })();
      this.inflight.set(key, p);
    }
    return p;
  }
}

/** What a request is authorised for. */
export interface AuthScope {
  /** Origin of the endpoint being called, e.g. `https://registry-1.docker.io`. */
  origin: string;
  /** Registry name for messages (the reference's domain). */
  registry: string;
  /** Repository path, e.g. `library/busybox`. */
  repository: string;
  credentials?: RegistryCredentials;
  /** Transport for reaching the token realm (it may share the endpoint's TLS settings). */
  http: TokenHttp;
}

/** What the challenge loop needs to know of a response. */
export interface ChallengeView {
  status: number;
  wwwAuthenticate: string | string[] | undefined;
  /** The response came from the scope's origin, not from a host a redirect led to. */
  fromScopeOrigin: boolean;
}

/** Default and minimum token lifetime per the distribution token spec. */
const MIN_TOKEN_LIFETIME_S = 60;
const MAX_TOKEN_RESPONSE_BYTES = 1024 * 1024;

function credentialKey(c: RegistryCredentials | undefined): string {
  if (!c) return 'anonymous';
  return createHash('sha256').update(JSON.stringify(c)).digest('hex');
}

/**
 * Answers registry challenges. Remembers the challenge each endpoint issued so later requests
 * (every blob of a pull) carry credentials up front instead of collecting a 401 each.
 */
export class RegistryAuthenticator {
  private readonly challenges = new Map<string, AuthChallenge>();
  private readonly tokens: TokenCache;
  private readonly clientId: string;

  constructor(opts: { tokenCache?: TokenCache; clientId?: string } = {}) {
    this.tokens = opts.tokenCache ?? new TokenCache();
    this.clientId = opts.clientId ?? 'crisp';
  }

  /** The Authorization header value to send, or undefined to go anonymously. */
  async authorization(scope: AuthScope): Promise<string | undefined> {
    const creds = scope.credentials;
    if (creds?.kind === 'registryToken') return `Bearer ${creds.token}`;
    const challenge = this.challenges.get(scope.origin);
    if (!challenge) return undefined;
    if (challenge.scheme === 'basic') {
      return creds?.kind === 'basic' ? basicHeader(creds.username, creds.password) : undefined;
    }
    const token = await this.tokens.getOrFetch(this.tokenKey(challenge, scope), () => this.fetchToken(challenge, scope));
    return `Bearer ${token}`;
  }

  /**
   * Records the challenge from a 401 so the retried request can answer it. The token that was
   * just refused is dropped so a fresh one is fetched.
   */
  onUnauthorized(scope: AuthScope, wwwAuthenticate: string | string[] | undefined): void {
    const challenges = parseWwwAuthenticate(wwwAuthenticate);
    const chosen = challenges.find((c) => c.scheme === 'bearer') ?? challenges.find((c) => c.scheme === 'basic');
    if (!chosen) {
      const what = wwwAuthenticate === undefined ? 'no WWW-Authenticate challenge' : `unsupported challenge "${String(wwwAuthenticate)}"`;
      throw unauthenticated(`registry ${scope.registry} requires authentication but sent ${what}`);
    }
    if (chosen.scheme === 'bearer' && !chosen.params.realm) {
      throw unauthenticated(`registry ${scope.registry} sent a Bearer challenge without a realm`);
    }
    const previous = this.challenges.get(scope.origin);
    if (previous) this.tokens.delete(this.tokenKey(previous, scope));
    this.challenges.set(scope.origin, chosen);
  }

  /**
   * Sends a request with the authorization `scope` currently has. A 401 from the scope's own
   * origin is a challenge: it is recorded and the request sent once more with the answer; a second
   * 401, or a 403 from anywhere, is the refusal error. Responses not returned are passed to `drop`.
   */
  async send<R>(
    scope: AuthScope,
    request: (authorization: string | undefined) => Promise<R>,
    view: (res: R) => ChallengeView,
    drop: (res: R) => void,
  ): Promise<R> {
    let challenged = false;
    for (;;) {
      const res = await request(await this.authorization(scope));
      const { status, wwwAuthenticate, fromScopeOrigin } = view(res);
      if (status === 401 && fromScopeOrigin) {
        drop(res);
        if (challenged) throw this.rejected(scope, 401);
        this.onUnauthorized(scope, wwwAuthenticate);
        challenged = true;
        continue;
      }
      if (status === 403) {
        drop(res);
        throw this.rejected(scope, 403);
      }
      return res;
    }
  }

  /** The error for a request the registry refused even after its challenge was answered. */
  rejected(scope: AuthScope, status: number): CrispError {
    const repo = `${scope.registry}/${scope.repository}`;
    if (status === 403) {
      return new CrispError('PermissionDenied', `registry ${scope.registry} denied access to ${repo} (HTTP 403)`);
    }
    if (scope.credentials) {
      return unauthenticated(`authentication to registry ${scope.registry} failed: the credentials for ${repo} were rejected`);
    }
    return unauthenticated(
      `pull access denied for ${repo}: the repository does not exist or requires authorization (no credentials were supplied)`,
    );
  }

  private tokenKey(challenge: AuthChallenge, scope: AuthScope): string {
    return [challenge.params.realm ?? scope.origin, challenge.params.service ?? '', this.scopes(challenge, scope).join(' '), credentialKey(scope.credentials)].join('\n');
  }

  /**
   * Scopes to request: pull on the repository, plus whatever the challenge asked for on that same
   * repository. Challenges are remembered per endpoint and reused for other repositories, so
   * scopes naming other repositories are left out.
   */
  private scopes(challenge: AuthChallenge, scope: AuthScope): string[] {
    const own = `repository:${scope.repository}:`;
    const set = new Set<string>((challenge.params.scope ?? '').split(' ').filter((s) => s.startsWith(own)));
    set.add(`${own}pull`);
    return [...set].sort();
  }

  private async fetchToken(challenge: AuthChallenge, scope: AuthScope): Promise<{ token: string; lifetimeMs: number }> {
    let realm: URL;
    try {
      realm = new URL(challenge.params.realm);
    } catch {
      throw unauthenticated(`registry ${scope.registry} sent an invalid token realm "${challenge.params.realm}"`);
    }
    if (realm.protocol !== 'https:' && realm.protocol !== 'http:') {
      throw unauthenticated(`registry ${scope.registry} sent a token realm with unsupported scheme "${realm.protocol}"`);
    }
    const service = challenge.params.service;
    const scopes = this.scopes(challenge, scope);
    const creds = scope.credentials;
    let res: TokenHttpResponse;
    if (creds?.kind === 'identityToken') {
      // OAuth2 refresh-token grant, as Docker does for identity tokens.
      const form = new URLSearchParams({ grant_type: 'refresh_token', refresh_token: creds.token, client_id: this.clientId });
      if (service) form.set('service', service);
      form.set('scope', scopes.join(' '));
      res = await scope.http(realm, {
        method: 'POST',
        headers: { 'Content-Type': 'application/x-www-form-urlencoded; charset=utf-8' },
        body: form.toString(),
      });
    } else {
      const url = new URL(realm);
      if (service) url.searchParams.set('service', service);
      for (const s of scopes) url.searchParams.append('scope', s);
      const headers: Record<string, string> = {};
      if (creds?.kind === 'basic') {
        url.searchParams.set('account', creds.username);
        headers.Authorization = basicHeader(creds.username, creds.password);
      }
      res = await scope.http(url, { method: 'GET', headers });
    }
    if (res.status === 401 || res.status === 403) {
      throw unauthenticated(
        creds
          ? `authentication to registry ${scope.registry} failed: token server ${realm.origin} rejected the credentials (HTTP ${res.status})`
          : `registry ${scope.registry}: token server ${realm.origin} refused anonymous access to ${scope.repository} (HTTP ${res.status})`,
      );
    }
    if (res.status === 400 && creds?.kind === 'identityToken') {
      throw unauthenticated(`authentication to registry ${scope.registry} failed: token server ${realm.origin} rejected the identity token`);
    }
    if (res.status < 200 || res.status > 299) {
      throw unavailable(`registry ${scope.registry}: token server ${realm.origin} answered HTTP ${res.status}`);
    }
    if (res.body.length > MAX_TOKEN_RESPONSE_BYTES) {
      throw unavailable(`registry ${scope.registry}: token server response is too large`);
    }
    let body: Record<string, unknown>;
    try {
      body = JSON.parse(res.body.toString('utf8')) as Record<string, unknown>;
    } catch {
      throw unavailable(`registry ${scope.registry}: token server ${realm.origin} returned a non-JSON response`);
    }
    const token = typeof body.token === 'string' && body.token ? body.token : body.access_token;
    if (typeof token !== 'string' || token === '') {
      throw unavailable(`registry ${scope.registry}: token server ${realm.origin} returned no token`);
    }
    const expiresIn = typeof body.expires_in === 'number' && body.expires_in > MIN_TOKEN_LIFETIME_S ? body.expires_in : MIN_TOKEN_LIFETIME_S;
    return { token, lifetimeMs: expiresIn * 1000 };
  }
}

export function basicHeader(username: string, password: string): string {
  return `Basic ${Buffer.from(`${username}:${password}`, 'utf8').toString('base64')}`;
}
