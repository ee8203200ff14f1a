/**
 * The real pod monitor (target/release/crisp-monitor) against the real kernel: namespaces,
 * pins, cgroup, sysctls, the pod init, the control socket, and clean shutdown. Root only.
 * Build the binary first: `cargo build --release -p crisp-monitor`.
 */
import test, { type ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
// The module object itself (not a namespace copy), so a test can wrap one of its functions.
import fsp = require('node:fs/promises');
import * as os from 'node:os';
import * as path from 'node:path';
import { MONITOR_PROTOCOL_VERSION, MonitorClient, type MonitorEvent } from '../../src/sandbox/monitor_client';
import { monitorBinaryPath, spawnMonitor, type MonitorConfig, type MonitorProcess } from '../../src/sandbox/monitor_spawn';
import { CrispError } from '../../src/util/errors';
import { run, runOk } from '../fixtures/netns';

const NSFS_MAGIC = 0x6e736673;
const CGROUP2_MAGIC = 0x63677270;
const CAP_SYS_RESOURCE = 24n;
const isRoot = process.getuid?.() === 0;
const serial = isRoot ? test.serial : test.skip;

/** Everything a test created, torn down (even after a failed assertion) by `cleanup`. */
interface Fixture {
  dir: string;
  cgroupDirs: string[];
  pids: number[];
}

function newFixture(t: ExecutionContext, tag: string): Fixture {
  const fx: Fixture = { dir: fs.mkdtempSync(path.join(os.tmpdir(), `crisp-test-monitor-${tag}-`)), cgroupDirs: [], pids: [] };
  t.teardown(() => cleanup(fx));
  return fx;
}

function mountsUnder(dir: string): string[] {
  return fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((line) => line.split(' ')[4])
    .filter((mountpoint): mountpoint is string => mountpoint !== undefined && (mountpoint === dir || mountpoint.startsWith(`${dir}/`)));
}

async function cleanup(fx: Fixture): Promise<void> {
  for (const dir of fx.cgroupDirs) {
    for (const pid of readPids(dir)) fx.pids.push(pid);
  }
  for (const pid of fx.pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // Gone already.
    }
  }
  for (const mountpoint of mountsUnder(fx.dir).reverse()) await run('umount', ['-l', mountpoint]);
  fs.rmSync(fx.dir, { recursive: true, force: true });
  for (const dir of fx.cgroupDirs) {
    for (let i = 0; i < 50; i++) {
      try {
        fs.rmdirSync(dir);
        break;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') break;
        await sleep(20);
      }
    }
  }
}

function readPids(cgroupDir: string): number[] {
  try {
    return fs.readFileSync(path.join(cgroupDir, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** A fresh test cgroup the monitor joins: pids+memory on v1, one directory on v2. */
function makeCgroup(fx: Fixture, name: string): NonNullable<MonitorConfig['cgroup']> {
  const v2 = fs.statfsSync('/sys/fs/cgroup').type === CGROUP2_MAGIC;
  const paths: Record<string, string> = v2
    ? { unified: path.join('/sys/fs/cgroup', name) }
    : { pids: path.join('/sys/fs/cgroup/pids', name), memory: path.join('/sys/fs/cgroup/memory', name) };
  for (const dir of Object.values(paths)) {
    fs.mkdirSync(dir);
    fx.cgroupDirs.push(dir);
  }
  return { version: v2 ? 2 : 1, paths };
}

function inode(p: string): number {
  return fs.statSync(p).ino;
}

function isNsfs(p: string): boolean {
  return fs.statfsSync(p).type === NSFS_MAGIC;
}

function alive(pid: number): boolean {
  try {
    const state = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.[0];
    return state !== undefined && state !== 'Z';
  } catch {
    return false;
  }
}

async function waitFor(what: string, cond: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

function hasCapability(cap: bigint): boolean {
  const line = fs.readFileSync('/proc/self/status', 'utf8').split('\n').find((l) => l.startsWith('CapEff:'));
  return line !== undefined && ((BigInt(`0x${line.split(/\s+/)[1]}`) >> cap) & 1n) === 1n;
}

function podConfig(sandboxId: string, cgroup?: MonitorConfig['cgroup']): MonitorConfig {
  return {
    sandboxId,
    hostname: 'crisp-test-pod',
    namespaces: { network: 'pod', ipc: 'pod', uts: 'pod', pid: 'pod' },
    cgroup,
    sysctls: { 'net.ipv4.ip_unprivileged_port_start': '123', 'kernel.shmmni': '2048' },
    oomScoreAdj: -998,
    logLevel: 'debug',
  };
}

test.before(() => {
  if (isRoot && !fs.existsSync(monitorBinaryPath())) {
    throw new Error(`${monitorBinaryPath()} is missing: run "cargo build --release -p crisp-monitor" first`);
  }
});

serial('a pod monitor sets up pinned namespaces and shuts down without leftovers', async (t) => {
  const fx = newFixture(t, 'pod');
  const cgroupName = path.basename(fx.dir);
  const cgroup = makeCgroup(fx, cgroupName);
  const hostPortStart = fs.readFileSync('/proc/sys/net/ipv4/ip_unprivileged_port_start', 'utf8');
  const hostShmmni = fs.readFileSync('/proc/sys/kernel/shmmni', 'utf8');
  const ownOomScoreAdj = Number(fs.readFileSync('/proc/self/oom_score_adj', 'utf8'));

  const mon: MonitorProcess = await spawnMonitor(fx.dir, podConfig('sb-pod', cgroup));
  fx.pids.push(mon.pid);
  t.truthy(mon.initPid);
  const initPid = mon.initPid as number;
  fx.pids.push(initPid);
  t.true(alive(mon.pid) && alive(initPid));
  t.is(typeof mon.startTime, 'number');

  // The monitor lives in its own session.
  const monStat = fs.readFileSync(`/proc/${mon.pid}/stat`, 'utf8').split(') ')[1].split(' ');
  t.is(Number(monStat[3]), mon.pid, 'session id is the monitor itself');

  // Pinned namespaces: nsfs mounts, distinct from ours, identical to the monitor's / init's.
  const nsDir = path.join(fx.dir, 'ns');
  t.deepEqual(mon.namespaces, {
    net: path.join(nsDir, 'net'),
    ipc: path.join(nsDir, 'ipc'),
    uts: path.join(nsDir, 'uts'),
    pid: path.join(nsDir, 'pid'),
  });
  for (const kind of ['net', 'ipc', 'uts', 'pid'] as const) {
    const pinned = path.join(nsDir, kind);
    t.true(isNsfs(pinned), `${kind} is pinned`);
    t.not(inode(pinned), inode(`/proc/self/ns/${kind}`), `${kind} differs from the host's`);
    const holder = kind === 'pid' ? initPid : mon.pid;
    t.is(inode(pinned), inode(`/proc/${holder}/ns/${kind}`));
  }
  t.deepEqual(mountsUnder(fx.dir).sort(), ['ipc', 'net', 'pid', 'uts'].map((k) => path.join(nsDir, k)));

  // Inside the namespaces: lo up, hostname, sysctls; the node's values untouched.
  const link = await runOk('nsenter', [`--net=${mon.namespaces.net}`, 'ip', '-o', 'link', 'show', 'lo']);
  t.regex(link, /<[^>]*\bUP\b[^>]*>/);
  t.is((await runOk('nsenter', [`--uts=${mon.namespaces.uts}`, 'hostname'])).trim(), 'crisp-test-pod');
  t.is((await runOk('nsenter', [`--net=${mon.namespaces.net}`, 'cat', '/proc/sys/net/ipv4/ip_unprivileged_port_start'])).trim(), '123');
  t.is((await runOk('nsenter', [`--ipc=${mon.namespaces.ipc}`, 'cat', '/proc/sys/kernel/shmmni'])).trim(), '2048');
  t.is(fs.readFileSync('/proc/sys/net/ipv4/ip_unprivileged_port_start', 'utf8'), hostPortStart);
  t.is(fs.readFileSync('/proc/sys/kernel/shmmni', 'utf8'), hostShmmni);
  t.not(os.hostname(), 'crisp-test-pod');

  // The pod init is PID 1 of the pod's PID namespace; later processes there are not.
  const nspid = fs.readFileSync(`/proc/${initPid}/status`, 'utf8').split('\n').find((l) => l.startsWith('NSpid:'));
  t.deepEqual(nspid?.split(/\s+/).slice(1), [String(initPid), '1']);
  t.is(fs.readFileSync(`/proc/${initPid}/comm`, 'utf8').trim(), 'crisp-pod-init');
  // nsenter forks after entering a PID namespace, so the shell is a new process in it.
  const inPod = (await runOk('nsenter', [`--pid=${mon.namespaces.pid}`, 'sh', '-c', 'echo $$'])).trim();
  t.true(Number(inPod) > 1, `a process entering the pod's PID namespace got pid ${inPod}`);

  // Orphans in the pod are adopted by the init and reaped when they exit: no zombies.
  await runOk('nsenter', [`--pid=${mon.namespaces.pid}`, 'sh', '-c', 'sleep 0.5 >/dev/null 2>&1 &']);
  const childrenOfInit = () =>
    fs
      .readdirSync('/proc')
      .filter((name) => /^\d+$/.test(name))
      .map((pid) => {
        try {
          const [comm, rest] = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ');
          const fields = rest.split(' ');
          return { pid: Number(pid), comm: comm.slice(comm.indexOf('(') + 1), state: fields[0], ppid: Number(fields[1]) };
        } catch {
          return undefined;
        }
      })
      .filter((p) => p !== undefined && p.ppid === initPid);
  t.true(childrenOfInit().some((p) => p?.comm === 'sleep'), 'the orphan was reparented to the pod init');
  await waitFor('the orphan to be reaped', () => childrenOfInit().length === 0, 5_000);

  // Neither process holds a socket it should not: the readiness pipe is closed, and the init
  // keeps only stdio, its release pipe and its signalfd.
  const fdTargets = (pid: number) =>
    fs.readdirSync(`/proc/${pid}/fd`).map((fd) => ({ fd: Number(fd), target: fs.readlinkSync(`/proc/${pid}/fd/${fd}`) }));
  t.false(fdTargets(mon.pid).some(({ fd }) => fd === 3), 'the monitor closed the readiness descriptor');
  const initFds = fdTargets(initPid);
  t.false(initFds.some(({ target }) => target.startsWith('socket:')), JSON.stringify(initFds));
  t.true(initFds.length <= 5, JSON.stringify(initFds));

  // cgroup: both processes joined; oom_score_adj clamped when lowering is not permitted.
  for (const dir of Object.values(cgroup.paths)) {
    t.deepEqual(readPids(dir).sort(), [mon.pid, initPid].sort());
  }
  const expectedAdj = hasCapability(CAP_SYS_RESOURCE) ? -998 : Math.max(-998, ownOomScoreAdj);
  t.is(Number(fs.readFileSync(`/proc/${mon.pid}/oom_score_adj`, 'utf8')), expectedAdj);
  t.is(Number(fs.readFileSync(`/proc/${initPid}/oom_score_adj`, 'utf8')), expectedAdj);

  // Control socket.
  const sockPath = path.join(fx.dir, 'monitor.sock');
  t.is(fs.statSync(sockPath).mode & 0o777, 0o600);
  const client = await MonitorClient.connect(sockPath);
  t.teardown(() => client.close());
  const status = await client.status();
  t.is(status.protocolVersion, MONITOR_PROTOCOL_VERSION);
  t.is(status.pid, mon.pid);
  t.is(status.initPid, initPid);
  t.is(status.sandboxId, 'sb-pod');
  t.is(status.state, 'running');
  t.true(Math.abs(status.startedAtMs - Date.now()) < 60_000);
  const unknown = await t.throwsAsync(client['request']('frobnicate', {}));
  t.is((unknown as CrispError).code, 'InvalidArgument', 'an unknown op is refused and the connection stays open');

  const events: MonitorEvent[] = [];
  await client.onEvent((e) => events.push(e));
  const closed = new Promise<void>((resolve) => client.onClose(() => resolve()));
  await client.shutdown(2000);
  await closed;
  t.deepEqual(events, [{ event: 'shutdown' }]);

  // Both processes are gone and reaped (no zombies), the cgroup is empty and removable, the
  // socket is gone; the pins outlive the monitor until the daemon releases them.
  await waitFor('monitor and init to exit', () => !fs.existsSync(`/proc/${mon.pid}`) && !fs.existsSync(`/proc/${initPid}`));
  t.false(fs.existsSync(sockPath));
  const gone = await t.throwsAsync(MonitorClient.connect(sockPath));
  t.is((gone as CrispError).code, 'Unavailable');
  for (const dir of Object.values(cgroup.paths)) {
    t.deepEqual(readPids(dir), []);
    fs.rmdirSync(dir);
  }
  t.true(isNsfs(path.join(nsDir, 'net')), 'the network namespace stays pinned after the monitor exits');
  t.true(isNsfs(path.join(nsDir, 'pid')));

  for (const kind of ['net', 'ipc', 'uts', 'pid']) {
    await runOk('umount', [path.join(nsDir, kind)]);
    fs.rmSync(path.join(nsDir, kind));
  }
  t.deepEqual(mountsUnder(fx.dir), []);
});

serial('the monitor survives the daemon that started it being SIGKILLed', async (t) => {
  const fx = newFixture(t, 'orphan');
  const spawnModule = path.resolve(__dirname, '..', '..', 'src', 'sandbox', 'monitor_spawn.js');
  const config: MonitorConfig = {
    sandboxId: 'sb-orphan',
    namespaces: { network: 'pod', ipc: 'node', uts: 'node', pid: 'pod' },
  };
  // A stand-in daemon: starts the monitor, reports it, and waits to be killed.
  const script = `
    const { spawnMonitor } = require(${JSON.stringify(spawnModule)});
    spawnMonitor(${JSON.stringify(fx.dir)}, ${JSON.stringify(config)}).then(
      (m) => { process.stdout.write(JSON.stringify(m) + '\\n'); setInterval(() => {}, 1 << 30); },
      (e) => { console.error(e); process.exit(1); });`;
  const daemon = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => daemon.kill('SIGKILL'));
  const line = await new Promise<string>((resolve, reject) => {
    let out = '';
    daemon.stdout.setEncoding('utf8');
    daemon.stdout.on('data', (chunk: string) => {
      out += chunk;
      if (out.includes('\n')) resolve(out.trim());
    });
    daemon.once('exit', (code) => reject(new Error(`stand-in daemon exited with ${code}`)));
  });
  const mon = JSON.parse(line) as MonitorProcess;
  fx.pids.push(mon.pid, mon.initPid as number);
  t.false(fs.existsSync(path.join(fx.dir, 'ns', 'ipc')), 'node namespaces are not pinned');

  const exited = new Promise((resolve) => daemon.once('exit', resolve));
  daemon.kill('SIGKILL');
  await exited;
  await sleep(100);
  t.true(alive(mon.pid), 'the monitor outlives its daemon');
  t.true(alive(mon.initPid as number), 'and so does the pod');

  // A new daemon re-adopts it through the socket.
  const client = await MonitorClient.connect(path.join(fx.dir, 'monitor.sock'));
  t.teardown(() => client.close());
  const status = await client.status();
  t.is(status.pid, mon.pid);
  t.is(status.initPid, mon.initPid);
  await client.shutdown(1000);
  // The monitor now belongs to the node's init, which reaps it; its own child must be gone.
  await waitFor('monitor and init to exit', () => !alive(mon.pid) && !fs.existsSync(`/proc/${mon.initPid}`));

  await runOk('umount', [path.join(fx.dir, 'ns', 'net')]);
  await runOk('umount', [path.join(fx.dir, 'ns', 'pid')]);
  t.deepEqual(mountsUnder(fx.dir), []);
});

serial('a rejected configuration fails at its stage and leaves nothing behind', async (t) => {
  const fx = newFixture(t, 'bad');
  const config: MonitorConfig = {
    ...podConfig('sb-bad'),
    // Not namespaced: writing it from the monitor would change the node.
    sysctls: { 'vm.swappiness': '1' },
  };
  const err = await t.throwsAsync(spawnMonitor(fx.dir, config));
  // The message first: if this fails, it says what happened instead.
  t.regex(err!.message, /failed at config: .*vm\.swappiness.*not namespaced/);
  t.true(err instanceof CrispError);
  t.is((err as CrispError).code, 'InvalidArgument');
  t.false(fs.existsSync(path.join(fx.dir, 'monitor.sock')));
  t.false(fs.existsSync(path.join(fx.dir, 'ns')));
  t.deepEqual(mountsUnder(fx.dir), []);
  t.regex(fs.readFileSync(path.join(fx.dir, 'monitor.log'), 'utf8'), /setup failed at config/);
});

serial('a monitor that fails at once is heard however long closing its log file takes', async (t) => {
  // Node resumes a child's extra stdio pipes when it exits and drops what nobody listens to: the
  // readiness line must be collected from the moment the monitor exists. Closing the log file is
  // a threadpool trip; here it waits behind jobs filling the threadpool while the monitor fails.
  const fx = newFixture(t, 'quick');
  const fake = path.join(fx.dir, 'failing-monitor');
  fs.writeFileSync(fake, `#!/bin/sh\necho '{"ok":false,"stage":"config","error":"rejected at once"}' >&3\n`, { mode: 0o755 });
  const realOpen = fsp.open;
  const busy: Promise<unknown>[] = [];
  (fsp as { open: typeof fsp.open }).open = async (...args: Parameters<typeof fsp.open>) => {
    const handle = await realOpen(...args);
    if (String(args[0]).endsWith('monitor.log')) {
      for (let i = 0; i < 4; i++) busy.push(new Promise((resolve) => crypto.pbkdf2('p', 's', 200_000, 64, 'sha512', resolve)));
    }
    return handle;
  };
  let err: Error | undefined;
  try {
    err = await t.throwsAsync(spawnMonitor(fx.dir, podConfig('sb-quick'), fake, { timeoutMs: 5_000 }));
  } finally {
    (fsp as { open: typeof fsp.open }).open = realOpen;
    await Promise.all(busy);
  }
  t.is(busy.length, 4, 'the log file was opened through fs/promises');
  t.regex(err!.message, /failed at config: rejected at once/);
  t.is((err as CrispError).code, 'InvalidArgument');
});

serial('a monitor that never reports ready is killed and reaped at the deadline', async (t) => {
  const fx = newFixture(t, 'hang');
  const fake = path.join(fx.dir, 'hanging-monitor');
  fs.writeFileSync(fake, '#!/bin/sh\necho $$ > "$1/fake.pid"\nexec sleep 30\n', { mode: 0o755 });
  const started = Date.now();
  const err = await t.throwsAsync(spawnMonitor(fx.dir, podConfig('sb-hang'), fake, { timeoutMs: 300 }));
  t.is((err as CrispError).code, 'DeadlineExceeded');
  t.regex(err!.message, /within 300 ms \(pid \d+: state S/, 'the message says what the process was doing');
  t.true(Date.now() - started < 5_000);
  const pid = Number(fs.readFileSync(path.join(fx.dir, 'fake.pid'), 'utf8'));
  fx.pids.push(pid);
  t.false(fs.existsSync(`/proc/${pid}`), 'killed and reaped');
});

serial('a missing binary is a FailedPrecondition naming the build command', async (t) => {
  const fx = newFixture(t, 'nobin');
  const err = await t.throwsAsync(spawnMonitor(fx.dir, podConfig('sb-nobin'), path.join(fx.dir, 'nope')));
  t.is((err as CrispError).code, 'FailedPrecondition');
  t.regex(err!.message, /cargo build --release -p crisp-monitor/);
});
