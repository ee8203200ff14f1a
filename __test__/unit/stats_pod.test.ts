import test from 'ava';
import { LinuxContainerResources, MetricType } from '../../src/generated/runtime/v1/api';
import { FakeNativeCore } from '../../src/native/fake';
import { silentLogger } from '../../src/log';
import { decodeCgroupStats } from '../../src/stats/cgroup_stats';
import { METRIC_DESCRIPTORS, podSandboxMetricValues, toCriPodStats } from '../../src/stats/cri_stats';
import { parseNetDev } from '../../src/stats/net_dev';
import { CpuRateTracker } from '../../src/stats/cgroup_sampler';
import type { PodSample } from '../../src/stats/pod_stats';
import { StatsCollector } from '../../src/stats/stats_collector';
import { podTotalResources } from '../../src/server/sandbox_update_resources';

// /proc/<pid>/net/dev of a pod network namespace with a CNI veth (captured), plus a second
// interface whose counters are wide enough to run into the colon.
const NET_DEV = `Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     840      12    0    0    0     0          0         0      840      12    0    0    0     0       0          0
  eth0:    6912      71    1    2    0     0          0         0     1486      17    3    4    0     0       0          0
net1:18446744073709551615 5 0 0 0 0 0 0 42 1 0 0 0 0 0 0
 bogus: 1 2 3
`;

test('net/dev: every interface with receive and transmit counters, malformed lines skipped', (t) => {
  const ifs = parseNetDev(NET_DEV);
  t.deepEqual(ifs.map((i) => i.name), ['lo', 'eth0', 'net1']);
  const eth0 = ifs[1]!;
  t.deepEqual(
    [eth0.rxBytes, eth0.rxPackets, eth0.rxErrors, eth0.rxDropped, eth0.txBytes, eth0.txPackets, eth0.txErrors, eth0.txDropped],
    [6912n, 71n, 1n, 2n, 1486n, 17n, 3n, 4n],
  );
  t.is(ifs[2]!.rxBytes, 18446744073709551615n, 'u64 counters survive exactly');
  t.deepEqual(parseNetDev(''), []);
});

// What the addon returns for a v1 pod cgroup (shape of crates/core json::stats_exact).
const RAW_STATS = JSON.stringify({
  cpu: { usageNanos: '90071992547409930', userNanos: '5000000000', systemNanos: null, nrPeriods: '10', nrThrottled: '2', throttledNanos: '3000000000' },
  memory: {
    usageBytes: '50000000',
    workingSetBytes: '30000000',
    rssBytes: '20000000',
    cacheBytes: '25000000',
    pageFaults: '1234',
    majorPageFaults: '5',
    limitBytes: '134217728',
    swapUsageBytes: null,
    maxUsageBytes: '60000000',
    oomKills: '1',
  },
  pids: { current: '7', limit: null },
});

test('cgroup stats JSON decodes to exact bigints; null sections and values are absent', (t) => {
  const s = decodeCgroupStats(RAW_STATS);
  t.is(s.cpu!.usageNanos, 90071992547409930n, 'beyond 2^53, still exact');
  t.is(s.cpu!.systemNanos, undefined);
  t.is(s.memory!.limitBytes, 134217728n);
  t.is(s.pids!.limit, undefined);
  t.deepEqual(decodeCgroupStats('{"cpu":null,"memory":null,"pids":null}'), {});
  t.throws(() => decodeCgroupStats('{"cpu":{"usageNanos":12}}'), { message: /usageNanos is not a decimal counter/ });
});

test('CPU rate: needs a window of at least the minimum; short gaps reuse the last rate; a reset restarts', (t) => {
  const r = new CpuRateTracker(1_000_000_000n);
  t.is(r.update('a', 1_000_000_000n, 0n), undefined, 'first reading has no rate');
  t.is(r.update('a', 1_100_000_000n, 500_000_000n), undefined, 'half a second is too short a window');
  // 2 s after the baseline, 1 s of CPU was used: half a core.
  t.is(r.update('a', 2_000_000_000n, 2_000_000_000n), 500_000_000n);
  t.is(r.update('a', 2_010_000_000n, 2_100_000_000n), 500_000_000n, 'too close: the last full window is reported');
  t.is(r.update('a', 4_000_000_000n, 3_000_000_000n), 2_000_000_000n, 'two cores over the next second');
  t.is(r.update('a', 10n, 4_000_000_000n), undefined, 'counter went backwards: cgroup recreated');
  r.update('b', 0n, 0n);
  r.retain(new Set(['b']));
  t.is(r.size, 1);
});

test('collector: samples cgroup and network; host-network targets have no interfaces', async (t) => {
  const native = new FakeNativeCore();
  native.stats.set('/kubepods/podA', decodeCgroupStats(RAW_STATS));
  let now = 0n;
  const reads: number[] = [];
  const collector = new StatsCollector({
    readCgroups: (paths) => native.cgroupStatsBatch(paths),
    readNetDev: async (pid) => {
      reads.push(pid);
      return NET_DEV;
    },
    measureLayer: async () => ({ bytes: 0n, inodes: 1n }),
    log: silentLogger(),
    monotonicNs: () => now,
    wallNs: () => 1_700_000_000_000_000_000n,
  });
  const first = await collector.samplePod({ cgroupPath: '/kubepods/podA', netnsPid: 42 });
  t.is(first.usageNanoCores, undefined);
  t.is(first.timestamp, 1_700_000_000_000_000_000n);
  t.deepEqual(first.interfaces?.map((i) => i.name), ['lo', 'eth0', 'net1']);
  t.deepEqual(reads, [42]);
  now = 10_000_000_000n;
  const later = decodeCgroupStats(RAW_STATS);
  later.cpu!.usageNanos += 5_000_000_000n;
  native.stats.set('/kubepods/podA', later);
  const second = await collector.samplePod({ cgroupPath: '/kubepods/podA' });
  t.is(second.usageNanoCores, 500_000_000n, '5 s of CPU over 10 s');
  t.is(second.interfaces, undefined);
  t.deepEqual(reads, [42], 'no network read for a host-network pod');
  const missing = await collector.samplePod({ cgroupPath: '/gone' });
  t.deepEqual(missing.cgroup, {});
  native.statsFailures.set('/broken', 'EACCES');
  const [ok, broken] = await collector.samplePods([{ cgroupPath: '/kubepods/podA' }, { cgroupPath: '/broken' }]);
  t.false(ok instanceof Error);
  t.true(broken instanceof Error);
  t.regex((broken as Error).message, /stats of cgroup \/broken/);
  await t.throwsAsync(collector.samplePod({ cgroupPath: '/broken' }), { message: /EACCES|injected/ });
  await collector.close();
});

function sample(): PodSample {
  return { timestamp: 123n, cgroup: decodeCgroupStats(RAW_STATS), interfaces: parseNetDev(NET_DEV), usageNanoCores: 250_000_000n };
}

test('CRI pod stats: cpu, memory with available under the limit, eth0 as default interface, lo left out', (t) => {
  const attributes = { id: 'p1', metadata: undefined, labels: { app: 'x' }, annotations: {} };
  const stats = toCriPodStats(attributes, sample());
  const linux = stats.linux!;
  t.is(stats.attributes, attributes);
  t.is(linux.cpu!.usageCoreNanoSeconds!.value, 90071992547409930n);
  t.is(linux.cpu!.usageNanoCores!.value, 250_000_000n);
  t.is(linux.cpu!.timestamp, 123n);
  t.is(linux.memory!.workingSetBytes!.value, 30000000n);
  t.is(linux.memory!.availableBytes!.value, 134217728n - 30000000n);
  t.is(linux.memory!.usageBytes!.value, 50000000n);
  t.is(linux.memory!.rssBytes!.value, 20000000n);
  t.is(linux.memory!.pageFaults!.value, 1234n);
  t.is(linux.memory!.majorPageFaults!.value, 5n);
  t.is(linux.network!.defaultInterface!.name, 'eth0');
  t.is(linux.network!.defaultInterface!.rxBytes!.value, 6912n);
  t.is(linux.network!.defaultInterface!.txErrors!.value, 3n);
  t.deepEqual(linux.network!.interfaces.map((i) => i.name), ['net1']);
  t.is(linux.process!.processCount!.value, 7n);
  t.deepEqual(linux.containers, []);

  const unlimited = sample();
  delete unlimited.cgroup.memory!.limitBytes;
  delete unlimited.interfaces;
  const u = toCriPodStats(attributes, unlimited).linux!;
  t.is(u.memory!.availableBytes, undefined, 'no limit, no available bytes');
  t.is(u.network, undefined, 'host network: no network stats');
});

const POD_LABELS = { container: '', cgroupPath: '/kubepods/podA', image: '', name: '', namespace: 'ns', pod: 'web-0' };

test('pod metrics: every value has a descriptor and as many labels as its keys', (t) => {
  const metrics = podSandboxMetricValues(POD_LABELS, sample());
  const byName = new Map(METRIC_DESCRIPTORS.map((d) => [d.name, d]));
  for (const m of metrics) {
    const d = byName.get(m.name);
    t.truthy(d, `${m.name} is described`);
    t.is(m.labelValues.length, d!.labelKeys.length, m.name);
    const label = (key: string) => m.labelValues[d!.labelKeys.indexOf(key)];
    t.is(label('id'), '/kubepods/podA');
    t.is(label('pod'), 'web-0');
    t.is(label('namespace'), 'ns');
    t.is(label('container'), '', 'a pod-level series has no container');
    t.is(m.timestamp, 123n, 'cached values carry their collection time');
  }
  const base = METRIC_DESCRIPTORS[0]!.labelKeys.length;
  const value = (name: string, ...extra: string[]) =>
    metrics.find((m) => m.name === name && extra.every((e, i) => m.labelValues[base + i] === e))?.value?.value;
  t.is(value('container_cpu_usage_seconds_total'), 90071992n);
  t.is(value('container_memory_working_set_bytes'), 30000000n);
  t.is(value('container_memory_failures_total', 'pgmajfault', 'hierarchy'), 5n);
  t.is(value('container_network_receive_bytes_total', 'eth0'), 6912n);
  t.is(value('container_network_receive_bytes_total', 'lo'), undefined);
  t.is(value('container_processes'), 7n);
  t.is(metrics.find((m) => m.name === 'container_processes')!.metricType, MetricType.GAUGE);
  t.is(value('container_cpu_system_seconds_total'), undefined, 'unknown values are left out, not zero');
  t.is(new Set(METRIC_DESCRIPTORS.map((d) => d.name)).size, METRIC_DESCRIPTORS.length, 'descriptor names are unique');
});

test('pod resources: containers plus overhead; unlimited stays unlimited', (t) => {
  const r = LinuxContainerResources.fromPartial({
    cpuShares: 1024n,
    cpuQuota: 200_000n,
    cpuPeriod: 100_000n,
    memoryLimitInBytes: 256n << 20n,
    hugepageLimits: [{ pageSize: '2MB', limit: 4n << 20n }],
  });
  const o = LinuxContainerResources.fromPartial({ cpuShares: 102n, cpuQuota: 10_000n, memoryLimitInBytes: 32n << 20n, hugepageLimits: [{ pageSize: '2MB', limit: 2n << 20n }] });
  const total = podTotalResources(r, o)!;
  t.is(total.cpuShares, 1126n);
  t.is(total.cpuQuota, 210_000n);
  t.is(total.cpuPeriod, 100_000n);
  t.is(total.memoryLimitInBytes, 288n << 20n);
  t.deepEqual(total.hugepageLimits, [{ pageSize: '2MB', limit: 6n << 20n }]);
  const unlimited = podTotalResources(LinuxContainerResources.fromPartial({ cpuShares: 2n }), o)!;
  t.is(unlimited.memoryLimitInBytes, 0n);
  t.is(unlimited.cpuQuota, 0n);
  t.is(podTotalResources(undefined, o), o);
  t.is(podTotalResources(r, undefined), r);
});
