import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import test from 'ava';
import { checkpointRecord } from '../../src/util/record_checkpoint';
import { isCrispError } from '../../src/util/errors';
import { useAtomicFileWriter } from '../../src/util/fsutil';

test.serial('checkpointRecord persists a changed copy, and puts the old record back when it cannot', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'crisp-checkpoint-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const holder = { record: { state: 'created', n: 1 } };
  const before = holder.record;
  await checkpointRecord(holder, path.join(dir, 'r.json'), 'thing x', (r) => {
    r.state = 'running';
  });
  t.deepEqual(holder.record, { state: 'running', n: 1 });
  t.is(before.state, 'created', 'the previous record object is not modified in place');
  t.deepEqual(JSON.parse(fs.readFileSync(path.join(dir, 'r.json'), 'utf8')), { state: 'running', n: 1 });

  const current = holder.record;
  const err = await t.throwsAsync(
    checkpointRecord(holder, path.join(dir, 'missing', 'r.json'), 'thing x', (r) => {
      r.state = 'exited';
    }),
  );
  t.true(isCrispError(err, 'Internal'));
  t.regex(err!.message, /persisting thing x/);
  t.is(holder.record, current, 'the record before the failed change is current again');
});

/** Installs a file writer whose writes wait until released; returns the pending writes. */
function gatedWriter(t: import('ava').ExecutionContext): { writes: { file: string; data: string; release: (err?: Error) => void }[] } {
  const writes: { file: string; data: string; release: (err?: Error) => void }[] = [];
  useAtomicFileWriter(
    (file, data) =>
      new Promise<void>((resolve, reject) => {
        writes.push({ file, data, release: (err) => (err ? reject(err) : resolve()) });
      }),
  );
  t.teardown(() => useAtomicFileWriter(undefined));
  return { writes };
}

const tick = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

test.serial('write, then swap: while the new record is being written, readers see the old one', async (t) => {
  const { writes } = gatedWriter(t);
  const holder = { record: { state: 'created' } };
  const before = holder.record;
  const done = checkpointRecord(holder, '/nowhere/r.json', 'thing x', (r) => {
    r.state = 'running';
  });
  await tick();
  t.is(writes.length, 1);
  t.deepEqual(JSON.parse(writes[0]!.data), { state: 'running' }, 'the new record is what is written');
  t.is(holder.record, before, 'not current before it is on disk');
  writes[0]!.release();
  await done;
  t.deepEqual(holder.record, { state: 'running' });
});

test.serial('a failed write never shows: the record stays the old one throughout', async (t) => {
  const { writes } = gatedWriter(t);
  const holder = { record: { state: 'created' } };
  const before = holder.record;
  const done = checkpointRecord(holder, '/nowhere/r.json', 'thing x', (r) => {
    r.state = 'running';
  });
  await tick();
  t.is(holder.record, before);
  writes[0]!.release(new Error('ENOSPC'));
  const err = await t.throwsAsync(done);
  t.true(isCrispError(err, 'Internal'));
  t.regex(err!.message, /persisting thing x: ENOSPC/);
  t.is(holder.record, before);
});

test.serial('checkpoints of one record apply in order, each on the one before it; a failed one in between is skipped', async (t) => {
  const { writes } = gatedWriter(t);
  const holder = { record: { log: [] as string[] } };
  const a = checkpointRecord(holder, '/nowhere/r.json', 'x', (r) => void r.log.push('a'));
  const b = checkpointRecord(holder, '/nowhere/r.json', 'x', (r) => void r.log.push('b'));
  const c = checkpointRecord(holder, '/nowhere/r.json', 'x', (r) => void r.log.push('c'));
  await tick();
  t.is(writes.length, 1, 'the second waits for the first');
  writes[0]!.release();
  await a;
  await tick();
  t.deepEqual(JSON.parse(writes[1]!.data), { log: ['a', 'b'] });
  writes[1]!.release(new Error('EIO'));
  await t.throwsAsync(b);
  await tick();
  t.deepEqual(JSON.parse(writes[2]!.data), { log: ['a', 'c'] });
  writes[2]!.release();
  await c;
  t.deepEqual(holder.record, { log: ['a', 'c'] });
});
