import { execFileSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import anyTest, { type TestFn } from 'ava';
import type { CriClient } from '../../src/client/cri_client';
import { type ListPodSandboxStatsResponse, NamespaceMode, type PodSandboxStats } from '../../src/generated/runtime/v1/api';
import { TestDaemon } from '../fixtures/daemon';
import { createBridgeNetwork, removeCgroupParents, type TestNetwork } from '../fixtures/test_network';

/**
 * Pod stats, metrics and resource updates of real pods on a bridge and /24 of this run's own.
 * Serial: the tests share the bridge.
 */
interface Context {
  net: TestNetwork;
  tag: string;
}
const test = anyTest.serial as TestFn<Context>;

test.before(async (t) => {
  t.context = { net: await createBridgeNetwork({ label: 'podstats', subnetPrefix: '10.215' }), tag: crypto.randomBytes(3).toString('hex') };
});

test.after.always(async (t) => {
  await t.context.net?.cleanup();
  removeCgroupParents(`crisp-test-st-${t.context.tag}`, `crisp-test-st-${t.context.tag}-host`);
});

function podConfig(t: { context: Context }, name: string, hostNetwork = false) {
  const parent = hostNetwork ? `/crisp-test-st-${t.context.tag}-host` : `/crisp-test-st-${t.context.tag}`;
  return {
    metadata: { name, namespace: 'e2e', uid: `uid-${name}-${t.context.tag}`, attempt: 0 },
    hostname: name,
    labels: { app: name },
    linux: {
      cgroupParent: parent,
      securityContext: hostNetwork ? { namespaceOptions: { network: NamespaceMode.NODE } } : undefined,
    },
  };
}

async function daemon(t: any): Promise<{ d: TestDaemon; c: CriClient }> {
  const d = await TestDaemon.start({ cniConfDir: t.context.net.confDir });
  t.teardown(() => d.destroy());
  return { d, c: d.client() };
}

test('a running pod reports cpu, memory, processes and its eth0 traffic; rates appear from the second sample', async (t) => {
  const { c } = await daemon(t);
  const { podSandboxId: id } = await c.call('runPodSandbox', { config: podConfig(t, 'stats') });
  const ip = (await c.call('podSandboxStatus', { podSandboxId: id })).status!.network!.ip;
  execFileSync('busybox', ['ping', '-c', '3', '-i', '0.2', '-W', '2', ip]);

  const first = (await c.call('podSandboxStats', { podSandboxId: id })).stats!;
  t.is(first.attributes?.id, id);
  t.is(first.attributes?.metadata?.name, 'stats');
  t.deepEqual(first.attributes?.labels, { app: 'stats' });
  const linux = first.linux!;
  t.true(linux.cpu!.usageCoreNanoSeconds!.value > 0n, 'the monitor used some CPU');
  t.true(linux.cpu!.timestamp > 0n);
  t.true(linux.memory!.usageBytes!.value > 0n);
  t.true(linux.memory!.workingSetBytes!.value <= linux.memory!.usageBytes!.value);
  // No rss assertion: the monitor's pages were charged before it joined the cgroup.
  t.not(linux.memory!.rssBytes, undefined);
  t.is(linux.memory!.availableBytes, undefined, 'no memory limit on the pod cgroup');
  t.true(linux.process!.processCount!.value >= 1n, 'at least the monitor');
  const eth0 = linux.network!.defaultInterface!;
  t.is(eth0.name, 'eth0');
  t.true(eth0.rxBytes!.value >= 3n * 84n, `three pings received (${eth0.rxBytes!.value} bytes)`);
  t.true(eth0.txBytes!.value >= 3n * 84n, 'and answered');
  t.false(linux.network!.interfaces.some((i) => i.name === 'lo'));
  t.deepEqual(linux.containers, []);

  await new Promise((r) => setTimeout(r, 1100));
  const second = (await c.call('podSandboxStats', { podSandboxId: id })).stats!;
  t.not(second.linux!.cpu!.usageNanoCores, undefined, 'a usage rate once a window of a second exists');
  t.true(second.linux!.cpu!.usageCoreNanoSeconds!.value >= linux.cpu!.usageCoreNanoSeconds!.value);

  await c.call('stopPodSandbox', { podSandboxId: id });
  const err = (await t.throwsAsync(c.call('podSandboxStats', { podSandboxId: id }))) as grpc.ServiceError;
  t.is(err.code, grpc.status.FAILED_PRECONDITION);
  t.deepEqual((await c.call('listPodSandboxStats', {})).stats, [], 'a stopped pod is not listed');
  const unknown = (await t.throwsAsync(c.call('podSandboxStats', { podSandboxId: 'nope' }))) as grpc.ServiceError;
  t.is(unknown.code, grpc.status.NOT_FOUND);
});

test('list and stream filter by id prefix and labels; host-network pods report no network', async (t) => {
  const { c } = await daemon(t);
  const { podSandboxId: a } = await c.call('runPodSandbox', { config: podConfig(t, 'alpha') });
  const { podSandboxId: b } = await c.call('runPodSandbox', { config: podConfig(t, 'beta', true) });
  const ids = (r: ListPodSandboxStatsResponse) => r.stats.map((s) => s.attributes!.id).sort();
  t.deepEqual(ids(await c.call('listPodSandboxStats', {})), [a, b].sort());
  t.deepEqual(ids(await c.call('listPodSandboxStats', { filter: { labelSelector: { app: 'beta' } } })), [b]);
  t.deepEqual(ids(await c.call('listPodSandboxStats', { filter: { id: a.slice(0, 12) } })), [a]);
  t.deepEqual(ids(await c.call('listPodSandboxStats', { filter: { labelSelector: { app: 'none' } } })), []);

  const streamed: PodSandboxStats[] = [];
  for await (const chunk of c.stream('streamPodSandboxStats', {})) streamed.push(...chunk.podSandboxStats);
  t.deepEqual(streamed.map((s) => s.attributes!.id).sort(), [a, b].sort());

  const host = (await c.call('podSandboxStats', { podSandboxId: b })).stats!;
  t.is(host.linux!.network, undefined, 'kubelet reads the node interfaces itself');
  t.true(host.linux!.memory!.usageBytes!.value > 0n);
});

test('pod metrics use the described names and labels; resources updates reach the sandbox cgroup', async (t) => {
  const { c } = await daemon(t);
  const { podSandboxId: id } = await c.call('runPodSandbox', { config: podConfig(t, 'metrics') });

  const { descriptors } = await c.call('listMetricDescriptors', {});
  const described = new Map(descriptors.map((d) => [d.name, d.labelKeys]));
  t.deepEqual(described.get('container_network_receive_bytes_total'), ['container', 'id', 'image', 'name', 'namespace', 'pod', 'interface']);
  const { podMetrics } = await c.call('listPodSandboxMetrics', {});
  t.deepEqual(podMetrics.map((p) => p.podSandboxId), [id]);
  const metrics = podMetrics[0]!.metrics;
  for (const m of metrics) t.is(m.labelValues.length, described.get(m.name)?.length ?? -1, m.name);
  const podCgroup = `/crisp-test-st-${t.context.tag}`;
  const workingSet = metrics.find((m) => m.name === 'container_memory_working_set_bytes')!;
  t.deepEqual(workingSet.labelValues, ['', podCgroup, '', '', 'e2e', 'metrics']);
  t.true(workingSet.value!.value > 0n);
  t.truthy(metrics.find((m) => m.name === 'container_network_receive_bytes_total' && m.labelValues[6] === 'eth0'));
  const streamed = [];
  for await (const chunk of c.stream('streamPodSandboxMetrics', {})) streamed.push(...chunk.podSandboxMetrics);
  t.deepEqual(streamed.map((p) => p.podSandboxId), [id]);

  await c.call('updatePodSandboxResources', {
    podSandboxId: id,
    resources: { memoryLimitInBytes: 256n << 20n, cpuShares: 512n },
    overhead: { memoryLimitInBytes: 16n << 20n, cpuShares: 10n },
  });
  const sandboxCgroup = path.join('/sys/fs/cgroup/memory', podCgroup, id);
  t.is(fs.readFileSync(path.join(sandboxCgroup, 'memory.limit_in_bytes'), 'utf8').trim(), String(272 << 20));
  t.is(fs.readFileSync(path.join('/sys/fs/cgroup/cpu', podCgroup, id, 'cpu.shares'), 'utf8').trim(), '522');
  const missing = (await t.throwsAsync(c.call('updatePodSandboxResources', { podSandboxId: 'nope', resources: {} }))) as grpc.ServiceError;
  t.is(missing.code, grpc.status.NOT_FOUND);

});
