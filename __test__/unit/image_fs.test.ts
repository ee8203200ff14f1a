import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { ImageFileCache, readFileInLayers } from '../../src/container/image_fs';
import type { NativeAddon } from '../../src/native/addon';
import { loadNative, NATIVE_ADDON_PATH } from '../../src/native/index';

function layers(t: { teardown(fn: () => void): void }): { top: string; bottom: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'crisp-image-fs-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const top = path.join(dir, 'top');
  const bottom = path.join(dir, 'bottom');
  for (const l of [top, bottom]) fs.mkdirSync(path.join(l, 'etc'), { recursive: true });
  return { top, bottom };
}

const native = loadNative();
const locate = (dirs: readonly string[], p: string) => native.locateImageFile(dirs, p);

test('readFileInLayers: the topmost layer wins and lower layers show through', async (t) => {
  const { top, bottom } = layers(t);
  fs.writeFileSync(path.join(bottom, 'etc', 'passwd'), 'root:x:0:0::/root:/bin/sh\n');
  fs.writeFileSync(path.join(bottom, 'etc', 'group'), 'root:x:0:\n');
  fs.writeFileSync(path.join(top, 'etc', 'passwd'), 'app:x:1000:1000::/home/app:/bin/sh\n');
  t.is((await readFileInLayers(locate, [top, bottom], '/etc/passwd'))?.toString(), 'app:x:1000:1000::/home/app:/bin/sh\n');
  t.is((await readFileInLayers(locate, [top, bottom], '/etc/group'))?.toString(), 'root:x:0:\n');
  t.is(await readFileInLayers(locate, [top, bottom], '/etc/shadow'), undefined);
  t.is(await readFileInLayers(locate, [top, bottom], '/etc'), undefined, 'a directory is not read');
});

test('readFileInLayers: a whiteout or a link in a higher layer hides the lower file', async (t) => {
  const { top, bottom } = layers(t);
  fs.writeFileSync(path.join(bottom, 'etc', 'passwd'), 'root:x:0:0::/root:/bin/sh\n');
  fs.writeFileSync(path.join(bottom, 'etc', 'group'), 'root:x:0:\n');
  execFileSync('mknod', [path.join(top, 'etc', 'passwd'), 'c', '0', '0']);
  fs.symlinkSync('/etc/group', path.join(top, 'etc', 'group'));
  t.is(await readFileInLayers(locate, [top, bottom], '/etc/passwd'), undefined);
  t.is(await readFileInLayers(locate, [top, bottom], '/etc/group'), undefined, "the host's file is not read through a link");
});

test('readFileInLayers: an oversized file is not read; the native lookup refuses bad arguments', async (t) => {
  let read = false;
  const huge = await readFileInLayers(async () => ((read = true), { path: '/dev/zero', size: 64 << 20 }), ['l'], '/etc/passwd');
  t.true(read);
  t.is(huge, undefined);
  const addon = require(NATIVE_ADDON_PATH) as NativeAddon;
  t.throws(() => addon.locateImageFile('not json', '/etc/passwd'), { instanceOf: TypeError });
  t.throws(() => addon.locateImageFile('[]', 'etc/passwd'), { instanceOf: TypeError });
  await t.throwsAsync(native.locateImageFile(['/nonexistent-crisp-layer'], '/etc/passwd'), { code: 'ENOENT' } as never);
  t.throws(() => addon.imageEntry('{}', '/'), { instanceOf: TypeError });
  await t.throwsAsync(native.imageEntry(['/nonexistent-crisp-layer'], '/'), { code: 'ENOENT' } as never);
});

test('ImageFileCache reads each file of an image once', async (t) => {
  const reads: string[] = [];
  const cache = new ImageFileCache(async (dirs, p) => {
    reads.push(`${dirs.join(',')}:${p}`);
    return Buffer.from(`content of ${p}`);
  }, 8, 1024);
  const a = await cache.get(['l2', 'l1'], '/etc/passwd');
  const b = await cache.get(['l2', 'l1'], '/etc/passwd');
  t.is(a?.toString(), 'content of /etc/passwd');
  t.is(a, b);
  await cache.get(['l3', 'l2', 'l1'], '/etc/passwd');
  await cache.get(['l2', 'l1'], '/etc/group');
  t.deepEqual(reads, ['l2,l1:/etc/passwd', 'l3,l2,l1:/etc/passwd', 'l2,l1:/etc/group']);
});

test('ImageFileCache: concurrent readers share one read; failures and big files are not kept', async (t) => {
  let reads = 0;
  let fail = true;
  const cache = new ImageFileCache(async (_dirs, p) => {
    reads++;
    if (p === '/flaky' && fail) throw new Error('EIO');
    return Buffer.from(p === '/big' ? 'too big to keep' : 'ok');
  }, 8, 4);
  const [x, y] = await Promise.all([cache.get(['l'], '/f'), cache.get(['l'], '/f')]);
  t.is(x, y);
  t.is(reads, 1);
  await t.throwsAsync(cache.get(['l'], '/flaky'), { message: 'EIO' });
  fail = false;
  t.is((await cache.get(['l'], '/flaky'))?.toString(), 'ok');
  t.is(reads, 3);
  await cache.get(['l'], '/big');
  await cache.get(['l'], '/big');
  t.is(reads, 5);
});

test('ImageFileCache evicts the least recently used entry', async (t) => {
  const reads: string[] = [];
  const cache = new ImageFileCache(
    async (_dirs, p) => {
      reads.push(p);
      return Buffer.from(p);
    },
    2,
    1024,
  );
  await cache.get(['l'], '/a');
  await cache.get(['l'], '/b');
  await cache.get(['l'], '/a'); // /b is now the oldest
  await cache.get(['l'], '/c'); // evicts /b
  await cache.get(['l'], '/a');
  await cache.get(['l'], '/b');
  t.deepEqual(reads, ['/a', '/b', '/c', '/b']);
});
