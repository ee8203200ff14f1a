import test from 'ava';
import * as zlib from 'node:zlib';
import { SPDY3_HEADER_DICTIONARY } from '../../src/streaming/spdy/dictionary';
import { decodeFrame, encodeFrame, FLAG_FIN, FrameDecoder, SpdyProtocolError, type Frame } from '../../src/streaming/spdy/frames';
import { HeaderCompressor, HeaderDecompressor, parseHeaderBlock, serializeHeaderBlock, toHeaderMap } from '../../src/streaming/spdy/headers';

const frames: Frame[] = [
  { kind: 'data', streamId: 5, flags: FLAG_FIN, data: Buffer.from('hello') },
  { kind: 'data', streamId: 0x7fffffff, flags: 0, data: Buffer.alloc(0) },
  { kind: 'syn_stream', streamId: 1, associatedStreamId: 0, priority: 7, slot: 0, flags: FLAG_FIN, headerBlock: Buffer.from([1, 2, 3]) },
  { kind: 'syn_reply', streamId: 3, flags: 0, headerBlock: Buffer.from([9]) },
  { kind: 'headers', streamId: 3, flags: FLAG_FIN, headerBlock: Buffer.alloc(0) },
  { kind: 'rst_stream', streamId: 7, status: 5 },
  { kind: 'settings', flags: 1, entries: [{ id: 7, flags: 1, value: 1000 }, { id: 4, flags: 0, value: 100 }] },
  { kind: 'ping', id: 0xfffffffe },
  { kind: 'goaway', lastGoodStreamId: 9, status: 1 },
  { kind: 'window_update', streamId: 0, delta: 0x7fffffff },
  { kind: 'unknown', type: 42, flags: 0, payload: Buffer.from('??') },
];

test('every frame type survives encode and decode', (t) => {
  for (const frame of frames) t.deepEqual(decodeFrame(encodeFrame(frame)), frame, frame.kind);
});

test('frames have the SPDY/3 wire layout', (t) => {
  t.deepEqual([...encodeFrame({ kind: 'ping', id: 1 })], [0x80, 0x03, 0x00, 0x06, 0x00, 0x00, 0x00, 0x04, 0, 0, 0, 1]);
  t.deepEqual([...encodeFrame({ kind: 'data', streamId: 3, flags: FLAG_FIN, data: Buffer.from('ab') })], [0, 0, 0, 3, 0x01, 0, 0, 2, 0x61, 0x62]);
  t.deepEqual([...encodeFrame({ kind: 'rst_stream', streamId: 1, status: 3 })], [0x80, 0x03, 0x00, 0x03, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 3]);
  const syn = encodeFrame({ kind: 'syn_stream', streamId: 1, associatedStreamId: 0, priority: 2, slot: 0, flags: 0, headerBlock: Buffer.alloc(0) });
  t.deepEqual([...syn], [0x80, 0x03, 0x00, 0x01, 0, 0, 0, 10, 0, 0, 0, 1, 0, 0, 0, 0, 0x40, 0]);
});

test('the decoder reassembles frames split at any byte and refuses oversized ones', (t) => {
  const wire = Buffer.concat(frames.map(encodeFrame));
  const decoder = new FrameDecoder();
  const out: Frame[] = [];
  for (let i = 0; i < wire.length; i++) out.push(...decoder.push(wire.subarray(i, i + 1)));
  t.deepEqual(out, frames);
  t.is(decoder.pendingBytes, 0);

  const small = new FrameDecoder(16);
  t.throws(() => small.push(encodeFrame({ kind: 'data', streamId: 1, flags: 0, data: Buffer.alloc(17) })), { instanceOf: SpdyProtocolError });
});

test('malformed control frames are protocol errors', (t) => {
  const ping = encodeFrame({ kind: 'ping', id: 1 });
  ping.writeUInt16BE(0x8002, 0);
  t.throws(() => decodeFrame(ping), { message: /unsupported SPDY version 2/ });
  const rst = encodeFrame({ kind: 'unknown', type: 3, flags: 0, payload: Buffer.alloc(4) });
  t.throws(() => decodeFrame(rst), { message: /RST_STREAM frame has length 4/ });
  t.throws(() => decodeFrame(Buffer.from([0, 0, 0, 0, 0, 0, 0, 0])), { message: /stream 0/ });
});

test('the header dictionary is the SPDY/3 one (length and adler32 via zlib DICTID)', (t) => {
  t.is(SPDY3_HEADER_DICTIONARY.length, 1423);
  const compressed = zlib.deflateSync(Buffer.from('x'), { dictionary: SPDY3_HEADER_DICTIONARY });
  t.true((compressed[1]! & 0x20) !== 0, 'FDICT set');
  t.is(compressed.readUInt32BE(2), 0xe3c6a7c2);
});

test('header blocks: lowercase names, NUL-joined values, strict parsing', (t) => {
  const map = toHeaderMap({ StreamType: 'error', Port: ['80', '81'] });
  const block = serializeHeaderBlock(map);
  t.deepEqual(parseHeaderBlock(block), new Map([['streamtype', ['error']], ['port', ['80', '81']]]));
  t.is(block.readUInt32BE(0), 2);
  t.is(block.subarray(8, 18).toString(), 'streamtype');
  t.throws(() => parseHeaderBlock(Buffer.concat([block, Buffer.from([0])])), { message: /trailing/ });
  t.throws(() => parseHeaderBlock(block.subarray(0, block.length - 1)), { message: /truncated/ });
});

test('header compression keeps one zlib context per direction across blocks', async (t) => {
  const compressor = new HeaderCompressor();
  const decompressor = new HeaderDecompressor();
  t.teardown(() => {
    compressor.close();
    decompressor.close();
  });
  const blocks = [
    toHeaderMap({ streamtype: 'error', requestid: '0', port: '8080' }),
    toHeaderMap({ streamtype: 'data', requestid: '0', port: '8080' }),
    toHeaderMap({ streamtype: 'data', requestid: '0', port: '8080' }),
  ];
  const compressed = await Promise.all(blocks.map((b) => compressor.compress(b)));
  // Later blocks refer back to earlier ones, so a repeated block costs only a few bytes.
  t.true(compressed[2]!.length < compressed[0]!.length / 2);
  for (const c of compressed) t.deepEqual([...c.subarray(-4)], [0, 0, 0xff, 0xff], 'each block ends with a sync flush');
  for (let i = 0; i < blocks.length; i++) t.deepEqual(await decompressor.decompress(compressed[i]!), blocks[i]);

  // A plain zlib inflater primed with the dictionary reads the concatenation as one stream.
  const all = zlib.inflateSync(Buffer.concat(compressed), { dictionary: SPDY3_HEADER_DICTIONARY, finishFlush: zlib.constants.Z_SYNC_FLUSH });
  t.deepEqual(all, Buffer.concat(blocks.map(serializeHeaderBlock)));

  // Without the shared history the second block cannot be decoded on its own.
  const fresh = new HeaderDecompressor();
  t.teardown(() => fresh.close());
  await t.throwsAsync(fresh.decompress(compressed[1]!));
});

test('header decompression is bounded', async (t) => {
  const compressor = new HeaderCompressor();
  const decompressor = new HeaderDecompressor(1024);
  t.teardown(() => {
    compressor.close();
    decompressor.close();
  });
  const block = await compressor.compress(toHeaderMap({ big: 'a'.repeat(10_000) }));
  await t.throwsAsync(decompressor.decompress(block), { message: /more than 1024 bytes/ });
});
