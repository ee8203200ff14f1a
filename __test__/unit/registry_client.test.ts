import test from 'ava';
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import type { AddressInfo } from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { isCrispError } from '../../src/util/errors';
import { MediaTypes, type Descriptor } from '../../src/image/media_types';
import { type Platform, hostPlatform, parsePlatform, platformMatches, selectPlatformEntry } from '../../src/image/platform';
import { parseReference } from '../../src/image/reference';
import { Semaphore } from '../../src/image/registry_blobs';
import { RegistryClient, type RegistryClientOptions } from '../../src/image/registry_client';
import { RegistryHosts } from '../../src/image/registry_hosts';
import { createCertificateAuthority, issueServerCertificate } from '../fixtures/certs';

// ---- a fake registry speaking enough of the distribution API ----

interface Recorded {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
}

type Auth =
  | { scheme: 'basic'; username: string; password: string }
  | { scheme: 'bearer'; users: Record<string, string>; anonymous: boolean; refreshTokens?: string[]; expiresIn?: number };

/** Returns true when it has answered the request itself. */
type Hook = (req: http.IncomingMessage, res: http.ServerResponse, route: Route | undefined) => boolean | Promise<boolean>;

interface Route {
  repo: string;
  kind: 'manifests' | 'blobs';
  ref: string;
}

const sha256 = (b: Buffer | string) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

class FakeRegistry {
  readonly requests: Recorded[] = [];
  readonly tokenRequests: Recorded[] = [];
  readonly tokenBodies: string[] = [];
  readonly manifests = new Map<string, { body: Buffer; mediaType: string }>();
  readonly blobs = new Map<string, Buffer>();
  hook?: Hook;
  auth?: Auth;
  /** API root; `/v2` unless serving under an override path. */
  root = '/v2';
  private readonly issued = new Set<string>();
  private tokenCounter = 0;
  private server!: http.Server;
  port = 0;

  get host(): string {
    return `127.0.0.1:${this.port}`;
  }

  async start(): Promise<this> {
    this.server = http.createServer((req, res) => {
      this.handle(req, res).catch((err) => {
        res.statusCode = 500;
        res.end(String(err));
      });
    });
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.port = (this.server.address() as AddressInfo).port;
    return this;
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  addBlob(data: Buffer | string, mediaType: string = MediaTypes.ociLayerGzip): Descriptor {
    const buf = Buffer.from(data);
    const digest = sha256(buf);
    this.blobs.set(digest, buf);
    return { mediaType, digest, size: buf.length };
  }

  addManifest(repo: string, doc: object, mediaType: string, tag?: string): Descriptor {
    const body = Buffer.from(JSON.stringify(doc));
    const digest = sha256(body);
    this.manifests.set(`${repo}@${digest}`, { body, mediaType });
    if (tag) this.manifests.set(`${repo}:${tag}`, { body, mediaType });
    return { mediaType, digest, size: body.length };
  }

  /** An image manifest with one config and the given layers. */
  addImage(repo: string, tag: string | undefined, layers: Descriptor[] = []): Descriptor {
    const config = this.addBlob(JSON.stringify({ architecture: 'amd64', os: 'linux', n: Math.random() }), MediaTypes.ociConfig);
    return this.addManifest(repo, { schemaVersion: 2, mediaType: MediaTypes.ociManifest, config, layers }, MediaTypes.ociManifest, tag);
  }

  private route(url: URL): Route | undefined {
    if (!url.pathname.startsWith(`${this.root}/`)) return undefined;
    const m = /^(.+)\/(manifests|blobs)\/([^/]+)$/.exec(url.pathname.slice(this.root.length + 1));
    return m ? { repo: m[1], kind: m[2] as Route['kind'], ref: decodeURIComponent(m[3]) } : undefined;
  }

  private authorized(req: http.IncomingMessage): boolean {
    const auth = this.auth;
    if (!auth) return true;
    const header = req.headers.authorization ?? '';
    if (auth.scheme === 'basic') {
      return header === `Basic ${Buffer.from(`${auth.username}:${auth.password}`).toString('base64')}`;
    }
    return header.startsWith('Bearer ') && this.issued.has(header.slice('Bearer '.length));
  }

  private challenge(res: http.ServerResponse, repo: string): void {
    const auth = this.auth as Auth;
    res.statusCode = 401;
    res.setHeader(
      'WWW-Authenticate',
      auth.scheme === 'basic'
        ? 'Basic realm="fake registry"'
        : `Bearer realm="http://${this.host}/token",service="fake-registry",scope="repository:${repo}:pull"`,
    );
    res.setHeader('Content-Type', 'application/json');
    res.end(JSON.stringify({ errors: [{ code: 'UNAUTHORIZED', message: 'authentication required' }] }));
  }

  private async handleToken(req: http.IncomingMessage, res: http.ServerResponse, url: URL): Promise<void> {
    const auth = this.auth as Extract<Auth, { scheme: 'bearer' }>;
    this.tokenRequests.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers });
    let ok = false;
    if (req.method === 'POST') {
      let body = '';
      for await (const c of req) body += c;
      this.tokenBodies.push(body);
      const form = new URLSearchParams(body);
      ok = form.get('grant_type') === 'refresh_token' && (auth.refreshTokens ?? []).includes(form.get('refresh_token') ?? '');
      if (!ok) {
        res.statusCode = 400;
        res.end('{"error":"invalid_grant"}');
        return;
      }
    } else {
      const header = req.headers.authorization;
      if (!header) ok = auth.anonymous;
      else {
        const [user, pass] = Buffer.from(header.replace(/^Basic /, ''), 'base64').toString().split(':');
        ok = auth.users[user] !== undefined && auth.users[user] === pass;
      }
      if (!ok) {
        res.statusCode = 401;
        res.end('{"details":"incorrect username or password"}');
        return;
      }
      if (url.searchParams.get('service') !== 'fake-registry') {
        res.statusCode = 400;
        res.end();
        return;
      }
    }
    const token = `tok-${++this.tokenCounter}`;
    this.issued.add(token);
    res.setHeader('Content-Type', 'application/json');
    const field = req.method === 'POST' ? 'access_token' : 'token';
    res.end(JSON.stringify({ [field]: token, expires_in: auth.expiresIn ?? 300 }));
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', `http://${this.host}`);
    const route = this.route(url);
    if (url.pathname === '/token') return this.handleToken(req, res, url);
    this.requests.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers });
    if (this.hook && (await this.hook(req, res, route))) return;
    if (!route) {
      res.statusCode = 404;
      return void res.end();
    }
    if (!this.authorized(req)) return this.challenge(res, route.repo);
    if (route.kind === 'manifests') {
      const key = route.ref.includes(':') ? `${route.repo}@${route.ref}` : `${route.repo}:${route.ref}`;
      const m = this.manifests.get(key);
      if (!m) {
        res.statusCode = 404;
        res.setHeader('Content-Type', 'application/json');
        return void res.end(JSON.stringify({ errors: [{ code: 'MANIFEST_UNKNOWN', message: 'manifest unknown' }] }));
      }
      res.setHeader('Content-Type', m.mediaType);
      res.setHeader('Docker-Content-Digest', sha256(m.body));
      res.setHeader('Content-Length', m.body.length);
      return void res.end(req.method === 'HEAD' ? undefined : m.body);
    }
    const blob = this.blobs.get(route.ref);
    if (!blob) {
      res.statusCode = 404;
      return void res.end(JSON.stringify({ errors: [{ code: 'BLOB_UNKNOWN', message: 'blob unknown to registry' }] }));
    }
    const range = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
    if (range) {
      const start = Number(range[1]);
      res.statusCode = 206;
      res.setHeader('Content-Range', `bytes ${start}-${blob.length - 1}/${blob.length}`);
      res.setHeader('Content-Length', blob.length - start);
      return void res.end(blob.subarray(start));
    }
    res.setHeader('Content-Length', blob.length);
    res.end(blob);
  }
}

// ---- helpers ----

async function scratch(t: { teardown: (fn: () => Promise<void>) => void }): Promise<string> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'crisp-regclient-'));
  t.teardown(() => fsp.rm(dir, { recursive: true, force: true }));
  return dir;
}

async function registry(t: { teardown: (fn: () => Promise<void>) => void }): Promise<FakeRegistry> {
  const r = await new FakeRegistry().start();
  t.teardown(() => r.stop());
  return r;
}

function client(t: { teardown: (fn: () => void) => void }, opts: Partial<RegistryClientOptions> = {}): RegistryClient {
  const c = new RegistryClient({
    hosts: new RegistryHosts({ configDir: '' }),
    retryBaseDelayMs: 10,
    retryMaxDelayMs: 50,
    stallTimeoutMs: 5000,
    platform: parsePlatform('linux/amd64'),
    ...opts,
  });
  t.teardown(() => c.close());
  return c;
}

const exists = (p: string) =>
  fsp.access(p).then(
    () => true,
    () => false,
  );

const blobGets = (r: FakeRegistry, digest: string) => r.requests.filter((q) => q.method === 'GET' && q.url.includes(`/blobs/${digest}`));

// ---- tests ----

test('resolves by tag and by digest, and fetches the manifest', async (t) => {
  const r = await registry(t);
  const layer = r.addBlob('layer-data');
  const desc = r.addImage('team/app', 'v1', [layer]);
  const c = client(t);

  const byTag = await c.resolve(parseReference(`${r.host}/team/app:v1`));
  t.deepEqual(byTag, desc);
  t.is(r.requests[0].method, 'HEAD');
  t.regex(String(r.requests[0].headers.accept), /application\/vnd\.oci\.image\.index\.v1\+json/);
  t.regex(String(r.requests[0].headers.accept), /application\/vnd\.docker\.distribution\.manifest\.v2\+json/);

  const byDigest = await c.resolve(parseReference(`${r.host}/team/app@${desc.digest}`));
  t.deepEqual(byDigest, desc);

  const m = await c.fetchManifest(parseReference(`${r.host}/team/app:v1`));
  t.is(m.kind, 'manifest');
  t.deepEqual(m.descriptor, desc);
  t.is(sha256(m.bytes), desc.digest);
  if (m.kind === 'manifest') t.deepEqual(m.manifest.layers, [layer]);
});

test('resolve falls back to GET when HEAD gives no digest', async (t) => {
  const r = await registry(t);
  const desc = r.addImage('app', 'latest');
  r.hook = (req, res, route) => {
    if (req.method !== 'HEAD' || route?.kind !== 'manifests') return false;
    res.setHeader('Content-Type', 'application/json');
    res.end();
    return true;
  };
  const c = client(t);
  t.deepEqual(await c.resolve(parseReference(`${r.host}/app`)), desc);
  t.deepEqual(
    r.requests.map((q) => q.method),
    ['HEAD', 'GET'],
  );
});

test('missing image is NotFound naming the image', async (t) => {
  const r = await registry(t);
  const c = client(t);
  const err = await t.throwsAsync(c.resolve(parseReference(`${r.host}/nope:v9`)));
  t.true(isCrispError(err, 'NotFound'), String(err));
  t.regex(err?.message ?? '', new RegExp(`image "${r.host}/nope:v9" not found`));
  const err2 = await t.throwsAsync(c.fetchManifest(parseReference(`${r.host}/nope:v9`)));
  t.true(isCrispError(err2, 'NotFound'));
  t.regex(err2?.message ?? '', /MANIFEST_UNKNOWN/);
});

test('index → manifest for the requested platform', async (t) => {
  const r = await registry(t);
  const amd = r.addImage('multi', undefined);
  const arm = r.addImage('multi', undefined);
  const armv7 = r.addImage('multi', undefined);
  const attestation = r.addImage('multi', undefined);
  const index = r.addManifest(
    'multi',
    {
      schemaVersion: 2,
      mediaType: MediaTypes.ociIndex,
      manifests: [
        { ...amd, platform: { os: 'linux', architecture: 'amd64' } },
        { ...armv7, platform: { os: 'linux', architecture: 'arm', variant: 'v7' } },
        { ...arm, platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } },
        { ...attestation, platform: { os: 'unknown', architecture: 'unknown' } },
      ],
    },
    MediaTypes.ociIndex,
    'latest',
  );
  const ref = parseReference(`${r.host}/multi`);

  const forArm = await client(t, { platform: parsePlatform('linux/arm64') }).fetchImageManifest(ref);
  t.deepEqual(forArm.target, index);
  t.deepEqual(
    forArm.documents.map((d) => d.kind),
    ['index', 'manifest'],
  );
  t.deepEqual(forArm.manifest.descriptor, arm);

  const forAmd = await client(t).fetchImageManifest(ref);
  t.deepEqual(forAmd.manifest.descriptor, amd);

  const forArmV6 = await t.throwsAsync(client(t, { platform: parsePlatform('linux/arm/v6') }).fetchImageManifest(ref));
  t.true(isCrispError(forArmV6, 'NotFound'));
  t.regex(forArmV6?.message ?? '', /no manifest for platform linux\/arm\/v6 \(available: linux\/amd64, linux\/arm\/v7, linux\/arm64\/v8, unknown\/unknown\)/);
});

test('platform matching rules', (t) => {
  const entries: Array<{ name: string; platform?: Platform }> = [
    { name: 'arm-v5', platform: { os: 'linux', architecture: 'arm', variant: 'v5' } },
    { name: 'arm-v6', platform: { os: 'linux', architecture: 'arm', variant: 'v6' } },
    { name: 'arm64', platform: { os: 'linux', architecture: 'arm64' } },
    { name: 'amd64-v3', platform: { os: 'linux', architecture: 'amd64', variant: 'v3' } },
    { name: 'windows', platform: { os: 'windows', architecture: 'amd64' } },
  ];
  t.is(selectPlatformEntry(entries, parsePlatform('linux/arm/v7'))?.name, 'arm-v6', 'an arm/v7 host prefers the newest variant it can run');
  t.is(selectPlatformEntry(entries, parsePlatform('linux/arm64/v8'))?.name, 'arm64', 'arm64 without variant is v8');
  t.is(selectPlatformEntry(entries, parsePlatform('linux/aarch64'))?.name, 'arm64');
  t.is(selectPlatformEntry(entries, parsePlatform('linux/amd64')), undefined, 'a baseline amd64 host cannot run v3');
  t.is(selectPlatformEntry(entries, parsePlatform('linux/amd64/v3'))?.name, 'amd64-v3');
  t.is(selectPlatformEntry([{ name: 'any' }, ...entries], parsePlatform('linux/s390x'))?.name, 'any');
  t.true(platformMatches(parsePlatform('linux/x86_64'), { os: 'linux', architecture: 'amd64', variant: 'v1' }));
  const host = hostPlatform();
  t.is(host.os, 'linux');
  t.is(host.architecture, { x64: 'amd64', arm64: 'arm64' }[process.arch as string] ?? host.architecture);
  if (process.arch === 'arm64') t.is(host.variant, 'v8');
});

test('schema 1 manifests are rejected clearly', async (t) => {
  const r = await registry(t);
  r.addManifest('old', { schemaVersion: 1, name: 'old', tag: 'latest', fsLayers: [] }, MediaTypes.dockerSchema1Signed, 'latest');
  const err = await t.throwsAsync(client(t).fetchManifest(parseReference(`${r.host}/old`)));
  t.true(isCrispError(err, 'Unimplemented'), String(err));
  t.regex(err?.message ?? '', /schema 1 manifest, which is no longer supported/);
});

test('Basic auth with right and wrong credentials', async (t) => {
  const r = await registry(t);
  r.auth = { scheme: 'basic', username: 'alice', password: 's3cret' };
  const layer = r.addBlob('private-layer');
  r.addImage('private/app', 'v1', [layer]);
  const ref = parseReference(`${r.host}/private/app:v1`);
  const dir = await scratch(t);

  const c = client(t);
  const auth = { username: 'alice', password: 's3cret', serverAddress: r.host };
  await c.resolve(ref, { auth });
  const res = await c.fetchBlob(ref, layer, path.join(dir, 'layer'), { auth });
  t.is(await fsp.readFile(res.path, 'utf8'), 'private-layer');
  // The blob request carried credentials up front: the challenge was remembered.
  t.is(blobGets(r, layer.digest).length, 1);

  const wrong = await t.throwsAsync(client(t).resolve(ref, { auth: { auth: Buffer.from('alice:nope').toString('base64') } }));
  t.true(isCrispError(wrong, 'Unauthenticated'), String(wrong));
  t.regex(wrong?.message ?? '', new RegExp(`authentication to registry ${r.host} failed`));

  const anonymous = await t.throwsAsync(client(t).resolve(ref));
  t.true(isCrispError(anonymous, 'Unauthenticated'));
  t.regex(anonymous?.message ?? '', /pull access denied/);

  // Credentials for another registry are not sent here.
  const elsewhere = await t.throwsAsync(client(t).resolve(ref, { auth: { ...auth, serverAddress: 'other.example.com' } }));
  t.true(isCrispError(elsewhere, 'Unauthenticated'));
});

test('Bearer token flow: anonymous, with credentials, cached, wrong credentials', async (t) => {
  const r = await registry(t);
  r.auth = { scheme: 'bearer', users: { bob: 'hunter2' }, anonymous: true };
  const layer = r.addBlob('public-layer');
  r.addImage('lib/app', 'v1', [layer]);
  const ref = parseReference(`${r.host}/lib/app:v1`);
  const dir = await scratch(t);

  const anon = client(t);
  await anon.resolve(ref);
  await anon.fetchBlob(ref, layer, path.join(dir, 'anon'));
  t.is(r.tokenRequests.length, 1, 'the token is cached across requests');
  const tokenUrl = new URL(r.tokenRequests[0].url, 'http://x');
  t.is(tokenUrl.searchParams.get('service'), 'fake-registry');
  t.deepEqual(tokenUrl.searchParams.getAll('scope'), ['repository:lib/app:pull']);
  t.is(r.tokenRequests[0].headers.authorization, undefined);

  // The remembered challenge is reused for another repository, with that repository's scope only.
  r.addImage('other/img', 'v2');
  await anon.resolve(parseReference(`${r.host}/other/img:v2`));
  t.is(r.tokenRequests.length, 2);
  t.deepEqual(new URL(r.tokenRequests[1].url, 'http://x').searchParams.getAll('scope'), ['repository:other/img:pull']);

  const withCreds = client(t);
  await withCreds.resolve(ref, { auth: { username: 'bob', password: 'hunter2' } });
  t.is(r.tokenRequests.length, 3);
  t.is(r.tokenRequests[2].headers.authorization, `Basic ${Buffer.from('bob:hunter2').toString('base64')}`);
  t.is(new URL(r.tokenRequests[2].url, 'http://x').searchParams.get('account'), 'bob');

  const err = await t.throwsAsync(client(t).resolve(ref, { auth: { username: 'bob', password: 'wrong' } }));
  t.true(isCrispError(err, 'Unauthenticated'), String(err));
  t.regex(err?.message ?? '', new RegExp(`authentication to registry ${r.host} failed: token server http://${r.host} rejected the credentials`));

  r.auth.anonymous = false;
  const denied = await t.throwsAsync(client(t).resolve(ref));
  t.true(isCrispError(denied, 'Unauthenticated'));
  t.regex(denied?.message ?? '', /refused anonymous access to lib\/app/);
});

test('identity tokens are exchanged with the OAuth2 refresh-token grant; registry tokens are sent as is', async (t) => {
  const r = await registry(t);
  r.auth = { scheme: 'bearer', users: {}, anonymous: false, refreshTokens: ['refresh-123'] };
  r.addImage('app', 'v1');
  const ref = parseReference(`${r.host}/app:v1`);

  await client(t).resolve(ref, { auth: { identityToken: 'refresh-123' } });
  t.is(r.tokenRequests[0].method, 'POST');
  const form = new URLSearchParams(r.tokenBodies[0]);
  t.is(form.get('grant_type'), 'refresh_token');
  t.is(form.get('refresh_token'), 'refresh-123');
  t.is(form.get('service'), 'fake-registry');
  t.is(form.get('scope'), 'repository:app:pull');

  const bad = await t.throwsAsync(client(t).resolve(ref, { auth: { identityToken: 'stale' } }));
  t.true(isCrispError(bad, 'Unauthenticated'));

  // A registry token is sent as is, without a challenge round trip or a token request.
  const issued = String([...r.requests].reverse().find((q) => q.headers.authorization)?.headers.authorization).replace('Bearer ', '');
  const tokenRequestsBefore = r.tokenRequests.length;
  r.requests.length = 0;
  await client(t).resolve(ref, { auth: { registryToken: issued } });
  t.is(r.requests.length, 1);
  t.is(r.requests[0].headers.authorization, `Bearer ${issued}`);
  t.is(r.tokenRequests.length, tokenRequestsBefore);

  const forged = await t.throwsAsync(client(t).resolve(ref, { auth: { registryToken: 'forged' } }));
  t.true(isCrispError(forged, 'Unauthenticated'));
});

test('blob download verifies and syncs; digest mismatch leaves no file', async (t) => {
  const r = await registry(t);
  const dir = await scratch(t);
  const data = Buffer.alloc(256 * 1024, 7);
  const good = r.addBlob(data);
  const ref = parseReference(`${r.host}/app`);
  const c = client(t);
  const progress: number[] = [];
  let counted = 0;
  const metered = client(t, { onBytes: (n, info) => (info.kind === 'blob' ? (counted += n) : undefined) });
  const res = await metered.fetchBlob(ref, good, path.join(dir, 'good'), { onProgress: (n) => progress.push(n) });
  t.deepEqual(res, { digest: good.digest, size: good.size, path: path.join(dir, 'good') });
  t.true((await fsp.readFile(res.path)).equals(data));
  t.is(progress.at(-1), data.length);
  t.is(counted, data.length);

  const lie = { ...good, digest: sha256('something else') };
  r.blobs.set(lie.digest, data);
  const err = await t.throwsAsync(c.fetchBlob(ref, lie, path.join(dir, 'lie')));
  t.true(isCrispError(err, 'FailedPrecondition'), String(err));
  t.regex(err?.message ?? '', /failed verification: content has digest sha256:/);
  t.false(await exists(path.join(dir, 'lie')));

  const tooBig = { ...good, size: good.size - 1 };
  const err2 = await t.throwsAsync(c.fetchBlob(ref, tooBig, path.join(dir, 'big')));
  t.regex(err2?.message ?? '', /size 262144 does not match the expected 262143/);
  t.false(await exists(path.join(dir, 'big')));

  const badAuth = c.fetchBlob(ref, good, path.join(dir, 'x'), { auth: { auth: 'not base64!' } });
  t.true(isCrispError(await t.throwsAsync(badAuth), 'InvalidArgument'));

  const missing = await t.throwsAsync(c.fetchBlob(ref, { ...good, digest: sha256('absent') }, path.join(dir, 'missing')));
  t.true(isCrispError(missing, 'NotFound'));
  t.regex(missing?.message ?? '', /BLOB_UNKNOWN/);
  t.false(await exists(path.join(dir, 'missing')));
});

test('a server that stops sending mid-blob trips the stall timeout', async (t) => {
  const r = await registry(t);
  const dir = await scratch(t);
  const desc = r.addBlob(Buffer.alloc(64 * 1024, 1));
  r.hook = (_req, res, route) => {
    if (route?.kind !== 'blobs') return false;
    res.setHeader('Content-Length', desc.size);
    res.write(Buffer.alloc(1024, 1)); // then silence
    return true;
  };
  const c = client(t, { stallTimeoutMs: 300 });
  const started = Date.now();
  const err = await t.throwsAsync(c.fetchBlob(parseReference(`${r.host}/app`), desc, path.join(dir, 'blob')));
  t.true(isCrispError(err, 'DeadlineExceeded'), String(err));
  t.is(err?.message, `pulling ${desc.digest} from ${r.host}: no data received for 300ms`);
  t.true(Date.now() - started < 3000);
  t.false(await exists(path.join(dir, 'blob')));
});

test('a server that never answers trips the stall timeout too', async (t) => {
  const r = await registry(t);
  r.hook = () => true; // never responds
  const err = await t.throwsAsync(client(t, { stallTimeoutMs: 200 }).resolve(parseReference(`${r.host}/app`)));
  t.true(isCrispError(err, 'DeadlineExceeded'), String(err));
  t.regex(err?.message ?? '', /no response for 200ms/);
});

test('503 then success is retried; Retry-After is honoured', async (t) => {
  const r = await registry(t);
  const dir = await scratch(t);
  const desc = r.addBlob('flaky');
  let failures = 2;
  r.hook = (_req, res, route) => {
    if (route?.kind === 'blobs' && failures-- > 0) {
      res.statusCode = failures === 0 ? 429 : 503;
      if (failures === 0) res.setHeader('Retry-After', '0');
      res.end();
      return true;
    }
    return false;
  };
  const res = await client(t).fetchBlob(parseReference(`${r.host}/app`), desc, path.join(dir, 'b'));
  t.is(await fsp.readFile(res.path, 'utf8'), 'flaky');
  t.is(blobGets(r, desc.digest).length, 3);

  failures = 100;
  const err = await t.throwsAsync(client(t, { maxAttempts: 3 }).fetchBlob(parseReference(`${r.host}/app`), desc, path.join(dir, 'c')));
  t.true(isCrispError(err, 'Unavailable'), String(err));
  t.is(blobGets(r, desc.digest).length, 6, 'attempts are bounded');
});

test('a dropped connection resumes with a Range request', async (t) => {
  const r = await registry(t);
  const dir = await scratch(t);
  const data = Buffer.from(Array.from({ length: 200_000 }, (_, i) => i % 251));
  const desc = r.addBlob(data);
  let first = true;
  r.hook = (req, res, route) => {
    if (route?.kind !== 'blobs' || !first) return false;
    first = false;
    res.setHeader('Content-Length', data.length);
    res.write(data.subarray(0, 50_000), () => setTimeout(() => req.socket.destroy(), 20));
    return true;
  };
  const res = await client(t).fetchBlob(parseReference(`${r.host}/app`), desc, path.join(dir, 'b'));
  t.true((await fsp.readFile(res.path)).equals(data));
  const gets = blobGets(r, desc.digest);
  t.is(gets.length, 2);
  t.regex(String(gets[1].headers.range), /^bytes=\d+-$/);
  t.not(gets[1].headers.range, 'bytes=0-');
});

test('redirects to another host do not carry Authorization', async (t) => {
  const r = await registry(t);
  const cdn = await registry(t);
  const dir = await scratch(t);
  r.auth = { scheme: 'basic', username: 'u', password: 'p' };
  const desc = cdn.addBlob('from-the-cdn');
  r.blobs.set(desc.digest, Buffer.from('unused'));
  r.hook = (req, res, route) => {
    if (route?.kind !== 'blobs' || !req.headers.authorization) return false;
    res.statusCode = 307;
    res.setHeader('Location', `http://${cdn.host}/v2/app/blobs/${desc.digest}?sig=abc`);
    res.end();
    return true;
  };
  const res = await client(t).fetchBlob(parseReference(`${r.host}/app`), desc, path.join(dir, 'b'), {
    auth: { username: 'u', password: 'p' },
  });
  t.is(await fsp.readFile(res.path, 'utf8'), 'from-the-cdn');
  t.is(cdn.requests.length, 1);
  t.is(cdn.requests[0].headers.authorization, undefined);
  t.true(cdn.requests[0].url.endsWith('?sig=abc'));
  t.truthy(r.requests.at(-1)?.headers.authorization);
});

test('configured headers do not follow a redirect to another origin', async (t) => {
  const r = await registry(t);
  const cdn = await registry(t);
  const dir = await scratch(t);
  const desc = cdn.addBlob('from-the-cdn');
  r.hook = (_req, res, route) => {
    if (route?.kind !== 'blobs') return false;
    res.statusCode = 307;
    res.setHeader('Location', `http://${cdn.host}/v2/app/blobs/${desc.digest}?sig=abc`);
    res.end();
    return true;
  };
  const certs = path.join(dir, 'certs.d');
  await fsp.mkdir(path.join(certs, r.host), { recursive: true });
  await fsp.writeFile(
    path.join(certs, r.host, 'hosts.toml'),
    [`[host."http://${r.host}"]`, `  capabilities = ["pull", "resolve"]`, `  [host."http://${r.host}".header]`, `    x-registry-key = "secret"`].join('\n'),
  );
  const c = client(t, { hosts: new RegistryHosts({ configDir: certs }) });
  const res = await c.fetchBlob(parseReference(`${r.host}/app`), desc, path.join(dir, 'b'));
  t.is(await fsp.readFile(res.path, 'utf8'), 'from-the-cdn');
  t.is(r.requests.at(-1)?.headers['x-registry-key'], 'secret', 'the configured host gets its header');
  t.is(cdn.requests.length, 1);
  t.is(cdn.requests[0].headers['x-registry-key'], undefined, 'the redirect target does not');
  t.truthy(cdn.requests[0].headers['user-agent']);
});

test('a redirect from https to plain http is refused', async (t) => {
  const dir = await scratch(t);
  const cdn = await registry(t);
  const desc = cdn.addBlob('from-the-cdn');
  // Verification is off (skip_verify): what is tested is where the redirect may lead.
  const ca = await createCertificateAuthority(dir, 'ca', 'crisp test CA');
  const cert = await issueServerCertificate(dir, 'registry', ca, { ips: ['127.0.0.1'] });
  const secure = https.createServer({ cert: cert.certPem, key: cert.keyPem }, (req, res) => {
    res.statusCode = 307;
    res.setHeader('Location', `http://${cdn.host}${req.url}`);
    res.end();
  });
  await new Promise<void>((resolve) => secure.listen(0, '127.0.0.1', resolve));
  t.teardown(() => {
    secure.closeAllConnections();
    secure.close();
  });
  const host = `127.0.0.1:${(secure.address() as AddressInfo).port}`;
  const certs = path.join(dir, 'certs.d');
  await fsp.mkdir(path.join(certs, host), { recursive: true });
  await fsp.writeFile(
    path.join(certs, host, 'hosts.toml'),
    [`server = "https://${host}"`, `skip_verify = true`].join('\n'),
  );
  const c = client(t, { hosts: new RegistryHosts({ configDir: certs }), maxAttempts: 1 });
  const err = await t.throwsAsync(c.fetchBlob(parseReference(`${host}/app`), desc, path.join(dir, 'b')));
  t.regex(err!.message, /redirected from https to plain http/);
  t.is(cdn.requests.length, 0, 'nothing was sent over plain http');
});

test('concurrent fetches of one blob share a single transfer', async (t) => {
  const r = await registry(t);
  const dir = await scratch(t);
  const desc = r.addBlob(Buffer.alloc(100_000, 3));
  r.hook = async (_req, _res, route) => {
    if (route?.kind === 'blobs') await new Promise((res) => setTimeout(res, 50));
    return false;
  };
  const c = client(t);
  const ref = parseReference(`${r.host}/app`);
  const committed = path.join(dir, 'committed');
  let finalized = 0;
  const finalize = async (verified: string) => {
    finalized++;
    await fsp.rename(verified, committed);
    return committed;
  };
  const a = c.fetchBlob(ref, desc, path.join(dir, 'tmp-a'), { finalize });
  const b = c.fetchBlob(ref, desc, path.join(dir, 'tmp-b'), { finalize });
  t.is(a, b, 'the same promise');
  const controller = new AbortController();
  const withSignal = c.fetchBlob(ref, desc, path.join(dir, 'tmp-c'), { signal: controller.signal, finalize });
  const [ra, , rc] = await Promise.all([a, b, withSignal]);
  t.is(ra.path, committed);
  t.deepEqual(rc, ra);
  t.is(finalized, 1);
  t.is((await fsp.readFile(committed)).length, desc.size);
  t.deepEqual((await fsp.readdir(dir)).sort(), ['committed']);
  t.is(blobGets(r, desc.digest).length, 1);

  // Once finished, a new fetch transfers again.
  await c.fetchBlob(ref, desc, path.join(dir, 'again'));
  t.is(blobGets(r, desc.digest).length, 2);
});

test('cancelling the only caller aborts the transfer and removes the file', async (t) => {
  const r = await registry(t);
  const dir = await scratch(t);
  const desc = r.addBlob(Buffer.alloc(10_000, 9));
  r.hook = (_req, res, route) => {
    if (route?.kind !== 'blobs') return false;
    res.setHeader('Content-Length', desc.size);
    res.write(Buffer.alloc(100, 9));
    return true;
  };
  const controller = new AbortController();
  const p = client(t).fetchBlob(parseReference(`${r.host}/app`), desc, path.join(dir, 'b'), { signal: controller.signal });
  setTimeout(() => controller.abort(), 100);
  const err = await t.throwsAsync(p);
  t.true(isCrispError(err, 'Canceled'), String(err));
  await new Promise((res) => setTimeout(res, 100));
  t.false(await exists(path.join(dir, 'b')));
});

test('parallel downloads are bounded', async (t) => {
  const r = await registry(t);
  const dir = await scratch(t);
  let active = 0;
  let peak = 0;
  r.hook = async (_req, _res, route) => {
    if (route?.kind !== 'blobs') return false;
    active++;
    peak = Math.max(peak, active);
    await new Promise((done) => setTimeout(done, 60));
    active--;
    return false;
  };
  const c = client(t, { maxConcurrentDownloads: 2 });
  const ref = parseReference(`${r.host}/app`);
  const descs = [1, 2, 3, 4, 5].map((i) => r.addBlob(`blob-${i}`));
  await Promise.all(descs.map((d, i) => c.fetchBlob(ref, d, path.join(dir, `b${i}`))));
  t.is(peak, 2);
});

test('mirrors are tried in order and fall through to upstream', async (t) => {
  const upstream = await registry(t);
  const mirror = await registry(t);
  const dir = await scratch(t);
  mirror.root = '/custom/api';
  const layer = upstream.addBlob('upstream-layer');
  const desc = upstream.addImage('team/app', 'v1', [layer]);
  // The mirror has the layer but not the manifest.
  mirror.blobs.set(layer.digest, Buffer.from('upstream-layer'));

  // A port nothing listens on: connection refused.
  const dead = http.createServer();
  await new Promise<void>((res) => dead.listen(0, '127.0.0.1', res));
  const deadPort = (dead.address() as AddressInfo).port;
  await new Promise<void>((res) => dead.close(() => res()));

  const certs = path.join(dir, 'certs.d');
  await fsp.mkdir(path.join(certs, upstream.host), { recursive: true });
  await fsp.writeFile(
    path.join(certs, upstream.host, 'hosts.toml'),
    [
      `[host."http://127.0.0.1:${deadPort}"]`,
      `  capabilities = ["pull", "resolve"]`,
      `[host."http://${mirror.host}/custom/api"]`,
      `  capabilities = ["pull", "resolve"]`,
      `  override_path = true`,
      `  [host."http://${mirror.host}/custom/api".header]`,
      `    x-mirror-key = "k1"`,
    ].join('\n'),
  );
  const c = client(t, { hosts: new RegistryHosts({ configDir: certs }) });
  const ref = parseReference(`${upstream.host}/team/app:v1`);

  t.deepEqual(await c.resolve(ref), desc);
  const mirrorHead = mirror.requests.find((q) => q.method === 'HEAD');
  t.is(mirrorHead?.url, `/custom/api/team/app/manifests/v1?ns=${encodeURIComponent(upstream.host)}`);
  t.is(mirrorHead?.headers['x-mirror-key'], 'k1');
  t.is(upstream.requests.filter((q) => q.method === 'HEAD').length, 1);
  t.false(String(upstream.requests[0].url).includes('ns='), 'no ns= for the upstream itself');

  const res = await c.fetchBlob(ref, layer, path.join(dir, 'layer'));
  t.is(await fsp.readFile(res.path, 'utf8'), 'upstream-layer');
  t.is(blobGets(mirror, layer.digest).length, 1, 'served by the mirror');
  t.is(blobGets(upstream, layer.digest).length, 0);
});

test('semaphore grants in order and honours abort while waiting', async (t) => {
  const s = new Semaphore(1);
  const r1 = await s.acquire();
  const order: number[] = [];
  const p2 = s.acquire().then((r) => {
    order.push(2);
    return r;
  });
  const controller = new AbortController();
  const p3 = s.acquire(controller.signal);
  controller.abort(new Error('gone'));
  await t.throwsAsync(p3, { message: 'gone' });
  r1();
  r1(); // releasing twice is harmless
  const r2 = await p2;
  t.deepEqual(order, [2]);
  const p4 = s.acquire();
  r2();
  (await p4)();
});
