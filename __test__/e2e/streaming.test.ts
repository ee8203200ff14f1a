import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import anyTest, { type TestFn } from 'ava';
import { ContainerState } from '../../src/generated/runtime/v1/api';
import { removeCgroupParents } from '../fixtures/test_network';
import type { PushedImage } from '../fixtures/images';
import { criLogText, type PodEnv, runContainer, shellContainer, startBusyboxRegistry, startPodEnv } from '../fixtures/pod_env';
import type { RegistryHandle } from '../fixtures/registry';
import { connectSpdy, readAll, spdyRemoteCommand } from '../fixtures/spdy_client';
import { channelData, connectWebSocket, sendChannel } from '../fixtures/ws_client';

/**
 * Exec, attach and port-forward through the daemon's streaming server, down to processes in real
 * containers: interactive input, terminals, exit statuses, and clean-up when a client leaves.
 */
interface Context {
  registry: RegistryHandle;
  busybox: PushedImage;
}
const test = anyTest as TestFn<Context>;
const tag = crypto.randomBytes(3).toString('hex');
const CGROUP_PARENT = `/crisp-test-s${tag}`;
const NAMESPACE_POD = 0;
const NAMESPACE_NODE = 2;

test.before(async (t) => {
  const { registry, busybox } = await startBusyboxRegistry();
  t.context = { registry, busybox };
});

test.after.always(async (t) => {
  await t.context.registry?.stop();
  removeCgroupParents(CGROUP_PARENT);
});

type Env = PodEnv;

async function setup(t: any, network = NAMESPACE_POD): Promise<Env> {
  return startPodEnv(t, {
    image: t.context.busybox.reference,
    cgroupParent: CGROUP_PARENT,
    name: 'stream-pod',
    podExtra: { linux: { cgroupParent: CGROUP_PARENT, securityContext: { namespaceOptions: { network } } } },
  });
}

async function run(t: any, env: Env, script: string, extra: Record<string, unknown> = {}): Promise<string> {
  return runContainer(env, shellContainer(t.context.busybox.reference, 's', script, extra));
}

async function until(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function logOf(env: Env, id: string): Promise<string> {
  return criLogText((await env.c.call('containerStatus', { containerId: id })).status!.logPath);
}

async function monitorPid(env: Env): Promise<number> {
  const status = await env.c.call('podSandboxStatus', { podSandboxId: env.pod, verbose: true });
  return JSON.parse(status.info.info).pid as number;
}

/** Host pids of processes whose command line is exactly `args`. */
function pidsRunning(args: string[]): number[] {
  const want = args.join('\0');
  return fs
    .readdirSync('/proc')
    .filter((n) => /^\d+$/.test(n))
    .filter((n) => {
      try {
        return fs.readFileSync(`/proc/${n}/cmdline`, 'utf8').replace(/\0$/, '') === want;
      } catch {
        return false;
      }
    })
    .map(Number);
}

/** A remote command session opened stream by stream, as kubectl does, with what arrives so far. */
async function session(url: string, types: string[], protocol = 'v4.channel.k8s.io') {
  const client = await connectSpdy(url, [protocol]);
  const streams = new Map(types.map((type) => [type, client.conn.openStream({ streamtype: type })]));
  for (const st of streams.values()) st.on('error', () => undefined);
  await Promise.all([...streams.values()].map((st) => st.waitReply()));
  const seen = new Map<string, string>();
  for (const [type, st] of streams) {
    if (type === 'stdin' || type === 'resize') continue;
    seen.set(type, '');
    st.on('data', (c: Buffer) => seen.set(type, seen.get(type)! + c.toString()));
  }
  const ended = new Promise<void>((resolve) => streams.get('error')!.once('end', () => resolve()));
  return { client, stream: (type: string) => streams.get(type)!, text: (type: string) => seen.get(type) ?? '', ended };
}

test.serial('exec over SPDY: output, exit codes, separate stdout and stderr, stdin through cat', async (t) => {
  const env = await setup(t);
  const id = await run(t, env, 'exec sleep 300');
  const execUrl = async (cmd: string[], streams: Record<string, boolean>) => (await env.c.call('exec', { containerId: id, cmd, ...streams })).url;

  const hello = await spdyRemoteCommand(await execUrl(['echo', 'hello'], { stdout: true }), {});
  t.is(hello.stdout, 'hello\n');
  t.deepEqual(JSON.parse(hello.error), { metadata: {}, status: 'Success' });

  const three = await spdyRemoteCommand(await execUrl(['sh', '-c', 'exit 3'], { stdout: true }), {});
  const status = JSON.parse(three.error);
  t.is(status.reason, 'NonZeroExitCode');
  t.deepEqual(status.details.causes, [{ reason: 'ExitCode', message: '3' }]);

  const split = await spdyRemoteCommand(await execUrl(['sh', '-c', 'echo out; echo err >&2'], { stdout: true, stderr: true }), { stderr: true });
  t.is(split.stdout, 'out\n');
  t.is(split.stderr, 'err\n');

  const piped = await spdyRemoteCommand(await execUrl(['sh', '-c', 'cat; echo eof'], { stdin: true, stdout: true }), { stdin: 'piped through cat\n' });
  t.is(piped.stdout, 'piped through cat\neof\n', 'stdin reached the process and its end was an EOF');

  const missing = await spdyRemoteCommand(await execUrl(['no-such-tool'], { stdout: true }), {});
  t.regex(JSON.parse(missing.error).message, /executable file not found/);
});

test.serial('exec with a TTY: the resize is seen by stty, output is on stdout', async (t) => {
  const env = await setup(t);
  const id = await run(t, env, 'exec sleep 300');
  // Polls until the size arrives: the resize stream and the process start independently, and
  // until then the terminal has no size (stty reports an error).
  const script = 'for i in $(seq 100); do s=$(stty size 2>/dev/null); [ "$s" = "40 120" ] && break; sleep 0.05; done; [ -t 1 ] && echo tty; echo size=$s';
  const { url } = await env.c.call('exec', { containerId: id, cmd: ['sh', '-c', script], tty: true, stdout: true });
  const res = await spdyRemoteCommand(url, { tty: true, resize: [{ Width: 120, Height: 40 }] });
  t.is(res.stdout, 'tty\r\nsize=40 120\r\n');
  t.deepEqual(JSON.parse(res.error), { metadata: {}, status: 'Success' });
});

test.serial('attach: output and stdin of the main process; stdinOnce closes stdin when the first client detaches', async (t) => {
  const env = await setup(t);
  const id = await run(t, env, 'echo started; while read l; do echo got:$l; done; echo bye', { stdin: true, stdinOnce: true });
  await until('the container to start', async () => (await logOf(env, id)).includes('started'));

  const first = await session((await env.c.call('attach', { containerId: id, stdin: true, stdout: true, stderr: true })).url, ['error', 'stdin', 'stdout', 'stderr']);
  t.teardown(() => first.client.conn.destroy());
  // A second client that only watches.
  const watcher = await session((await env.c.call('attach', { containerId: id, stdout: true })).url, ['error', 'stdout'], 'v5.channel.k8s.io');
  t.teardown(() => watcher.client.conn.destroy());

  // Attaching completes in the monitor a moment after the stream is set up: a client sees only
  // output produced after that, so wait until the watcher sees the echo of a probe line.
  for (let i = 0; !watcher.text('stdout').includes('got:probe'); i++) {
    first.stream('stdin').write(`probe${i}\n`);
    await new Promise((r) => setTimeout(r, 100));
    if (i > 100) throw new Error('the watcher never saw output');
  }
  first.stream('stdin').write('hello\n');
  await until('the echo on both clients', () => first.text('stdout').endsWith('got:hello\n') && watcher.text('stdout').endsWith('got:hello\n'));
  t.regex(first.text('stdout'), /^(got:probe\d+\n)+got:hello\n$/, 'the stdin client sees every echo');
  // The first client goes away: with stdinOnce the container's stdin is closed, its loop ends.
  first.client.conn.destroy();
  await watcher.ended;
  t.true(watcher.text('stdout').endsWith('got:hello\nbye\n'));
  t.deepEqual(JSON.parse(watcher.text('error')), { metadata: {}, status: 'Success' });
  await until('the container to exit', async () => (await env.c.call('containerStatus', { containerId: id })).status!.state === ContainerState.CONTAINER_EXITED);
  const st = (await env.c.call('containerStatus', { containerId: id })).status!;
  t.is(st.exitCode, 0);
  t.regex(await logOf(env, id), /^started\n(got:probe\d+\n)+got:hello\nbye\n$/);
});

test.serial('attach with stdin to a container created without stdin fails; without stdinOnce stdin outlives a client', async (t) => {
  const env = await setup(t);
  const noStdin = await run(t, env, 'exec sleep 300');
  const refused = await spdyRemoteCommand((await env.c.call('attach', { containerId: noStdin, stdin: true, stdout: true })).url, { stdin: 'x', keepStdinOpen: true });
  t.regex(JSON.parse(refused.error).message, /not created with stdin/);

  const keep = await run(t, env, 'while read l; do echo got:$l; done', { stdin: true });
  for (const word of ['one', 'two']) {
    const client = await session((await env.c.call('attach', { containerId: keep, stdin: true, stdout: true })).url, ['error', 'stdin', 'stdout']);
    client.stream('stdin').write(`${word}\n`);
    await until(`the echo of ${word}`, () => client.text('stdout') === `got:${word}\n`);
    client.client.conn.destroy();
  }
  const st = (await env.c.call('containerStatus', { containerId: keep })).status!;
  t.is(st.state, ContainerState.CONTAINER_RUNNING);
  t.is(await logOf(env, keep), 'got:one\ngot:two\n');
});

test.serial('a client that disconnects mid-exec leaves no process behind and no descriptor open in the monitor', async (t) => {
  const env = await setup(t);
  const id = await run(t, env, 'exec sleep 300');
  const pid = await monitorPid(env);
  const fds = () => fs.readdirSync(`/proc/${pid}/fd`).length;
  // After a first exec the monitor holds what entering the container takes until it exits.
  t.is((await env.c.call('execSync', { containerId: id, cmd: ['true'], timeout: 10n })).exitCode, 0);
  // Let the daemon's own monitor connection settle.
  await new Promise((r) => setTimeout(r, 200));
  const before = fds();
  const seconds = String(7000 + Math.floor(Math.random() * 1000));

  for (const tty of [false, true]) {
    const { url } = await env.c.call('exec', { containerId: id, cmd: ['sh', '-c', `echo started; sleep ${seconds} & sleep ${seconds}`], tty, stdin: true, stdout: true });
    const client = await session(url, ['error', 'stdin', 'stdout', ...(tty ? ['resize'] : [])]);
    await until('the exec to start', () => client.text('stdout').includes('started') && pidsRunning(['sleep', seconds]).length === 2);
    t.true(fds() > before, 'the session holds descriptors in the monitor');
    client.client.conn.destroy();
    await until('both sleeps to be killed', () => pidsRunning(['sleep', seconds]).length === 0);
    await until('the monitor to release the session', () => fds() === before);
  }
  t.is(fds(), before);
  t.is((await env.c.call('containerStatus', { containerId: id })).status!.state, ContainerState.CONTAINER_RUNNING);
});

test.serial('exec over WebSocket v5: stdin closed with the close signal', async (t) => {
  const env = await setup(t);
  const id = await run(t, env, 'exec sleep 300');
  const { url } = await env.c.call('exec', { containerId: id, cmd: ['sh', '-c', 'cat; echo eof; echo err >&2; exit 5'], stdin: true, stdout: true, stderr: true });
  const ws = await connectWebSocket(url, ['v5.channel.k8s.io']);
  t.is(ws.protocol, 'v5.channel.k8s.io');
  sendChannel(ws, 0, 'over websocket\n');
  ws.send(Buffer.from([255, 0]));
  await ws.closed;
  t.is(channelData(ws, 1).toString(), 'over websocket\neof\n');
  t.is(channelData(ws, 2).toString(), 'err\n');
  const status = JSON.parse(channelData(ws, 3).toString());
  t.deepEqual(status.details.causes, [{ reason: 'ExitCode', message: '5' }]);
});

test.serial('port-forward to a host-network pod reaches a server on the host loopback', async (t) => {
  const env = await setup(t, NAMESPACE_NODE);
  const server = net.createServer((socket) => socket.pipe(socket));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => server.close());
  const port = (server.address() as net.AddressInfo).port;

  const { url } = await env.c.call('portForward', { podSandboxId: env.pod, port: [port] });
  const client = await connectSpdy(url, ['portforward.k8s.io']);
  t.teardown(() => client.conn.destroy());
  const error = client.conn.openStream({ streamtype: 'error', port: String(port), requestid: '0' });
  const data = client.conn.openStream({ streamtype: 'data', port: String(port), requestid: '0' });
  await Promise.all([error.waitReply(), data.waitReply()]);
  const echoed = readAll(data);
  data.write('ping through a host-network pod\n');
  data.end();
  t.is((await echoed).toString(), 'ping through a host-network pod\n');
  t.is((await readAll(error)).toString(), '');
});
