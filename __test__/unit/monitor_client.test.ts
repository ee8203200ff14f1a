import test from 'ava';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { MonitorClient, type MonitorEvent } from '../../src/sandbox/monitor_client';
import { monitorBinaryPath, processStartTime } from '../../src/sandbox/monitor_spawn';
import { CrispError } from '../../src/util/errors';

type Handler = (request: Record<string, unknown>, reply: (message: unknown) => void, conn: net.Socket) => void;

/** A stand-in monitor speaking the line protocol, driven by `handler`. */
async function fakeMonitor(t: { teardown(fn: () => void): void }, handler: Handler, socketPath?: string) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'crisp-test-monclient-'));
  const sockPath = socketPath ?? path.join(dir, 'monitor.sock');
  const conns = new Set<net.Socket>();
  const server = net.createServer((conn) => {
    conns.add(conn);
    conn.setEncoding('utf8');
    let buf = '';
    conn.on('data', (chunk: string) => {
      buf += chunk;
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        handler(JSON.parse(line) as Record<string, unknown>, (m) => conn.write(`${JSON.stringify(m)}\n`), conn);
      }
    });
    conn.on('close', () => conns.delete(conn));
  });
  await new Promise<void>((resolve) => server.listen(sockPath, resolve));
  t.teardown(() => {
    for (const c of conns) c.destroy();
    server.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return { sockPath, dir, server, conns };
}

const STATUS = {
  protocolVersion: 1,
  version: '0.1.0',
  sandboxId: 'sb',
  pid: 10,
  initPid: 11,
  startedAtMs: 1,
  state: 'running',
};

test('requests are correlated by id even when answered out of order', async (t) => {
  const held: Array<() => void> = [];
  const { sockPath } = await fakeMonitor(t, (req, reply) => {
    if (req.op === 'status') {
      // Answer the first status only after the second one.
      held.push(() => reply({ id: req.id, ok: true, result: { ...STATUS, pid: req.id } }));
      if (held.length === 2) held.reverse().forEach((f) => f());
    }
  });
  const client = await MonitorClient.connect(sockPath);
  t.teardown(() => client.close());
  const [a, b] = await Promise.all([client.status(), client.status()]);
  t.is(a.pid, 1);
  t.is(b.pid, 2);
  t.is(a.sandboxId, 'sb');
});

test('monitor errors keep their code and shutdown sends the grace period', async (t) => {
  let seenGrace: unknown;
  const { sockPath } = await fakeMonitor(t, (req, reply) => {
    if (req.op === 'shutdown') {
      seenGrace = req.graceMs;
      reply({ id: req.id, ok: true, result: {} });
    } else {
      reply({ id: req.id, ok: false, error: { code: 'unimplemented', message: `operation ${String(req.op)} is not supported` } });
    }
  });
  const client = await MonitorClient.connect(sockPath);
  t.teardown(() => client.close());
  const err = await t.throwsAsync(client['request']('exec', { containerId: 'c' }));
  t.true(err instanceof CrispError);
  t.is((err as CrispError).code, 'Unimplemented');
  t.regex(err!.message, /exec/);
  await client.shutdown(1500.7);
  t.is(seenGrace, 1500);
});

test('events reach listeners after subscribing', async (t) => {
  const ops: unknown[] = [];
  const { sockPath } = await fakeMonitor(t, (req, reply) => {
    ops.push(req.op);
    if (req.op === 'subscribe') {
      reply({ id: req.id, ok: true, result: {} });
      reply({ event: 'container_exit', containerId: 'c1', pid: 5, exitCode: 137, signal: 9, exitedAtMs: 2 });
      reply({ event: 'shutdown' });
    }
  });
  const client = await MonitorClient.connect(sockPath);
  t.teardown(() => client.close());
  const events: MonitorEvent[] = [];
  const seenBoth = new Promise<void>((resolve) => {
    void client.onEvent((e) => {
      events.push(e);
      if (events.length === 2) resolve();
    });
  });
  await seenBoth;
  const unsubscribe = await client.onEvent(() => undefined);
  unsubscribe();
  t.deepEqual(ops, ['subscribe'], 'a second listener reuses the subscription');
  t.deepEqual(events[0], { event: 'container_exit', containerId: 'c1', pid: 5, exitCode: 137, signal: 9, exitedAtMs: 2 });
  t.deepEqual(events[1], { event: 'shutdown' });
});

test('a monitor that goes away fails pending and later calls with Unavailable', async (t) => {
  const { sockPath } = await fakeMonitor(t, (_req, _reply, conn) => conn.destroy());
  const client = await MonitorClient.connect(sockPath);
  const closed = new Promise<Error | undefined>((resolve) => client.onClose(resolve));
  const err = await t.throwsAsync(client.status());
  t.is((err as CrispError).code, 'Unavailable');
  t.true(client.closed);
  t.is(((await closed) as CrispError).code, 'Unavailable');
  const again = await t.throwsAsync(client.status());
  t.is((again as CrispError).code, 'Unavailable');
});

test('requests time out with DeadlineExceeded and late answers are ignored', async (t) => {
  const { sockPath } = await fakeMonitor(t, (req, reply) => {
    setTimeout(() => reply({ id: req.id, ok: true, result: STATUS }), 150);
  });
  const client = await MonitorClient.connect(sockPath, { requestTimeoutMs: 50 });
  t.teardown(() => client.close());
  const err = await t.throwsAsync(client.status());
  t.is((err as CrispError).code, 'DeadlineExceeded');
  await new Promise((r) => setTimeout(r, 200));
  t.false(client.closed);
  t.is((await client.status(1000)).pid, 10);
});

test('no monitor: missing socket and refused connections are Unavailable', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'crisp-test-monclient-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const missing = await t.throwsAsync(MonitorClient.connect(path.join(dir, 'monitor.sock')));
  t.is((missing as CrispError).code, 'Unavailable');
  t.regex(missing!.message, /does not exist/);
  // A leftover file nobody listens on (what a killed monitor leaves) refuses connections.
  fs.writeFileSync(path.join(dir, 'stale.sock'), '');
  const refused = await t.throwsAsync(MonitorClient.connect(path.join(dir, 'stale.sock')));
  t.is((refused as CrispError).code, 'Unavailable');
  t.regex(refused!.message, /refused/);
});

test('socket paths longer than sun_path are reached through the directory', async (t) => {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'crisp-test-monclient-'));
  t.teardown(() => fs.rmSync(base, { recursive: true, force: true }));
  const deep = path.join(base, 'a'.repeat(60), 'b'.repeat(60));
  fs.mkdirSync(deep, { recursive: true });
  const sockPath = path.join(deep, 'monitor.sock');
  t.true(Buffer.byteLength(sockPath) > 107);
  // Bind it the way the monitor does for deep bundles: relative to an open directory.
  const dirFd = fs.openSync(deep, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
  t.teardown(() => fs.closeSync(dirFd));
  await fakeMonitor(t, (req, reply) => reply({ id: req.id, ok: true, result: STATUS }), `/proc/self/fd/${dirFd}/monitor.sock`);
  t.true(fs.statSync(sockPath).isSocket());
  const client = await MonitorClient.connect(sockPath);
  t.teardown(() => client.close());
  t.is((await client.status()).initPid, 11);
});

test('monitorBinaryPath honours CRISP_MONITOR_BIN and defaults to the release build', (t) => {
  t.is(monitorBinaryPath({ CRISP_MONITOR_BIN: 'rel/bin' }), path.resolve('rel/bin'));
  const def = monitorBinaryPath({});
  t.true(def.endsWith(path.join('target', 'release', 'crisp-monitor')));
  // dist/src/sandbox -> package root
  t.is(path.dirname(path.dirname(path.dirname(def))), path.resolve(__dirname, '..', '..', '..'));
});

test('processStartTime reads /proc/<pid>/stat', async (t) => {
  const own = await processStartTime(process.pid);
  t.true(typeof own === 'number' && own > 0);
  t.is(await processStartTime(2 ** 22 + 1), undefined);
});
