/**
 * Containers launched by the real pod monitor (target/release/crisp-monitor) from hand-written
 * OCI bundles over a busybox root filesystem: create/start, CRI logs, exit records, exec,
 * failure reporting, and the security settings of the spec. Root only.
 * Build the binary first: `cargo build --release -p crisp-monitor`.
 */
import test, { type ExecutionContext } from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CONTAINER_EXIT_FILE, type ContainerExitRecord } from '../../src/runtime/exit_record';
import type { MonitorEvent } from '../../src/sandbox/monitor_client';
import { monitorBinaryPath } from '../../src/sandbox/monitor_spawn';
import { CrispError } from '../../src/util/errors';
import { DEFAULT_CAPABILITIES } from '../../src/container/capabilities';
import { BUSYBOX, mountPointsUnder } from '../fixtures/rootfs';
import { type MonitorPod as Pod, startMonitorPod, type Spec, writeBundle } from '../fixtures/monitor_pod';

const isRoot = process.getuid?.() === 0;
const serial = isRoot && fs.existsSync(BUSYBOX) ? test.serial : test.skip;

/** The default set the spec builder gives containers. */
const DEFAULT_CAPS = [...DEFAULT_CAPABILITIES];
const CAP_NUMBERS: Record<string, number> = {
  CAP_CHOWN: 0,
  CAP_DAC_OVERRIDE: 1,
  CAP_FOWNER: 3,
  CAP_FSETID: 4,
  CAP_KILL: 5,
  CAP_SETGID: 6,
  CAP_SETUID: 7,
  CAP_SETPCAP: 8,
  CAP_NET_BIND_SERVICE: 10,
  CAP_NET_RAW: 13,
  CAP_SYS_CHROOT: 18,
  CAP_MKNOD: 27,
  CAP_AUDIT_WRITE: 29,
  CAP_SETFCAP: 31,
};

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

const startPod = (t: ExecutionContext, tag: string): Promise<Pod> => startMonitorPod(t, 'ctr', tag);

/** Whether one of the process's descriptors is `link` (e.g. "mnt:[4026532]"). */
function monitorHolds(pid: number, link: string): boolean {
  return fs.readdirSync(`/proc/${pid}/fd`).some((fd) => {
    try {
      return fs.readlinkSync(`/proc/${pid}/fd/${fd}`) === link;
    } catch {
      return false;
    }
  });
}

interface LogRecord {
  time: string;
  stream: 'stdout' | 'stderr';
  tag: 'F' | 'P';
  content: string;
}

function readLog(file: string): LogRecord[] {
  return fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l !== '')
    .map((line) => {
      const m = /^(\S+) (stdout|stderr) ([FP]) (.*)$/.exec(line);
      if (!m) throw new Error(`malformed CRI log line: ${JSON.stringify(line)}`);
      return { time: m[1], stream: m[2] as LogRecord['stream'], tag: m[3] as LogRecord['tag'], content: m[4] };
    });
}

async function waitForExit(pod: Pod, id: string, timeoutMs = 10_000): Promise<Extract<MonitorEvent, { event: 'container_exit' }>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const e = pod.events.find((ev) => ev.event === 'container_exit' && ev.containerId === id);
    if (e && e.event === 'container_exit') return e;
    if (Date.now() > deadline) throw new Error(`container ${id} did not exit within ${timeoutMs} ms`);
    await sleep(10);
  }
}

/** Runs a container to completion and returns its stdout lines. */
async function runToExit(pod: Pod, id: string, args: string[], edit?: (spec: Spec) => void): Promise<{ lines: string[]; exitCode: number }> {
  const bundle = writeBundle(pod, id, args, edit);
  const logPath = path.join(bundle, 'container.log');
  await pod.client.create({ containerId: id, bundleDir: bundle, logPath });
  await pod.client.start(id);
  const exit = await waitForExit(pod, id);
  return { lines: readLog(logPath).map((r) => r.content), exitCode: exit.exitCode };
}

function readExitRecord(bundle: string): ContainerExitRecord {
  return JSON.parse(fs.readFileSync(path.join(bundle, CONTAINER_EXIT_FILE), 'utf8')) as ContainerExitRecord;
}

test.before(() => {
  if (isRoot && !fs.existsSync(monitorBinaryPath())) {
    throw new Error(`${monitorBinaryPath()} is missing: run "cargo build --release -p crisp-monitor" first`);
  }
});

serial('a container runs, its output lands in the CRI log, and its exit is recorded', async (t) => {
  const pod = await startPod(t, 'run');
  const bundle = writeBundle(pod, 'c1', ['sh', '-c', 'echo hello; echo oops >&2; printf partial; exit 3']);
  const logPath = path.join(bundle, 'container.log');

  const { pid } = await pod.client.create({ containerId: 'c1', bundleDir: bundle, logPath });
  t.true(pid > 0);
  // Set up and parked at the start gate: visible to status, not yet running its program.
  t.deepEqual((await pod.client.status()).containers, [{ containerId: 'c1', pid, state: 'created' }]);
  t.true(fs.existsSync(`/proc/${pid}`));
  t.is((fs.statSync(logPath).mode & 0o777), 0o640);
  t.is(fs.readFileSync(logPath, 'utf8'), '');

  const before = Date.now();
  const started = await pod.client.start('c1');
  t.is(started.pid, pid);
  t.true(Math.abs(started.startedAtMs - before) < 5_000);

  const exit = await waitForExit(pod, 'c1');
  t.is(exit.exitCode, 3);
  t.is(exit.pid, pid);
  t.is(exit.signal, undefined);

  const records = readLog(logPath);
  const of = (stream: string) => records.filter((r) => r.stream === stream).map((r) => `${r.tag} ${r.content}`);
  // Each stream keeps its order; the output left without a newline is a partial record.
  t.deepEqual(of('stdout'), ['F hello', 'P partial']);
  t.deepEqual(of('stderr'), ['F oops']);
  for (const r of records) t.regex(r.time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$/);

  const recorded = readExitRecord(bundle);
  t.is(recorded.exitCode, 3);
  t.is(recorded.signal, null);
  t.false(recorded.oomKilled);
  t.is(recorded.startedAtMs, started.startedAtMs);
  t.true(recorded.finishedAtMs >= (recorded.startedAtMs ?? 0));
  t.deepEqual((await pod.client.status()).containers, [{ containerId: 'c1', pid, state: 'exited', exitCode: 3 }]);

  // Nothing of the container was mounted in the host's mount namespace: only the pod's pins.
  t.deepEqual(mountPointsUnder(pod.dir).sort(), ['ipc', 'net', 'pid', 'uts'].map((k) => path.join(pod.podDir, 'ns', k)));
});

serial('a program that cannot be executed fails start with the reason', async (t) => {
  const pod = await startPod(t, 'nope');
  const bundle = writeBundle(pod, 'abs', ['/nope']);
  await pod.client.create({ containerId: 'abs', bundleDir: bundle, logPath: path.join(bundle, 'log') });
  const err = await t.throwsAsync(pod.client.start('abs'));
  t.true(err instanceof CrispError && err.code === 'InvalidArgument', String(err));
  t.regex(err?.message ?? '', /exec: "\/nope": no such file or directory/);
  const exit = await waitForExit(pod, 'abs');
  t.is(exit.exitCode, 128);
  const recorded = readExitRecord(bundle);
  t.is(recorded.exitCode, 128);
  t.is(recorded.startedAtMs, null);
  t.regex(recorded.startError ?? '', /no such file or directory/);

  const viaPath = writeBundle(pod, 'rel', ['no-such-tool']);
  await pod.client.create({ containerId: 'rel', bundleDir: viaPath, logPath: path.join(viaPath, 'log') });
  const err2 = await t.throwsAsync(pod.client.start('rel'));
  t.regex(err2?.message ?? '', /exec: "no-such-tool": executable file not found in \$PATH/);

  const notExecutable = writeBundle(pod, 'perm', ['/etc/passwd']);
  await pod.client.create({ containerId: 'perm', bundleDir: notExecutable, logPath: path.join(notExecutable, 'log') });
  const err3 = await t.throwsAsync(pod.client.start('perm'));
  t.regex(err3?.message ?? '', /exec: "\/etc\/passwd": permission denied/);

  // A spec the launcher cannot honour is refused at create.
  const userns = writeBundle(pod, 'userns', ['true'], (s) => s.linux.namespaces.push({ type: 'user' }));
  const err4 = await t.throwsAsync(pod.client.create({ containerId: 'userns', bundleDir: userns, logPath: path.join(userns, 'log') }));
  t.true(err4 instanceof CrispError && err4.code === 'InvalidArgument');
  t.regex(err4?.message ?? '', /a new user namespace per container is not supported/);
  // A mount that fails inside the child names the step.
  const badMount = writeBundle(pod, 'mnt', ['true'], (s) =>
    s.mounts.push({ destination: '/data', type: 'tmpfs', source: 'tmpfs', options: ['size=bogus'] }),
  );
  const err5 = await t.throwsAsync(pod.client.create({ containerId: 'mnt', bundleDir: badMount, logPath: path.join(badMount, 'log') }));
  t.regex(err5?.message ?? '', /mount tmpfs \(tmpfs\) on \/data: invalid argument/);
  t.false((await pod.client.status()).containers.some((c) => c.containerId === 'mnt'));
});

serial('an early-answered create: start waits for the set-up, and a set-up failure is the answer to start', async (t) => {
  const pod = await startPod(t, 'early');
  const good = writeBundle(pod, 'good', ['sh', '-c', 'echo early-ok']);
  const goodLog = path.join(good, 'log');
  const created = await pod.client.create({ containerId: 'good', bundleDir: good, logPath: goodLog, earlyReply: true });
  t.true(created.pid > 0);
  t.true((await pod.client.status()).containers.some((c) => c.containerId === 'good'), 'listed as soon as it was answered');
  // Sent at once, while the process may still be mounting its root filesystem.
  await pod.client.start('good');
  t.is((await waitForExit(pod, 'good')).exitCode, 0);
  t.deepEqual(readLog(goodLog).map((r) => r.content), ['early-ok']);

  const bad = writeBundle(pod, 'bad', ['true'], (s) => s.mounts.push({ destination: '/data', type: 'tmpfs', source: 'tmpfs', options: ['size=bogus'] }));
  await pod.client.create({ containerId: 'bad', bundleDir: bad, logPath: path.join(bad, 'log'), earlyReply: true });
  const err = await t.throwsAsync(pod.client.start('bad'));
  t.regex(err?.message ?? '', /mount tmpfs \(tmpfs\) on \/data: invalid argument/);
  // It was answered as created, so it stays known, as exited with the failure recorded.
  t.is((await waitForExit(pod, 'bad')).exitCode, 128);
  t.regex(readExitRecord(bad).startError ?? '', /mount tmpfs \(tmpfs\) on \/data/);

  // A failure nobody was waiting for is kept for the start that comes later.
  const late = writeBundle(pod, 'late', ['true'], (s) => s.mounts.push({ destination: '/data', type: 'tmpfs', source: 'tmpfs', options: ['size=bogus'] }));
  await pod.client.create({ containerId: 'late', bundleDir: late, logPath: path.join(late, 'log'), earlyReply: true });
  await sleep(300);
  const lateErr = await t.throwsAsync(pod.client.start('late'));
  t.regex(lateErr?.message ?? '', /mount tmpfs \(tmpfs\) on \/data: invalid argument/);
  const again = await t.throwsAsync(pod.client.start('late'));
  t.true(again instanceof CrispError && again.code === 'FailedPrecondition', String(again));
  t.is(readExitRecord(late).exitCode, 128);

  // Killed while it sets itself up: its exit is recorded all the same.
  const killed = writeBundle(pod, 'killed', ['true']);
  const k = await pod.client.create({ containerId: 'killed', bundleDir: killed, logPath: path.join(killed, 'log'), earlyReply: true });
  await pod.client.signal('killed', 'SIGKILL');
  const killedExit = await waitForExit(pod, 'killed');
  t.true(killedExit.exitCode === 128 || killedExit.exitCode === 137, JSON.stringify(killedExit));
  t.true(k.pid > 0);
});

serial('exec returns output and exit code, and its timeout kills it', async (t) => {
  const pod = await startPod(t, 'exec');
  const bundle = writeBundle(pod, 'app', ['sleep', '1000']);
  await pod.client.create({ containerId: 'app', bundleDir: bundle, logPath: path.join(bundle, 'log') });
  const { pid } = await pod.client.start('app');
  const mountNs = fs.readlinkSync(`/proc/${pid}/ns/mnt`);

  const r = await pod.client.execSync({
    containerId: 'app',
    execId: 'e1',
    process: { args: ['sh', '-c', 'echo out; echo err >&2; id -u; pwd; exit 7'], uid: 65534, gid: 65534, cwd: '/tmp' },
    timeoutMs: 5_000,
  });
  t.is(r.exitCode, 7);
  t.is(r.stdout.toString(), 'out\n65534\n/tmp\n');
  t.is(r.stderr.toString(), 'err\n');
  t.false(r.timedOut);
  t.false(r.truncated);

  // The exec sees the container's filesystem, not the host's.
  const seen = await pod.client.execSync({ containerId: 'app', execId: 'e2', process: { args: ['ls', '/bin/busybox'] } });
  t.is(seen.stdout.toString(), '/bin/busybox\n');

  const started = Date.now();
  const slow = await pod.client.execSync({ containerId: 'app', execId: 'e3', process: { args: ['sh', '-c', 'sleep 30; echo never'] }, timeoutMs: 300 });
  t.true(slow.timedOut);
  t.is(slow.exitCode, 137);
  t.is(slow.stdout.toString(), '');
  t.true(Date.now() - started < 5_000, 'the whole process group was killed at the timeout');

  // A command that leaves a child behind holding its output (kubernetes#92057) still returns once
  // it exits: what the child writes later is not waited for beyond a short drain.
  const leftBehind = Date.now();
  const bg = await pod.client.execSync({ containerId: 'app', execId: 'bg', process: { args: ['sh', '-c', 'echo hi; sleep 30 & exit 0'] }, timeoutMs: 20_000 });
  t.is(bg.exitCode, 0);
  t.is(bg.stdout.toString(), 'hi\n');
  t.false(bg.timedOut);
  t.true(Date.now() - leftBehind < 5_000, `returned after ${Date.now() - leftBehind} ms`);

  const missing = await t.throwsAsync(pod.client.execSync({ containerId: 'app', execId: 'e4', process: { args: ['no-such-tool'] } }));
  t.regex(missing?.message ?? '', /executable file not found in \$PATH/);
  // The monitor keeps what entering the container takes between execs...
  t.true(monitorHolds(pod.mon.pid, mountNs), 'the container mount namespace is held for exec');

  // The main process is not PID 1 of the pod's namespace, so SIGTERM's default action applies.
  await pod.client.signal('app', 'SIGTERM');
  const exit = await waitForExit(pod, 'app');
  t.is(exit.exitCode, 143);
  t.is(exit.signal, 15);
  // ...and lets go of it when the container exits: it would keep the root filesystem mounted.
  t.false(monitorHolds(pod.mon.pid, mountNs), 'nothing of the exited container is held');
  const notRunning = await t.throwsAsync(pod.client.execSync({ containerId: 'app', execId: 'e5', process: { args: ['true'] } }));
  t.true(notRunning instanceof CrispError && notRunning.code === 'FailedPrecondition');
  // Signalling an exited container is not an error.
  await t.notThrowsAsync(pod.client.signal('app', 'SIGKILL'));
});

serial('the spec security settings are applied', async (t) => {
  const pod = await startPod(t, 'sec');
  const script = [
    "grep -E '^(CapEff|CapPrm|CapBnd|CapInh|CapAmb|NoNewPrivs|Seccomp|SigIgn|SigBlk):' /proc/self/status",
    'hostname renamed 2>&1 || true',
    'touch /rootfile 2>&1 || true',
    'touch /tmp/scratch && echo tmp-writable',
    'echo timer_list-bytes=$(wc -c < /proc/timer_list)',
    '[ -c /proc/timer_list ] && echo timer_list-is-a-device',
    'echo firmware-entries=$(ls -A /sys/firmware | wc -l)',
    'echo x > /proc/sys/kernel/domainname 2>&1 || true',
  ].join('; ');
  const { lines, exitCode } = await runToExit(pod, 'sec', ['sh', '-c', script], (s) => {
    s.process.capabilities = { bounding: DEFAULT_CAPS, effective: DEFAULT_CAPS, permitted: DEFAULT_CAPS, inheritable: [], ambient: [] };
    s.process.noNewPrivileges = true;
    s.root.readonly = true;
    s.mounts.push({ destination: '/tmp', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'nodev', 'mode=1777'] });
    s.linux.seccomp = {
      defaultAction: 'SCMP_ACT_ALLOW',
      architectures: ['SCMP_ARCH_X86_64', 'SCMP_ARCH_X86', 'SCMP_ARCH_X32'],
      syscalls: [{ names: ['sethostname', 'setdomainname'], action: 'SCMP_ACT_ERRNO', errnoRet: 1 }],
    };
  });
  t.is(exitCode, 0, lines.join('\n'));
  const field = (name: string) => lines.find((l) => l.startsWith(`${name}:`))?.split(/\s+/)[1];
  const expected = DEFAULT_CAPS.reduce((mask, c) => mask | (1n << BigInt(CAP_NUMBERS[c])), 0n);
  t.is(BigInt(`0x${field('CapEff')}`), expected);
  t.is(BigInt(`0x${field('CapPrm')}`), expected);
  t.is(BigInt(`0x${field('CapBnd')}`), expected);
  t.is(BigInt(`0x${field('CapInh')}`), 0n);
  t.is(field('NoNewPrivs'), '1');
  t.is(field('Seccomp'), '2', 'a seccomp filter is installed');
  // The monitor ignores SIGPIPE and blocks the signals it reads; none of that reaches a container.
  t.is(BigInt(`0x${field('SigIgn')}`), 0n, 'no signal is ignored');
  t.is(BigInt(`0x${field('SigBlk')}`), 0n, 'no signal is blocked');
  t.true(lines.includes('hostname: sethostname: Operation not permitted'), lines.join('\n'));
  t.true(lines.some((l) => /touch: \/rootfile: Read-only file system/.test(l)), lines.join('\n'));
  t.true(lines.includes('tmp-writable'));
  t.true(lines.includes('timer_list-bytes=0') && lines.includes('timer_list-is-a-device'), '/proc/timer_list is masked by /dev/null');
  t.true(lines.includes('firmware-entries=0'), '/sys/firmware is masked');
  t.true(lines.some((l) => /Read-only file system/.test(l) && l.includes('domainname')), lines.join('\n'));
  // The pod's hostname was not changed by the attempt.
  const { lines: host } = await runToExit(pod, 'host', ['hostname']);
  t.deepEqual(host, ['pod-sec']);
});

serial('containers of a pod share its namespaces, and a terminal container logs to stdout', async (t) => {
  const pod = await startPod(t, 'share');
  const netInode = `net:[${fs.statSync(pod.mon.namespaces.net as string).ino}]`;
  const probe = ['sh', '-c', 'readlink /proc/self/ns/net; hostname; echo pid=$$'];
  const a = await runToExit(pod, 'a', probe);
  const b = await runToExit(pod, 'b', probe);
  t.is(a.lines[0], netInode);
  t.is(b.lines[0], netInode);
  t.is(a.lines[1], 'pod-share');
  t.is(b.lines[1], 'pod-share');
  // Both ran in the pod's PID namespace, where the pod init is PID 1.
  for (const r of [a, b]) t.true(Number(r.lines[2].slice(4)) > 1);

  const bundle = writeBundle(pod, 'tty', ['sh', '-c', '[ -t 1 ] && echo on-a-tty; echo to-stderr >&2'], (s) => (s.process.terminal = true));
  const logPath = path.join(bundle, 'log');
  await pod.client.create({ containerId: 'tty', bundleDir: bundle, logPath, tty: true });
  await pod.client.start('tty');
  await waitForExit(pod, 'tty');
  // Output was drained into the log before the exit was reported.
  const records = readLog(logPath);
  t.deepEqual(
    records.map((r) => [r.stream, r.content]),
    [
      ['stdout', 'on-a-tty'],
      ['stdout', 'to-stderr'],
    ],
  );
});

serial('reopen_log switches to a fresh file after kubelet rotated the old one', async (t) => {
  const pod = await startPod(t, 'rotate');
  const bundle = writeBundle(pod, 'w', ['sh', '-c', 'echo one; while [ ! -e /tmp/go ]; do usleep 20000; done; echo two']);
  const logPath = path.join(bundle, 'container.log');
  await pod.client.create({ containerId: 'w', bundleDir: bundle, logPath });
  await pod.client.start('w');
  const deadline = Date.now() + 5_000;
  while (!fs.readFileSync(logPath, 'utf8').includes('one') && Date.now() < deadline) await sleep(10);
  fs.renameSync(logPath, `${logPath}.1`);
  await pod.client.reopenLog('w');
  t.is(fs.statSync(logPath).mode & 0o777, 0o640);
  await pod.client.execSync({ containerId: 'w', execId: 'go', process: { args: ['touch', '/tmp/go'] } });
  t.is((await waitForExit(pod, 'w')).exitCode, 0);
  t.deepEqual(readLog(`${logPath}.1`).map((r) => r.content), ['one']);
  t.deepEqual(readLog(logPath).map((r) => r.content), ['two']);
  const missing = await t.throwsAsync(pod.client.reopenLog('nope'));
  t.true(missing instanceof CrispError && missing.code === 'NotFound');
});

serial('create and start take a few milliseconds', async (t) => {
  const pod = await startPod(t, 'perf');
  const openFds = () => fs.readdirSync(`/proc/${pod.mon.pid}/fd`).length;
  const fdsBefore = openFds();
  const times: number[] = [];
  for (let i = 0; i < 20; i++) {
    const id = `t${i}`;
    const bundle = writeBundle(pod, id, ['true']);
    const t0 = process.hrtime.bigint();
    await pod.client.create({ containerId: id, bundleDir: bundle, logPath: path.join(bundle, 'log') });
    await pod.client.start(id);
    times.push(Number(process.hrtime.bigint() - t0) / 1e6);
    t.is((await waitForExit(pod, id)).exitCode, 0);
  }
  times.sort((x, y) => x - y);
  const median = times[Math.floor(times.length / 2)];
  const rss = fs.readFileSync(`/proc/${pod.mon.pid}/status`, 'utf8').split('\n').find((l) => l.startsWith('VmRSS:'));
  t.log(`create+start of busybox true: median ${median.toFixed(2)} ms, min ${times[0].toFixed(2)} ms, max ${times[times.length - 1].toFixed(2)} ms; monitor ${rss}`);
  t.true(median < 50, `median create+start ${median} ms`);
  t.is(openFds(), fdsBefore, 'exited containers hold no descriptors in the monitor');
});
