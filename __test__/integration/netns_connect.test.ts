/**
 * NativeCore.connectInNetns against real network namespaces (root only): the connection lands on
 * the pod's loopback rather than the host's, no thread of this process is left in the pod's
 * namespace, and the descriptor goes away with its socket. Build the addon first:
 * `bash scripts/build-native.sh`.
 */
import test, { type ExecutionContext } from 'ava';
import { spawn, type ChildProcess } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { loadNative, nativeErrorCode, type NativeCore } from '../../src/native/index';
import { CrispError } from '../../src/util/errors';
import { createNetns, deleteNetns, runOk } from '../fixtures/netns';

const isRoot = process.getuid?.() === 0;
const serial = isRoot ? test.serial : test.serial.skip;
const hasIPv6 = fs.existsSync('/proc/sys/net/ipv6');

const nsName = `crisp-pf-${crypto.randomBytes(4).toString('hex')}`;
let nsPath = '';
/** Servers started inside the namespace; killed in teardown. */
const servers: ChildProcess[] = [];
let core: NativeCore;

/** Node program run inside the namespace: greets with its netns link, then echoes. */
const ECHO_SERVER = `
const net = require('node:net');
const fs = require('node:fs');
const [host, port] = process.argv.slice(1);
const netns = fs.readlinkSync('/proc/self/ns/net');
net.createServer((s) => { s.write(netns + '\\n'); s.pipe(s); })
  .listen({ host, port: Number(port) }, () => console.log('listening'));
`;

/** Perl program run inside the namespace: a listener that never accepts, with the smallest backlog. */
const STALLED_LISTENER = `
$| = 1;
my $s = IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => $ARGV[0], Listen => 0, ReuseAddr => 1)
  or die "listen: $!";
print "listening\\n";
sleep 600;
`;

test.before(async () => {
  if (!isRoot) return;
  core = loadNative();
  nsPath = await createNetns(nsName);
  await runOk('ip', ['-n', nsName, 'link', 'set', 'lo', 'up']);
});

test.after.always(async () => {
  for (const server of servers) server.kill('SIGKILL');
  await Promise.all(servers.map((s) => (s.exitCode === null && s.signalCode === null ? new Promise((r) => s.once('exit', r)) : null)));
  if (isRoot) await deleteNetns(nsName);
});

/** Starts `argv` inside the namespace and waits until it prints "listening". */
function startInNetns(argv: string[]): Promise<ChildProcess> {
  const child = spawn('ip', ['netns', 'exec', nsName, ...argv], { stdio: ['ignore', 'pipe', 'pipe'] });
  servers.push(child);
  return new Promise((resolve, reject) => {
    let stderr = '';
    const timer = setTimeout(() => reject(new Error(`${argv[0]} did not start listening: ${stderr}`)), 10_000);
    child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.stdout!.on('data', (chunk: Buffer) => {
      if (chunk.toString().includes('listening')) {
        clearTimeout(timer);
        resolve(child);
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${argv[0]} exited ${code} before listening: ${stderr}`));
    });
  });
}

const startEchoServer = (host: string, port: number) =>
  startInNetns([process.execPath, '-e', ECHO_SERVER, host, String(port)]);

/** The `net:[inode]` link naming the namespace pinned at `file`. */
function netnsLink(file: string): string {
  return `net:[${fs.statSync(file).ino}]`;
}

/** The network namespace of every thread of this process, by thread id. */
function threadNamespaces(): Map<string, string> {
  const out = new Map<string, string>();
  for (const tid of fs.readdirSync('/proc/self/task')) {
    try {
      out.set(tid, fs.readlinkSync(`/proc/self/task/${tid}/ns/net`));
    } catch {
      // The thread exited while we looked.
    }
  }
  return out;
}

/** A finished thread can linger in /proc for a moment while the kernel completes its exit. */
async function assertNoThreadIn(t: ExecutionContext, link: string): Promise<void> {
  const deadline = Date.now() + 2_000;
  for (;;) {
    const stuck = [...threadNamespaces()].filter(([, ns]) => ns === link).map(([tid]) => tid);
    if (stuck.length === 0) break;
    if (Date.now() > deadline) {
      t.fail(`threads ${stuck.join(', ')} stayed in the pod network namespace`);
      return;
    }
    await new Promise((r) => setTimeout(r, 10));
  }
  t.pass();
}

/** Descriptors of this process whose target is `target` (e.g. `socket:[123]`). */
function descriptorsOf(target: string): string[] {
  return fs.readdirSync('/proc/self/fd').filter((fd) => {
    try {
      return fs.readlinkSync(`/proc/self/fd/${fd}`) === target;
    } catch {
      return false;
    }
  });
}

/** Wraps `fd` in a socket, reads the server's greeting line, then echoes `payload` through it. */
async function greetAndEcho(fd: number, payload: string): Promise<{ greeting: string; echoed: string; socket: net.Socket }> {
  const socket = new net.Socket({ fd, readable: true, writable: true });
  let received = '';
  socket.setEncoding('utf8');
  const done = new Promise<void>((resolve, reject) => {
    socket.on('data', (chunk: string) => {
      received += chunk;
      const newline = received.indexOf('\n');
      if (newline >= 0 && received.length - newline - 1 >= payload.length) resolve();
    });
    socket.once('error', reject);
    socket.once('close', () => reject(new Error(`closed after ${JSON.stringify(received)}`)));
  });
  socket.write(payload);
  await done;
  const newline = received.indexOf('\n');
  return { greeting: received.slice(0, newline), echoed: received.slice(newline + 1), socket };
}

function destroyed(socket: net.Socket): Promise<void> {
  return new Promise((resolve) => {
    socket.once('close', () => resolve());
    socket.destroy();
  });
}

serial('connects to the pod loopback, leaves no thread there and releases the descriptor with the socket', async (t) => {
  await startEchoServer('127.0.0.1', 8080);
  const hostNs = fs.readlinkSync('/proc/self/ns/net');
  const podNs = netnsLink(nsPath);
  t.not(podNs, hostNs);
  t.true([...threadNamespaces().values()].every((ns) => ns === hostNs), 'every thread starts in the host namespace');

  const fd = await core.connectInNetns(nsPath, 8080);
  const target = fs.readlinkSync(`/proc/self/fd/${fd}`);
  t.regex(target, /^socket:\[\d+\]$/);
  const flags = parseInt(/^flags:\s+(\d+)$/m.exec(fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))![1]!, 8);
  t.truthy(flags & 0o2000000, 'the descriptor is close-on-exec');

  const { greeting, echoed, socket } = await greetAndEcho(fd, 'ping through the pod loopback');
  t.is(greeting, podNs, 'the server that answered runs in the pod namespace');
  t.is(echoed, 'ping through the pod loopback');

  await assertNoThreadIn(t, podNs);
  t.true([...threadNamespaces().values()].every((ns) => ns === hostNs), 'every thread is still in the host namespace');

  await destroyed(socket);
  t.deepEqual(descriptorsOf(target), [], 'the socket descriptor is closed');
});

serial('falls back to the IPv6 loopback', async (t) => {
  if (!hasIPv6) {
    t.log('no IPv6 on this host');
    t.pass();
    return;
  }
  await startEchoServer('::1', 8081);
  const fd = await core.connectInNetns(nsPath, 8081);
  const { greeting, echoed, socket } = await greetAndEcho(fd, 'six');
  t.is(greeting, netnsLink(nsPath));
  t.is(echoed, 'six');
  t.is(socket.remoteAddress, '::1');
  await destroyed(socket);
});

serial('host-network pods connect in the host namespace', async (t) => {
  const server = net.createServer((s) => {
    s.write(`${fs.readlinkSync('/proc/self/ns/net')}\n`);
    s.pipe(s);
  });
  await new Promise<void>((resolve) => server.listen({ host: '127.0.0.1', port: 0 }, resolve));
  t.teardown(() => server.close());
  const port = (server.address() as net.AddressInfo).port;

  const fd = await core.connectInNetns(undefined, port);
  const { greeting, echoed, socket } = await greetAndEcho(fd, 'host');
  t.is(greeting, fs.readlinkSync('/proc/self/ns/net'));
  t.is(echoed, 'host');
  await destroyed(socket);
});

serial('a port open only on the host is refused in the pod namespace', async (t) => {
  const server = net.createServer((s) => s.destroy());
  await new Promise<void>((resolve) => server.listen({ host: '127.0.0.1', port: 0 }, resolve));
  t.teardown(() => server.close());
  const port = (server.address() as net.AddressInfo).port;

  const err = await t.throwsAsync(core.connectInNetns(nsPath, port), { instanceOf: CrispError });
  t.is(err!.code, 'Unavailable');
  t.is(err!.message, `connection refused on port ${port} in the pod network namespace`);
  t.is(nativeErrorCode(err!.cause), 'ECONNREFUSED');
  await assertNoThreadIn(t, netnsLink(nsPath));
});

serial('a listener that drops connection attempts times out', async (t) => {
  await startInNetns(['perl', '-MIO::Socket::INET', '-e', STALLED_LISTENER, '8082']);
  // The first connections fill the accept queue; after that the kernel drops the SYNs.
  const queued: number[] = [];
  t.teardown(() => queued.forEach((fd) => fs.closeSync(fd)));
  let err: unknown;
  for (let i = 0; i < 8 && err === undefined; i++) {
    const started = Date.now();
    try {
      queued.push(await core.connectInNetns(nsPath, 8082, 200));
    } catch (e) {
      err = e;
      const elapsed = Date.now() - started;
      t.true(elapsed >= 190 && elapsed < 1_500, `gave up after ${elapsed}ms`);
    }
  }
  t.true(err instanceof CrispError, String(err));
  t.is((err as CrispError).code, 'DeadlineExceeded');
  t.is(nativeErrorCode((err as CrispError).cause), 'ETIMEDOUT');
});

serial('a missing namespace is NotFound and a file that is not one is FailedPrecondition', async (t) => {
  const missing = await t.throwsAsync(core.connectInNetns(`${nsPath}-missing`, 8080), { instanceOf: CrispError });
  t.is(missing!.code, 'NotFound');
  t.is(nativeErrorCode(missing!.cause), 'ENOENT');

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'crisp-test-netns-connect-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const regular = path.join(dir, 'net');
  fs.writeFileSync(regular, '');
  const notNetns = await t.throwsAsync(core.connectInNetns(regular, 8080), { instanceOf: CrispError });
  t.is(notNetns!.code, 'FailedPrecondition');
  t.is(nativeErrorCode(notNetns!.cause), 'EINVAL');
});

serial('ports outside 1-65535 are InvalidArgument', async (t) => {
  for (const port of [0, 65536, 80.5, Number.NaN]) {
    const err = await t.throwsAsync(core.connectInNetns(nsPath, port), { instanceOf: CrispError });
    t.is(err!.code, 'InvalidArgument');
  }
});
