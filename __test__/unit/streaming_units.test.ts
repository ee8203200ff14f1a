import test from 'ava';
import type { IncomingMessage } from 'node:http';
import * as crypto from 'node:crypto';
import { Duplex, PassThrough } from 'node:stream';
import { RequestCache } from '../../src/streaming/request_cache';
import { decodeResizeStream, ResizeQueue } from '../../src/streaming/resize';
import { encodeStatus, exitCodeStatus, internalErrorStatus, successStatus } from '../../src/streaming/status';
import type { TerminalSize } from '../../src/streaming/types';
import { handshakeAccept, isWebSocketRequest, offeredSubprotocols, WebSocketConnection } from '../../src/streaming/websocket';
import { CrispError } from '../../src/util/errors';

test('request cache: tokens are random base64url, single use, and expire', (t) => {
  let now = 1000;
  const cache = new RequestCache<string>(60_000, 3, () => now);
  const a = cache.insert('a');
  const b = cache.insert('b');
  t.regex(a, /^[A-Za-z0-9_-]{11}$/);
  t.not(a, b);
  t.is(cache.consume(a), 'a');
  t.is(cache.consume(a), undefined);
  t.is(cache.consume('unknown'), undefined);
  now += 60_000;
  t.is(cache.consume(b), undefined, 'expired at exactly the TTL');
});

test('request cache: bounded in-flight requests, expired ones make room', (t) => {
  let now = 0;
  const cache = new RequestCache<number>(100, 2, () => now);
  cache.insert(1);
  cache.insert(2);
  const err = t.throws(() => cache.insert(3));
  t.true(err instanceof CrispError && err.code === 'ResourceExhausted');
  now = 100;
  cache.insert(3);
  t.is(cache.size, 1);
});

test('statuses are encoded like metav1.Status', (t) => {
  t.is(encodeStatus(successStatus()), '{"metadata":{},"status":"Success"}');
  t.is(
    encodeStatus(exitCodeStatus(['sh', '-c', 'exit 3'], 3)),
    '{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3",' +
      '"reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}',
  );
  t.is(
    encodeStatus(internalErrorStatus('boom')),
    '{"metadata":{},"status":"Failure","message":"Internal error occurred: boom","reason":"InternalError","details":{"causes":[{"message":"boom"}]},"code":500}',
  );
});

async function collect(queue: ResizeQueue): Promise<TerminalSize[]> {
  const out: TerminalSize[] = [];
  for await (const size of queue) out.push(size);
  return out;
}

test('resize stream: concatenated JSON objects split anywhere', async (t) => {
  const source = new PassThrough();
  const queue = new ResizeQueue();
  decodeResizeStream(source, queue);
  const sizes = collect(queue);
  const wire = '{"Width":80,"Height":24}\n{"Width":100,\n"Height":50}{"Height":1,"Width":2}';
  for (const ch of wire) {
    source.write(ch);
    await new Promise((r) => setImmediate(r));
  }
  source.end();
  t.deepEqual(await sizes, [
    { width: 80, height: 24 },
    { width: 100, height: 50 },
    { width: 2, height: 1 },
  ]);
});

test('resize stream: reading stops at the first malformed object; pending sizes coalesce', async (t) => {
  const source = new PassThrough();
  const queue = new ResizeQueue();
  decodeResizeStream(source, queue);
  source.write('{"Width":10,"Height":10}{"Width":11,"Height":11}{"Width":"wide"}{"Width":12,"Height":12}');
  await new Promise((r) => setImmediate(r));
  t.deepEqual(await collect(queue), [{ width: 11, height: 11 }]);
});

function fakeRequest(headers: Record<string, string>, method = 'GET'): IncomingMessage {
  return { headers, method } as unknown as IncomingMessage;
}

test('websocket handshake: accept key, version and upgrade detection', (t) => {
  // The worked example of RFC 6455 section 1.3.
  const req = fakeRequest({ 'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==', 'sec-websocket-version': '13', upgrade: 'websocket', connection: 'keep-alive, Upgrade' });
  t.is(handshakeAccept(req), 's3pPLMBiTxaQ9kYGzzhZRbK+xOo=');
  t.true(isWebSocketRequest(req));
  t.false(isWebSocketRequest(fakeRequest({ upgrade: 'SPDY/3.1', connection: 'Upgrade' })));
  t.throws(() => handshakeAccept(fakeRequest({ 'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==', 'sec-websocket-version': '8' })), { message: /version/ });
  t.throws(() => handshakeAccept(fakeRequest({ 'sec-websocket-key': 'short', 'sec-websocket-version': '13' })), { message: /Sec-WebSocket-Key/ });
  t.deepEqual(offeredSubprotocols(fakeRequest({ 'sec-websocket-protocol': 'v5.channel.k8s.io, v4.channel.k8s.io,,channel.k8s.io' })), [
    'v5.channel.k8s.io',
    'v4.channel.k8s.io',
    'channel.k8s.io',
  ]);
});

test('websocket: a large frame arriving in small chunks is reassembled with linear copying', async (t) => {
  const socket = new Duplex({ read() {}, write: (_chunk, _enc, cb) => cb() });
  const ws = new WebSocketConnection(socket);
  const received: Buffer[] = [];
  ws.on('message', (data: Buffer) => received.push(Buffer.from(data)));
  const message = crypto.randomBytes(4 << 20);
  const mask = crypto.randomBytes(4);
  const header = Buffer.alloc(14);
  header[0] = 0x82; // FIN, binary
  header[1] = 0x80 | 127;
  header.writeBigUInt64BE(BigInt(message.length), 2);
  mask.copy(header, 10);
  const masked = Buffer.from(message);
  for (let i = 0; i < masked.length; i++) masked[i]! ^= mask[i & 3]!;
  const frame = Buffer.concat([header, masked]);
  // Count what Buffer.concat copies while the frame arrives 4 KiB at a time.
  const concat = Buffer.concat;
  let copied = 0;
  Buffer.concat = ((list: readonly Uint8Array[], total?: number) => {
    const out = concat(list, total);
    copied += out.length;
    return out;
  }) as typeof Buffer.concat;
  try {
    for (let off = 0; off < frame.length; off += 4096) socket.push(frame.subarray(off, off + 4096));
    await new Promise((r) => setImmediate(r));
  } finally {
    Buffer.concat = concat;
  }
  t.is(received.length, 1);
  t.true(received[0]!.equals(message), 'the message arrives intact');
  t.true(copied <= 2 * frame.length, `copied ${copied} bytes for a ${frame.length}-byte frame`);
  ws.destroy();
});
