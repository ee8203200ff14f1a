import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import test from 'ava';
import { checkpointRecord } from '../../src/util/record_checkpoint';
import { isCrispError } from '../../src/util/errors';

test('checkpointRecord persists a changed copy, and puts the old record back when it cannot', async (t) => {
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
