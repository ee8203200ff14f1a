/**
 * Stream sessions with the real pod monitor (target/release/crisp-monitor): interactive exec with
 * and without a terminal, attach with stdin and stdinOnce, backpressure in both directions, and
 * clean-up when a client leaves. Root only.
 * Build the binary first: `cargo build --release -p crisp-monitor`.
 */
import test, { type ExecutionContext } from 'ava';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { finished } from 'node:stream/promises';
import type { MonitorEvent } from '../../src/sandbox/monitor_client';
import { monitorBinaryPath } from '../../src/sandbox/monitor_spawn';
import { type ExecStreamParams, type MonitorStream, openAttachStream, openExecStream } from '../../src/sandbox/monitor_stream';
import { CrispError } from '../../src/util/errors';
import { BUSYBOX } from '../fixtures/rootfs';
import { type MonitorPod as Pod, startMonitorPod, writeBundle } from '../fixtures/monitor_pod';

const isRoot = process.getuid?.() === 0;
const serial = isRoot && fs.existsSync(BUSYBOX) ? test.serial : test.skip;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function waitUntil(what: string, check: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}



const startPod = (t: ExecutionContext, tag: string): Promise<Pod> => startMonitorPod(t, 'stream', tag);

/** Creates and starts a container running `args`; returns its log path. */
async function runContainer(pod: Pod, id: string, args: string[], options: { tty?: boolean; stdin?: boolean; stdinOnce?: boolean } = {}): Promise<string> {
  const bundle = writeBundle(pod, id, args, (spec) => {
    spec.process.terminal = options.tty ?? false;
    spec.process.env.push('TERM=xterm');
  });
  const logPath = path.join(bundle, 'container.log');
  await pod.client.create({ containerId: id, bundleDir: bundle, logPath, tty: options.tty, stdin: options.stdin, stdinOnce: options.stdinOnce });
  await pod.client.start(id);
  return logPath;
}

/** The contents of a CRI log, records joined (full lines end with a newline). */
function logText(file: string, stream?: string): string {
  let out = '';
  for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
    const m = /^\S+ (stdout|stderr) ([FP]) (.*)$/.exec(line);
    if (m && (!stream || m[1] === stream)) out += m[3] + (m[2] === 'F' ? '\n' : '');
  }
  return out;
}

async function waitForExit(pod: Pod, id: string): Promise<number> {
  let found: MonitorEvent | undefined;
  await waitUntil(`container ${id} to exit`, () => (found = pod.events.find((e) => e.event === 'container_exit' && e.containerId === id)) !== undefined);
  return (found as Extract<MonitorEvent, { event: 'container_exit' }>).exitCode;
}

/**
 * Everything a session sends, as it arrives; `done` resolves with the exit code once the output
 * has been delivered too (the exit may be known before buffered output is emitted).
 */
function record(stream: MonitorStream): { stdout: () => string; stderr: () => string; done: Promise<number | undefined> } {
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  stream.stdout.on('data', (c: Buffer) => out.push(c));
  stream.stderr.on('data', (c: Buffer) => err.push(c));
  const ended = Promise.all([finished(stream.stdout), finished(stream.stderr)]);
  return {
    stdout: () => Buffer.concat(out).toString(),
    stderr: () => Buffer.concat(err).toString(),
    done: ended.then(() => stream.exit),
  };
}

function exec(pod: Pod, containerId: string, args: string[], streams: Partial<ExecStreamParams> = {}): Promise<MonitorStream> {
  return openExecStream(pod.socket, {
    containerId,
    execId: `e-${Math.random().toString(36).slice(2)}`,
    process: { args, env: ['PATH=/bin', 'TERM=xterm'] },
    tty: false,
    stdin: false,
    stdout: true,
    stderr: true,
    ...streams,
  });
}

/**
 * Runs one exec, after which the monitor holds what entering the container takes (its cgroups and
 * namespaces) until the container exits: descriptors counted after it belong to sessions only.
 */
async function openExecTarget(pod: Pod): Promise<void> {
  const r = await pod.client.execSync({ containerId: 'app', execId: 'first', process: { args: ['true'] } });
  if (r.exitCode !== 0) throw new Error(`true exited ${r.exitCode}`);
}

function openFds(pid: number): number {
  return fs.readdirSync(`/proc/${pid}/fd`).length;
}

function rssKiB(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB$/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m?.[1] ?? 0);
}

/** Host pids of processes whose command line is exactly `args`. */
function pidsRunning(args: string[]): number[] {
  const want = args.join('\0');
  const pids: number[] = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      if (fs.readFileSync(`/proc/${name}/cmdline`, 'utf8').replace(/\0$/, '') === want) pids.push(Number(name));
    } catch {
      // Exited meanwhile.
    }
  }
  return pids;
}

test.before(() => {
  if (isRoot && !fs.existsSync(monitorBinaryPath())) {
    throw new Error(`${monitorBinaryPath()} is missing: run "cargo build --release -p crisp-monitor" first`);
  }
});

serial('exec_stream: separate stdout and stderr, the exit status, stdin through cat until EOF', async (t) => {
  const pod = await startPod(t, 'exec');
  await runContainer(pod, 'app', ['sleep', '1000']);

  const s1 = await exec(pod, 'app', ['sh', '-c', 'echo out; echo err >&2; exit 3']);
  t.true((s1.pid ?? 0) > 0);
  const r1 = record(s1);
  t.is(await r1.done, 3);
  t.is(r1.stdout(), 'out\n');
  t.is(r1.stderr(), 'err\n');

  // Only the streams asked for are forwarded; stderr goes nowhere.
  const s2 = await exec(pod, 'app', ['sh', '-c', 'echo visible; echo hidden >&2'], { stderr: false });
  const r2 = record(s2);
  t.is(await r2.done, 0);
  t.is(r2.stdout(), 'visible\n');
  t.is(r2.stderr(), '');

  const s3 = await exec(pod, 'app', ['sh', '-c', 'cat; echo eof-seen'], { stdin: true });
  const r3 = record(s3);
  s3.stdin.write('line one\n');
  s3.stdin.write(Buffer.alloc(3 << 20, 'z'));
  s3.stdin.end('last');
  t.is(await r3.done, 0);
  t.is(r3.stdout(), `line one\n${'z'.repeat(3 << 20)}lasteof-seen\n`);

  // Without stdin the process reads EOF at once.
  const s4 = await exec(pod, 'app', ['sh', '-c', 'cat; echo done']);
  const r4 = record(s4);
  t.is(await r4.done, 0);
  t.is(r4.stdout(), 'done\n');
});

serial('exec_stream with a terminal: resize, echoed input, all output on stdout, EOF hangs up', async (t) => {
  const pod = await startPod(t, 'tty');
  await runContainer(pod, 'app', ['sleep', '1000']);

  const s = await exec(pod, 'app', ['sh', '-c', '[ -t 0 ] && [ -t 1 ] && echo is-a-tty; read line; echo got:$line >&2; stty size'], {
    tty: true,
    stdin: true,
    stderr: false,
  });
  const r = record(s);
  await waitUntil('the terminal check', () => r.stdout().includes('is-a-tty'));
  s.resize(120, 40);
  // The resize frame is handled before the input that follows it.
  s.stdin.write('hello\n');
  t.is(await r.done, 0);
  const lines = r.stdout().split('\r\n');
  t.true(lines.includes('is-a-tty'), r.stdout());
  t.true(lines.includes('hello'), 'the terminal echoes input');
  t.true(lines.includes('got:hello'), 'stderr of a terminal is stdout');
  t.true(lines.includes('40 120'), `stty size reports rows and columns: ${JSON.stringify(r.stdout())}`);

  // A terminal cannot be half-closed: EOF on stdin hangs it up, which ends the shell.
  const hup = await exec(pod, 'app', ['sh', '-c', 'echo waiting; sleep 1000'], { tty: true, stdin: true, stderr: false });
  const rh = record(hup);
  await waitUntil('the shell', () => rh.stdout().includes('waiting'));
  hup.stdin.end();
  t.is(await rh.done, 128 + os.constants.signals.SIGHUP);
});

serial('exec_stream refusals: a program that cannot run, an unknown container, not the first request', async (t) => {
  const pod = await startPod(t, 'refuse');
  await runContainer(pod, 'app', ['sleep', '1000']);
  await openExecTarget(pod);
  const fdsBefore = openFds(pod.mon.pid);

  const missing = await t.throwsAsync(exec(pod, 'app', ['no-such-tool']));
  t.true(missing instanceof CrispError && missing.code === 'InvalidArgument', String(missing));
  t.regex(missing?.message ?? '', /exec: "no-such-tool": executable file not found in \$PATH/);
  const unknown = await t.throwsAsync(exec(pod, 'nope', ['true']));
  t.true(unknown instanceof CrispError && unknown.code === 'NotFound');
  const noStdin = await t.throwsAsync(openAttachStream(pod.socket, { containerId: 'app', stdin: true, stdout: true, stderr: false }));
  t.true(noStdin instanceof CrispError && noStdin.code === 'FailedPrecondition', String(noStdin));
  t.regex(noStdin?.message ?? '', /not created with stdin/);

  // A stream request after another request on the same connection is refused, then closed.
  const raw = net.connect(pod.socket);
  const received: Buffer[] = [];
  raw.on('data', (c: Buffer) => received.push(c));
  const closed = new Promise((resolve) => raw.once('close', resolve));
  raw.write('{"id":1,"op":"status"}\n{"id":2,"op":"attach","containerId":"app","stdout":true}\n');
  await closed;
  const replies = Buffer.concat(received).toString().trim().split('\n').map((l) => JSON.parse(l));
  t.is(replies.length, 2);
  t.true(replies[0].ok);
  t.like(replies[1], { id: 2, ok: false, error: { code: 'invalid_argument' } });

  await waitUntil('descriptors of the refused sessions to be released', () => openFds(pod.mon.pid) === fdsBefore);
  t.pass();
});

serial('a client that leaves kills the exec with its process group and jobs; no descriptor stays open', async (t) => {
  const pod = await startPod(t, 'leave');
  await runContainer(pod, 'app', ['sleep', '1000']);
  await openExecTarget(pod);
  // Settle the descriptors of the event connection and the container.
  await sleep(100);
  const fdsBefore = openFds(pod.mon.pid);

  const plain = await exec(pod, 'app', ['sh', '-c', 'sleep 1001 & sleep 1002; echo never'], { stdin: true });
  // With job control the background job has a process group of its own (same session).
  const tty = await exec(pod, 'app', ['sh', '-c', 'set -m; sleep 1003 & sleep 1004'], { tty: true, stdin: true, stderr: false });
  await waitUntil('the sleeps to run', () => ['1001', '1002', '1003', '1004'].every((n) => pidsRunning(['sleep', n]).length === 1));
  const job = pidsRunning(['sleep', '1003'])[0]!;
  const jobStat = fs.readFileSync(`/proc/${job}/stat`, 'utf8').split(') ')[1]!.split(' ');
  t.not(Number(jobStat[2]), tty.pid!, 'the job runs in a process group of its own');
  t.is(Number(jobStat[3]), tty.pid!, 'in the exec session');
  t.true(openFds(pod.mon.pid) > fdsBefore);

  plain.close();
  tty.close();
  t.is(await plain.exit, undefined);
  await waitUntil('every process of both execs to be gone', () => ['1001', '1002', '1003', '1004'].every((n) => pidsRunning(['sleep', n]).length === 0));
  await waitUntil('the monitor to release the sessions', () => openFds(pod.mon.pid) === fdsBefore);
  t.is(openFds(pod.mon.pid), fdsBefore);
  // The container itself is untouched.
  t.deepEqual((await pod.client.status()).containers.map((c) => c.state), ['running']);
});

serial('backpressure: output waits while the client does not read, stdin waits while the process does not; nothing lost', async (t) => {
  const pod = await startPod(t, 'bp');
  await runContainer(pod, 'app', ['sleep', '1000']);
  const rssBefore = rssKiB(pod.mon.pid);
  const total = 64 << 20;

  const out = await exec(pod, 'app', ['head', '-c', String(total), '/dev/zero'], { stderr: false });
  await sleep(1500);
  t.true(fs.existsSync(`/proc/${out.pid}`), 'the writer is held back, not finished');
  t.true(rssKiB(pod.mon.pid) - rssBefore < 8 << 10, `the monitor buffers a bounded amount (${rssKiB(pod.mon.pid) - rssBefore} KiB)`);
  let received = 0;
  out.stdout.on('data', (c: Buffer) => (received += c.length));
  t.is(await out.exit, 0);
  await finished(out.stdout);
  t.is(received, total);

  const inp = await exec(pod, 'app', ['sh', '-c', 'sleep 2; wc -c'], { stdin: true, stderr: false });
  const r = record(inp);
  const chunk = Buffer.alloc(1 << 20, 'x');
  const writes: Promise<void>[] = [];
  for (let i = 0; i < 32; i++) writes.push(new Promise((resolve) => inp.stdin.write(chunk, () => resolve())));
  inp.stdin.end();
  await sleep(1000);
  t.true(rssKiB(pod.mon.pid) - rssBefore < 8 << 10, `stdin is not buffered without bound (${rssKiB(pod.mon.pid) - rssBefore} KiB)`);
  t.is(await r.done, 0);
  await Promise.all(writes);
  t.is(r.stdout().trim(), String(32 << 20));
});

serial('attach: output to every client and the log, stdin to the process, stdinOnce closes it after the first client', async (t) => {
  const pod = await startPod(t, 'attach');
  const script = 'echo started; while read l; do echo got:$l; echo err:$l >&2; done; echo bye';
  const logPath = await runContainer(pod, 'once', ['sh', '-c', script], { stdin: true, stdinOnce: true });
  await waitUntil('the container to start', () => logText(logPath).includes('started'));

  const first = await openAttachStream(pod.socket, { containerId: 'once', stdin: true, stdout: true, stderr: true });
  const watcher = await openAttachStream(pod.socket, { containerId: 'once', stdin: false, stdout: true, stderr: false });
  const rf = record(first);
  const rw = record(watcher);
  first.stdin.write('one\n');
  await waitUntil('the echo', () => rf.stdout() === 'got:one\n' && rf.stderr() === 'err:one\n' && rw.stdout() === 'got:one\n');
  t.is(rw.stderr(), '', 'streams not asked for are not sent');
  // The first client leaves: stdinOnce closes the container's stdin, and the loop ends.
  first.close();
  t.is(await rw.done, 0, 'the exit reaches the clients still attached');
  t.is(rw.stdout(), 'got:one\nbye\n');
  t.is(await waitForExit(pod, 'once'), 0);
  t.is(logText(logPath, 'stdout'), 'started\ngot:one\nbye\n');
  t.is(logText(logPath, 'stderr'), 'err:one\n');
  const late = await t.throwsAsync(openAttachStream(pod.socket, { containerId: 'once', stdin: false, stdout: true, stderr: false }));
  t.true(late instanceof CrispError && late.code === 'FailedPrecondition');

  // Without stdinOnce stdin outlives its clients, and EOF from a client does not close it.
  const keepLog = await runContainer(pod, 'keep', ['sh', '-c', script], { stdin: true });
  await waitUntil('the container to start', () => logText(keepLog).includes('started'));
  for (const word of ['a', 'b']) {
    const s = await openAttachStream(pod.socket, { containerId: 'keep', stdin: true, stdout: true, stderr: false });
    const r = record(s);
    s.stdin.end(`${word}\n`);
    await waitUntil(`the echo of ${word}`, () => r.stdout() === `got:${word}\n`);
    s.close();
  }
  await sleep(200);
  t.deepEqual(
    (await pod.client.status()).containers.map((c) => [c.containerId, c.state]),
    [
      ['keep', 'running'],
      ['once', 'exited'],
    ],
  );
  t.is(logText(keepLog, 'stdout'), 'started\ngot:a\ngot:b\n');

  // A terminal container: input is echoed, resize applies to its terminal.
  const ttyLog = await runContainer(pod, 'term', ['sh', '-c', 'read l; stty size; echo bye'], { tty: true, stdin: true });
  const s = await openAttachStream(pod.socket, { containerId: 'term', stdin: true, stdout: true, stderr: false });
  const r = record(s);
  s.resize(100, 30);
  s.stdin.write('go\n');
  t.is(await r.done, 0);
  t.regex(r.stdout(), /go\r\n30 100\r\nbye\r\n$/);
  t.regex(logText(ttyLog), /30 100/);
});

serial('a slow attached client misses output rather than holding back the container or its log', async (t) => {
  const pod = await startPod(t, 'slow');
  // 34 MB of output: far more than the bound below, so buffering it for the client would show.
  const lines = 2_000_000;
  const logPath = await runContainer(pod, 'chatty', ['sh', '-c', `read go; yes 0123456789abcdef | head -n ${lines}; echo end`], { stdin: true });
  const rssBefore = rssKiB(pod.mon.pid);
  const slow = await openAttachStream(pod.socket, { containerId: 'chatty', stdin: true, stdout: true, stderr: false });
  // This client takes nothing until the container is done.
  slow.stdin.write('go\n');
  t.is(await waitForExit(pod, 'chatty'), 0);
  const logged = logText(logPath).split('\n');
  t.is(logged.length, lines + 2);
  t.is(logged[lines], 'end');
  t.true(rssKiB(pod.mon.pid) - rssBefore < 16 << 10, `the monitor buffers a bounded amount (${rssKiB(pod.mon.pid) - rssBefore} KiB)`);

  let received = 0;
  slow.stdout.on('data', (c: Buffer) => (received += c.length));
  t.is(await slow.exit, 0, 'the exit still reaches the client');
  await finished(slow.stdout);
  t.true(received > 0 && received < lines * 17, `the client got part of the output (${received} bytes)`);
});
