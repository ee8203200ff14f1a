import test from 'ava';
import { ContainerState as CriContainerState } from '../../../src/generated/runtime/v1/api';
import {
  canTransition,
  type ContainerLifecycle,
  type ContainerState,
  criContainerState,
  exitReason,
  goneWithoutRuntimeExit,
  lostExit,
  markCreated,
  markExited,
  markRunning,
  recordedExit,
  startFailedExit,
} from '../../../src/state/container_state';
import { isCrispError } from '../../../src/util/errors';

function record(state: ContainerState, fields: Partial<ContainerLifecycle> = {}): ContainerLifecycle {
  return { id: 'c1', state, startedAt: '0', finishedAt: '0', pid: 0, exitCode: 0, reason: '', message: '', stage: state, ...fields };
}

const STATES: ContainerState[] = ['creating', 'created', 'running', 'exited'];

test('the diagram: creating → created → running → exited, a created or creating container may exit, nothing leaves exited', (t) => {
  const edges = STATES.flatMap((from) => STATES.filter((to) => canTransition(from, to)).map((to) => `${from}>${to}`));
  t.deepEqual(edges, ['creating>created', 'creating>exited', 'created>running', 'created>exited', 'running>exited']);
});

test('markCreated records the pid; a container whose set-up failure is already recorded stays exited', (t) => {
  const r = record('creating', { stage: 'creating cgroup' });
  markCreated(r, 42);
  t.like(r, { state: 'created', pid: 42, stage: 'created' });

  const failed = record('exited', { exitCode: 128, reason: 'StartError', message: 'mount failed' });
  markCreated(failed, 43);
  t.like(failed, { state: 'exited', pid: 0, exitCode: 128, reason: 'StartError', stage: 'created' });
});

test('markRunning only from created, with the start time in nanoseconds', (t) => {
  const r = record('created', { pid: 7 });
  markRunning(r, 8, 1_500);
  t.like(r, { state: 'running', pid: 8, startedAt: '1500000000' });
  const err = t.throws(() => markRunning(record('exited'), 1, 1));
  t.true(isCrispError(err, 'Internal'));
  t.regex(err!.message, /cannot go from exited to running/);
  t.throws(() => markRunning(record('running'), 1, 1));
});

test('markExited is refused twice and clears the pid; a known start time is kept', (t) => {
  const r = record('running', { pid: 9, startedAt: '5' });
  markExited(r, { exitCode: 3, reason: 'Error', message: '', finishedAtMs: 10, startedAtMs: 2 });
  t.like(r, { state: 'exited', pid: 0, exitCode: 3, reason: 'Error', finishedAt: '10000000', startedAt: '5' });
  t.throws(() => markExited(r, lostExit(11)), { message: /cannot go from exited to exited/ });
});

test('a recorded exit: its reason, message and start time', (t) => {
  const base = { signal: null, oomKilled: false, startedAtMs: 1, finishedAtMs: 2 };
  t.is(exitReason({ ...base, exitCode: 0 }), 'Completed');
  t.is(exitReason({ ...base, exitCode: 1 }), 'Error');
  t.is(exitReason({ ...base, exitCode: 137, oomKilled: true }), 'OOMKilled');
  t.is(exitReason({ ...base, exitCode: 128, startError: 'exec: "x": not found' }), 'StartError');
  t.deepEqual(recordedExit({ ...base, exitCode: 137, signal: 9, oomKilled: true }), {
    exitCode: 137,
    reason: 'OOMKilled',
    message: 'the container exceeded its memory limit',
    finishedAtMs: 2,
    startedAtMs: 1,
  });
  const r = record('created');
  markExited(r, recordedExit({ ...base, exitCode: 128, startedAtMs: null, startError: 'exec failed' }));
  t.like(r, { state: 'exited', exitCode: 128, reason: 'StartError', message: 'exec failed', startedAt: '0', finishedAt: '2000000' });
  const started = record('created');
  markExited(started, recordedExit({ ...base, exitCode: 0, startedAtMs: 4 }));
  t.is(started.startedAt, '4000000', 'a start the daemon missed is taken from the record');
});

test('the other ways to exit: start failure, a lost runtime, a stop without runtime', (t) => {
  t.deepEqual(startFailedExit('no such file', 5), { exitCode: 128, reason: 'StartError', message: 'no such file', finishedAtMs: 5 });
  t.like(lostExit(6), { exitCode: 255, reason: 'Error', message: 'the pod monitor is gone; the container was lost' });
  t.like(goneWithoutRuntimeExit(record('running'), 7), { exitCode: 137, reason: 'Error', message: '', finishedAtMs: 7 });
  t.like(goneWithoutRuntimeExit(record('running', { exitCode: 2, reason: 'Custom', message: 'm' }), 7), { exitCode: 2, reason: 'Custom', message: 'm' });
});

test('CRI state: creating shows as created', (t) => {
  t.deepEqual(
    STATES.map(criContainerState),
    [CriContainerState.CONTAINER_CREATED, CriContainerState.CONTAINER_CREATED, CriContainerState.CONTAINER_RUNNING, CriContainerState.CONTAINER_EXITED],
  );
});
