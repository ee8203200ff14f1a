import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import test from 'ava';
import { MetricType } from '../../src/generated/runtime/v1/api';
import { silentLogger } from '../../src/log';
import { FakeNativeCore } from '../../src/native/fake';
import { CgroupSampler } from '../../src/stats/cgroup_sampler';
import { CgroupReadError, type CgroupStats, decodeCgroupStatsBatch } from '../../src/stats/cgroup_stats';
import { containerMetricValues, METRIC_DESCRIPTORS, toCriContainerStats, toCriPodStats, toCriPsi } from '../../src/stats/cri_stats';
import { loadNative } from '../../src/native';
import { LayerUsageCache } from '../../src/stats/layer_usage';
import { type ContainerSample, StatsCollector } from '../../src/stats/stats_collector';

// What the addon's cgroupStatsBatch returns (shape of crates/core json::stats_batch) for a v2
// container cgroup with pressure files, a cgroup it could not read, and a missing cgroup.
const RAW_BATCH = JSON.stringify([
  {
    cpu: { usageNanos: '2500000000', userNanos: '2000000000', systemNanos: '500000000', nrPeriods: '0', nrThrottled: '0', throttledNanos: '0' },
    memory: {
      usageBytes: '80000000',
      workingSetBytes: '70000000',
      rssBytes: '60000000',
      cacheBytes: '20000000',
      pageFaults: '4000',
      majorPageFaults: '3',
      limitBytes: '100000000',
      swapUsageBytes: '1000000',
      swapLimitBytes: '4000000',
      maxUsageBytes: null,
      oomKills: '0',
    },
    pids: { current: '4', limit: '1024' },
    pressure: {
      cpu: {
        some: { avg10: '0.22', avg60: '4.68', avg300: '18.83', totalMicros: '657134968' },
        full: { avg10: '0.0', avg60: '0.0', avg300: '0.0', totalMicros: '0' },
      },
      memory: { some: { avg10: '12.5', avg60: '3.01', avg300: '0.75', totalMicros: '9021344' }, full: null },
      io: null,
    },
  },
  { error: { code: 'EACCES', message: 'read /sys/fs/cgroup/x/memory.stat: permission denied' } },
  { cpu: null, memory: null, pids: null, pressure: null },
]);

test('batch JSON: stats, pressure with fractions, and per-cgroup errors in request order', (t) => {
  const [stats, failed, missing] = decodeCgroupStatsBatch(RAW_BATCH, 3);
  const s = stats as CgroupStats;
  t.is(s.memory!.swapLimitBytes, 4_000_000n);
  t.deepEqual(s.pressure!.cpu!.some, { avg10: 0.22, avg60: 4.68, avg300: 18.83, totalMicros: 657134968n });
  t.is(s.pressure!.memory!.full, undefined);
  t.is(s.pressure!.io, undefined);
  t.true(failed instanceof CgroupReadError);
  t.is((failed as CgroupReadError).code, 'EACCES');
  t.deepEqual(missing, {});
  t.throws(() => decodeCgroupStatsBatch(RAW_BATCH, 2), { message: /expected an array of 2/ });
  const bad = JSON.stringify([{ pressure: { cpu: { some: { avg10: 'x', avg60: '0', avg300: '0', totalMicros: '1' } } } }]);
  t.throws(() => decodeCgroupStatsBatch(bad, 1), { message: /pressure\.cpu\.some\.avg10/ });
});

test('PSI: kernel microseconds become CRI nanoseconds; missing lines stay absent', (t) => {
  const psi = toCriPsi({ some: { avg10: 1.5, avg60: 0.25, avg300: 0, totalMicros: 42n } })!;
  t.deepEqual(psi.Some, { Total: 42_000n, Avg10: 1.5, Avg60: 0.25, Avg300: 0 });
  t.is(psi.Full, undefined);
  t.is(toCriPsi(undefined), undefined);
  t.is(toCriPsi({}), undefined);
});

function containerSample(): ContainerSample {
  const [stats] = decodeCgroupStatsBatch(RAW_BATCH, 3);
  return {
    cgroup: { timestamp: 777n, readAt: 1n, stats: stats as CgroupStats, usageNanoCores: 250_000_000n },
    layer: { timestamp: 888n, usage: { bytes: 8192n, inodes: 3n } },
  };
}

const ATTRS = { id: 'c1', metadata: { name: 'app', attempt: 0 }, labels: { tier: 'web' }, annotations: { a: 'b' } };

test('CRI container stats: cpu, memory, swap, pressure and the writable layer on the image fs', (t) => {
  const s = toCriContainerStats(ATTRS, containerSample(), '/var/lib/crisp/snapshots');
  t.is(s.attributes, ATTRS);
  t.is(s.cpu!.timestamp, 777n);
  t.is(s.cpu!.usageCoreNanoSeconds!.value, 2_500_000_000n);
  t.is(s.cpu!.usageNanoCores!.value, 250_000_000n);
  t.is(s.cpu!.psi!.Some!.Total, 657_134_968_000n);
  t.is(s.cpu!.psi!.Some!.Avg60, 4.68);
  t.is(s.memory!.workingSetBytes!.value, 70_000_000n);
  t.is(s.memory!.availableBytes!.value, 30_000_000n, 'limit minus working set');
  t.is(s.memory!.usageBytes!.value, 80_000_000n);
  t.is(s.memory!.rssBytes!.value, 60_000_000n);
  t.is(s.memory!.pageFaults!.value, 4000n);
  t.is(s.memory!.majorPageFaults!.value, 3n);
  t.is(s.memory!.psi!.Some!.Avg10, 12.5);
  t.is(s.memory!.psi!.Full, undefined);
  t.is(s.swap!.swapUsageBytes!.value, 1_000_000n);
  t.is(s.swap!.swapAvailableBytes!.value, 3_000_000n);
  t.is(s.io, undefined, 'no io.pressure: no io usage');
  t.deepEqual(s.writableLayer, { timestamp: 888n, fsId: { mountpoint: '/var/lib/crisp/snapshots' }, usedBytes: { value: 8192n }, inodesUsed: { value: 3n } });

  // A v1 cgroup without memsw accounting or limits, not yet measured on disk.
  const bare: ContainerSample = {
    cgroup: { timestamp: 1n, readAt: 1n, stats: { cpu: { usageNanos: 5n, nrPeriods: 0n, nrThrottled: 0n, throttledNanos: 0n } } },
  };
  const b = toCriContainerStats(ATTRS, bare, '/x');
  t.is(b.cpu!.usageNanoCores, undefined, 'no rate before a second reading');
  t.is(b.cpu!.psi, undefined);
  t.is(b.memory, undefined);
  t.is(b.swap, undefined);
  t.is(b.writableLayer, undefined);

  const pod = toCriPodStats({ id: 'p', metadata: undefined, labels: {}, annotations: {} }, { timestamp: 9n, cgroup: containerSample().cgroup.stats }, [s]);
  t.deepEqual(pod.linux!.containers, [s]);
  t.is(pod.linux!.cpu!.psi!.Some!.Total, 657_134_968_000n, 'pods carry pressure too');
  t.is(pod.linux!.process!.processCount!.value, 4n);
});

test('container metrics: cAdvisor labels with the container name, container scope, layer usage', (t) => {
  const labels = { container: 'app', cgroupPath: '/kubepods/podA/c1', image: 'busybox:1', name: 'c1', namespace: 'ns', pod: 'web-0' };
  const metrics = containerMetricValues(labels, containerSample());
  const described = new Map(METRIC_DESCRIPTORS.map((d) => [d.name, d.labelKeys]));
  for (const m of metrics) {
    const keys = described.get(m.name);
    t.truthy(keys, `${m.name} is described`);
    t.is(m.labelValues.length, keys!.length, m.name);
    t.is(m.labelValues[keys!.indexOf('container')], 'app');
    t.is(m.labelValues[keys!.indexOf('id')], '/kubepods/podA/c1');
    t.is(m.labelValues[keys!.indexOf('image')], 'busybox:1');
  }
  const find = (name: string) => metrics.find((m) => m.name === name);
  t.is(find('container_cpu_usage_seconds_total')!.value!.value, 2n, 'whole seconds');
  t.is(find('container_cpu_usage_seconds_total')!.timestamp, 777n);
  t.is(find('container_memory_working_set_bytes')!.value!.value, 70_000_000n);
  t.is(find('container_spec_memory_limit_bytes')!.value!.value, 100_000_000n);
  t.is(find('container_processes')!.value!.value, 4n);
  const failures = metrics.filter((m) => m.name === 'container_memory_failures_total');
  t.deepEqual(
    failures.map((m) => m.labelValues.slice(-2)),
    [
      ['pgfault', 'container'],
      ['pgmajfault', 'container'],
    ],
  );
  t.is(find('container_fs_usage_bytes')!.value!.value, 8192n);
  t.is(find('container_fs_usage_bytes')!.timestamp, 888n);
  t.is(find('container_fs_inodes_total')!.metricType, MetricType.GAUGE);
  t.is(find('container_network_receive_bytes_total'), undefined, 'network belongs to the pod');
});

/** A read function over FakeNativeCore that can be held, to observe joining and concurrency. */
function heldReads(native: FakeNativeCore) {
  const held: Array<() => void> = [];
  let inFlight = 0;
  let maxInFlight = 0;
  return {
    held,
    get maxInFlight() {
      return maxInFlight;
    },
    read: async (paths: readonly string[]) => {
      inFlight++;
      maxInFlight = Math.max(maxInFlight, inFlight);
      await new Promise<void>((resolve) => held.push(resolve));
      inFlight--;
      return native.cgroupStatsBatch(paths);
    },
  };
}

const cpuStats = (usageNanos: bigint): CgroupStats => ({ cpu: { usageNanos, nrPeriods: 0n, nrThrottled: 0n, throttledNanos: 0n } });
const flush = () => new Promise((r) => setImmediate(r));

test('sampler: serves fresh readings from memory, batches stale ones, joins reads in flight', async (t) => {
  const native = new FakeNativeCore();
  for (let i = 0; i < 5; i++) native.stats.set(`/c${i}`, cpuStats(BigInt(i)));
  let now = 0n;
  const reads = heldReads(native);
  const sampler = new CgroupSampler({ read: reads.read, monotonicNs: () => now, batchSize: 2, concurrency: 2 });
  const paths = ['/c0', '/c1', '/c2', '/c3', '/c4'];
  const first = sampler.get(paths, 1_000n);
  const joined = sampler.get(['/c4', '/c0'], 1_000n);
  await flush();
  t.is(reads.held.length, 2, 'three batches of at most two, two native calls at a time');
  while (reads.held.length > 0) {
    reads.held.shift()!();
    await flush();
  }
  const got = await first;
  t.deepEqual([...got.keys()], paths);
  t.is(reads.maxInFlight, 2);
  t.deepEqual(native.statsBatches, [['/c0', '/c1'], ['/c2', '/c3'], ['/c4']], 'the second caller joined instead of reading again');
  t.is(((await joined).get('/c4') as { stats: CgroupStats }).stats.cpu!.usageNanos, 4n);

  now = 500n;
  await sampler.get(paths, 1_000n);
  t.is(native.statsBatches.length, 3, 'young enough: no native call');
  now = 1_500n;
  const again = sampler.get(['/c1'], 1_000n);
  await flush();
  reads.held.shift()!();
  await again;
  t.deepEqual(native.statsBatches.at(-1), ['/c1'], 'only the stale cgroup is re-read');

  sampler.retain(new Set(['/c1']));
  t.is(sampler.size, 1);
});

test('sampler: failures are cached like readings; a rate-less reading is re-read once a window completes', async (t) => {
  const native = new FakeNativeCore();
  native.stats.set('/a', cpuStats(1_000_000_000n));
  native.statsFailures.set('/bad', 'EACCES');
  let now = 0n;
  const sampler = new CgroupSampler({ read: (p) => native.cgroupStatsBatch(p), monotonicNs: () => now, minRateWindowNs: 1_000n });
  const first = await sampler.get(['/a', '/bad'], 10_000n);
  t.true(first.get('/bad') instanceof Error);
  t.is((first.get('/a') as { usageNanoCores?: bigint }).usageNanoCores, undefined);
  now = 500n;
  await sampler.get(['/a', '/bad'], 10_000n);
  t.is(native.statsBatches.length, 1, 'within max age and before a rate window: all cached, the failure too');
  now = 1_000n;
  native.stats.set('/a', cpuStats(1_000_000_500n));
  const third = await sampler.get(['/a'], 10_000n);
  t.is(native.statsBatches.length, 2, 'the reading had no rate and a window has passed: re-read');
  t.is((third.get('/a') as { usageNanoCores?: bigint }).usageNanoCores, 500_000_000n, '500 ns of CPU over 1000 ns');

  const broken = new CgroupSampler({
    read: async () => {
      throw new Error('addon gone');
    },
  });
  const all = await broken.get(['/x', '/y'], 0n);
  t.regex((all.get('/y') as Error).message, /addon gone/, 'a failed batch fails each of its cgroups, without rejecting');
});

function tempTree(t: { teardown(fn: () => void): void }): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'crisp-test-du-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

const blocksOf = (p: string): bigint => fs.lstatSync(p, { bigint: true }).blocks * 512n;

test('disk usage: allocated blocks of every inode once, nested directories, sparse files, missing root', async (t) => {
  const root = tempTree(t);
  fs.mkdirSync(path.join(root, 'a', 'b', 'c'), { recursive: true });
  fs.writeFileSync(path.join(root, 'a', 'data'), Buffer.alloc(64 * 1024, 1));
  fs.writeFileSync(path.join(root, 'a', 'b', 'c', 'deep'), 'x');
  fs.linkSync(path.join(root, 'a', 'data'), path.join(root, 'a', 'b', 'hardlink'));
  fs.symlinkSync('data', path.join(root, 'a', 'link'));
  const sparse = path.join(root, 'sparse');
  const fd = fs.openSync(sparse, 'w');
  fs.ftruncateSync(fd, 1 << 30);
  fs.closeSync(fd);

  const expectedPaths = ['', 'a', 'a/b', 'a/b/c', 'a/data', 'a/b/c/deep', 'a/link', 'sparse'].map((p) => path.join(root, p));
  const native = loadNative();
  const usage = (await native.diskUsage(root))!;
  t.is(usage.inodes, BigInt(expectedPaths.length), 'the hard link is the same inode');
  t.is(
    usage.bytes,
    expectedPaths.reduce((sum, p) => sum + blocksOf(p), 0n),
  );
  t.true(usage.bytes >= 64n * 1024n);
  t.true(usage.bytes < 1n << 29n, 'a 1 GiB sparse file occupies next to nothing');
  t.is(await native.diskUsage(path.join(root, 'nope')), undefined);
});

test('layer cache: first look measures, later looks are served and re-measured in the background when due', async (t) => {
  const measured: string[] = [];
  let bytes = 4096n;
  let now = 0n;
  let gate: Promise<void> | undefined;
  const cache = new LayerUsageCache({
    log: silentLogger(),
    measure: async (dir) => {
      measured.push(dir);
      await gate;
      now += 10n; // each walk "takes" 10 ns
      return { bytes, inodes: 1n };
    },
    monotonicNs: () => now,
    wallNs: () => now * 1000n,
    refreshNs: 100n,
    costFactor: 20n,
  });
  const target = { id: 'c1', dir: '/layers/c1' };
  t.is((await cache.get([target])).get('c1')!.usage.bytes, 4096n);
  t.is(measured.length, 1);
  bytes = 8192n;
  now = 50n;
  t.is((await cache.get([target])).get('c1')!.usage.bytes, 4096n, 'not due yet');
  t.is(measured.length, 1);
  now = 300n;
  let open!: () => void;
  gate = new Promise((resolve) => (open = resolve));
  t.is((await cache.get([target])).get('c1')!.usage.bytes, 4096n, 'due: the old value is served while measuring');
  open();
  gate = undefined;
  await cache.settle();
  t.is(measured.length, 2);
  t.is((await cache.get([target])).get('c1')!.usage.bytes, 8192n);

  await cache.refresh([{ id: 'c2', dir: '/layers/c2' }]);
  t.is(cache.size, 1, 'c1 is no longer a target: forgotten');
  t.deepEqual(measured.slice(2), ['/layers/c2']);
  await cache.refresh([{ id: 'c2', dir: '/layers/c2' }]);
  t.is(measured.length, 3, 'measured moments ago: not due');
});

test('layer cache: a layer that cannot be measured any more stops being reported once its last sample is stale; a gone layer at once', async (t) => {
  let now = 0n;
  let failing = false;
  let gone = false;
  const cache = new LayerUsageCache({
    log: silentLogger(),
    measure: async () => {
      now += 10n;
      if (failing) throw Object.assign(new Error('walk failed'), { code: 'ENAMETOOLONG' });
      return gone ? undefined : { bytes: 4096n, inodes: 1n };
    },
    monotonicNs: () => now,
    wallNs: () => now,
    refreshNs: 100n,
    costFactor: 20n,
    maxAgeNs: 1000n,
  });
  const target = { id: 'c1', dir: '/layers/c1' };
  t.is((await cache.get([target])).get('c1')?.usage.bytes, 4096n);
  failing = true;
  now = 500n;
  t.is((await cache.get([target])).get('c1')?.usage.bytes, 4096n, 'a recent sample is still served while re-measuring fails');
  await cache.settle();
  now = 1200n;
  await cache.refresh([target]);
  t.false((await cache.get([target])).has('c1'), 'a sample older than the maximum age is not served');
  failing = false;
  await cache.refresh([{ ...target }]);
  now += 500n;
  await cache.refresh([target]);
  t.is((await cache.get([target])).get('c1')?.usage.bytes, 4096n, 'measurable again: reported again');
  gone = true;
  now += 500n;
  await cache.refresh([target]);
  t.false((await cache.get([target])).has('c1'), 'a layer that is gone is not reported');
});

test('collector: the background pass keeps running containers and pods warm and forgets removed ones', async (t) => {
  const native = new FakeNativeCore();
  native.stats.set('/pod', cpuStats(1n));
  native.stats.set('/pod/c1', cpuStats(1n));
  const layerDirs: string[] = [];
  let containers = [{ id: 'c1', cgroupPath: '/pod/c1', layerDir: '/layers/c1' }];
  const collector = new StatsCollector({
    readCgroups: (paths) => native.cgroupStatsBatch(paths),
    readNetDev: async () => '',
    measureLayer: async (dir) => {
      layerDirs.push(dir);
      return { bytes: 1n, inodes: 1n };
    },
    log: silentLogger(),
    activeIntervalMs: 20,
    idleIntervalMs: 20,
  });
  t.teardown(() => collector.close());
  collector.startBackground(() => ({ pods: [{ cgroupPath: '/pod' }], containers }));
  await new Promise((r) => setTimeout(r, 120));
  t.true(native.statsBatches.some((b) => b.includes('/pod') && b.includes('/pod/c1')), 'one batch holds pod and container');
  t.deepEqual(layerDirs, ['/layers/c1'], 'measured once: not due again within 5 s');

  const batches = native.statsBatches.length;
  const [sample] = await collector.sampleContainers(containers);
  t.is(native.statsBatches.length, batches, 'served from the background reading');
  t.is((sample as ContainerSample).layer!.usage.bytes, 1n);

  containers = [];
  await new Promise((r) => setTimeout(r, 80));
  t.is(collector.cgroups.size, 1, 'only the pod is kept');
  t.is(collector.layers.size, 0);
  await collector.close();
  const after = native.statsBatches.length;
  await new Promise((r) => setTimeout(r, 60));
  t.is(native.statsBatches.length, after, 'closed: no more passes');
});
