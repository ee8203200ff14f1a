/**
 * SpdyConnection against a peer that speaks raw frames over a loopback socket, so window
 * accounting, replies, pings and errors can be observed frame by frame.
 */
import test, { type ExecutionContext } from 'ava';
import * as net from 'node:net';
import { SpdyConnection, SpdyStreamResetError, type SpdyStream } from '../../src/streaming/spdy/connection';
import { encodeFrame, FLAG_FIN, FrameDecoder, type Frame } from '../../src/streaming/spdy/frames';
import { HeaderCompressor, HeaderDecompressor, toHeaderMap } from '../../src/streaming/spdy/headers';

/** A raw SPDY peer: writes frames it is given and records every frame it receives. */
class RawPeer {
  readonly received: Frame[] = [];
  private readonly decoder = new FrameDecoder();
  private readonly compressor = new HeaderCompressor();
  private readonly decompressor = new HeaderDecompressor();
  private waiters: (() => void)[] = [];

  constructor(readonly socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => {
      for (const frame of this.decoder.push(chunk)) this.received.push(frame);
      for (const wake of this.waiters.splice(0)) wake();
    });
    socket.on('error', () => undefined);
  }

  send(frame: Frame): void {
    this.socket.write(encodeFrame(frame));
  }

  async openStream(streamId: number, headers: Record<string, string>, flags = 0): Promise<void> {
    const headerBlock = await this.compressor.compress(toHeaderMap(headers));
    this.send({ kind: 'syn_stream', streamId, associatedStreamId: 0, priority: 0, slot: 0, flags, headerBlock });
  }

  async replyHeaders(streamId: number): Promise<Map<string, string[]>> {
    const reply = await this.waitFor((f) => f.kind === 'syn_reply' && f.streamId === streamId);
    return this.decompressor.decompress((reply as Extract<Frame, { kind: 'syn_reply' }>).headerBlock);
  }

  dataBytes(streamId: number): number {
    return this.received.reduce((n, f) => n + (f.kind === 'data' && f.streamId === streamId ? f.data.length : 0), 0);
  }

  async waitFor(match: (f: Frame) => boolean, timeoutMs = 5000): Promise<Frame> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.received.find(match);
      if (found) return found;
      if (Date.now() > deadline) throw new Error('timed out waiting for a frame');
      await new Promise<void>((resolve) => {
        this.waiters.push(resolve);
        setTimeout(resolve, 50);
      });
    }
  }

  /** Waits until nothing new arrives for a while. */
  async settle(quietMs = 150): Promise<void> {
    let count = -1;
    while (count !== this.received.length) {
      count = this.received.length;
      await new Promise((r) => setTimeout(r, quietMs));
    }
  }

  close(): void {
    this.compressor.close();
    this.decompressor.close();
    this.socket.destroy();
  }
}

async function pair(t: ExecutionContext): Promise<{ conn: SpdyConnection; peer: RawPeer; streams: SpdyStream[] }> {
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const accepted = new Promise<net.Socket>((r) => server.once('connection', r));
  const client = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
  const socket = await accepted;
  server.close();
  const conn = new SpdyConnection(socket, { server: true });
  const streams: SpdyStream[] = [];
  conn.on('stream', (s: SpdyStream) => {
    s.on('error', () => undefined);
    streams.push(s);
  });
  const peer = new RawPeer(client);
  t.teardown(() => {
    conn.destroy();
    peer.close();
  });
  return { conn, peer, streams };
}

async function nextStream(streams: SpdyStream[]): Promise<SpdyStream> {
  for (let i = 0; i < 200 && streams.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
  return streams.shift()!;
}

test('a peer that announces flow control gets no more than its window', async (t) => {
  const { peer, streams } = await pair(t);
  peer.send({ kind: 'settings', flags: 0, entries: [{ id: 7, flags: 0, value: 1000 }] });
  await peer.openStream(1, { streamtype: 'stdout' });
  const stream = await nextStream(streams);
  t.is(stream.header('streamType'), 'stdout');
  stream.reply({ answer: 'yes' });
  t.deepEqual(await peer.replyHeaders(1), new Map([['answer', ['yes']]]));

  const written = new Promise<void>((resolve, reject) => stream.end(Buffer.alloc(3000, 1), (err?: Error | null) => (err ? reject(err) : resolve())));
  await peer.settle();
  t.is(peer.dataBytes(1), 1000);

  peer.send({ kind: 'window_update', streamId: 1, delta: 500 });
  await peer.settle();
  t.is(peer.dataBytes(1), 1500);

  peer.send({ kind: 'window_update', streamId: 1, delta: 10_000 });
  await written;
  await peer.waitFor((f) => f.kind === 'data' && f.streamId === 1 && (f.flags & FLAG_FIN) !== 0);
  t.is(peer.dataBytes(1), 3000);
});

test('the session window caps all streams together', async (t) => {
  const { peer, streams } = await pair(t);
  peer.send({ kind: 'window_update', streamId: 1, delta: 1 << 20 });
  peer.send({ kind: 'window_update', streamId: 3, delta: 1 << 20 });
  await peer.openStream(1, { n: '1' });
  await peer.openStream(3, { n: '3' });
  const a = await nextStream(streams);
  const b = await nextStream(streams);
  a.write(Buffer.alloc(50_000));
  b.write(Buffer.alloc(50_000));
  await peer.settle();
  t.is(peer.dataBytes(1) + peer.dataBytes(3), 64 * 1024);
  peer.send({ kind: 'window_update', streamId: 0, delta: 100_000 });
  await peer.settle();
  t.is(peer.dataBytes(1) + peer.dataBytes(3), 100_000);
});

test('without any flow control from the peer (spdystream) data is never held back', async (t) => {
  const { peer, streams } = await pair(t);
  await peer.openStream(1, { streamtype: 'stdout' });
  const stream = await nextStream(streams);
  await new Promise<void>((resolve) => stream.end(Buffer.alloc(300 * 1024, 2), () => resolve()));
  await peer.waitFor((f) => f.kind === 'data' && (f.flags & FLAG_FIN) !== 0);
  t.is(peer.dataBytes(1), 300 * 1024);
});

test('consumed data is returned to the peer as stream and session window', async (t) => {
  const { peer, streams } = await pair(t);
  await peer.openStream(1, { streamtype: 'stdin' });
  const stream = await nextStream(streams);
  let read = 0;
  stream.on('data', (c: Buffer) => (read += c.length));
  for (let i = 0; i < 4; i++) peer.send({ kind: 'data', streamId: 1, flags: 0, data: Buffer.alloc(16 * 1024) });
  await peer.waitFor((f) => f.kind === 'window_update' && f.streamId === 1);
  await peer.waitFor((f) => f.kind === 'window_update' && f.streamId === 0);
  const granted = peer.received.filter((f) => f.kind === 'window_update' && f.streamId === 1).reduce((n, f) => n + (f as { delta: number }).delta, 0);
  t.true(granted >= 32 * 1024 && granted <= 64 * 1024);
  t.is(read, 64 * 1024);
});

test('FIN from the peer ends the readable side; our FIN ends the stream', async (t) => {
  const { peer, streams, conn } = await pair(t);
  await peer.openStream(1, { streamtype: 'stdin' }, FLAG_FIN);
  const stream = await nextStream(streams);
  const chunks: Buffer[] = [];
  stream.on('data', (c: Buffer) => chunks.push(c));
  await new Promise((r) => stream.once('end', r));
  t.is(conn.activeStreams, 1);
  stream.end('bye');
  await peer.waitFor((f) => f.kind === 'data' && (f.flags & FLAG_FIN) !== 0);
  t.is(conn.activeStreams, 0);
  t.is(Buffer.concat(chunks).length, 0);
});

test('pings are answered and RST_STREAM fails the stream', async (t) => {
  const { peer, streams } = await pair(t);
  peer.send({ kind: 'ping', id: 7 });
  t.deepEqual(await peer.waitFor((f) => f.kind === 'ping'), { kind: 'ping', id: 7 });

  await peer.openStream(1, { streamtype: 'stdout' });
  const stream = await nextStream(streams);
  const failed = new Promise<Error>((resolve) => stream.once('error', resolve));
  peer.send({ kind: 'rst_stream', streamId: 1, status: 5 });
  const err = await failed;
  t.true(err instanceof SpdyStreamResetError);
  t.is((err as SpdyStreamResetError).status, 5);
});

test('streams opened out of order and malformed frames end the session with GOAWAY', async (t) => {
  const { peer, conn } = await pair(t);
  const closed = new Promise<Error>((resolve) => conn.once('close', resolve));
  await peer.openStream(3, { a: 'b' });
  await peer.openStream(1, { a: 'b' });
  const goaway = await peer.waitFor((f) => f.kind === 'goaway');
  t.deepEqual(goaway, { kind: 'goaway', lastGoodStreamId: 3, status: 1 });
  t.regex((await closed).message, /out of order/);
});

test('destroying an unfinished stream resets it; data for unknown streams is refused', async (t) => {
  const { peer, streams } = await pair(t);
  await peer.openStream(1, { streamtype: 'stdout' });
  const stream = await nextStream(streams);
  stream.destroy();
  t.deepEqual(await peer.waitFor((f) => f.kind === 'rst_stream' && f.streamId === 1), { kind: 'rst_stream', streamId: 1, status: 5 });
  peer.send({ kind: 'data', streamId: 99, flags: 0, data: Buffer.from('x') });
  t.deepEqual(await peer.waitFor((f) => f.kind === 'rst_stream' && f.streamId === 99), { kind: 'rst_stream', streamId: 99, status: 2 });
});

test('a client connection opens odd streams and reads the reply', async (t) => {
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const accepted = new Promise<net.Socket>((r) => server.once('connection', r));
  const clientSocket = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
  const serverSocket = await accepted;
  server.close();
  const serverConn = new SpdyConnection(serverSocket, { server: true });
  const clientConn = new SpdyConnection(clientSocket, { server: false });
  t.teardown(() => {
    clientConn.destroy();
    serverConn.destroy();
  });
  serverConn.on('stream', (s: SpdyStream) => {
    s.on('error', () => undefined);
    s.reply({ echo: s.header('name') ?? '' });
    s.pipe(s);
  });
  const streams = [clientConn.openStream({ name: 'one' }), clientConn.openStream({ name: 'two' })];
  for (const s of streams) s.on('error', () => undefined);
  t.deepEqual(
    streams.map((s) => s.id),
    [1, 3],
  );
  const replies = await Promise.all(streams.map((s) => s.waitReply()));
  t.deepEqual(replies.map((r) => r.get('echo')), [['one'], ['two']]);
  const echoed = new Promise<string>((resolve) => {
    const chunks: Buffer[] = [];
    streams[0]!.on('data', (c: Buffer) => chunks.push(c));
    streams[0]!.once('end', () => resolve(Buffer.concat(chunks).toString()));
  });
  streams[0]!.end('ping-pong');
  t.is(await echoed, 'ping-pong');
  t.true((await clientConn.ping()) >= 0);
});
