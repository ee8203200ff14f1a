/**
 * The streaming server end to end over loopback: SPDY and WebSocket clients written from the
 * protocol descriptions, against a backend that runs real host processes (exec/attach) and
 * connects to a real TCP echo server (port forward).
 */
import test, { type ExecutionContext } from 'ava';
import { spawn, type ChildProcess } from 'node:child_process';
import { EventEmitter, once } from 'node:events';
import * as net from 'node:net';
import type { Duplex } from 'node:stream';
import { silentLogger } from '../../src/log';
import { StreamingServer } from '../../src/streaming/server';
import type { AttachCall, ExecCall, StreamingBackend, StreamingIO, TerminalSize } from '../../src/streaming/types';
import { connectSpdy, readAll, spdyRemoteCommand, UpgradeRefused } from '../fixtures/spdy_client';
import { channelData, connectWebSocket, sendChannel, WsRefused } from '../fixtures/ws_client';

/** Runs commands as host processes; records what the server handed it. */
class ProcessBackend extends EventEmitter implements StreamingBackend {
  readonly children = new Set<ChildProcess>();
  readonly resizes: TerminalSize[] = [];
  readonly aborted: string[] = [];
  readonly exits: { pid: number; signal: NodeJS.Signals | null }[] = [];

  async exec(call: ExecCall, io: StreamingIO): Promise<{ exitCode: number }> {
    const [file, ...args] = call.cmd;
    const child = spawn(file!, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    this.children.add(child);
    const onAbort = (): void => {
      this.aborted.push(call.containerId);
      child.kill('SIGKILL');
    };
    call.signal.addEventListener('abort', onAbort, { once: true });
    if (io.resize) {
      void (async () => {
        for await (const size of io.resize!) this.resizes.push(size);
      })();
    }
    child.stdin.on('error', () => undefined);
    if (io.stdin) io.stdin.pipe(child.stdin);
    else child.stdin.end();
    const outputs: Promise<unknown>[] = [];
    if (io.stdout) {
      child.stdout.pipe(io.stdout, { end: false });
      outputs.push(once(child.stdout, 'end'));
    } else child.stdout.resume();
    const errTarget = io.stderr ?? (io.tty ? io.stdout : undefined);
    if (errTarget) {
      child.stderr.pipe(errTarget, { end: false });
      outputs.push(once(child.stderr, 'end'));
    } else child.stderr.resume();
    this.emit('spawned', child.pid);
    const [code, signal] = (await once(child, 'exit')) as [number | null, NodeJS.Signals | null];
    await Promise.all(outputs);
    call.signal.removeEventListener('abort', onAbort);
    this.children.delete(child);
    this.exits.push({ pid: child.pid!, signal });
    if (io.stdin) io.stdin.unpipe(child.stdin);
    return { exitCode: code ?? 128 + 9 };
  }

  async attach(call: AttachCall, io: StreamingIO): Promise<void> {
    if (call.containerId === 'missing') throw new Error(`container ${call.containerId} is not running`);
    // A stand-in main process: echoes stdin to stdout until stdin ends.
    if (io.stdin && io.stdout) {
      io.stdin.pipe(io.stdout, { end: false });
      await once(io.stdin, 'end');
    }
  }

  async portForward(_pod: string, port: number, conn: Duplex, signal: AbortSignal): Promise<void> {
    const socket = net.connect(port, '127.0.0.1');
    const onAbort = (): void => {
      socket.destroy();
    };
    signal.addEventListener('abort', onAbort, { once: true });
    try {
      await once(socket, 'connect');
      conn.pipe(socket);
      socket.pipe(conn);
      await Promise.race([once(socket, 'close'), once(conn, 'close')]);
    } finally {
      signal.removeEventListener('abort', onAbort);
      socket.destroy();
    }
  }
}

interface Fixture {
  server: StreamingServer;
  backend: ProcessBackend;
}

async function startServer(t: ExecutionContext, options: { tokenTtlMs?: number; streamCreationTimeoutMs?: number } = {}): Promise<Fixture> {
  const backend = new ProcessBackend();
  const server = new StreamingServer({
    address: '127.0.0.1',
    port: 0,
    backend,
    log: silentLogger(),
    tokenTtlMs: options.tokenTtlMs,
    streamCreationTimeoutMs: options.streamCreationTimeoutMs ?? 5000,
  });
  await server.start();
  t.teardown(async () => {
    await server.close();
    for (const child of backend.children) child.kill('SIGKILL');
  });
  return { server, backend };
}

/** A TCP server that echoes what it receives and closes its side when the client does. */
async function echoServer(t: ExecutionContext, prefix = ''): Promise<number> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    if (prefix) socket.write(prefix);
    socket.pipe(socket);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  t.teardown(() => {
    for (const s of sockets) s.destroy();
    server.close();
  });
  return (server.address() as net.AddressInfo).port;
}

const exec = (cmd: string[], streams: { stdin?: boolean; stdout?: boolean; stderr?: boolean; tty?: boolean } = {}) => ({
  containerId: 'c1',
  cmd,
  stdin: streams.stdin ?? false,
  stdout: streams.stdout ?? true,
  stderr: streams.stderr ?? false,
  tty: streams.tty ?? false,
});

test('URLs name the server, carry a fresh token, and invalid requests are refused', async (t) => {
  const { server } = await startServer(t);
  const url = server.getExecUrl(exec(['true']));
  t.regex(url, new RegExp(`^${server.url()}/exec/[A-Za-z0-9_-]{11}$`));
  t.not(server.getExecUrl(exec(['true'])), url);
  t.regex(server.getAttachUrl({ containerId: 'c1', stdin: true, stdout: true, stderr: false, tty: true }), /\/attach\//);
  t.regex(server.getPortForwardUrl({ podSandboxId: 'p1', ports: [80] }), /\/portforward\//);
  t.throws(() => server.getExecUrl(exec(['sh'], { tty: true, stderr: true })), { message: /tty and stderr/ });
  t.throws(() => server.getExecUrl(exec(['sh'], { stdout: false })), { message: /one of stdin, stdout, or stderr/ });
  t.throws(() => server.getExecUrl({ ...exec(['sh']), containerId: '' }), { message: /container_id/ });
  t.throws(() => server.getPortForwardUrl({ podSandboxId: 'p1', ports: [70000] }), { message: /invalid port/ });
});

test('SPDY exec: stdout of echo and a Success status on the v4 error stream', async (t) => {
  const { server } = await startServer(t);
  const result = await spdyRemoteCommand(server.getExecUrl(exec(['sh', '-c', 'echo hello'])), {});
  t.is(result.protocol, 'v4.channel.k8s.io');
  t.is(result.stdout, 'hello\n');
  t.deepEqual(JSON.parse(result.error), { metadata: {}, status: 'Success' });
});

test('SPDY exec: a non-zero exit reports NonZeroExitCode with the code as a cause', async (t) => {
  const { server } = await startServer(t);
  const result = await spdyRemoteCommand(server.getExecUrl(exec(['sh', '-c', 'exit 3'])), {});
  const status = JSON.parse(result.error) as Record<string, unknown>;
  t.is(status.status, 'Failure');
  t.is(status.reason, 'NonZeroExitCode');
  t.deepEqual(status.details, { causes: [{ reason: 'ExitCode', message: '3' }] });
  t.regex(String(status.message), /exit code 3/);
});

test('SPDY exec: older protocols get only the failure text, and nothing on success', async (t) => {
  const { server } = await startServer(t);
  const failed = await spdyRemoteCommand(server.getExecUrl(exec(['sh', '-c', 'exit 5'])), { protocols: ['v3.channel.k8s.io'] });
  t.is(failed.protocol, 'v3.channel.k8s.io');
  t.regex(failed.error, /^command terminated with non-zero exit code: .*exit code 5$/);
  const ok = await spdyRemoteCommand(server.getExecUrl(exec(['true'])), { protocols: ['v2.channel.k8s.io'] });
  t.is(ok.protocol, 'v2.channel.k8s.io');
  t.is(ok.error, '');
});

test('SPDY exec: stdin reaches the process and its FIN is EOF; stdout and stderr stay apart', async (t) => {
  const { server } = await startServer(t);
  const payload = Buffer.alloc(300 * 1024, 'abcdefgh').toString();
  const result = await spdyRemoteCommand(server.getExecUrl(exec(['sh', '-c', 'cat; echo done >&2'], { stdin: true, stderr: true })), { stdin: payload, stderr: true });
  t.is(result.stdout.length, payload.length);
  t.true(result.stdout === payload);
  t.is(result.stderr, 'done\n');
  t.deepEqual(JSON.parse(result.error), { metadata: {}, status: 'Success' });
});

test('SPDY exec with a tty: resize events reach the backend', async (t) => {
  const { server, backend } = await startServer(t);
  const url = server.getExecUrl(exec(['sh', '-c', 'read line; echo "got $line"'], { stdin: true, tty: true }));
  const result = await spdyRemoteCommand(url, { tty: true, stdin: 'hi\n', resize: [{ Width: 80, Height: 24 }] });
  t.is(result.stdout, 'got hi\n');
  t.deepEqual(backend.resizes, [{ width: 80, height: 24 }]);
});

test('SPDY attach: stdin is echoed through the attached process', async (t) => {
  const { server } = await startServer(t);
  const url = server.getAttachUrl({ containerId: 'c1', stdin: true, stdout: true, stderr: false, tty: false });
  const result = await spdyRemoteCommand(url, { stdin: 'attached\n' });
  t.is(result.stdout, 'attached\n');
  t.deepEqual(JSON.parse(result.error), { metadata: {}, status: 'Success' });
});

test('SPDY attach: a backend failure is an InternalError status', async (t) => {
  const { server } = await startServer(t);
  const url = server.getAttachUrl({ containerId: 'missing', stdin: false, stdout: true, stderr: false, tty: false });
  const result = await spdyRemoteCommand(url, {});
  const status = JSON.parse(result.error) as Record<string, unknown>;
  t.is(status.reason, 'InternalError');
  t.is(status.code, 500);
  t.regex(String(status.message), /error attaching to container: container missing is not running/);
});

test('tokens are single use, expire, and unknown paths are 404', async (t) => {
  const { server } = await startServer(t, { tokenTtlMs: 200 });
  const url = server.getExecUrl(exec(['true']));
  await spdyRemoteCommand(url, {});
  const reused = await t.throwsAsync(spdyRemoteCommand(url, {}), { instanceOf: UpgradeRefused });
  t.is(reused.statusCode, 404);

  const expiring = server.getExecUrl(exec(['true']));
  await new Promise((r) => setTimeout(r, 300));
  const expired = await t.throwsAsync(connectSpdy(expiring, ['v4.channel.k8s.io']), { instanceOf: UpgradeRefused });
  t.is(expired.statusCode, 404);

  const wrongKind = server.getAttachUrl({ containerId: 'c1', stdin: false, stdout: true, stderr: false, tty: false }).replace('/attach/', '/exec/');
  t.is((await t.throwsAsync(connectSpdy(wrongKind, ['v4.channel.k8s.io']), { instanceOf: UpgradeRefused })).statusCode, 404);
  t.is((await t.throwsAsync(connectWebSocket(`${server.url()}/exec/nosuchtoken`, ['v4.channel.k8s.io']), { instanceOf: WsRefused })).statusCode, 404);
});

test('SPDY protocol negotiation refuses clients with no common protocol', async (t) => {
  const { server } = await startServer(t);
  const refused = await t.throwsAsync(connectSpdy(server.getExecUrl(exec(['true'])), ['v9.channel.k8s.io']), { instanceOf: UpgradeRefused });
  t.is(refused.statusCode, 403);
  t.regex(refused.body, /unable to negotiate protocol/);
  t.regex(String(refused.headers['x-accept-stream-protocol-version']), /v4\.channel\.k8s\.io/);
  const client = await connectSpdy(server.getPortForwardUrl({ podSandboxId: 'p', ports: [] }), ['portforward.k8s.io']);
  t.is(client.protocol, 'portforward.k8s.io');
  client.conn.destroy();
});

test('a client that disconnects mid-exec aborts the backend and the process is killed', async (t) => {
  const { server, backend } = await startServer(t);
  const url = server.getExecUrl(exec(['sleep', '30'], { stdin: true }));
  const client = await connectSpdy(url, ['v4.channel.k8s.io']);
  const spawned = once(backend, 'spawned') as Promise<[number]>;
  for (const type of ['error', 'stdin', 'stdout']) client.conn.openStream({ streamtype: type }).on('error', () => undefined);
  const [pid] = await spawned;
  client.socket.destroy();
  const deadline = Date.now() + 5000;
  while (backend.exits.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  t.deepEqual(backend.aborted, ['c1']);
  t.deepEqual(backend.exits, [{ pid, signal: 'SIGKILL' }]);
  t.is(backend.children.size, 0);
});

test('SPDY port forward: two concurrent connections (request ids) to an echo server', async (t) => {
  const { server } = await startServer(t);
  const port = await echoServer(t);
  const client = await connectSpdy(server.getPortForwardUrl({ podSandboxId: 'pod1', ports: [] }), ['portforward.k8s.io']);
  t.teardown(() => client.conn.destroy());
  const forward = async (requestId: string, payload: string): Promise<[string, string]> => {
    const error = client.conn.openStream({ streamtype: 'error', port: String(port), requestid: requestId });
    const data = client.conn.openStream({ streamtype: 'data', port: String(port), requestid: requestId });
    await Promise.all([error.waitReply(), data.waitReply()]);
    const echoed = readAll(data);
    const errors = readAll(error);
    data.write(payload);
    data.end();
    return [(await echoed).toString(), (await errors).toString()];
  };
  const big = 'y'.repeat(200 * 1024);
  const [a, b] = await Promise.all([forward('0', `first ${big}`), forward('1', 'second')]);
  t.true(a[0] === `first ${big}`);
  t.deepEqual(b, ['second', '']);
  t.is(a[1], '');
});

test('SPDY port forward: a connection failure is reported on the error stream', async (t) => {
  const { server } = await startServer(t);
  const closed = await echoServer(t);
  const client = await connectSpdy(server.getPortForwardUrl({ podSandboxId: 'pod1', ports: [] }), ['portforward.k8s.io']);
  t.teardown(() => client.conn.destroy());
  // A port nobody listens on: take a free one and close it again.
  const probe = net.createServer();
  await new Promise<void>((r) => probe.listen(0, '127.0.0.1', () => r()));
  const deadPort = (probe.address() as net.AddressInfo).port;
  await new Promise<void>((r) => probe.close(() => r()));
  t.not(deadPort, closed);
  const error = client.conn.openStream({ streamtype: 'error', port: String(deadPort), requestid: '7' });
  const data = client.conn.openStream({ streamtype: 'data', port: String(deadPort), requestid: '7' });
  data.on('error', () => undefined);
  const message = JSON.parse((await readAll(error)).toString()) as { message: string; closeConnection?: boolean };
  t.regex(message.message, new RegExp(`error forwarding port ${deadPort} to pod pod1`));
  t.true(message.closeConnection);
});

test('SPDY port forward: streams for ports outside the request are refused', async (t) => {
  const { server } = await startServer(t);
  const port = await echoServer(t);
  const client = await connectSpdy(server.getPortForwardUrl({ podSandboxId: 'pod1', ports: [port] }), ['portforward.k8s.io']);
  t.teardown(() => client.conn.destroy());
  const stream = client.conn.openStream({ streamtype: 'data', port: String(port === 65535 ? 1 : port + 1), requestid: '0' });
  stream.on('error', () => undefined);
  const err = await t.throwsAsync(stream.waitReply());
  t.regex(err.message, /reset by the peer \(status 3\)/);
});

for (const protocol of ['v5.channel.k8s.io', 'v4.channel.k8s.io', 'v4.base64.channel.k8s.io', 'channel.k8s.io', 'base64.channel.k8s.io']) {
  test(`WebSocket exec over ${protocol}`, async (t) => {
    const { server } = await startServer(t);
    const ws = await connectWebSocket(server.getExecUrl(exec(['sh', '-c', 'echo out; echo err >&2; exit 3'], { stderr: true })), [protocol]);
    t.is(ws.protocol, protocol);
    const code = await ws.closed;
    t.is(code, 1000);
    t.is(channelData(ws, 1).toString(), 'out\n');
    t.is(channelData(ws, 2).toString(), 'err\n');
    const error = channelData(ws, 3).toString();
    if (protocol.startsWith('v4') || protocol.startsWith('v5')) {
      const status = JSON.parse(error) as { reason: string; details: unknown };
      t.is(status.reason, 'NonZeroExitCode');
      t.deepEqual(status.details, { causes: [{ reason: 'ExitCode', message: '3' }] });
    } else {
      t.regex(error, /^command terminated with non-zero exit code/);
    }
    // The first message is the empty readiness signal on stdout.
    const first = ws.messages[0]!.data;
    t.is(first.length, 1);
  });
}

test('WebSocket exec v5: the close signal half-closes stdin', async (t) => {
  const { server } = await startServer(t);
  const ws = await connectWebSocket(server.getExecUrl(exec(['sh', '-c', 'cat; echo eof'], { stdin: true })), ['v5.channel.k8s.io', 'v4.channel.k8s.io']);
  t.is(ws.protocol, 'v5.channel.k8s.io');
  sendChannel(ws, 0, 'line one\n');
  ws.sendFragmented(Buffer.concat([Buffer.from([0]), Buffer.from('line two\n')]), 3);
  ws.send(Buffer.from([255, 0]));
  await ws.closed;
  t.is(channelData(ws, 1).toString(), 'line one\nline two\neof\n');
  t.deepEqual(JSON.parse(channelData(ws, 3).toString()), { metadata: {}, status: 'Success' });
});

test('WebSocket exec with a tty: resize messages reach the backend', async (t) => {
  const { server, backend } = await startServer(t);
  const ws = await connectWebSocket(server.getExecUrl(exec(['sh', '-c', 'read line; echo "got $line"'], { stdin: true, tty: true })), ['v4.channel.k8s.io']);
  sendChannel(ws, 4, JSON.stringify({ Width: 120, Height: 40 }));
  sendChannel(ws, 0, 'x\n');
  await ws.closed;
  t.is(channelData(ws, 1).toString(), 'got x\n');
  t.deepEqual(backend.resizes, [{ width: 120, height: 40 }]);
});

test('WebSocket: unsupported subprotocols are refused and closing mid-exec kills the process', async (t) => {
  const { server, backend } = await startServer(t);
  const refused = await t.throwsAsync(connectWebSocket(server.getExecUrl(exec(['true'])), ['v9.channel.k8s.io']), { instanceOf: WsRefused });
  t.is(refused.statusCode, 403);

  const spawned = once(backend, 'spawned');
  const ws = await connectWebSocket(server.getExecUrl(exec(['sleep', '30'])), ['v4.channel.k8s.io']);
  await spawned;
  ws.close();
  const deadline = Date.now() + 5000;
  while (backend.exits.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  t.is(backend.exits[0]?.signal, 'SIGKILL');
  t.deepEqual(backend.aborted, ['c1']);
});

for (const protocol of ['v4.channel.k8s.io', 'v4.base64.channel.k8s.io']) {
  test(`WebSocket port forward over ${protocol}: a channel pair per port, port first`, async (t) => {
    const { server } = await startServer(t);
    const portA = await echoServer(t, 'A:');
    const portB = await echoServer(t, 'B:');
    const ws = await connectWebSocket(server.getPortForwardUrl({ podSandboxId: 'pod1', ports: [portA, portB] }), [protocol]);
    t.is(ws.protocol, protocol);
    sendChannel(ws, 0, 'to a');
    sendChannel(ws, 2, 'to b');
    const has = (channel: number, text: string) => async () => {
      for (let i = 0; i < 200 && !channelData(ws, channel).includes(text); i++) await new Promise((r) => setTimeout(r, 10));
      return channelData(ws, channel);
    };
    const dataA = await has(0, 'to a')();
    const dataB = await has(2, 'to b')();
    const portPrefix = (p: number) => {
      const b = Buffer.alloc(2);
      b.writeUInt16LE(p);
      return b;
    };
    t.deepEqual(dataA, Buffer.concat([portPrefix(portA), Buffer.from('A:to a')]));
    t.deepEqual(dataB, Buffer.concat([portPrefix(portB), Buffer.from('B:to b')]));
    t.deepEqual(channelData(ws, 1), portPrefix(portA));
    t.deepEqual(channelData(ws, 3), portPrefix(portB));
    ws.close();
    await ws.closed;
    t.pass();
  });
}

test('server close aborts running sessions', async (t) => {
  const { server, backend } = await startServer(t);
  const spawned = once(backend, 'spawned');
  const ws = await connectWebSocket(server.getExecUrl(exec(['sleep', '30'])), ['v4.channel.k8s.io']);
  await spawned;
  await server.close();
  await ws.closed;
  t.is(backend.exits[0]?.signal, 'SIGKILL');
});

test('a SPDY client that does not open all its streams in time is disconnected without running anything', async (t) => {
  const { server, backend } = await startServer(t, { streamCreationTimeoutMs: 200 });
  const client = await connectSpdy(server.getExecUrl(exec(['true'], { stdin: true })), ['v4.channel.k8s.io']);
  const error = client.conn.openStream({ streamtype: 'error' });
  error.on('error', () => undefined);
  await error.waitReply();
  await once(client.conn, 'close');
  t.is(backend.exits.length, 0);
});
