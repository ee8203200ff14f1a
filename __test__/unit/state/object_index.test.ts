import test from 'ava';
import { ObjectIndex } from '../../../src/state/object_index';
import { isCrispError } from '../../../src/util/errors';

interface Item {
  id: string;
  name: string;
}

const index = (): ObjectIndex<Item> => new ObjectIndex<Item>('widget', (i) => i.name);

test('by id, by name, by unique prefix; ambiguous and unknown prefixes are refused with their codes', (t) => {
  const ix = index();
  const a = { id: 'abc123', name: 'a' };
  const b = { id: 'abd456', name: 'b' };
  ix.add(a);
  ix.add(b);
  t.is(ix.get('abc123'), a);
  t.is(ix.idByName('b'), 'abd456');
  t.is(ix.resolve('abc'), a);
  t.is(ix.resolve('abd456'), b);
  const ambiguous = t.throws(() => ix.resolve('ab'));
  t.true(isCrispError(ambiguous, 'FailedPrecondition'));
  t.regex(ambiguous!.message, /widget id prefix "ab" is ambiguous/);
  const unknown = t.throws(() => ix.resolve('zz'));
  t.true(isCrispError(unknown, 'NotFound'));
  t.regex(unknown!.message, /widget "zz" not found/);
  t.true(isCrispError(t.throws(() => ix.resolve('')), 'NotFound'));
  t.is(ix.find('zz'), undefined);
  t.throws(() => ix.find('ab'), undefined, 'find() still refuses an ambiguous prefix');
  t.deepEqual(ix.list(), [a, b]);
});

test('remove drops the name only if it still names the removed object', (t) => {
  const ix = index();
  const old = { id: 'old', name: 'n' };
  const replacement = { id: 'new', name: 'n' };
  ix.add(old);
  ix.add(replacement);
  ix.remove(old);
  t.is(ix.idByName('n'), 'new');
  t.false(ix.has('old'));
  ix.remove(replacement);
  t.is(ix.idByName('n'), undefined);
});

test('createOnce: a second create of a name in flight joins it; after it, the object is returned', async (t) => {
  const ix = index();
  let calls = 0;
  let finish!: (id: string) => void;
  const create = (): Promise<string> => {
    calls++;
    return new Promise<string>((resolve) => (finish = resolve)).then((id) => {
      ix.add({ id, name: 'n' });
      return id;
    });
  };
  const first = ix.createOnce('n', create);
  t.true(ix.creating('n'));
  const retry = ix.createOnce('n', create);
  finish('id1');
  t.deepEqual(await first, { id: 'id1', via: 'created' });
  t.deepEqual(await retry, { id: 'id1', via: 'joined' });
  t.false(ix.creating('n'));
  t.deepEqual(await ix.createOnce('n', create), { id: 'id1', via: 'existing' });
  t.is(calls, 1);
});

test('createOnce: a failed create fails its joiners and a later create runs again', async (t) => {
  const ix = index();
  let fail!: (err: Error) => void;
  const first = ix.createOnce('n', () => new Promise<string>((_, reject) => (fail = reject)));
  const retry = ix.createOnce('n', async () => 'never');
  fail(new Error('boom'));
  await t.throwsAsync(first, { message: 'boom' });
  await t.throwsAsync(retry, { message: 'boom' });
  t.false(ix.creating('n'));
  t.deepEqual(await ix.createOnce('n', async () => 'id2'), { id: 'id2', via: 'created' });
});
