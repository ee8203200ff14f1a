import test from 'ava';
import * as fs from 'node:fs';
import * as http2 from 'node:http2';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Duplex } from 'node:stream';
import { AuthorityFilter } from '../../src/server/http2/authority_filter';
import { gateConnection } from '../../src/server/http2/connection_gate';
import { GoLikeEncoder, H2_PREFACE, h2Frame } from '../fixtures/hpack_encoder';

/** A plain Node HTTP/2 server behind the gate on a temporary unix socket; it echoes :authority. */
async function gatedServer(t: import('ava').ExecutionContext) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'crisp-gate-'));
  const socket = path.join(dir, 's.sock');
  const h2 = http2.createServer();
  const injected: Duplex[] = [];
  const errors: unknown[] = [];
  h2.on('sessionError', (e) => errors.push(e));
  h2.on('stream', (stream, headers) => {
    stream.respond({ ':status': 200 });
    stream.end(String(headers[':authority']));
  });
  const listener = net.createServer((conn) =>
    gateConnection(conn, {
      inject: (c) => {
        injected.push(c);
        h2.emit('connection', c);
      },
    }),
  );
  await new Promise<void>((resolve) => listener.listen(socket, resolve));
  const sessions = new Set<http2.ServerHttp2Session>();
  h2.on('session', (s) => sessions.add(s));
  t.teardown(() => {
    for (const s of sessions) s.destroy();
    for (const c of injected) c.destroy();
    listener.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return { socket, injected, errors };
}

function get(session: http2.ClientHttp2Session, headers: http2.OutgoingHttpHeaders = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = session.request({ ':path': '/', ...headers });
    let body = '';
    req.on('data', (d) => (body += d));
    req.on('end', () => resolve(body));
    req.on('error', reject);
  });
}

test('a client whose first request has a valid :authority gets the bare socket, read natively', async (t) => {
  const { socket, injected, errors } = await gatedServer(t);
  const session = http2.connect('http://localhost', { createConnection: () => net.connect(socket) });
  t.teardown(() => session.destroy());
  t.is(await get(session), 'localhost:80');
  t.is(await get(session), 'localhost:80', 'a second request on the same connection');
  t.is(injected.length, 1);
  t.true(injected[0] instanceof net.Socket);
  t.deepEqual(errors, []);
});

test('a client sending the socket path as :authority gets the filter, and is served', async (t) => {
  const { socket, injected, errors } = await gatedServer(t);
  const session = http2.connect('http://localhost', { createConnection: () => net.connect(socket) });
  t.teardown(() => session.destroy());
  t.is(await get(session, { ':authority': socket }), 'localhost');
  for (let i = 0; i < 20; i++) t.is(await get(session, { ':authority': socket }), 'localhost');
  t.true(injected[0] instanceof AuthorityFilter);
  t.deepEqual(errors, []);
});

/** A raw client speaking as grpc-go does: preface, SETTINGS, then requests once it has the server's preface. */
function rawClient(socket: string) {
  const conn = net.connect(socket);
  const received: Buffer[] = [];
  conn.on('data', (d: Buffer) => received.push(d));
  conn.on('error', () => {});
  const frames = () => {
    const data = Buffer.concat(received);
    const out: Array<{ type: number; flags: number; streamId: number; payload: Buffer }> = [];
    for (let pos = 0; pos + 9 <= data.length; ) {
      const length = data.readUIntBE(pos, 3);
      if (pos + 9 + length > data.length) break;
      out.push({ type: data[pos + 3], flags: data[pos + 4], streamId: data.readUInt32BE(pos + 5), payload: data.subarray(pos + 9, pos + 9 + length) });
      pos += 9 + length;
    }
    return out;
  };
  const until = async (pred: () => boolean, ms = 3000) => {
    for (const start = Date.now(); !pred(); ) {
      if (Date.now() - start > ms) throw new Error(`no answer; frames so far: ${JSON.stringify(frames().map((f) => [f.type, f.flags]))}`);
      await new Promise((r) => setTimeout(r, 5));
    }
  };
  return { conn, frames, until };
}

const requestFrame = (encoder: GoLikeEncoder, streamId: number, authority: string) =>
  h2Frame(1, 0x5, streamId, encoder.encode([{ name: ':method', value: 'GET' }, { name: ':scheme', value: 'http' }, { name: ':path', value: '/' }, { name: ':authority', value: authority }]));

for (const authority of ['/run/crisp/crisp.sock', 'localhost']) {
  test(`a Go-like client (ACK, then requests) with :authority ${authority} is answered, and the server never sees the gate's ACK`, async (t) => {
    const { socket, errors } = await gatedServer(t);
    const client = rawClient(socket);
    t.teardown(() => client.conn.destroy());
    client.conn.write(Buffer.concat([H2_PREFACE, h2Frame(4, 0, 0)]));
    await client.until(() => client.frames().some((f) => f.type === 4 && !(f.flags & 1)));
    const encoder = new GoLikeEncoder();
    // ACK the gate's SETTINGS, send two requests; ACK the server's SETTINGS once they come.
    client.conn.write(Buffer.concat([h2Frame(4, 1, 0), requestFrame(encoder, 1, authority), requestFrame(encoder, 3, authority)]));
    await client.until(() => client.frames().filter((f) => f.type === 4 && !(f.flags & 1)).length >= 2);
    client.conn.write(h2Frame(4, 1, 0));
    await client.until(() => client.frames().filter((f) => f.type === 0 && f.flags & 1).length === 2);
    const bodies = client.frames().filter((f) => f.type === 0 && f.payload.length > 0).map((f) => f.payload.toString());
    t.deepEqual(bodies, ['localhost', 'localhost']);
    t.false(client.frames().some((f) => f.type === 7), 'no GOAWAY: the server saw one ACK for its one SETTINGS');
    t.deepEqual(errors, []);
  });
}

test('a client that never acknowledges the gate\'s SETTINGS is still answered', async (t) => {
  const { socket } = await gatedServer(t);
  const client = rawClient(socket);
  t.teardown(() => client.conn.destroy());
  client.conn.write(Buffer.concat([H2_PREFACE, h2Frame(4, 0, 0), requestFrame(new GoLikeEncoder(), 1, 'localhost')]));
  await client.until(() => client.frames().some((f) => f.type === 0 && f.flags & 1));
  t.is(client.frames().find((f) => f.type === 0 && f.payload.length > 0)?.payload.toString(), 'localhost');
});

test('a keep-alive PING from an idle client is answered before any request', async (t) => {
  const { socket, injected } = await gatedServer(t);
  const client = rawClient(socket);
  t.teardown(() => client.conn.destroy());
  client.conn.write(Buffer.concat([H2_PREFACE, h2Frame(4, 0, 0)]));
  await client.until(() => client.frames().length >= 1);
  client.conn.write(Buffer.concat([h2Frame(4, 1, 0), h2Frame(6, 0, 0, Buffer.from('pingpong'))]));
  await client.until(() => client.frames().some((f) => f.type === 6));
  const pong = client.frames().find((f) => f.type === 6)!;
  t.is(pong.flags, 1);
  t.is(pong.payload.toString(), 'pingpong');
  t.is(injected.length, 0, 'still waiting for the first request');
  client.conn.write(requestFrame(new GoLikeEncoder(), 1, 'localhost'));
  await client.until(() => client.frames().some((f) => f.type === 0 && f.flags & 1));
  t.true(injected[0] instanceof net.Socket);
});

test('bytes that are not HTTP/2 go to the server, which refuses them', async (t) => {
  const { socket, injected } = await gatedServer(t);
  const conn = net.connect(socket);
  t.teardown(() => conn.destroy());
  const closed = new Promise((resolve) => conn.on('close', resolve));
  conn.on('error', () => {});
  conn.resume();
  conn.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
  await closed;
  t.true(injected[0] instanceof AuthorityFilter);
});
