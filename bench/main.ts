/**
 * `npm run bench`: the same CRI workloads against crisp and a containerd started side by side on
 * this host, with one registry, one CNI network and the same images, reported as percentiles per
 * runtime and crisp/containerd ratios. Must run as root. See `--help`.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { buildLargeImage, type FixtureManifest, pushFixtures } from '../__test__/fixtures/images';
import { startRegistry } from '../__test__/fixtures/registry';
import type { CriClient } from '../src/client/cri_client';
import { CleanupStack } from './cleanup';
import { removeAllPods } from './cri';
import { recordOwner, removeAbandonedRuns, WORK_DIR_PREFIX } from './env/abandoned';
import { machineInfo, removeCgroupTree } from './env/host';
import { pushPauseImage, writeRegistryHosts } from './env/images';
import { BenchNetwork, CNI_BIN_DIR } from './env/network';
import { type BenchOptions, parseOptions, USAGE, type WorkloadId } from './options';
import { type BenchReport, renderHeader, renderWorkload, writeJson } from './report';
import { containerdAvailable, ContainerdRuntime } from './runtimes/containerd';
import { CrispRuntime } from './runtimes/crisp';
import type { BenchRuntime, RuntimeName } from './runtimes/runtime';
import type { BenchContext, BenchImages, Workload } from './workload';
import { concurrentPods } from './workloads/concurrency';
import { containerLifecycle } from './workloads/container_lifecycle';
import { execSync } from './workloads/exec_sync';
import { imagePull } from './workloads/image_pull';
import { listAtScale } from './workloads/list_scale';
import { memoryPerPod } from './workloads/memory';
import { podLifecycle } from './workloads/pod_lifecycle';

/**
 * Run order: cheap single-pod latencies first, then the workloads that fill the node, then memory
 * on a node emptied again, and pulls last (they remove the image the others run).
 */
const WORKLOADS: Record<WorkloadId, Workload> = {
  pod: podLifecycle,
  container: containerLifecycle,
  exec: execSync,
  concurrency: concurrentPods,
  list: listAtScale,
  memory: memoryPerPod,
  pull: imagePull,
};
const RUN_ORDER: WorkloadId[] = ['pod', 'container', 'exec', 'concurrency', 'list', 'memory', 'pull'];

const log = (message: string): void => {
  process.stderr.write(`[bench] ${message}\n`);
};

function sizes(m: FixtureManifest): { compressedBytes: number; uncompressedBytes: number } {
  return {
    compressedBytes: m.config.size + m.layers.reduce((s, l) => s + l.size, 0),
    uncompressedBytes: m.layers.reduce((s, l) => s + l.uncompressedSize, 0),
  };
}

async function main(argv: string[]): Promise<number> {
  let options: BenchOptions;
  try {
    const parsed = parseOptions(argv);
    if (parsed === 'help') {
      process.stdout.write(USAGE);
      return 0;
    }
    options = parsed;
  } catch (err) {
    process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n${USAGE}`);
    return 2;
  }
  if (process.getuid?.() !== 0) {
    process.stderr.write('the benchmark needs root (namespaces, mounts, cgroups, network)\n');
    return 1;
  }

  const startedAt = new Date().toISOString();
  const absent: Partial<Record<RuntimeName, string>> = {};
  let runtimeNames = options.runtimes;
  if (runtimeNames.includes('containerd') && !containerdAvailable()) {
    const why = 'containerd is not installed (scripts/bench-setup.sh installs it)';
    if (options.requireContainerd) {
      process.stderr.write(`${why}\n`);
      return 1;
    }
    log(`${why}: measuring crisp alone`);
    absent.containerd = why;
    runtimeNames = runtimeNames.filter((r) => r !== 'containerd');
  }

  for (const dir of await removeAbandonedRuns()) log(`removed what an interrupted run left in ${dir}`);
  const cleanup = new CleanupStack(log);
  cleanup.installSignalHandlers();
  try {
    const tag = crypto.randomBytes(3).toString('hex');
    const workDir = fs.mkdtempSync(path.join(os.tmpdir(), WORK_DIR_PREFIX));
    cleanup.push('remove the work directory', () => fs.rmSync(workDir, { recursive: true, force: true }));
    const cgroupParentOf = (name: RuntimeName): string => `/crisp-bench-${tag}-${name}`;

    const wanted = new Set(options.workloads);
    const wantLarge = wanted.has('pull') && options.largeN > 0 && !options.quick;
    log(`building and pushing images${wantLarge ? ` (large image: ${options.largeMb} MiB in ${options.largeLayers} layers)` : ''}`);
    const registry = await startRegistry();
    cleanup.push('stop the registry', () => registry.stop());
    const large = wantLarge ? { totalBytes: options.largeMb * 1024 * 1024, layers: options.largeLayers } : undefined;
    if (large) await buildLargeImage(large);
    const pushed = await pushFixtures(registry, wantLarge ? ['busybox', 'large'] : ['busybox'], { large });
    const images: BenchImages = {
      busybox: { reference: pushed.busybox!.reference, ...sizes(pushed.busybox!.manifest) },
      ...(pushed.large ? { large: { reference: pushed.large.reference, ...sizes(pushed.large.manifest) } } : {}),
    };
    const registryConfigDir = path.join(workDir, 'certs.d');
    writeRegistryHosts(registryConfigDir, registry);

    // Pod IPs in use at once: the scale workload holds `scale` pods per runtime, memory its top level.
    const perRuntime = Math.max(options.scale, options.concurrency, ...options.memoryPods) + 8;
    const network = new BenchNetwork(workDir, tag, perRuntime * runtimeNames.length);
    cleanup.push(`remove bridge ${network.bridge}`, () => network.destroy());
    recordOwner(workDir, { bridge: network.bridge, cgroupParents: runtimeNames.map(cgroupParentOf) });
    log(`network ${network.name}: bridge ${network.bridge}, subnet ${network.subnet}`);

    const runtimes: BenchRuntime[] = [];
    for (const name of runtimeNames) {
      const dir = path.join(workDir, name);
      fs.mkdirSync(dir);
      const cgroupParent = cgroupParentOf(name);
      cleanup.push(`remove cgroup ${cgroupParent}`, () => removeCgroupTree(cgroupParent));
      const common = { dir, cniConfDir: network.confDir, cniBinDir: CNI_BIN_DIR, registryConfigDir, cgroupParent };
      const rt: BenchRuntime =
        name === 'crisp'
          ? new CrispRuntime(common)
          : new ContainerdRuntime({ ...common, sandboxImage: await pushPauseImage(registry, workDir) });
      cleanup.push(`stop ${name}`, () => rt.destroy());
      log(`starting ${name}`);
      await rt.start();
      runtimes.push(rt);
    }

    const clients = new Map<RuntimeName, CriClient>();
    const ctx: BenchContext = {
      options,
      runtimes,
      images,
      client: (rt) => {
        let c = clients.get(rt.name);
        if (!c) clients.set(rt.name, (c = rt.client()));
        return c;
      },
      log,
    };
    const report: BenchReport = {
      startedAt,
      finishedAt: '',
      options,
      machine: machineInfo(),
      runtimes: {},
      absent,
      environment: { workDir, bridge: network.bridge, subnet: network.subnet, registry: registry.host, cgroupParents: runtimes.map((r) => r.cgroupParent) },
      workloads: [],
    };
    for (const rt of runtimes) report.runtimes[rt.name] = await rt.version();
    process.stdout.write(`${renderHeader(report)}\n\n`);

    for (const id of RUN_ORDER) {
      if (!wanted.has(id)) continue;
      const workload = WORKLOADS[id];
      log(`running ${workload.title}`);
      const result = await workload.run(ctx);
      report.workloads.push(result);
      process.stdout.write(`${renderWorkload(result, runtimes.map((r) => r.name))}\n\n`);
      // Whatever a failed iteration left must not weigh on the next workload.
      for (const rt of runtimes) await removeAllPods(ctx.client(rt)).catch((err) => log(`${rt.name}: removing pods failed: ${String(err)}`));
    }

    report.finishedAt = new Date().toISOString();
    const file = writeJson(report);
    process.stdout.write(`results: ${file}\n`);
    const failed = report.workloads.some((w) => w.metrics.some((m) => Object.values(m.outcomes).some((o) => o?.kind === 'failed')));
    if (failed) {
      for (const rt of runtimes) log(`${rt.name} output (last lines):\n${rt.logTail().split('\n').slice(-40).join('\n')}`);
    }
    return failed ? 1 : 0;
  } finally {
    log('cleaning up');
    await cleanup.run();
  }
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
