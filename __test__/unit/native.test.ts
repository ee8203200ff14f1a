import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import test from 'ava';
import { CrispError } from '../../src/util/errors';
import { clearMemoryBackedRoots, removeTree, useAtomicFileWriter, useMemoryBackedRoot, useTreeRemover, writeFileAtomic } from '../../src/util/fsutil';
import type { NativeAddon } from '../../src/native/addon';
import { FakeNativeCore } from '../../src/native/fake';
import { loadNative, NATIVE_ADDON_PATH, nativeErrorCode } from '../../src/native/index';
import { writeTar, type TarEntry } from '../fixtures/tar';

const REPO_ROOT = path.resolve(__dirname, '..', '..', '..');

async function tempDir(t: { teardown(fn: () => Promise<void>): void }): Promise<string> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'crisp-native-test-'));
  t.teardown(() => fsp.rm(dir, { recursive: true, force: true }));
  return dir;
}

function sha256(data: Buffer): string {
  return `sha256:${crypto.createHash('sha256').update(data).digest('hex')}`;
}

/** A blob file and an empty destination directory inside `dir`. */
async function layerFixture(dir: string, blob: Buffer): Promise<{ blobPath: string; dest: string }> {
  const blobPath = path.join(dir, 'layer.blob');
  const dest = path.join(dir, 'fs');
  await fsp.writeFile(blobPath, blob);
  await fsp.mkdir(dest);
  return { blobPath, dest };
}

const SAMPLE: TarEntry[] = [
  { path: 'etc', type: 'dir', mode: 0o755, mtime: 1_600_000_000 },
  { path: 'etc/hostname', type: 'file', mode: 0o644, content: Buffer.from('pod\n'), mtime: 1_600_000_100 },
  { path: 'bin', type: 'dir', mode: 0o755 },
  { path: 'bin/tool', type: 'file', mode: 0o4755, content: Buffer.from('#!/bin/sh\necho hi\n') },
  { path: 'bin/alias', type: 'hardlink', mode: 0o755, linkname: 'bin/tool' },
  { path: 'etc/localtime', type: 'symlink', mode: 0o777, linkname: '/usr/share/zoneinfo/UTC' },
];

test('the workspace version is what coreVersion reports', (t) => {
  const cargo = fs.readFileSync(path.join(REPO_ROOT, 'Cargo.toml'), 'utf8');
  const version = /\[workspace\.package\][^[]*?\bversion\s*=\s*"([^"]+)"/.exec(cargo)?.[1];
  if (version === undefined) return t.fail('no [workspace.package] version in Cargo.toml');
  t.is(loadNative().coreVersion(), version);
});

test('loadNative explains how to build a missing addon', (t) => {
  const err = t.throws(() => loadNative(path.join(os.tmpdir(), 'no-such-dir', 'crisp.node')));
  t.true(err instanceof CrispError);
  t.is((err as CrispError).code, 'FailedPrecondition');
  t.regex(err!.message, /npm run build/);
  t.is(loadNative(), loadNative(NATIVE_ADDON_PATH));
});

test('unpackLayer unpacks a gzip layer and reports its diffID', async (t) => {
  const dir = await tempDir(t);
  const tar = writeTar(SAMPLE);
  const { blobPath, dest } = await layerFixture(dir, zlib.gzipSync(tar));

  const result = await loadNative().unpackLayer(blobPath, 'gzip', dest);

  t.is(result.compression, 'gzip');
  t.is(result.entries, SAMPLE.length);
  t.is(result.tarBytes, tar.length);
  t.is(result.diffId, sha256(tar));
  t.is(result.bytesWritten, 4 + 18);
  t.is(await fsp.readFile(path.join(dest, 'etc/hostname'), 'utf8'), 'pod\n');
  t.is((await fsp.lstat(path.join(dest, 'etc/hostname'))).mtimeMs, 1_600_000_100_000);
  t.is((await fsp.lstat(path.join(dest, 'etc'))).mtimeMs, 1_600_000_000_000);
  t.is((await fsp.lstat(path.join(dest, 'bin/tool'))).mode & 0o7777, 0o4755);
  t.is((await fsp.lstat(path.join(dest, 'bin/alias'))).ino, (await fsp.lstat(path.join(dest, 'bin/tool'))).ino);
  t.is(await fsp.readlink(path.join(dest, 'etc/localtime')), '/usr/share/zoneinfo/UTC');
});

test('the stream, not the media type, decides the decoder', async (t) => {
  const dir = await tempDir(t);
  const tar = writeTar(SAMPLE);
  const { blobPath, dest } = await layerFixture(dir, tar);
  const result = await loadNative().unpackLayer(blobPath, 'gzip', dest);
  t.is(result.compression, 'none');
  t.is(result.diffId, sha256(tar));
});

test('an escaping layer is rejected as InvalidArgument and writes nothing outside', async (t) => {
  const dir = await tempDir(t);
  const tar = writeTar([{ path: '../escaped', type: 'file', mode: 0o644, content: Buffer.from('x') }]);
  const { blobPath, dest } = await layerFixture(dir, zlib.gzipSync(tar));

  const err = await t.throwsAsync(loadNative().unpackLayer(blobPath, 'gzip', dest));
  t.true(err instanceof CrispError);
  t.is((err as CrispError).code, 'InvalidArgument');
  t.regex(err!.message, /^layer .*layer\.blob escapes /);
  t.is(nativeErrorCode(err!.cause), 'EPATHESCAPE');
  t.false(fs.existsSync(path.join(dir, 'escaped')));
});

test('the raw addon rejects with a code and throws TypeErrors for bad arguments', async (t) => {
  const addon = require(NATIVE_ADDON_PATH) as NativeAddon;
  const dir = await tempDir(t);
  const { blobPath, dest } = await layerFixture(dir, Buffer.from('not a tar archive, not compressed either'));

  const err = await t.throwsAsync(addon.unpackLayer(blobPath, 'none', dest));
  t.is(nativeErrorCode(err), 'EFORMAT');

  const missing = await t.throwsAsync(addon.unpackLayer(path.join(dir, 'missing'), 'auto', dest));
  t.is(nativeErrorCode(missing), 'ENOENT');

  const badType = t.throws(() => addon.unpackLayer(42 as unknown as string, 'gzip', dest));
  t.true(badType instanceof TypeError);
  t.is(nativeErrorCode(badType), 'ERR_INVALID_ARG_TYPE');
  t.regex(badType!.message, /"path" argument must be of type string/);

  const badValue = t.throws(() => addon.unpackLayer(blobPath, 'xz' as 'gzip', dest));
  t.is(nativeErrorCode(badValue), 'ERR_INVALID_ARG_VALUE');
});

test('a corrupt layer maps to InvalidArgument', async (t) => {
  const dir = await tempDir(t);
  const gz = zlib.gzipSync(writeTar(SAMPLE));
  const { blobPath, dest } = await layerFixture(dir, gz.subarray(0, gz.length - 20));
  const err = await t.throwsAsync(loadNative().unpackLayer(blobPath, 'gzip', dest));
  t.is((err as CrispError).code, 'InvalidArgument');
  t.is(nativeErrorCode(err!.cause), 'EFORMAT');
});

test('unpacking runs off the event loop', async (t) => {
  const dir = await tempDir(t);
  // 64 MiB of content that compresses well, so the work is decompression and writing.
  const pattern = crypto.randomBytes(16 << 10);
  const content = Buffer.alloc(64 << 20);
  for (let off = 0; off < content.length; off += pattern.length) pattern.copy(content, off);
  const tar = writeTar([{ path: 'big.bin', type: 'file', mode: 0o644, content }]);
  const { blobPath, dest } = await layerFixture(dir, zlib.gzipSync(tar, { level: 1 }));

  let ticks = 0;
  const timer = setInterval(() => ticks++, 1);
  try {
    let settled = false;
    const unpacking = loadNative()
      .unpackLayer(blobPath, 'gzip', dest)
      .finally(() => (settled = true));
    await new Promise((resolve) => setTimeout(resolve, 5));
    t.false(settled, 'the unpack must still be running when a timer fires');
    const result = await unpacking;
    t.is(result.bytesWritten, content.length);
    t.true(ticks >= 3, `timer ticked ${ticks} times during the unpack`);
  } finally {
    clearInterval(timer);
  }
  t.is((await fsp.stat(path.join(dest, 'big.bin'))).size, content.length);
});

test('FakeNativeCore reports what the addon reports and converts injected failures', async (t) => {
  const dir = await tempDir(t);
  const tar = writeTar(SAMPLE);
  const { blobPath, dest } = await layerFixture(dir, zlib.gzipSync(tar));
  const real = await loadNative().unpackLayer(blobPath, 'gzip', dest);

  const fake = new FakeNativeCore('9.9.9');
  t.is(fake.coreVersion(), '9.9.9');
  const faked = await fake.unpackLayer(blobPath, 'gzip', path.join(dir, 'unused'));
  t.is(faked.diffId, real.diffId);
  t.is(faked.tarBytes, real.tarBytes);
  t.is(faked.entries, real.entries);
  t.is(faked.compression, 'gzip');
  t.deepEqual(fake.calls, [{ blobPath, mediaType: 'gzip', dest: path.join(dir, 'unused') }]);

  fake.failNextUnpack('EPATHESCAPE', 'layer entry "../x": escapes the layer root');
  const escaped = await t.throwsAsync(fake.unpackLayer(blobPath, 'gzip', dest));
  t.is((escaped as CrispError).code, 'InvalidArgument');
  t.regex(escaped!.message, /escapes/);

  fake.failNextUnpack('ENOSPC');
  t.is(((await t.throwsAsync(fake.unpackLayer(blobPath, 'gzip', dest))) as CrispError).code, 'ResourceExhausted');

  const missing = await t.throwsAsync(fake.unpackLayer(path.join(dir, 'missing'), 'gzip', dest));
  t.is((missing as CrispError).code, 'Internal');
  t.is(nativeErrorCode(missing!.cause), 'ENOENT');
});

test('writeFileAtomic replaces a file in one task and reports errno codes', async (t) => {
  const dir = await tempDir(t);
  const native = loadNative();
  const file = path.join(dir, 'record.json');
  await fsp.writeFile(file, 'old');
  await native.writeFileAtomic(file, '{"state":"running"}', 0o600, true);
  t.is(await fsp.readFile(file, 'utf8'), '{"state":"running"}');
  t.is((await fsp.stat(file)).mode & 0o777, 0o600);
  await native.writeFileAtomic(file, 'second', 0o644, false);
  t.is(await fsp.readFile(file, 'utf8'), 'second');
  t.deepEqual(await fsp.readdir(dir), ['record.json'], 'no temporary file is left');

  const missing = await t.throwsAsync(native.writeFileAtomic(path.join(dir, 'no-such-dir', 'f'), 'x', 0o600, true));
  t.is(nativeErrorCode(missing), 'ENOENT');
  const addon = require(NATIVE_ADDON_PATH) as NativeAddon;
  t.throws(() => addon.writeFileAtomic(file, 'x', 0o600, 'yes' as unknown as boolean), { instanceOf: TypeError });
  t.throws(() => addon.writeFileAtomic(file, 'x', 0o10000, true), { instanceOf: TypeError });
});

test.serial('fsutil writes through the installed writer and falls back to its own', async (t) => {
  const dir = await tempDir(t);
  const file = path.join(dir, 'state.json');
  const seen: { file: string; durable: boolean }[] = [];
  const native = loadNative();
  useAtomicFileWriter((f, data, mode, durable) => {
    seen.push({ file: f, durable });
    return native.writeFileAtomic(f, data, mode, durable);
  });
  t.teardown(() => useAtomicFileWriter(undefined));
  await writeFileAtomic(file, 'via native', 0o600, { durable: false });
  t.deepEqual(seen, [{ file, durable: false }]);
  t.is(await fsp.readFile(file, 'utf8'), 'via native');
  // Binary data is not text: the built-in path writes it.
  await writeFileAtomic(file, Buffer.from([0xff, 0x00]));
  t.is(seen.length, 1);
  t.deepEqual(await fsp.readFile(file), Buffer.from([0xff, 0x00]));
  useAtomicFileWriter(undefined);
  await writeFileAtomic(file, 'built-in');
  t.is(await fsp.readFile(file, 'utf8'), 'built-in');
  t.is(seen.length, 1);
});

test.serial('files under a memory-backed root are written in place, atomically, without the installed writer', async (t) => {
  const shm = await fsp.mkdtemp('/dev/shm/crisp-native-test-');
  t.teardown(() => fsp.rm(shm, { recursive: true, force: true }));
  const disk = await tempDir(t);
  t.teardown(() => clearMemoryBackedRoots());
  t.true(useMemoryBackedRoot(shm), '/dev/shm is tmpfs');
  t.is(useMemoryBackedRoot(disk), (await fsp.statfs(disk)).type === 0x01021994, 'the temp dir counts only if it is tmpfs');
  t.false(useMemoryBackedRoot(path.join(shm, 'missing')), 'a missing directory is not recorded');
  const seen: string[] = [];
  useAtomicFileWriter(async (f) => {
    seen.push(f);
    await fsp.writeFile(f, 'via writer');
  });
  t.teardown(() => useAtomicFileWriter(undefined));

  const sub = path.join(shm, 'containers', 'c1');
  await fsp.mkdir(sub, { recursive: true });
  const file = path.join(sub, 'container.json');
  await fsp.writeFile(file, 'old');
  await writeFileAtomic(file, '{"state":"created"}', 0o640);
  t.is(await fsp.readFile(file, 'utf8'), '{"state":"created"}');
  t.is((await fsp.stat(file)).mode & 0o777, 0o640);
  await writeFileAtomic(file, Buffer.from([1, 2, 3]));
  t.deepEqual(await fsp.readFile(file), Buffer.from([1, 2, 3]));
  t.deepEqual(await fsp.readdir(sub), ['container.json'], 'no temporary file is left');
  const missing = await t.throwsAsync(writeFileAtomic(path.join(shm, 'gone', 'f'), 'x'));
  t.is((missing as NodeJS.ErrnoException).code, 'ENOENT');
  t.deepEqual(seen, [], 'the installed writer is not used under the root');

  // A path that only shares a prefix with the root is not under it.
  const sibling = `${shm}-sibling`;
  await fsp.mkdir(sibling);
  t.teardown(() => fsp.rm(sibling, { recursive: true, force: true }));
  await writeFileAtomic(path.join(sibling, 'f'), 'x');
  t.deepEqual(seen, [path.join(sibling, 'f')]);
});

test('cgroupLayout names the directories cgroupCreate makes, without making them', async (t) => {
  const native = loadNative();
  const parent = `/crisp-unit-${crypto.randomBytes(4).toString('hex')}`;
  t.teardown(() => native.cgroupRemove(parent));
  const layout = native.cgroupLayout(parent, 'c1');
  t.is(layout.path, `${parent}/c1`);
  for (const dir of Object.values(layout.paths)) t.false(fs.existsSync(dir), `${dir} is not created by cgroupLayout`);
  const created = await native.cgroupCreate(parent, 'c1', {});
  t.deepEqual(layout, created);
  for (const dir of Object.values(created.paths)) t.true(fs.existsSync(dir), dir);
});

test('removeTree removes a tree in one task without following links out of it', async (t) => {
  const dir = await tempDir(t);
  const native = loadNative();
  const outside = path.join(dir, 'outside');
  const tree = path.join(dir, 'tree');
  await fsp.mkdir(outside);
  await fsp.writeFile(path.join(outside, 'keep'), 'x');
  await fsp.mkdir(path.join(tree, 'upper', 'etc'), { recursive: true });
  await fsp.writeFile(path.join(tree, 'upper', 'etc', 'hostname'), 'x');
  await fsp.symlink(outside, path.join(tree, 'upper', 'escape'));
  await native.removeTree(tree);
  t.false(fs.existsSync(tree));
  t.true(fs.existsSync(path.join(outside, 'keep')), 'the link was removed, not followed');
  await t.notThrowsAsync(native.removeTree(tree), 'a missing tree is fine');
  const seen: string[] = [];
  useTreeRemover((p) => {
    seen.push(p);
    return native.removeTree(p);
  });
  t.teardown(() => useTreeRemover(undefined));
  await removeTree(outside);
  t.deepEqual(seen, [outside]);
  t.false(fs.existsSync(outside));
});
