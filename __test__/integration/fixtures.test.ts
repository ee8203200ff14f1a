import test from 'ava';
import { execFile, execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, lstatSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { gunzipSync } from 'node:zlib';

import { bcryptHash } from '../fixtures/bcrypt';
import {
  blobPath,
  buildFixtureImages,
  buildLargeImage,
  MediaType,
  pushFixtures,
  type ExpectedFile,
  type FixtureSet,
} from '../fixtures/images';
import { startRegistry, type RegistryHandle } from '../fixtures/registry';
import { readTar } from '../fixtures/tar';

const execFileAsync = promisify(execFile);

interface Response {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
}

function httpCall(
  method: string,
  url: string,
  headers: Record<string, string> = {},
  options: { body?: string; ca?: string } = {},
): Promise<Response> {
  return new Promise((resolve, reject) => {
    const target = new URL(url);
    const send = target.protocol === 'https:' ? httpsRequest : httpRequest;
    const req = send(target, { method, headers, ca: options.ca }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
    });
    req.on('error', reject);
    req.end(options.body);
  });
}

const sha256 = (data: Buffer): string => `sha256:${createHash('sha256').update(data).digest('hex')}`;
const basic = (user: string, password: string): string => `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;
const MANIFEST_ACCEPT = [MediaType.ociIndex, MediaType.ociManifest, MediaType.dockerManifest, MediaType.dockerManifestList].join(', ');

/** Parses `Bearer realm="...",service="...",scope="..."` into its parameters. */
function parseChallenge(header: string | undefined): { scheme: string; params: Record<string, string> } {
  if (!header) throw new Error('no WWW-Authenticate header');
  const space = header.indexOf(' ');
  const params: Record<string, string> = {};
  for (const m of header.slice(space + 1).matchAll(/(\w+)="([^"]*)"/g)) params[m[1]!] = m[2]!;
  return { scheme: header.slice(0, space), params };
}

let fixtures: FixtureSet;

test.before(async () => {
  fixtures = await buildFixtureImages();
});

test('bcrypt reproduces a published test vector', (t) => {
  t.is(bcryptHash('U*U', 5, 'CCCCCCCCCCCCCCCCCCCCC.'), '$2b$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW');
  const random = bcryptHash('pw', 4);
  t.regex(random, /^\$2b\$04\$[./A-Za-z0-9]{53}$/);
  t.is(bcryptHash('pw', 4, random.slice(7, 29)), random);
});

test.serial('fixture images are byte-for-byte reproducible', async (t) => {
  const root = await mkdtemp(join(tmpdir(), 'crisp-fixture-cache-'));
  try {
    const rebuilt = await buildFixtureImages({ cacheRoot: root });
    t.not(rebuilt.layoutDir, fixtures.layoutDir);
    t.is(rebuilt.version, fixtures.version);
    for (const [key, image] of Object.entries(fixtures.images)) {
      const other = rebuilt.images[key as keyof FixtureSet['images']];
      t.is(other.digest, image.digest, key);
      t.deepEqual(
        other.platforms.map((m) => [m.config.digest, ...m.layers.map((l) => l.digest)]),
        image.platforms.map((m) => [m.config.digest, ...m.layers.map((l) => l.digest)]),
        key,
      );
    }
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});

test('layer blobs match their descriptors and diffIDs', (t) => {
  for (const image of Object.values(fixtures.images)) {
    for (const m of image.platforms) {
      t.is(sha256(readFileSync(blobPath(fixtures.layoutDir, m.digest))), m.digest);
      const config = readFileSync(blobPath(fixtures.layoutDir, m.config.digest));
      t.is(sha256(config), m.config.digest);
      t.deepEqual(JSON.parse(config.toString()).rootfs.diff_ids, m.layers.map((l) => l.diffId));
      for (const layer of m.layers) {
        const blob = readFileSync(blobPath(fixtures.layoutDir, layer.digest));
        t.is(blob.length, layer.size);
        const tar =
          layer.compression === 'gzip' ? gunzipSync(blob) : execFileSync('zstd', ['-d', '-q', '-c'], { input: blob, maxBuffer: 64 << 20 });
        t.is(sha256(tar), layer.diffId, `${image.key} ${layer.digest}`);
        if (layer.compression === 'gzip') t.is(blob.readUInt32LE(4), 0, 'gzip header carries no mtime');
      }
    }
  }
  const zstd = fixtures.images.zstd.manifest;
  t.is(zstd.layers[0]!.mediaType, MediaType.ociLayerZstd);
  t.is(zstd.layers[0]!.diffId, fixtures.images.busybox.manifest.layers[0]!.diffId, 'same tar, different compression');
  t.not(zstd.layers[0]!.digest, fixtures.images.busybox.manifest.layers[0]!.digest);
  t.is(fixtures.images['shared-a'].manifest.layers[0]!.digest, fixtures.images['shared-b'].manifest.layers[0]!.digest);
  const docker = fixtures.images['docker-schema2'].manifest;
  t.is(docker.mediaType, MediaType.dockerManifest);
  t.is(docker.config.mediaType, MediaType.dockerConfig);
  t.is(docker.layers[0]!.mediaType, MediaType.dockerLayerGzip);
});

test('special tar entries survive a round trip and GNU tar reads them', async (t) => {
  const layer = fixtures.images.multilayer.manifest.layers[2]!;
  const blob = readFileSync(blobPath(fixtures.layoutDir, layer.digest));
  const entries = readTar(gunzipSync(blob));
  t.deepEqual(entries.map((e) => e.path), layer.entries);
  const byPath = new Map(entries.map((e) => [e.path, e]));
  t.deepEqual(
    Object.fromEntries(Object.entries(byPath.get('data/xattr.txt')!.xattrs ?? {}).map(([k, v]) => [k, v.toString()])),
    { 'user.crisp.other': 'second', 'user.crisp.test': 'fixture-value' },
  );
  t.is(byPath.get('data/hardlink')!.type, 'hardlink');
  t.is(byPath.get('data/hardlink')!.linkname, 'data/hard-src');
  t.is(byPath.get('data/fifo')!.type, 'fifo');
  t.is(byPath.get('usr/local/bin/setuid-tool')!.mode, 0o4755);
  t.is(byPath.get('srv/shared')!.mode, 0o2775);

  const { stdout } = await execFileAsync('tar', ['--xattrs', '--xattrs-include=*', '-tvzf', blobPath(fixtures.layoutDir, layer.digest)], {
    maxBuffer: 16 << 20,
  });
  const listed = stdout.split('\n');
  for (const path of layer.entries.filter((p) => !p.endsWith('.wh..wh..opq'))) {
    t.true(listed.some((line) => line.includes(path)), `GNU tar lists ${path}`);
  }
  t.true(listed.some((line) => /^-rwsr-xr-x\s+0\/0\s.*usr\/local\/bin\/setuid-tool$/.test(line)));
  t.true(listed.some((line) => /^-rw-r--r--\*\s.*data\/xattr\.txt$/.test(line)), 'GNU tar sees the xattrs');
});

/** The root filesystem as found on disk, in the shape of ExpectedFile (without xattrs). */
function scanRootfs(root: string): { files: Record<string, ExpectedFile>; inodes: Map<string, number> } {
  const files: Record<string, ExpectedFile> = {};
  const inodes = new Map<string, number>();
  const walk = (rel: string): void => {
    for (const name of readdirSync(join(root, rel)).sort()) {
      const path = `${rel}/${name}`;
      const st = lstatSync(join(root, path));
      const base = { mode: st.mode & 0o7777, uid: st.uid, gid: st.gid };
      inodes.set(path, st.ino);
      if (st.isDirectory()) {
        files[path] = { type: 'dir', ...base };
        walk(path);
      } else if (st.isSymbolicLink()) {
        files[path] = { type: 'symlink', ...base, linkname: readlinkSync(join(root, path)) };
      } else if (st.isFIFO()) {
        files[path] = { type: 'fifo', ...base };
      } else if (st.isFile()) {
        files[path] = { type: 'file', ...base, size: st.size, sha256: createHash('sha256').update(readFileSync(join(root, path))).digest('hex') };
      } else {
        files[path] = { type: st.isCharacterDevice() ? 'char' : 'block', ...base };
      }
    }
  };
  walk('');
  return { files, inodes };
}

test.serial('expected file lists agree with umoci unpacking the layers', async (t) => {
  if (process.getuid?.() !== 0) return t.fail('unpacking with owners requires root');
  const work = await mkdtemp(join(tmpdir(), 'crisp-fixture-unpack-'));
  try {
    for (const key of ['multilayer', 'busybox', 'shared-a'] as const) {
      const image = fixtures.images[key];
      const bundle = join(work, key);
      await execFileAsync('umoci', ['unpack', '--image', `${fixtures.layoutDir}:${image.repository}:${image.tag}`, bundle]);
      const { files, inodes } = scanRootfs(join(bundle, 'rootfs'));
      const expected = image.manifest.files!;
      t.deepEqual(Object.keys(files).sort(), Object.keys(expected).sort(), key);
      for (const [path, want] of Object.entries(expected)) {
        const got = files[path];
        if (!got) continue;
        t.is(got.type, want.type, path);
        t.is(got.mode, want.mode, `${path} mode`);
        t.is(got.uid, want.uid, `${path} uid`);
        t.is(got.gid, want.gid, `${path} gid`);
        if (want.type === 'file') {
          t.is(got.size, want.size, `${path} size`);
          t.is(got.sha256, want.sha256, `${path} content`);
        }
        if (want.type === 'symlink') t.is(got.linkname, want.linkname, `${path} target`);
        if (want.hardlinkOf) t.is(inodes.get(path), inodes.get(want.hardlinkOf), `${path} is a hard link`);
      }
    }
    const ml = fixtures.images.multilayer.manifest.files!;
    t.falsy(ml['/data/remove-me.txt'], 'whiteout removes a lower file');
    t.falsy(ml['/gone-dir'], 'whiteout removes a lower directory');
    t.deepEqual(Object.keys(ml).filter((p) => p.startsWith('/opaque/')), ['/opaque/new.txt']);
    t.is(ml['/data/recreated.txt']!.text, 'recreated in layer 3\n');
    t.deepEqual(ml['/data']!, { type: 'dir', mode: 0o770, uid: 1000, gid: 2000 });
  } finally {
    await rm(work, { recursive: true, force: true });
  }
});

test.serial('a registry serves the pushed fixtures', async (t) => {
  const registry = await startRegistry();
  t.teardown(() => registry.stop());
  const started = Date.now();
  const pushed = await pushFixtures(registry, undefined, { set: fixtures });
  t.true(Date.now() - started < 10_000, 'pushing the small fixtures is quick');

  const busybox = pushed.busybox!;
  t.is(busybox.reference, `${registry.host}/busybox:latest`);
  for (const tag of busybox.tags) {
    const res = await httpCall('GET', `${registry.url}/v2/busybox/manifests/${tag}`, { accept: MANIFEST_ACCEPT });
    t.is(res.status, 200);
    t.is(res.headers['docker-content-digest'], busybox.digest);
    t.is(res.headers['content-type'], MediaType.ociManifest);
    t.is(sha256(res.body), busybox.digest);
  }
  const layer = busybox.manifest.layers[0]!;
  const blob = await httpCall('GET', `${registry.url}/v2/busybox/blobs/${layer.digest}`);
  t.is(blob.status, 200);
  t.is(sha256(blob.body), layer.digest);
  t.is(sha256(gunzipSync(blob.body)), layer.diffId);

  const index = await httpCall('GET', `${registry.url}/v2/multiarch/manifests/latest`, { accept: MANIFEST_ACCEPT });
  t.is(index.headers['content-type'], MediaType.ociIndex);
  t.is(sha256(index.body), pushed.multiarch!.digest);
  const platforms = (JSON.parse(index.body.toString()) as { manifests: { platform: { architecture: string } }[] }).manifests.map(
    (m) => m.platform.architecture,
  );
  t.deepEqual(platforms.sort(), ['amd64', 'arm64']);

  const docker = await httpCall('GET', `${registry.url}/v2/docker-schema2/manifests/latest`, { accept: MANIFEST_ACCEPT });
  t.is(docker.headers['content-type'], MediaType.dockerManifest);

  const tags = await httpCall('GET', `${registry.url}/v2/user/tags/list`);
  t.deepEqual((JSON.parse(tags.body.toString()) as { tags: string[] }).tags.sort(), ['name', 'numeric', 'uid']);

  // An independent client resolves the index to this host's platform.
  const { stdout } = await execFileAsync('skopeo', ['inspect', '--tls-verify=false', `docker://${pushed.multiarch!.reference}`]);
  const inspected = JSON.parse(stdout) as { Env: string[]; Architecture: string };
  t.is(inspected.Architecture, pushed.multiarch!.manifest.platform.architecture);
  t.true(inspected.Env.includes(`FIXTURE_PLATFORM=${pushed.multiarch!.manifest.platform.architecture}`));
  t.not(pushed.multiarch!.platforms[0]!.platform.architecture, pushed.multiarch!.manifest.platform.architecture, 'the decoy comes first');
});

test.serial('an htpasswd registry refuses anonymous clients and accepts its user', async (t) => {
  const registry = await startRegistry({ auth: 'htpasswd', users: { alice: 'correct horse', bob: 'battery staple' } });
  t.teardown(() => registry.stop());
  await pushFixtures(registry, ['busybox'], { set: fixtures });
  const manifestUrl = `${registry.url}/v2/busybox/manifests/latest`;

  const anonymous = await httpCall('GET', manifestUrl, { accept: MANIFEST_ACCEPT });
  t.is(anonymous.status, 401);
  t.is(parseChallenge(anonymous.headers['www-authenticate'] as string).scheme, 'Basic');

  const wrong = await httpCall('GET', manifestUrl, { accept: MANIFEST_ACCEPT, authorization: basic('alice', 'wrong') });
  t.is(wrong.status, 401);

  for (const [user, password] of Object.entries(registry.users)) {
    const ok = await httpCall('GET', manifestUrl, { accept: MANIFEST_ACCEPT, authorization: basic(user, password) });
    t.is(ok.status, 200, user);
    t.is(sha256(ok.body), fixtures.images.busybox.digest);
  }
});

/** The Bearer dance: request, read the challenge, fetch a token from the realm, retry. */
async function bearerGet(
  registry: RegistryHandle,
  path: string,
  credentials?: { user: string; password: string },
): Promise<{ challenge: Record<string, string>; tokenResponse: Response; response: Response }> {
  const first = await httpCall('GET', `${registry.url}${path}`, { accept: MANIFEST_ACCEPT });
  if (first.status !== 401) throw new Error(`expected a challenge, got ${first.status}`);
  const { scheme, params } = parseChallenge(first.headers['www-authenticate'] as string);
  if (scheme !== 'Bearer') throw new Error(`unexpected scheme ${scheme}`);
  const tokenUrl = new URL(params['realm']!);
  tokenUrl.searchParams.set('service', params['service']!);
  if (params['scope']) tokenUrl.searchParams.set('scope', params['scope']);
  const tokenResponse = await httpCall(
    'GET',
    tokenUrl.toString(),
    credentials ? { authorization: basic(credentials.user, credentials.password) } : {},
  );
  if (tokenResponse.status !== 200) return { challenge: params, tokenResponse, response: first };
  const { token } = JSON.parse(tokenResponse.body.toString()) as { token: string };
  const response = await httpCall('GET', `${registry.url}${path}`, { accept: MANIFEST_ACCEPT, authorization: `Bearer ${token}` });
  return { challenge: params, tokenResponse, response };
}

for (const keyIdentification of ['x5c', 'kid'] as const) {
  test.serial(`a token registry accepts tokens from its token server (${keyIdentification})`, async (t) => {
    const registry = await startRegistry({ auth: 'token', users: { carol: 'token-secret' }, token: { keyIdentification } });
    t.teardown(() => registry.stop());
    const tokens = registry.tokenServer!;
    await pushFixtures(registry, ['busybox'], { set: fixtures });

    // Anonymous pull.
    const anon = await bearerGet(registry, '/v2/busybox/manifests/latest');
    t.is(anon.challenge['realm'], tokens.realm);
    t.is(anon.challenge['service'], tokens.service);
    t.is(anon.challenge['scope'], 'repository:busybox:pull');
    t.is(anon.response.status, 200);
    t.is(sha256(anon.response.body), fixtures.images.busybox.digest);
    const anonRecord = tokens.requests.at(-1)!;
    t.is(anonRecord.grant, 'anonymous');
    t.deepEqual(anonRecord.granted, [{ type: 'repository', name: 'busybox', actions: ['pull'] }]);

    // An anonymous token does not allow pushing.
    const pushDenied = await httpCall('POST', `${registry.url}/v2/busybox/blobs/uploads/`, {
      authorization: `Bearer ${anonRecord.token!}`,
      'content-length': '0',
    });
    t.is(pushDenied.status, 401);
    t.regex(String(pushDenied.headers['www-authenticate']), /error="insufficient_scope"/);

    // Wrong credentials are refused by the token server.
    const wrong = await bearerGet(registry, '/v2/busybox/manifests/latest', { user: 'carol', password: 'nope' });
    t.is(wrong.tokenResponse.status, 401);

    // An authenticated user gets push.
    const tokenUrl = `${tokens.realm}?service=${encodeURIComponent(tokens.service)}&scope=${encodeURIComponent('repository:busybox:pull,push')}`;
    const userToken = await httpCall('GET', tokenUrl, { authorization: basic('carol', 'token-secret') });
    t.is(userToken.status, 200);
    t.deepEqual(tokens.requests.at(-1)!.granted, [{ type: 'repository', name: 'busybox', actions: ['pull', 'push'] }]);
    t.is(tokens.requests.at(-1)!.user, 'carol');
    const upload = await httpCall('POST', `${registry.url}/v2/busybox/blobs/uploads/`, {
      authorization: `Bearer ${(JSON.parse(userToken.body.toString()) as { token: string }).token}`,
      'content-length': '0',
    });
    t.is(upload.status, 202);

    // OAuth2 password grant with a refresh token, then the refresh grant.
    const form = (fields: Record<string, string>): string => new URLSearchParams(fields).toString();
    const formHeaders = { 'content-type': 'application/x-www-form-urlencoded' };
    const oauth = await httpCall('POST', tokens.realm, formHeaders, {
      body: form({ grant_type: 'password', username: 'carol', password: 'token-secret', service: tokens.service, scope: 'repository:busybox:pull', client_id: 'crisp-test', access_type: 'offline' }),
    });
    t.is(oauth.status, 200);
    const { refresh_token: refreshToken } = JSON.parse(oauth.body.toString()) as { refresh_token: string };
    t.truthy(refreshToken);
    const refreshed = await httpCall('POST', tokens.realm, formHeaders, {
      body: form({ grant_type: 'refresh_token', refresh_token: refreshToken, service: tokens.service, scope: 'repository:busybox:pull', client_id: 'crisp-test' }),
    });
    t.is(refreshed.status, 200);
    const pulled = await httpCall('GET', `${registry.url}/v2/busybox/manifests/latest`, {
      accept: MANIFEST_ACCEPT,
      authorization: `Bearer ${(JSON.parse(refreshed.body.toString()) as { access_token: string }).access_token}`,
    });
    t.is(pulled.status, 200);
    t.deepEqual(
      tokens.requests.map((r) => r.grant),
      ['anonymous', 'basic', 'basic', 'password', 'refresh_token'],
    );
  });
}

test.serial('a TLS registry is reachable with its CA', async (t) => {
  const registry = await startRegistry({ tls: true });
  t.teardown(() => registry.stop());
  t.true(registry.url.startsWith('https://'));
  await pushFixtures(registry, ['busybox'], { set: fixtures });
  const res = await httpCall('GET', `${registry.url}/v2/busybox/manifests/latest`, { accept: MANIFEST_ACCEPT }, { ca: registry.ca!.certPem });
  t.is(res.status, 200);
  t.is(sha256(res.body), fixtures.images.busybox.digest);
  await t.throwsAsync(httpCall('GET', `${registry.url}/v2/`), undefined, 'untrusted without the CA');
});

test.serial('a scaled-down large image builds, caches and pushes', async (t) => {
  const cacheRoot = await mkdtemp(join(tmpdir(), 'crisp-fixture-large-'));
  const registry = await startRegistry();
  t.teardown(async () => {
    await registry.stop();
    await rm(cacheRoot, { recursive: true, force: true });
  });
  const options = { totalBytes: 9 * 1024 * 1024 + 123, layers: 3, cacheRoot };
  const large = await buildLargeImage(options);
  const manifest = large.image.manifest;
  t.is(manifest.layers.length, 4, 'busybox base plus three data layers');
  t.is(manifest.layers[0]!.diffId, fixtures.images.busybox.manifest.layers[0]!.diffId);
  const dataBytes = Object.entries(manifest.files!)
    .filter(([path]) => path.startsWith('/large/'))
    .reduce((sum, [, f]) => sum + (f.size ?? 0), 0);
  t.is(dataBytes, options.totalBytes);
  const again = await buildLargeImage(options);
  t.is(again.image.digest, large.image.digest);

  const pushed = await pushFixtures(registry, ['large'], { large: options });
  t.deepEqual(Object.keys(pushed), ['large']);
  for (const layer of manifest.layers) {
    const res = await httpCall('GET', `${registry.url}/v2/large/blobs/${layer.digest}`);
    t.is(sha256(res.body), layer.digest);
    t.is(sha256(gunzipSync(res.body)), layer.diffId);
  }
});

test.serial('the registry dies with a killed test process and its directory is reclaimed', async (t) => {
  const script = `
    const { startRegistry } = require(${JSON.stringify(require.resolve('../fixtures/registry'))});
    startRegistry().then((r) => { process.stdout.write(JSON.stringify({ pid: r.pid, dir: r.dir }) + '\\n'); setInterval(() => {}, 1000); });
  `;
  const runner = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  const line = await new Promise<string>((resolve, reject) => {
    let out = '';
    runner.stdout.on('data', (c: Buffer) => {
      out += c.toString();
      if (out.includes('\n')) resolve(out.split('\n')[0]!);
    });
    runner.once('exit', () => reject(new Error('runner exited early')));
  });
  const { pid, dir } = JSON.parse(line) as { pid: number; dir: string };
  t.true(existsSync(dir));
  const runnerGone = new Promise((resolve) => runner.once('exit', resolve));
  runner.kill('SIGKILL');
  await runnerGone;
  // A zombie waiting for a reaper counts as dead: it no longer serves anything.
  const alive = (): boolean => {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
    } catch {
      return false;
    }
  };
  const deadline = Date.now() + 5000;
  while (alive() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  t.false(alive(), 'registry killed by the parent-death signal');

  // The next start removes the directory its dead owner left behind.
  const next = await startRegistry();
  await next.stop();
  t.false(existsSync(dir));
  t.false(existsSync(next.dir));
});
