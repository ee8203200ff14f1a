import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import test from 'ava';
import { diffWritableLayer, writeRootfsDiff } from '../../src/container/checkpoint';

/**
 * The checkpoint's rootfs diff is read while the container keeps running (CRIU's
 * --leave-running), so the container can swap what the diff listed. CRIU itself cannot run on
 * every kernel; the producer is exercised here on a writable layer made by hand, with the swap
 * done between the listing and the archive.
 */
test('a directory the container swaps for a symlink to the host does not pull host files into rootfs-diff.tar', async (t) => {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'crisp-test-diff-'));
  t.teardown(() => fs.rmSync(base, { recursive: true, force: true }));
  const upper = path.join(base, 'upper');
  const host = path.join(base, 'host');
  fs.mkdirSync(path.join(upper, 'etc'), { recursive: true });
  fs.mkdirSync(host);
  fs.writeFileSync(path.join(upper, 'etc', 'shadow'), 'container-file\n');
  fs.writeFileSync(path.join(upper, 'kept'), 'kept-file\n');
  fs.writeFileSync(path.join(host, 'shadow'), 'host-secret\n');

  const diff = await diffWritableLayer(upper, [], upper, []);
  t.deepEqual(diff.include, ['etc', 'etc/shadow', 'kept']);
  // The container's move, after the listing: its etc is now a link to a host directory.
  fs.renameSync(path.join(upper, 'etc'), path.join(upper, 'etc.old'));
  fs.symlinkSync(host, path.join(upper, 'etc'));

  const dest = path.join(base, 'rootfs-diff.tar');
  await writeRootfsDiff(upper, diff.include, dest);
  const archive = fs.readFileSync(dest);
  t.false(archive.includes('host-secret'), 'the host file is not in the archive');
  t.true(archive.includes('kept-file'), 'what is still there is archived');
  t.is(fs.statSync(dest).mode & 0o777, 0o600);
});
