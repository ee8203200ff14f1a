import { execFileSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import anyTest, { type TestFn } from 'ava';
import type { CriClient } from '../../src/client/cri_client';
import type { ContainerStats } from '../../src/generated/runtime/v1/api';
import { TestDaemon, tempDir } from '../fixtures/daemon';
import { createBridgeNetwork, removeCgroupParents, type TestNetwork } from '../fixtures/test_network';
import { buildFixtureImages, type PushedImage, pushFixtures } from '../fixtures/images';
import { type RegistryHandle, startRegistry } from '../fixtures/registry';

/**
 * Container stats measured against what the containers do: memory they hold, CPU they burn,
 * files they write, traffic their pod receives. The pod is on a bridge and /24 of this run's
 * own (10.216.x.0/24). cgroup v2 pressure parsing is covered by unit tests on captured files;
 * here PSI must be absent on a v1 host and present on a v2 one.
 */
interface Context {
  net: TestNetwork;
  logDir: string;
  registry: RegistryHandle;
  busybox: PushedImage;
  d: TestDaemon;
  c: CriClient;
  pod: string;
  podConfig: Record<string, unknown>;
  ip: string;
}
const test = anyTest.serial as TestFn<Context>;
const tag = crypto.randomBytes(3).toString('hex');
const CGROUP_PARENT = `/crisp-test-cs${tag}`;
const MiB = 1n << 20n;
const cgroupV2 = fs.existsSync('/sys/fs/cgroup/cgroup.controllers');

test.before(async (t) => {
  const net = await createBridgeNetwork({ label: 'cstats', subnetPrefix: '10.216' });
  const logDir = tempDir('crisp-test-cstats-logs-');
  t.context = { net, logDir } as Context;
  const set = await buildFixtureImages();
  t.context.registry = await startRegistry();
  t.context.busybox = (await pushFixtures(t.context.registry, ['busybox'], { set })).busybox!;
  const d = await TestDaemon.start({ cniConfDir: net.confDir });
  t.context.d = d;
  const c = d.client();
  t.context.c = c;
  await c.call('pullImage', { image: { image: t.context.busybox.reference } });
  const podConfig = {
    metadata: { name: 'stats', namespace: 'e2e', uid: `uid-cstats-${tag}`, attempt: 0 },
    hostname: 'stats',
    logDirectory: logDir,
    labels: { app: 'stats' },
    linux: { cgroupParent: CGROUP_PARENT },
  };
  t.context.podConfig = podConfig;
  t.context.pod = (await c.call('runPodSandbox', { config: podConfig })).podSandboxId;
  t.context.ip = (await c.call('podSandboxStatus', { podSandboxId: t.context.pod })).status!.network!.ip;
});

test.after.always(async (t) => {
  const { d, registry, net, logDir } = t.context ?? {};
  await d?.destroy();
  await registry?.stop();
  await net?.cleanup();
  if (logDir) fs.rmSync(logDir, { recursive: true, force: true });
  removeCgroupParents(CGROUP_PARENT);
});

let counter = 0;
async function run(t: { context: Context }, script: string, labels: Record<string, string> = {}, start = true): Promise<string> {
  const { c, pod, podConfig, busybox } = t.context;
  const name = `c${counter++}`;
  const { containerId } = await c.call('createContainer', {
    podSandboxId: pod,
    sandboxConfig: podConfig,
    config: {
      metadata: { name, attempt: 0 },
      image: { image: busybox.reference },
      command: ['/bin/sh', '-c', script],
      logPath: `${name}.log`,
      labels: { name, ...labels },
      annotations: { note: name },
    },
  });
  if (start) await c.call('startContainer', { containerId });
  return containerId;
}

async function stats(t: { context: Context }, id: string): Promise<ContainerStats> {
  return (await t.context.c.call('containerStats', { containerId: id })).stats!;
}

/** Polls `read` until `done` holds, for up to `timeoutMs`. */
async function until<T>(read: () => Promise<T>, done: (v: T) => boolean, timeoutMs: number, what: string): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await read();
    if (done(v)) return v;
    if (Date.now() > deadline) throw new Error(`${what}: not reached within ${timeoutMs} ms (last: ${JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? String(x) : x))})`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

test('memory held in /dev/shm shows in the working set; attributes and pressure are reported', async (t) => {
  const held = 48n;
  const id = await run(t, `dd if=/dev/zero of=/dev/shm/held bs=1M count=${held} 2>/dev/null; touch /tmp/ready; sleep 600`, { kind: 'memory' });
  const s = await until(
    () => stats(t, id),
    (v) => (v.memory?.workingSetBytes?.value ?? 0n) >= held * MiB,
    15_000,
    'working set',
  );
  t.true(s.memory!.usageBytes!.value >= s.memory!.workingSetBytes!.value);
  t.true(s.memory!.pageFaults!.value > 0n);
  t.not(s.memory!.rssBytes, undefined);
  t.is(s.memory!.availableBytes, undefined, 'no memory limit');
  t.is(s.attributes!.id, id);
  t.is(s.attributes!.metadata!.name, `c${counter - 1}`);
  t.is(s.attributes!.labels.kind, 'memory');
  t.is(s.attributes!.annotations.note, `c${counter - 1}`);
  if (cgroupV2) {
    t.not(s.cpu!.psi, undefined, 'cgroup v2 keeps pressure per cgroup');
    t.not(s.memory!.psi, undefined);
  } else {
    t.is(s.cpu!.psi, undefined, 'cgroup v1 has no per-cgroup pressure');
    t.is(s.memory!.psi, undefined);
    t.is(s.io, undefined);
  }
});

test('burning CPU grows usage_core_nano_seconds, and a later sample carries a usage rate', async (t) => {
  const id = await run(t, 'end=$(( $(date +%s) + 3 )); while [ $(date +%s) -lt $end ]; do :; done; sleep 600');
  const first = await stats(t, id);
  const later = await until(
    () => stats(t, id),
    (v) => (v.cpu?.usageNanoCores?.value ?? 0n) > 100_000_000n && v.cpu!.usageCoreNanoSeconds!.value > first.cpu!.usageCoreNanoSeconds!.value,
    10_000,
    'cpu rate',
  );
  t.true(later.cpu!.usageCoreNanoSeconds!.value - first.cpu!.usageCoreNanoSeconds!.value > 100_000_000n, 'at least 0.1 s of CPU');
  t.true(later.cpu!.timestamp >= first.cpu!.timestamp);
  t.true(later.cpu!.usageNanoCores!.value <= 2_100_000_000n, 'a shell loop uses about one core, never more than the node has');
});

test('a file written in the container grows its writable layer on the image filesystem', async (t) => {
  const id = await run(t, 'sleep 1; dd if=/dev/urandom of=/payload bs=1M count=6 2>/dev/null; sync; sleep 600');
  const { imageFilesystems } = await t.context.c.call('imageFsInfo', {});
  const before = await stats(t, id);
  t.is(before.writableLayer!.fsId!.mountpoint, imageFilesystems[0]!.fsId!.mountpoint);
  const after = await until(
    () => stats(t, id),
    (v) => v.writableLayer!.usedBytes!.value >= before.writableLayer!.usedBytes!.value + 6n * MiB,
    20_000,
    'writable layer',
  );
  t.true(after.writableLayer!.inodesUsed!.value > before.writableLayer!.inodesUsed!.value);
  t.true(after.writableLayer!.timestamp > before.writableLayer!.timestamp);
});

test('a directory chain deeper than PATH_MAX does not hide the writable layer\'s usage; the layer is still removed', async (t) => {
  // Three chains of 150 levels of 20-byte names, each moved below the next (a path past PATH_MAX
  // cannot be named, but a directory can be moved anywhere): 9450 bytes of path, then 8 MiB
  // written next to it.
  const script = [
    'sleep 1',
    'p=$(for i in $(seq 150); do printf dddddddddddddddddddd/; done)',
    'mkdir -p "/deep/$p"',
    'for r in 1 2; do mkdir -p "/next/$p" && mv /deep "/next/$p" && mv /next /deep || exit 1; done',
    'dd if=/dev/urandom of=/payload bs=1M count=8 2>/dev/null',
    'sync',
    'echo built',
    'exec sleep 600',
  ].join('; ');
  const id = await run(t, script);
  const before = await stats(t, id);
  t.not(before.writableLayer?.usedBytes, undefined);
  const after = await until(
    () => stats(t, id),
    (v) => (v.writableLayer?.usedBytes?.value ?? 0n) >= 8n * MiB,
    20_000,
    'writable layer with a deep chain',
  );
  t.true(after.writableLayer!.inodesUsed!.value >= 400n, 'every directory of the chain is counted');
  await t.context.c.call('stopContainer', { containerId: id, timeout: 0n });
  await t.context.c.call('removeContainer', { containerId: id });
  t.false(fs.existsSync(`${t.context.d.root}/containers/${id}`), 'the writable layer is gone');
});

test('only running containers are listed; filters; unknown ids are NotFound', async (t) => {
  const { c, pod } = t.context;
  const running = await run(t, 'sleep 600', { group: 'listed' });
  const created = await run(t, 'sleep 600', { group: 'listed' }, false);
  const exited = await run(t, 'true', { group: 'listed' });
  await until(
    async () => (await c.call('containerStatus', { containerId: exited })).status!.state,
    (s) => s === 2,
    10_000,
    'exit',
  );
  const listed = (await c.call('listContainerStats', { filter: { labelSelector: { group: 'listed' } } })).stats.map((s) => s.attributes!.id);
  t.deepEqual(listed, [running]);
  t.deepEqual((await c.call('listContainerStats', { filter: { id: running.slice(0, 10) } })).stats.map((s) => s.attributes!.id), [running]);
  const inPod = (await c.call('listContainerStats', { filter: { podSandboxId: pod } })).stats.map((s) => s.attributes!.id);
  t.true(inPod.includes(running) && !inPod.includes(created));
  t.deepEqual((await c.call('listContainerStats', { filter: { podSandboxId: 'nope' } })).stats, []);

  const createdStats = await stats(t, created);
  t.is(createdStats.attributes!.id, created, 'a created container can still be asked about');
  t.not(createdStats.writableLayer, undefined);

  const unknown = (await t.throwsAsync(c.call('containerStats', { containerId: 'does-not-exist' }))) as grpc.ServiceError;
  t.is(unknown.code, grpc.status.NOT_FOUND);
  const empty = (await t.throwsAsync(c.call('containerStats', { containerId: '' }))) as grpc.ServiceError;
  t.is(empty.code, grpc.status.INVALID_ARGUMENT);
});

test('pod stats carry the running containers, process count and eth0 traffic; metrics carry container series', async (t) => {
  const { c, pod, ip } = t.context;
  const before = (await c.call('podSandboxStats', { podSandboxId: pod })).stats!;
  const rx0 = before.linux!.network!.defaultInterface!.rxBytes!.value;
  const tx0 = before.linux!.network!.defaultInterface!.txBytes!.value;
  execFileSync('busybox', ['ping', '-c', '5', '-i', '0.2', '-s', '1000', '-W', '2', ip]);
  const after = (await c.call('podSandboxStats', { podSandboxId: pod })).stats!;
  const eth0 = after.linux!.network!.defaultInterface!;
  t.true(eth0.rxBytes!.value - rx0 >= 5n * 1000n, `five 1000-byte pings received (${eth0.rxBytes!.value - rx0})`);
  t.true(eth0.txBytes!.value - tx0 >= 5n * 1000n, 'and answered');

  const running = (await c.call('listContainerStats', { filter: { podSandboxId: pod } })).stats.map((s) => s.attributes!.id).sort();
  t.true(running.length >= 4);
  t.deepEqual(after.linux!.containers.map((s) => s.attributes!.id).sort(), running);
  t.true(after.linux!.process!.processCount!.value >= BigInt(running.length) + 1n, 'the monitor and every container shell');
  const memory = after.linux!.containers.find((s) => s.attributes!.labels.kind === 'memory')!;
  t.true(memory.memory!.workingSetBytes!.value >= 48n * MiB);
  t.true(after.linux!.memory!.workingSetBytes!.value >= memory.memory!.workingSetBytes!.value, 'the pod cgroup includes its containers');

  const { descriptors } = await c.call('listMetricDescriptors', {});
  const keys = new Map(descriptors.map((d) => [d.name, d.labelKeys]));
  const { podMetrics } = await c.call('listPodSandboxMetrics', {});
  const mine = podMetrics.find((p) => p.podSandboxId === pod)!;
  t.deepEqual(mine.containerMetrics.map((m) => m.containerId).sort(), running);
  const memoryMetrics = mine.containerMetrics.find((m) => m.containerId === memory.attributes!.id)!.metrics;
  const ws = memoryMetrics.find((m) => m.name === 'container_memory_working_set_bytes')!;
  const label = (k: string) => ws.labelValues[keys.get(ws.name)!.indexOf(k)];
  t.is(label('container'), memory.attributes!.metadata!.name);
  t.is(label('pod'), 'stats');
  t.is(label('namespace'), 'e2e');
  t.is(label('name'), memory.attributes!.id);
  t.true(ws.value!.value >= 48n * MiB);
  for (const m of [...mine.metrics, ...memoryMetrics]) t.is(m.labelValues.length, keys.get(m.name)?.length ?? -1, m.name);
  t.truthy(memoryMetrics.find((m) => m.name === 'container_fs_usage_bytes'));
  t.truthy(mine.metrics.find((m) => m.name === 'container_network_receive_bytes_total'));
});
