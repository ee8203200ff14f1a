import test from 'ava';
import { ContainerEvents } from '../../src/events/container_events';
import { EventBus } from '../../src/events/event_bus';
import { ContainerEventType, PodSandboxConfig, PodSandboxState } from '../../src/generated/runtime/v1/api';
import { silentLogger } from '../../src/log';
import { Sandbox } from '../../src/sandbox/sandbox_store';
import { CrispError } from '../../src/util/errors';

test('every subscriber receives every event in order', async (t) => {
  const bus = new EventBus<number>();
  const a = bus.subscribe();
  const b = bus.subscribe();
  const pendingRead = a.next();
  for (let i = 0; i < 5; i++) bus.publish(i);
  t.is(await pendingRead, 0, 'a waiting read gets the first event');
  const fromA = [await a.next(), await a.next(), await a.next(), await a.next()];
  const fromB = [];
  for (let i = 0; i < 5; i++) fromB.push(await b.next());
  t.deepEqual(fromA, [1, 2, 3, 4]);
  t.deepEqual(fromB, [0, 1, 2, 3, 4]);
});

test('a subscriber that falls behind is dropped with ResourceExhausted; the others are unaffected', async (t) => {
  const bus = new EventBus<number>();
  const slow = bus.subscribe(3);
  const fast = bus.subscribe(3);
  let endedWith: Error | undefined;
  slow.onEnd((err) => (endedWith = err));
  for (let i = 0; i < 4; i++) {
    bus.publish(i);
    t.is(await fast.next(), i);
  }
  t.true(slow.ended);
  t.is(bus.subscriberCount, 1, 'the dropped subscriber is detached');
  t.true(endedWith instanceof CrispError && endedWith.code === 'ResourceExhausted');
  const err = await t.throwsAsync(slow.next());
  t.regex(err!.message, /fell more than 3 events behind/);
  bus.publish(99);
  t.is(await fast.next(), 99);
});

test('close ends reads normally and detaches; closing the bus ends everyone', async (t) => {
  const bus = new EventBus<string>();
  const a = bus.subscribe();
  const waiting = a.next();
  a.close();
  t.is(await waiting, undefined);
  t.is(bus.subscriberCount, 0);
  const b = bus.subscribe();
  bus.publish('x');
  bus.close();
  t.is(await b.next(), 'x', 'queued events are still delivered after a normal close');
  t.is(await b.next(), undefined);
  t.true(bus.subscribe().ended, 'a closed bus takes no new subscribers');
});

test('long-lived subscriber: the queue compacts as it is read', async (t) => {
  const bus = new EventBus<number>();
  const sub = bus.subscribe(10_000);
  let expected = 0;
  for (let round = 0; round < 50; round++) {
    for (let i = 0; i < 200; i++) bus.publish(round * 200 + i);
    while (sub.pending > 0) t.is(await sub.next(), expected++);
  }
  t.is(expected, 10_000);
});

function sandbox(id: string): Sandbox {
  const config = PodSandboxConfig.fromPartial({ metadata: { name: 'web', namespace: 'default', uid: `uid-${id}`, attempt: 0 } });
  return new Sandbox(
    {
      version: 1,
      id,
      config: PodSandboxConfig.toJSON(config),
      state: 'ready',
      createdAt: '1',
      runtimeHandler: 'crisp',
      ips: [],
      resources: {},
      stage: 'ready',
    },
    '/nonexistent',
  );
}

test('container events keep publication order even when status reads finish out of order', async (t) => {
  let clock = 100n;
  const delays = [30, 0, 10];
  const events = new ContainerEvents({
    log: silentLogger(),
    nowNs: () => clock++,
    snapshot: async (s) => {
      const state = s.state === 'ready' ? PodSandboxState.SANDBOX_READY : PodSandboxState.SANDBOX_NOTREADY;
      await new Promise((r) => setTimeout(r, delays.shift()));
      return { podSandboxStatus: { id: s.id, state } as never, containersStatuses: [] };
    },
  });
  const sub = events.subscribe();
  const pod = sandbox('p1');
  events.publishSandbox(pod, ContainerEventType.CONTAINER_CREATED_EVENT);
  events.publishSandbox(pod, ContainerEventType.CONTAINER_STARTED_EVENT);
  pod.record.state = 'stopped';
  events.publishContainer('c1', pod, ContainerEventType.CONTAINER_STOPPED_EVENT);
  const got = [await sub.next(), await sub.next(), await sub.next()];
  t.deepEqual(
    got.map((e) => [e!.containerId, e!.containerEventType, e!.createdAt, e!.podSandboxStatus!.state]),
    [
      ['p1', ContainerEventType.CONTAINER_CREATED_EVENT, 100n, PodSandboxState.SANDBOX_READY],
      ['p1', ContainerEventType.CONTAINER_STARTED_EVENT, 101n, PodSandboxState.SANDBOX_READY],
      ['c1', ContainerEventType.CONTAINER_STOPPED_EVENT, 102n, PodSandboxState.SANDBOX_NOTREADY],
    ],
    'the status is the one at publication time',
  );
});

test('an event whose pod status cannot be read is still delivered, without status', async (t) => {
  const events = new ContainerEvents({
    log: silentLogger(),
    snapshot: async () => {
      throw new Error('gone');
    },
  });
  const sub = events.subscribe();
  events.publishSandbox(sandbox('p2'), ContainerEventType.CONTAINER_DELETED_EVENT);
  const e = await sub.next();
  t.is(e!.containerId, 'p2');
  t.is(e!.podSandboxStatus, undefined);
  events.close();
  t.is(await sub.next(), undefined);
});

test('without subscribers nothing is read: the pod status is taken only for events someone receives', async (t) => {
  let reads = 0;
  const events = new ContainerEvents({
    log: silentLogger(),
    snapshot: async (s) => {
      reads++;
      return { podSandboxStatus: { id: s.id } as never, containersStatuses: [] };
    },
  });
  events.publishSandbox(sandbox('p3'), ContainerEventType.CONTAINER_CREATED_EVENT);
  await events.flush();
  t.is(reads, 0);
  const sub = events.subscribe();
  events.publishContainer('c3', sandbox('p3'), ContainerEventType.CONTAINER_STARTED_EVENT);
  const e = await sub.next();
  t.is(e!.containerId, 'c3', 'the event before the subscription is not delivered');
  t.is(reads, 1);
  events.close();
});
