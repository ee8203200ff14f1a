import { execFileSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import anyTest, { type TestFn } from 'ava';
import type { CriClient } from '../../src/client/cri_client';
import { TestDaemon, tempDir } from '../fixtures/daemon';
import { buildFixtureImages, ESCAPE_MARKER, type ExpectedFile, type FixtureSet, type PushedImage, pushConfigOnlyImage, pushFixtures, type SmallFixtureKey } from '../fixtures/images';
import { type RegistryHandle, startRegistry } from '../fixtures/registry';

interface Context {
  registry: RegistryHandle;
  set: FixtureSet;
  pushed: Partial<Record<SmallFixtureKey, PushedImage>>;
}
const test = anyTest as TestFn<Context>;

test.before(async (t) => {
  const set = await buildFixtureImages();
  const registry = await startRegistry();
  const pushed = (await pushFixtures(registry, undefined, { set })) as Context['pushed'];
  t.context = { registry, set, pushed };
});

test.after.always(async (t) => {
  await t.context.registry?.stop();
});

function img(t: { context: Context }, key: SmallFixtureKey): PushedImage {
  return t.context.pushed[key]!;
}

async function daemon(t: any, extraConfig = ''): Promise<{ d: TestDaemon; c: CriClient }> {
  const d = await TestDaemon.start({ extraConfig });
  t.teardown(() => d.destroy());
  return { d, c: d.client() };
}

function snapshotDir(d: TestDaemon, chainId: string): string {
  return path.join(d.root, 'snapshots', chainId.slice('sha256:'.length), 'fs');
}

/** Mounts the image's snapshots as one read-only overlay, as a container rootfs would see them. */
function mountImage(t: any, d: TestDaemon, chainIds: string[]): string {
  const target = tempDir('crisp-test-mnt-');
  // overlayfs wants two lower dirs when there is no upper dir: an empty one goes at the bottom.
  const empty = tempDir('crisp-test-empty-');
  const lower = [...[...chainIds].reverse().map((c) => snapshotDir(d, c)), empty].join(':');
  execFileSync('mount', ['-t', 'overlay', 'overlay', '-o', `ro,lowerdir=${lower}`, target]);
  t.teardown(() => {
    execFileSync('umount', [target]);
    fs.rmSync(target, { recursive: true, force: true });
    fs.rmSync(empty, { recursive: true, force: true });
  });
  return target;
}

function typeOf(st: fs.Stats): ExpectedFile['type'] {
  if (st.isDirectory()) return 'dir';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isFIFO()) return 'fifo';
  if (st.isCharacterDevice()) return 'char';
  if (st.isBlockDevice()) return 'block';
  return 'file';
}

function walk(root: string, rel = ''): string[] {
  const out: string[] = [];
  for (const name of fs.readdirSync(path.join(root, rel))) {
    const p = `${rel}/${name}`;
    out.push(p);
    if (fs.lstatSync(path.join(root, p)).isDirectory()) out.push(...walk(root, p));
  }
  return out;
}

function assertRootfs(t: any, mounted: string, files: Record<string, ExpectedFile>): void {
  t.deepEqual(walk(mounted).sort(), Object.keys(files).sort(), 'exactly the expected paths, whiteouts applied');
  for (const [p, want] of Object.entries(files)) {
    const full = path.join(mounted, p);
    const st = fs.lstatSync(full);
    t.is(typeOf(st), want.type, `${p} type`);
    if (want.type !== 'symlink') t.is(st.mode & 0o7777, want.mode, `${p} mode`);
    t.is(st.uid, want.uid, `${p} uid`);
    t.is(st.gid, want.gid, `${p} gid`);
    if (want.type === 'file' && want.sha256) {
      t.is(crypto.createHash('sha256').update(fs.readFileSync(full)).digest('hex'), want.sha256.replace(/^sha256:/, ''), `${p} content`);
    }
    if (want.linkname !== undefined) t.is(fs.readlinkSync(full), want.linkname, `${p} target`);
    if (want.hardlinkOf) t.is(st.ino, fs.lstatSync(path.join(mounted, want.hardlinkOf)).ino, `${p} is a hard link of ${want.hardlinkOf}`);
  }
}

test('pull by tag, digest and tag@digest; ImageStatus and ListImages report the image', async (t) => {
  const { c } = await daemon(t);
  const busybox = img(t, 'busybox');
  const configDigest = busybox.manifest.config.digest;

  const byTag = await c.call('pullImage', { image: { image: busybox.reference } });
  t.is(byTag.imageRef, configDigest, 'image_ref is the image id: the config digest');
  const byDigest = await c.call('pullImage', { image: { image: busybox.digestReference } });
  t.is(byDigest.imageRef, configDigest);
  const both = await c.call('pullImage', { image: { image: `${busybox.reference}@${busybox.digest}` } });
  t.is(both.imageRef, configDigest);

  const status = await c.call('imageStatus', { image: { image: busybox.reference }, verbose: true });
  const image = status.image!;
  t.is(image.id, configDigest);
  t.deepEqual(image.repoTags, [`${busybox.reference}`]);
  t.deepEqual(image.repoDigests, [busybox.digestReference]);
  t.true(image.size > 0n);
  t.is(image.uid, undefined, 'an image without User reports neither uid nor username');
  t.is(image.username, '');
  const info = JSON.parse(status.info.info);
  t.deepEqual(info.imageSpec.rootfs.diff_ids, busybox.manifest.layers.map((l) => l.diffId));

  for (const name of [configDigest, configDigest.slice(7, 19), busybox.digestReference]) {
    t.is((await c.call('imageStatus', { image: { image: name } })).image?.id, configDigest, `found by ${name}`);
  }
  const list = await c.call('listImages', {});
  t.deepEqual(list.images.map((i) => i.id), [configDigest]);
  const streamed: string[] = [];
  for await (const chunk of c.stream('streamImages', {})) streamed.push(...chunk.images.map((i: { id: string }) => i.id));
  t.deepEqual(streamed, [configDigest]);

  const missing = await c.call('imageStatus', { image: { image: `${t.context.registry.host}/nope:latest` } });
  t.is(missing.image, undefined, 'a missing image is an empty response, not an error');
});

test('layers are unpacked into shared snapshots; the overlay of them is the image rootfs with whiteouts applied', async (t) => {
  const { d, c } = await daemon(t);
  for (const key of ['multilayer', 'busybox', 'zstd', 'docker-schema2'] as const) {
    const fixture = img(t, key);
    await c.call('pullImage', { image: { image: fixture.reference } });
    for (const chainId of fixture.manifest.chainIds) t.true(fs.existsSync(snapshotDir(d, chainId)), `${key}: snapshot ${chainId}`);
    assertRootfs(t, mountImage(t, d, fixture.manifest.chainIds), fixture.manifest.files!);
  }
  // The zstd image has busybox's content: the same diffID, so the same snapshot.
  t.is(img(t, 'zstd').manifest.chainIds[0], img(t, 'busybox').manifest.chainIds[0]);
  const opaque = execFileSync('getfattr', ['--absolute-names', '-h', '-d', '-m', 'trusted.overlay', '-R', path.join(d.root, 'snapshots')], { encoding: 'utf8' });
  t.regex(opaque, /trusted\.overlay\.opaque="y"/, 'an opaque directory is marked for overlayfs');
  t.deepEqual(fs.readdirSync(path.join(d.root, 'content', 'ingest')), [], 'no download left in ingest/');
});

test('multi-arch index selects this host platform; User is reported as uid or username', async (t) => {
  const { c } = await daemon(t);
  const multi = img(t, 'multiarch');
  const pulled = await c.call('pullImage', { image: { image: multi.reference } });
  t.is(pulled.imageRef, multi.manifest.config.digest);
  t.is(multi.manifest.platform.architecture, process.arch === 'x64' ? 'amd64' : process.arch);
  const st = await c.call('imageStatus', { image: { image: multi.reference } });
  t.deepEqual(st.image!.repoDigests, [multi.digestReference], 'repo digest is the index digest');

  await c.call('pullImage', { image: { image: img(t, 'user-uid').reference } });
  await c.call('pullImage', { image: { image: img(t, 'user-name').reference } });
  const uid = (await c.call('imageStatus', { image: { image: img(t, 'user-uid').reference } })).image!;
  t.is(uid.uid?.value, 1000n);
  t.is(uid.username, '');
  const name = (await c.call('imageStatus', { image: { image: img(t, 'user-name').reference } })).image!;
  t.is(name.uid, undefined);
  t.is(name.username, 'test');
});

test('RemoveImage removes every tag, keeps shared layers, is idempotent; ImageFsInfo follows', async (t) => {
  const { d, c } = await daemon(t);
  const fsInfo = async () => (await c.call('imageFsInfo', {})).imageFilesystems[0];
  const empty = await fsInfo();
  t.is(empty.fsId?.mountpoint, path.join(d.root, 'snapshots'));
  const a = img(t, 'shared-a');
  const b = img(t, 'shared-b');
  await c.call('pullImage', { image: { image: a.reference } });
  const afterA = await fsInfo();
  t.true(afterA.usedBytes!.value > empty.usedBytes!.value);
  t.true(afterA.inodesUsed!.value > empty.inodesUsed!.value);
  await c.call('pullImage', { image: { image: b.reference } });
  t.is(a.manifest.chainIds[0], b.manifest.chainIds[0], 'the fixtures share a base layer');

  // A second tag of the same image: removal by one name removes all tags.
  const busybox = img(t, 'busybox');
  for (const ref of busybox.references) await c.call('pullImage', { image: { image: ref } });
  const st = await c.call('imageStatus', { image: { image: busybox.references[0] } });
  t.deepEqual([...st.image!.repoTags].sort(), [...busybox.references].sort());
  await c.call('removeImage', { image: { image: busybox.references[1] } });
  for (const ref of busybox.references) t.is((await c.call('imageStatus', { image: { image: ref } })).image, undefined);

  await c.call('removeImage', { image: { image: a.manifest.config.digest } });
  t.is((await c.call('imageStatus', { image: { image: a.reference } })).image, undefined);
  t.true(fs.existsSync(snapshotDir(d, b.manifest.chainIds[0])), 'the base layer is still used by shared-b');
  for (const chainId of a.manifest.chainIds.slice(1)) t.false(fs.existsSync(snapshotDir(d, chainId)), 'shared-a layers are gone');
  await c.call('removeImage', { image: { image: a.reference } });
  await c.call('removeImage', { image: { image: b.reference } });
  t.deepEqual((await c.call('listImages', {})).images, []);
  const end = await fsInfo();
  t.is(end.usedBytes!.value, empty.usedBytes!.value);
  t.deepEqual(fs.readdirSync(path.join(d.root, 'snapshots')), []);
});

test('bad references, unknown images and malicious layers', async (t) => {
  const { d, c } = await daemon(t);
  const code = async (p: Promise<unknown>) => ((await t.throwsAsync(p)) as grpc.ServiceError);

  let err = await code(c.call('pullImage', { image: { image: 'Not A Ref!!' } }));
  t.is(err.code, grpc.status.INVALID_ARGUMENT);
  err = await code(c.call('pullImage', { image: { image: '' } }));
  t.is(err.code, grpc.status.INVALID_ARGUMENT);
  const unknown = `${t.context.registry.host}/busybox:no-such-tag`;
  err = await code(c.call('pullImage', { image: { image: unknown } }));
  t.is(err.code, grpc.status.NOT_FOUND);
  t.true(err.details.includes(unknown), err.details);

  for (const key of ['malicious-path-traversal', 'malicious-symlink-dir', 'malicious-hardlink', 'malicious-symlink-parent'] as const) {
    const bad = img(t, key);
    err = await code(c.call('pullImage', { image: { image: bad.reference } }));
    t.is(err.code, grpc.status.INVALID_ARGUMENT, `${key}: ${err.details}`);
    t.regex(err.details, /escape|outside/i, `${key}: ${err.details}`);
    t.is((await c.call('imageStatus', { image: { image: bad.reference } })).image, undefined, `${key}: nothing stored`);
    for (const p of bad.malicious!.escapePaths.filter((e) => path.isAbsolute(e))) t.false(fs.existsSync(p), `${key}: ${p} must not exist`);
    const found = execFileSync('find', [d.dir, '-name', ESCAPE_MARKER], { encoding: 'utf8' }).trim();
    t.is(found, '', `${key}: no marker anywhere under the daemon's directories`);
  }
  const leftovers = fs.readdirSync(path.join(d.root, 'snapshots'));
  t.deepEqual(leftovers.filter((n) => n.startsWith('.tmp-')), [], 'failed unpacks leave no temp dirs');
  t.false(fs.existsSync(`/tmp/${ESCAPE_MARKER}`));
});

test('credentials: htpasswd registry refuses wrong ones with a clear error and accepts the right ones', async (t) => {
  const registry = await startRegistry({ auth: 'htpasswd' });
  t.teardown(() => registry.stop());
  const pushed = await pushFixtures(registry, ['busybox'], { set: t.context.set });
  const ref = pushed.busybox!.reference;
  const { c } = await daemon(t);
  let err = (await t.throwsAsync(c.call('pullImage', { image: { image: ref } }))) as grpc.ServiceError;
  t.is(err.code, grpc.status.UNAUTHENTICATED, err.details);
  err = (await t.throwsAsync(c.call('pullImage', { image: { image: ref }, auth: { username: registry.username, password: 'wrong' } }))) as grpc.ServiceError;
  t.is(err.code, grpc.status.UNAUTHENTICATED);
  t.true(err.details.includes(registry.host), err.details);
  const ok = await c.call('pullImage', { image: { image: ref }, auth: { username: registry.username, password: registry.password } });
  t.is(ok.imageRef, pushed.busybox!.manifest.config.digest);
  const auth = Buffer.from(`${registry.username}:${registry.password}`).toString('base64');
  await c.call('removeImage', { image: { image: ref } });
  t.is((await c.call('pullImage', { image: { image: ref }, auth: { auth } })).imageRef, pushed.busybox!.manifest.config.digest);

  // Credentials from the daemon's configuration, for pulls that carry none.
  const configured = await daemon(t, `auths = { ${JSON.stringify(registry.host)} = { username = ${JSON.stringify(registry.username)}, password = ${JSON.stringify(registry.password)} } }\n`);
  t.is((await configured.c.call('pullImage', { image: { image: ref } })).imageRef, pushed.busybox!.manifest.config.digest);
});

test('credentials: bearer token flow, anonymous', async (t) => {
  const registry = await startRegistry({ auth: 'token' });
  t.teardown(() => registry.stop());
  const pushed = await pushFixtures(registry, ['busybox'], { set: t.context.set });
  const { c } = await daemon(t);
  const ok = await c.call('pullImage', { image: { image: pushed.busybox!.reference } });
  t.is(ok.imageRef, pushed.busybox!.manifest.config.digest);
  t.true(registry.tokenServer!.requests.some((r) => r.grant === 'anonymous' && r.granted), 'an anonymous token was issued');
});

test('a corrupted blob fails the pull and stores nothing', async (t) => {
  const registry = await startRegistry();
  t.teardown(() => registry.stop());
  const pushed = await pushFixtures(registry, ['busybox'], { set: t.context.set });
  const layer = pushed.busybox!.manifest.layers[0].digest.slice(7);
  const blob = path.join(registry.dir, 'storage', 'docker', 'registry', 'v2', 'blobs', 'sha256', layer.slice(0, 2), layer, 'data');
  const bytes = fs.readFileSync(blob);
  bytes[bytes.length >> 1] ^= 0xff;
  fs.writeFileSync(blob, bytes);
  const { d, c } = await daemon(t);
  const err = (await t.throwsAsync(c.call('pullImage', { image: { image: pushed.busybox!.reference } }))) as grpc.ServiceError;
  t.regex(err.details, /digest/i);
  t.deepEqual((await c.call('listImages', {})).images, []);
  t.deepEqual(fs.readdirSync(path.join(d.root, 'snapshots')), []);
  t.deepEqual(fs.readdirSync(path.join(d.root, 'content', 'ingest')), []);
});

test('an oversized image config, or one with too many entries, is refused before it is parsed and stores nothing', async (t) => {
  const { registry } = t.context;
  const base = { architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] } };
  // Digest-valid and well-formed, just big: 6 MiB of labels, as a hostile registry could serve
  // hundreds of MiB.
  const huge = Buffer.from(JSON.stringify({ ...base, config: { Labels: { filler: 'x'.repeat(6 * 1024 * 1024) } } }));
  const hugeRef = await pushConfigOnlyImage(registry, 'hostile-config', 'huge', huge);
  // Small, but with an environment of 100000 variables every container would get.
  const env = Array.from({ length: 100_000 }, (_, i) => `V${i}=1`);
  const crowded = Buffer.from(JSON.stringify({ ...base, config: { Env: env } }));
  const crowdedRef = await pushConfigOnlyImage(registry, 'hostile-config', 'crowded', crowded);
  const fineRef = await pushConfigOnlyImage(registry, 'hostile-config', 'fine', Buffer.from(JSON.stringify({ ...base, config: { Env: ['A=1'] } })));

  const { d, c } = await daemon(t);
  const hugeErr = (await t.throwsAsync(c.call('pullImage', { image: { image: hugeRef } }))) as grpc.ServiceError;
  t.is(hugeErr.code, grpc.status.FAILED_PRECONDITION, hugeErr.details);
  t.regex(hugeErr.details, /config sha256:[0-9a-f]{64} is \d+ bytes, more than the 4194304 allowed/);
  const crowdedErr = (await t.throwsAsync(c.call('pullImage', { image: { image: crowdedRef } }))) as grpc.ServiceError;
  t.is(crowdedErr.code, grpc.status.FAILED_PRECONDITION, crowdedErr.details);
  t.regex(crowdedErr.details, /config\.Env has 100000 entries, more than the 4096 allowed/);
  t.deepEqual((await c.call('listImages', {})).images, []);
  const stored = fs.readdirSync(path.join(d.root, 'content', 'blobs', 'sha256'));
  for (const config of [huge, crowded]) t.false(stored.includes(crypto.createHash('sha256').update(config).digest('hex')), 'the refused config is not kept');
  // The daemon still serves, and a normal config still pulls.
  const ok = await c.call('pullImage', { image: { image: fineRef } });
  t.regex(ok.imageRef, /^sha256:/);
});

/** A TCP proxy to the registry that can stop forwarding registry responses after `limit` bytes. */
function stallingProxy(t: any, target: string, limit: () => number): Promise<string> {
  const [host, port] = target.split(':');
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(port), host);
    sockets.add(client).add(upstream);
    let sent = 0;
    client.pipe(upstream);
    upstream.on('data', (chunk: Buffer) => {
      const room = limit() - sent;
      if (room <= 0) return;
      const part = chunk.subarray(0, room);
      sent += part.length;
      client.write(part);
    });
    const close = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on('error', close).on('close', close);
    upstream.on('error', close);
  });
  t.teardown(() => {
    for (const s of sockets) s.destroy();
    server.close();
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(`127.0.0.1:${(server.address() as net.AddressInfo).port}`)));
}

test('a registry that stops sending mid-blob trips the stall timeout with a clear error', async (t) => {
  const proxy = await stallingProxy(t, t.context.registry.host, () => 64 * 1024);
  const { d, c } = await daemon(t, 'stall_timeout = "1s"\n');
  const started = Date.now();
  const err = (await t.throwsAsync(c.call('pullImage', { image: { image: `${proxy}/busybox:latest` } }))) as grpc.ServiceError;
  t.true(Date.now() - started < 15_000, 'the pull gave up instead of hanging');
  t.is(err.code, grpc.status.DEADLINE_EXCEEDED, err.details);
  t.regex(err.details, /no data received/);
  t.deepEqual((await c.call('listImages', {})).images, []);
  t.deepEqual(fs.readdirSync(path.join(d.root, 'content', 'ingest')), []);
});

test('kill -9 in the middle of a pull leaves no visible image; after restart the pull completes', async (t) => {
  const proxy = await stallingProxy(t, t.context.registry.host, () => 64 * 1024);
  const { d, c } = await daemon(t);
  const busybox = img(t, 'busybox');
  const pending = c.call('pullImage', { image: { image: `${proxy}/busybox:latest` } }).catch((e: unknown) => e);
  // Wait until the layer download is under way.
  const ingest = path.join(d.root, 'content', 'ingest');
  for (let i = 0; i < 200 && fs.readdirSync(ingest).length === 0; i++) await new Promise((r) => setTimeout(r, 25));
  t.true(fs.readdirSync(ingest).length > 0, 'a download is in progress');
  await d.kill9();
  await pending;
  await d.start();
  const c2 = d.client();
  t.deepEqual((await c2.call('listImages', {})).images, [], 'no half image is visible');
  t.deepEqual(fs.readdirSync(ingest), [], 'the interrupted download was cleared');
  t.deepEqual(fs.readdirSync(path.join(d.root, 'snapshots')).filter((n) => n.startsWith('.tmp-')), []);
  const ok = await c2.call('pullImage', { image: { image: busybox.reference } });
  t.is(ok.imageRef, busybox.manifest.config.digest);
});
