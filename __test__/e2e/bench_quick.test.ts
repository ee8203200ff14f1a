import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import test from 'ava';
import { tempDir } from '../fixtures/daemon';

/**
 * `node dist/bench/main.js --quick` end to end: both runtimes started, every workload run and
 * reported, the JSON written, and nothing left on the host. Timings are not asserted: this proves
 * the harness, not the speed.
 */
const REPO = path.resolve(__dirname, '..', '..', '..');
const BENCH = path.join(REPO, 'dist', 'bench', 'main.js');
const WORKLOAD_TITLES = [
  'Pod lifecycle',
  'Container lifecycle',
  'ExecSync',
  'Concurrent pod start',
  'List and stats at scale',
  'Memory (PSS of daemon + per-pod helpers)',
  'Image pull + unpack',
];

function runBench(args: string[], timeoutMs: number): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BENCH, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => {
      // SIGINT lets the benchmark clean up before it exits.
      child.kill('SIGINT');
      reject(new Error(`the quick benchmark did not finish in ${timeoutMs} ms:\n${stdout}\n${stderr}`));
    }, timeoutMs);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

test('the quick benchmark measures both runtimes, writes its table and JSON, and leaves nothing behind', async (t) => {
  t.timeout(240_000);
  // Installs containerd when apt can; without it the run measures crisp alone, as it must.
  const setup = spawnSync('bash', [path.join(REPO, 'scripts', 'bench-setup.sh')], { encoding: 'utf8', timeout: 180_000 });
  const containerd = fs.existsSync('/usr/bin/containerd');
  if (setup.status !== 0) t.log(`bench-setup failed (${setup.status}): ${setup.stderr}`);

  const out = tempDir('crisp-test-bench-');
  t.teardown(() => fs.rmSync(out, { recursive: true, force: true }));
  const { code, stdout, stderr } = await runBench(['--quick', '--out', out], 200_000);
  t.is(code, 0, `${stdout}\n${stderr}`);

  for (const title of WORKLOAD_TITLES) t.true(stdout.includes(`== ${title} (`), `table for ${title}`);
  t.regex(stdout, /RunPodSandbox\s+ms\s+\d/, 'the pod table has measured RunPodSandbox');
  const resultLine = /^results: (.+\.json)$/m.exec(stdout);
  t.truthy(resultLine, 'the JSON path is printed');
  const file = resultLine![1]!;
  t.is(path.dirname(file), out);
  const report = JSON.parse(fs.readFileSync(file, 'utf8'));

  t.true(report.machine.cores >= 1);
  t.true([1, 2].includes(report.machine.cgroupVersion));
  t.is(typeof report.machine.kernel, 'string');
  t.true(report.machine.memoryBytes > 0);
  t.is(report.runtimes.crisp.runtimeName, 'crisp');
  if (containerd) t.is(report.runtimes.containerd.runtimeName, 'containerd');
  else t.regex(report.absent.containerd, /not installed/);
  const measured = containerd ? ['crisp', 'containerd'] : ['crisp'];

  t.deepEqual(
    report.workloads.map((w: { title: string }) => w.title).sort(),
    [...WORKLOAD_TITLES].sort(),
  );
  for (const w of report.workloads) {
    for (const m of w.metrics) {
      for (const rt of measured) {
        const o = m.outcomes[rt];
        t.truthy(o, `${w.id}/${m.name} has an outcome for ${rt}`);
        t.not(o.kind, 'failed', `${w.id}/${m.name} ${rt}: ${o.reason}`);
        if (o.kind === 'samples') t.true(o.samples.every((x: number) => Number.isFinite(x)), `${w.id}/${m.name} ${rt} samples are numbers`);
      }
    }
  }

  // Every sample of the pod workload is there: two iterations (the warm-up is not recorded).
  const pod = report.workloads.find((w: { id: string }) => w.id === 'pod');
  const run = pod.metrics.find((m: { name: string }) => m.name === 'RunPodSandbox');
  for (const rt of measured) {
    t.is(run.outcomes[rt].kind, 'samples');
    t.is(run.outcomes[rt].samples.length, 2);
    t.true(run.outcomes[rt].samples.every((x: number) => x > 0));
  }
  if (containerd) {
    t.is(typeof run.ratio.p50, 'number', 'a ratio is reported when both runtimes ran');
    t.is(run.goalMet === true || run.goalMet === false, true);
  }
  const memory = report.workloads.find((w: { id: string }) => w.id === 'memory');
  for (const rt of measured) {
    const atZero = memory.metrics.find((m: { name: string }) => m.name === 'PSS at 0 pods').outcomes[rt];
    t.true(atZero.samples[0] > 1, `${rt} uses some memory`);
  }

  // Nothing is left: work directory, bridge, cgroups, processes serving from the work directory.
  const env = report.environment;
  t.false(fs.existsSync(env.workDir), 'work directory removed');
  t.is(spawnSync('ip', ['link', 'show', env.bridge]).status !== 0, true, 'bridge removed');
  for (const parent of env.cgroupParents) {
    for (const h of fs.readdirSync('/sys/fs/cgroup')) t.false(fs.existsSync(path.join('/sys/fs/cgroup', h, parent)), `cgroup ${h}${parent} removed`);
    t.false(fs.existsSync(path.join('/sys/fs/cgroup', parent)), `cgroup ${parent} removed`);
  }
  t.false(fs.readFileSync('/proc/self/mountinfo', 'utf8').includes(env.workDir), 'no mount left');
  const leftovers = fs
    .readdirSync('/proc')
    .filter((p) => /^\d+$/.test(p))
    .filter((p) => {
      try {
        return fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(env.workDir);
      } catch {
        return false;
      }
    });
  t.deepEqual(leftovers, [], 'no process left');
});
