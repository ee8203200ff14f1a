import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import anyTest, { type TestFn } from 'ava';
import type { CriClient } from '../../src/client/cri_client';
import { ContainerState, NamespaceMode } from '../../src/generated/runtime/v1/api';
import { TestDaemon } from '../fixtures/daemon';
import { buildFixtureImages, type PushedImage, pushFixtures } from '../fixtures/images';
import { type RegistryHandle, startRegistry } from '../fixtures/registry';

/**
 * Every Stream* RPC against its List* twin on a node with more objects than one stream chunk
 * holds: hundreds of host-network pods (no CNI needed) and hundreds of containers, most only
 * created (CreateContainer is cheap) and a hundred-odd running so container stats span chunks.
 */
interface Context {
  registry: RegistryHandle;
  busybox: PushedImage;
  d: TestDaemon;
  c: CriClient;
}
const test = anyTest.serial as TestFn<Context>;
const tag = crypto.randomBytes(3).toString('hex');
const CGROUP_PARENT = `/crisp-test-ls${tag}`;
/** Pods with no containers; together with the container pods they exceed a 500-item chunk. */
const EMPTY_PODS = 500;
const CONTAINER_PODS = 4;
const CREATED_PER_POD = 126;
const RUNNING_PER_POD = 30;
const CONCURRENCY = 16;

async function forEachLimit<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) await fn(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

function podConfig(name: string, group: string, logDirectory = '') {
  return {
    metadata: { name, namespace: 'streams', uid: `uid-${name}-${tag}`, attempt: 0 },
    hostname: name,
    logDirectory,
    labels: { group, name },
    linux: { cgroupParent: CGROUP_PARENT, securityContext: { namespaceOptions: { network: NamespaceMode.NODE } } },
  };
}

async function collect<K extends Parameters<CriClient['stream']>[0]>(c: CriClient, method: K, req: object, field: string): Promise<{ items: unknown[]; chunks: number }> {
  const items: unknown[] = [];
  let chunks = 0;
  for await (const chunk of c.stream(method, req as never)) {
    chunks++;
    items.push(...((chunk as Record<string, unknown[]>)[field] ?? []));
  }
  return { items, chunks };
}

/** Ids in a stable order, for comparing sets of objects listed at different moments. */
const byId = <T>(items: T[], id: (x: T) => string): T[] => [...items].sort((a, b) => id(a).localeCompare(id(b)));

test.before(async (t) => {
  const started = Date.now();
  const set = await buildFixtureImages();
  const registry = await startRegistry();
  const pushed = await pushFixtures(registry, ['busybox'], { set });
  const d = await TestDaemon.start();
  const c = d.client();
  t.context = { registry, busybox: pushed.busybox!, d, c };
  await c.call('pullImage', { image: { image: pushed.busybox!.reference } });

  await forEachLimit(
    Array.from({ length: EMPTY_PODS }, (_, i) => i),
    CONCURRENCY,
    async (i) => {
      await c.call('runPodSandbox', { config: podConfig(`p${i}`, i % 2 === 0 ? 'even' : 'odd') }, { timeoutMs: 60_000 });
    },
  );
  const podsReady = Date.now();
  for (let p = 0; p < CONTAINER_PODS; p++) {
    const config = podConfig(`ctr${p}`, 'containers', path.join(d.dir, 'logs', `ctr${p}`));
    const { podSandboxId } = await c.call('runPodSandbox', { config });
    await forEachLimit(
      Array.from({ length: CREATED_PER_POD }, (_, i) => i),
      CONCURRENCY,
      async (i) => {
        const { containerId } = await c.call(
          'createContainer',
          {
            podSandboxId,
            sandboxConfig: config,
            config: {
              metadata: { name: `c${i}`, attempt: 0 },
              image: { image: pushed.busybox!.reference },
              command: ['/bin/sleep', '600'],
              logPath: `c${i}.log`,
              labels: { run: i < RUNNING_PER_POD ? 'yes' : 'no', pod: `ctr${p}` },
            },
          },
          { timeoutMs: 60_000 },
        );
        if (i < RUNNING_PER_POD) await c.call('startContainer', { containerId }, { timeoutMs: 60_000 });
      },
    );
  }
  t.log(`set-up: ${EMPTY_PODS} pods in ${podsReady - started} ms, ${CONTAINER_PODS * CREATED_PER_POD} containers in ${Date.now() - podsReady} ms`);
});

test.after.always(async (t) => {
  const { c, d, registry } = t.context ?? {};
  if (c) {
    try {
      const { items } = await c.call('listPodSandbox', {}, { timeoutMs: 30_000 });
      await forEachLimit(items, CONCURRENCY, async (pod) => {
        await c.call('removePodSandbox', { podSandboxId: pod.id }, { timeoutMs: 60_000 });
      });
    } catch {
      // TestDaemon.destroy removes what is left.
    }
  }
  await d?.destroy();
  await registry?.stop();
  for (const hierarchy of fs.readdirSync('/sys/fs/cgroup')) {
    const dir = path.join('/sys/fs/cgroup', hierarchy, CGROUP_PARENT);
    if (fs.existsSync(dir)) fs.rmdirSync(dir);
  }
});

const TOTAL_PODS = EMPTY_PODS + CONTAINER_PODS;
const TOTAL_CONTAINERS = CONTAINER_PODS * CREATED_PER_POD;
const RUNNING = CONTAINER_PODS * RUNNING_PER_POD;

test('StreamPodSandboxes equals ListPodSandbox, with and without filters, in several chunks', async (t) => {
  const { c } = t.context;
  const id = (p: { id: string }) => p.id;
  const all = await c.call('listPodSandbox', {});
  t.is(all.items.length, TOTAL_PODS);
  const streamed = await collect(c, 'streamPodSandboxes', {}, 'podSandboxes');
  t.true(streamed.chunks > 1, `${streamed.chunks} chunks`);
  t.deepEqual(byId(streamed.items as typeof all.items, id), byId(all.items, id));

  for (const filter of [{ labelSelector: { group: 'even' } }, { id: all.items[7]!.id.slice(0, 16) }, { labelSelector: { group: 'none' } }]) {
    const listed = await c.call('listPodSandbox', { filter });
    const s = await collect(c, 'streamPodSandboxes', { filter }, 'podSandboxes');
    t.deepEqual(byId(s.items as typeof listed.items, id), byId(listed.items, id), JSON.stringify(filter));
  }
  t.is((await c.call('listPodSandbox', { filter: { labelSelector: { group: 'even' } } })).items.length, EMPTY_PODS / 2);
});

test('StreamContainers equals ListContainers, with state and label filters, in several chunks', async (t) => {
  const { c } = t.context;
  const id = (x: { id: string }) => x.id;
  const all = await c.call('listContainers', {});
  t.is(all.containers.length, TOTAL_CONTAINERS);
  const streamed = await collect(c, 'streamContainers', {}, 'containers');
  t.true(streamed.chunks > 1, `${streamed.chunks} chunks`);
  t.deepEqual(byId(streamed.items as typeof all.containers, id), byId(all.containers, id));

  const running = { state: { state: ContainerState.CONTAINER_RUNNING } };
  for (const filter of [running, { labelSelector: { pod: 'ctr1' } }, { podSandboxId: all.containers[0]!.podSandboxId }]) {
    const listed = await c.call('listContainers', { filter });
    const s = await collect(c, 'streamContainers', { filter }, 'containers');
    t.true(listed.containers.length > 0);
    t.deepEqual(byId(s.items as typeof listed.containers, id), byId(listed.containers, id), JSON.stringify(filter));
  }
  t.is((await c.call('listContainers', { filter: running })).containers.length, RUNNING);
});

test('StreamContainerStats equals ListContainerStats: running containers only, filters applied', async (t) => {
  const { c } = t.context;
  const id = (s: { attributes?: { id: string } }) => s.attributes!.id;
  const listed = await c.call('listContainerStats', {});
  t.is(listed.stats.length, RUNNING, 'created containers have no stats to list');
  const streamed = await collect(c, 'streamContainerStats', {}, 'containerStats');
  t.true(streamed.chunks > 1, `${streamed.chunks} chunks`);
  // The values move between calls; the set of containers and their identity must not.
  t.deepEqual(
    (streamed.items as typeof listed.stats).map(id).sort(),
    listed.stats.map(id).sort(),
  );
  for (const s of streamed.items as typeof listed.stats) {
    t.true(s.cpu!.usageCoreNanoSeconds!.value > 0n, 'a running container used some CPU');
    t.true(s.memory!.workingSetBytes !== undefined);
    t.true(s.writableLayer!.usedBytes!.value > 0n);
  }
  const first = listed.stats[0]!.attributes!.id;
  const { podSandboxId } = (await c.call('listContainers', { filter: { id: first } })).containers[0]!;
  for (const filter of [{ labelSelector: { pod: 'ctr2' } }, { podSandboxId }, { id: first.slice(0, 12) }]) {
    const l = await c.call('listContainerStats', { filter });
    const s = await collect(c, 'streamContainerStats', { filter }, 'containerStats');
    t.true(l.stats.length > 0);
    t.deepEqual((s.items as typeof l.stats).map(id).sort(), l.stats.map(id).sort(), JSON.stringify(filter));
  }
});

test('StreamPodSandboxStats and StreamPodSandboxMetrics equal their List twins', async (t) => {
  const { c } = t.context;
  const listed = await c.call('listPodSandboxStats', {});
  t.is(listed.stats.length, TOTAL_PODS);
  const streamed = await collect(c, 'streamPodSandboxStats', {}, 'podSandboxStats');
  t.true(streamed.chunks > 1, `${streamed.chunks} chunks`);
  const ids = (items: Array<{ attributes?: { id: string } }>) => items.map((s) => s.attributes!.id).sort();
  t.deepEqual(ids(streamed.items as typeof listed.stats), ids(listed.stats));
  const withContainers = listed.stats.filter((s) => s.linux!.containers.length > 0);
  t.is(withContainers.length, CONTAINER_PODS);
  for (const s of withContainers) t.is(s.linux!.containers.length, RUNNING_PER_POD, 'running containers only');

  const filter = { labelSelector: { group: 'odd' } };
  const l = await c.call('listPodSandboxStats', { filter });
  const s = await collect(c, 'streamPodSandboxStats', { filter }, 'podSandboxStats');
  t.is(l.stats.length, EMPTY_PODS / 2);
  t.deepEqual(ids(s.items as typeof l.stats), ids(l.stats));

  const metrics = await c.call('listPodSandboxMetrics', {});
  const streamedMetrics = await collect(c, 'streamPodSandboxMetrics', {}, 'podSandboxMetrics');
  t.true(streamedMetrics.chunks > 1, `${streamedMetrics.chunks} chunks`);
  const podIds = (items: Array<{ podSandboxId: string }>) => items.map((p) => p.podSandboxId).sort();
  t.is(metrics.podMetrics.length, TOTAL_PODS);
  t.deepEqual(podIds(streamedMetrics.items as typeof metrics.podMetrics), podIds(metrics.podMetrics));
  const containerCount = (items: typeof metrics.podMetrics) => items.reduce((n, p) => n + p.containerMetrics.length, 0);
  t.is(containerCount(metrics.podMetrics), RUNNING);
  t.is(containerCount(streamedMetrics.items as typeof metrics.podMetrics), RUNNING);
});

test('StreamImages equals ListImages, with and without a filter', async (t) => {
  const { c, busybox } = t.context;
  const id = (i: { id: string }) => i.id;
  const all = await c.call('listImages', {});
  t.true(all.images.length >= 1);
  const streamed = await collect(c, 'streamImages', {}, 'images');
  t.deepEqual(byId(streamed.items as typeof all.images, id), byId(all.images, id));
  const filter = { image: { image: busybox.reference } };
  const listed = await c.call('listImages', { filter });
  t.is(listed.images.length, 1);
  const s = await collect(c, 'streamImages', { filter }, 'images');
  t.deepEqual(s.items, listed.images);
});
