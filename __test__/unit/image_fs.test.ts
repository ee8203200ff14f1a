import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import test from 'ava';
import { ImageFileCache, readFileInLayers } from '../../src/container/image_fs';

function layers(t: { teardown(fn: () => void): void }): { top: string; bottom: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'crisp-image-fs-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const top = path.join(dir, 'top');
  const bottom = path.join(dir, 'bottom');
  for (const l of [top, bottom]) fs.mkdirSync(path.join(l, 'etc'), { recursive: true });
  return { top, bottom };
}

test('readFileInLayers: the topmost layer wins and lower layers show through', async (t) => {
  const { top, bottom } = layers(t);
  fs.writeFileSync(path.join(bottom, 'etc', 'passwd'), 'root:x:0:0::/root:/bin/sh\n');
  fs.writeFileSync(path.join(bottom, 'etc', 'group'), 'root:x:0:\n');
  fs.writeFileSync(path.join(top, 'etc', 'passwd'), 'app:x:1000:1000::/home/app:/bin/sh\n');
  t.is((await readFileInLayers([top, bottom], '/etc/passwd'))?.toString(), 'app:x:1000:1000::/home/app:/bin/sh\n');
  t.is((await readFileInLayers([top, bottom], '/etc/group'))?.toString(), 'root:x:0:\n');
  t.is(await readFileInLayers([top, bottom], '/etc/shadow'), undefined);
});

test('ImageFileCache reads each file of an image once', async (t) => {
  const reads: string[] = [];
  const cache = new ImageFileCache(8, 1024, async (dirs, p) => {
    reads.push(`${dirs.join(',')}:${p}`);
    return Buffer.from(`content of ${p}`);
  });
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
  const cache = new ImageFileCache(8, 4, async (_dirs, p) => {
    reads++;
    if (p === '/flaky' && fail) throw new Error('EIO');
    return Buffer.from(p === '/big' ? 'too big to keep' : 'ok');
  });
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
  const cache = new ImageFileCache(2, 1024, async (_dirs, p) => {
    reads.push(p);
    return Buffer.from(p);
  });
  await cache.get(['l'], '/a');
  await cache.get(['l'], '/b');
  await cache.get(['l'], '/a'); // /b is now the oldest
  await cache.get(['l'], '/c'); // evicts /b
  await cache.get(['l'], '/a');
  await cache.get(['l'], '/b');
  t.deepEqual(reads, ['/a', '/b', '/c', '/b']);
});
