import * as http2 from 'node:http2';
import * as net from 'node:net';
import test from 'ava';
import { VersionRequest, VersionResponse } from '../../src/generated/runtime/v1/api';
import { TestDaemon } from '../fixtures/daemon';
import { GoLikeEncoder, H2_PREFACE, h2Frame } from '../fixtures/hpack_encoder';

/**
 * What reaches crisp's socket from clients other than grpc-js: Go clients send the socket path as
 * `:authority`, and broken or hostile clients send what no library would.
 */

function grpcMessage(payload: Uint8Array): Buffer {
  const header = Buffer.alloc(5);
  header.writeUInt32BE(payload.length, 1);
  return Buffer.concat([header, payload]);
}

/** One unary call over a raw HTTP/2 session, with the headers given. */
async function rawVersion(socket: string, authority: string, service: string, timeout = '1999857u'): Promise<{ status: number; grpcStatus?: string; reply?: VersionResponse }> {
  const session = http2.connect('http://localhost', { createConnection: () => net.connect(socket) });
  try {
    return await new Promise((resolve, reject) => {
      session.on('error', reject);
      const req = session.request({
        ':method': 'POST',
        ':path': `/${service}/Version`,
        ':authority': authority,
        'content-type': 'application/grpc',
        te: 'trailers',
        'user-agent': 'grpc-go/1.51.0',
        'grpc-timeout': timeout,
      });
      let status = 0;
      let grpcStatus: string | undefined;
      const body: Buffer[] = [];
      req.on('response', (h) => {
        status = Number(h[':status']);
        grpcStatus = h['grpc-status'] as string | undefined;
      });
      req.on('trailers', (h) => (grpcStatus = h['grpc-status'] as string | undefined));
      req.on('data', (d: Buffer) => body.push(d));
      req.on('error', reject);
      req.on('end', () => {
        const data = Buffer.concat(body);
        resolve({ status, grpcStatus, reply: data.length >= 5 ? VersionResponse.decode(data.subarray(5)) : undefined });
      });
      req.end(grpcMessage(VersionRequest.encode({ version: '0.1.0' }).finish()));
    });
  } finally {
    session.close();
  }
}

test('a raw HTTP/2 client sending the socket path (or any authority Go clients send) as :authority is served', async (t) => {
  const daemon = await TestDaemon.start();
  t.teardown(() => daemon.destroy());
  for (const service of ['runtime.v1.RuntimeService', 'runtime.v1alpha2.RuntimeService']) {
    for (const authority of [daemon.socket, encodeURIComponent(daemon.socket), 'localhost', '']) {
      const result = await rawVersion(daemon.socket, authority, service);
      t.is(result.status, 200, `${service} with :authority ${JSON.stringify(authority)}`);
      t.is(result.grpcStatus, '0');
      t.is(result.reply?.runtimeName, 'crisp');
      t.is(result.reply?.runtimeApiVersion, service.includes('v1alpha2') ? 'v1alpha2' : 'v1');
    }
  }
});

test('every grpc-timeout unit Go clients send is understood', async (t) => {
  const daemon = await TestDaemon.start();
  t.teardown(() => daemon.destroy());
  // grpc-go picks the unit that keeps the value within 8 digits.
  for (const timeout of ['99999999n', '1999857u', '120000m', '30S', '5M', '2H']) {
    const result = await rawVersion(daemon.socket, daemon.socket, 'runtime.v1.RuntimeService', timeout);
    t.is(result.grpcStatus, '0', `grpc-timeout ${timeout}`);
    t.is(result.reply?.runtimeName, 'crisp');
  }
});

/** Connects raw, says hello as HTTP/2 does, sends `frames`, and collects the server's frames until it closes. */
function rawExchange(socket: string, frames: Buffer[], timeoutMs = 20_000): Promise<{ goaway?: { code: number; lastStreamId: number; debug: string }; closed: boolean }> {
  return new Promise((resolve) => {
    const conn = net.connect(socket);
    const received: Buffer[] = [];
    const timer = setTimeout(() => conn.destroy(), timeoutMs);
    conn.on('data', (d: Buffer) => received.push(d));
    conn.on('error', () => {});
    conn.on('close', () => {
      clearTimeout(timer);
      const data = Buffer.concat(received);
      let goaway: { code: number; lastStreamId: number; debug: string } | undefined;
      for (let pos = 0; pos + 9 <= data.length; ) {
        const length = data.readUIntBE(pos, 3);
        if (data[pos + 3] === 7) {
          const p = data.subarray(pos + 9, pos + 9 + length);
          goaway = { lastStreamId: p.readUInt32BE(0), code: p.readUInt32BE(4), debug: p.subarray(8).toString() };
        }
        pos += 9 + length;
      }
      resolve({ goaway, closed: true });
    });
    conn.write(Buffer.concat([H2_PREFACE, h2Frame(4, 0, 0), ...frames]));
  });
}

const request = (encoder: GoLikeEncoder, streamId: number, extra: Array<{ name: string; value: string }> = []): Buffer =>
  h2Frame(
    1,
    0x4,
    streamId,
    encoder.encode([
      { name: ':method', value: 'POST' },
      { name: ':scheme', value: 'http' },
      { name: ':path', value: '/runtime.v1.RuntimeService/Version' },
      { name: ':authority', value: '/run/crisp/crisp.sock' },
      { name: 'content-type', value: 'application/grpc' },
      ...extra,
    ]),
  );

test('broken HTTP/2 from a client ends only its own connection, with the HTTP/2 error that fits', async (t) => {
  const daemon = await TestDaemon.start();
  t.teardown(() => daemon.destroy());
  const bystander = daemon.client();
  t.is((await bystander.call('version', {})).runtimeName, 'crisp');

  const cases: Array<[string, Buffer[], number]> = [
    ['bad HPACK', [request(new GoLikeEncoder(), 1), h2Frame(1, 0x5, 3, Buffer.from([0xbf, 0x80]))], 0x9],
    [
      'oversized header list',
      (() => {
        const block = new GoLikeEncoder().encode(Array.from({ length: 24 }, (_, i) => ({ name: `x-big-${i}`, value: 'v'.repeat(4000) })));
        const frames: Buffer[] = [];
        for (let at = 0; at < block.length; at += 16_000) frames.push(h2Frame(at === 0 ? 1 : 9, at + 16_000 >= block.length ? 0x4 : 0, 1, block.subarray(at, at + 16_000)));
        return frames;
      })(),
      0xb,
    ],
    ['CONTINUATION flood', [h2Frame(1, 0x1, 1, Buffer.from([0x82])), ...Array.from({ length: 64 }, () => h2Frame(9, 0, 1, Buffer.alloc(16_000, 0x82)))], 0xb],
  ];
  for (const [label, frames, code] of cases) {
    const result = await rawExchange(daemon.socket, frames);
    t.true(result.closed, `${label}: connection closed`);
    t.is(result.goaway?.code, code, `${label}: GOAWAY code`);
    t.is((await bystander.call('version', {})).runtimeName, 'crisp', `${label}: another connection still served`);
  }
  t.is(daemon.child?.exitCode, null, 'the daemon is alive');
});

test('a client that never finishes a frame is disconnected with GOAWAY', async (t) => {
  const daemon = await TestDaemon.start();
  t.teardown(() => daemon.destroy());
  const partial = request(new GoLikeEncoder(), 1).subarray(0, 20);
  const started = Date.now();
  const result = await rawExchange(daemon.socket, [partial], 30_000);
  t.is(result.goaway?.code, 0xb);
  t.regex(result.goaway!.debug, /not completed/);
  t.true(Date.now() - started < 25_000, 'closed by the server, not by the test timeout');
  t.is((await daemon.client().call('version', {})).runtimeName, 'crisp');
});
