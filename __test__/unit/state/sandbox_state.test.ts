import test from 'ava';
import { canTransitionSandbox, markReady, markStopped, type SandboxState } from '../../../src/state/sandbox_state';
import { isCrispError } from '../../../src/util/errors';

const STATES: SandboxState[] = ['creating', 'ready', 'stopped'];

test('the diagram: creating → ready → stopped; a sandbox being created may be stopped; stopped is final', (t) => {
  const edges = STATES.flatMap((from) => STATES.filter((to) => canTransitionSandbox(from, to)).map((to) => `${from}>${to}`));
  t.deepEqual(edges, ['creating>ready', 'creating>stopped', 'ready>stopped']);
});

test('markReady and markStopped set the stage with the state and refuse other edges', (t) => {
  const r = { id: 's1', state: 'creating' as SandboxState, stage: 'setting up network' };
  markReady(r);
  t.deepEqual(r, { id: 's1', state: 'ready', stage: 'ready' });
  t.throws(() => markReady(r), { message: /cannot go from ready to ready/ });
  markStopped(r);
  t.deepEqual(r, { id: 's1', state: 'stopped', stage: 'stopped' });
  const err = t.throws(() => markReady(r));
  t.true(isCrispError(err, 'Internal'));
});
