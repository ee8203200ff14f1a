import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import anyTest, { type TestFn } from 'ava';
import { type ContainerEventResponse, ContainerEventType, NamespaceMode, PodSandboxState } from '../../src/generated/runtime/v1/api';
import { TestDaemon } from '../fixtures/daemon';

/**
 * GetContainerEvents through the daemon's socket. Host-network pods keep CNI out of the way: the
 * events are the same for every kind of pod.
 */
const test = anyTest.serial as TestFn<{ tag: string }>;

test.before((t) => {
  t.context = { tag: crypto.randomBytes(3).toString('hex') };
});

test.after.always((t) => {
  for (const hierarchy of fs.readdirSync('/sys/fs/cgroup')) {
    const dir = path.join('/sys/fs/cgroup', hierarchy, `crisp-test-ev-${t.context.tag}`);
    if (fs.existsSync(dir)) fs.rmdirSync(dir);
  }
});

function podConfig(t: { context: { tag: string } }, name: string) {
  return {
    metadata: { name, namespace: 'e2e', uid: `uid-${name}-${t.context.tag}`, attempt: 0 },
    hostname: name,
    linux: { cgroupParent: `/crisp-test-ev-${t.context.tag}`, securityContext: { namespaceOptions: { network: NamespaceMode.NODE } } },
  };
}

/** Collects a stream's events and how it ended. */
function collect(stream: grpc.ClientReadableStream<ContainerEventResponse>) {
  const events: ContainerEventResponse[] = [];
  let ended: { error?: grpc.ServiceError } | undefined;
  stream.on('data', (e: ContainerEventResponse) => events.push(e));
  stream.on('error', (error: grpc.ServiceError) => (ended = { error }));
  stream.on('end', () => (ended ??= {}));
  return { events, ended: () => ended };
}

async function until(what: string, cond: () => boolean, timeoutMs = 10_000): Promise<void> {
  for (const started = Date.now(); !cond(); ) {
    if (Date.now() - started > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

test('every subscriber sees a pod sandbox CREATED, STARTED, STOPPED, DELETED in order, with its status', async (t) => {
  const d = await TestDaemon.start();
  t.teardown(() => d.destroy());
  const c = d.client();
  const first = collect(c.stream('getContainerEvents', {}));
  const second = collect(d.client().stream('getContainerEvents', {}));
  await until('both subscribers', () => (d.output().match(/event subscriber connected/g) ?? []).length === 2);

  const { podSandboxId: id } = await c.call('runPodSandbox', { config: podConfig(t, 'ev') });
  await c.call('stopPodSandbox', { podSandboxId: id });
  await c.call('stopPodSandbox', { podSandboxId: id });
  await c.call('removePodSandbox', { podSandboxId: id });
  await c.call('removePodSandbox', { podSandboxId: id });

  const expected = [
    ContainerEventType.CONTAINER_CREATED_EVENT,
    ContainerEventType.CONTAINER_STARTED_EVENT,
    ContainerEventType.CONTAINER_STOPPED_EVENT,
    ContainerEventType.CONTAINER_DELETED_EVENT,
  ];
  for (const sub of [first, second]) {
    await until('four events', () => sub.events.length >= 4);
    await new Promise((r) => setTimeout(r, 200));
    t.deepEqual(sub.events.map((e) => e.containerEventType), expected, 'repeated stop and remove publish nothing more');
    for (const e of sub.events) {
      t.is(e.containerId, id, 'a sandbox event names the sandbox');
      t.is(e.podSandboxStatus?.id, id);
      t.is(e.podSandboxStatus?.metadata?.uid, `uid-ev-${t.context.tag}`, 'kubelet finds the pod by its uid');
    }
    const [created, started, stopped, deleted] = sub.events;
    t.is(started!.podSandboxStatus!.state, PodSandboxState.SANDBOX_READY);
    t.is(stopped!.podSandboxStatus!.state, PodSandboxState.SANDBOX_NOTREADY);
    t.is(deleted!.podSandboxStatus!.state, PodSandboxState.SANDBOX_NOTREADY, 'the removed pod is still described');
    t.true(created!.createdAt <= started!.createdAt && started!.createdAt <= stopped!.createdAt && stopped!.createdAt <= deleted!.createdAt);
    t.true(Math.abs(Number(created!.createdAt / 1_000_000n) - Date.now()) < 60_000, 'createdAt is wall-clock nanoseconds');
  }
});

test('a client that disconnects is unsubscribed; shutdown ends the streams that remain', async (t) => {
  const d = await TestDaemon.start();
  t.teardown(() => d.destroy());
  const c = d.client();
  const leaving = c.stream('getContainerEvents', {});
  leaving.on('error', () => undefined);
  const staying = collect(d.client().stream('getContainerEvents', {}));
  await until('both subscribers', () => (d.output().match(/event subscriber connected/g) ?? []).length === 2);
  leaving.cancel();
  await until('the cancelled subscriber to be cleaned up', () => /"subscribers":1,"msg":"event subscriber gone"/.test(d.output()));

  const { podSandboxId: id } = await c.call('runPodSandbox', { config: podConfig(t, 'ev2') });
  await until('events for the remaining subscriber', () => staying.events.length === 2);
  t.deepEqual(staying.events.map((e) => e.containerId), [id, id]);
  await c.call('removePodSandbox', { podSandboxId: id });
  await until('the DELETED event', () => staying.events.length === 4);

  const started = Date.now();
  t.is(await d.stop(), 0);
  t.true(Date.now() - started < 5_000, 'an open event stream does not hold up shutdown');
  await until('the stream to end', () => staying.ended() !== undefined);
  t.is(staying.ended()!.error, undefined, 'ended normally');
});
