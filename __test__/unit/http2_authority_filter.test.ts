import test from 'ava';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Duplex } from 'node:stream';
import { AuthorityFilter, REPLACEMENT_AUTHORITY } from '../../src/server/http2/authority_filter';
import { H2_COMPRESSION_ERROR, H2_ENHANCE_YOUR_CALM, H2_FRAME_SIZE_ERROR, H2_PROTOCOL_ERROR } from '../../src/server/http2/frames';
import { encodeHeaderBlock, HeaderListTooLarge, HpackDecoder, HpackError } from '../../src/server/http2/hpack';
import { huffmanDecode } from '../../src/server/http2/huffman';
import { GoLikeEncoder, H2_PREFACE, h2Frame, huffmanEncode, parseFrames } from '../fixtures/hpack_encoder';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const pairs = (fields: Array<{ name: string; value: string }>): string[][] => fields.map((f) => [f.name, f.value]);

// RFC 7541 Appendix C.3 and C.4: three requests on one connection, without and with Huffman.
const RFC_REQUESTS = [
  [[':method', 'GET'], [':scheme', 'http'], [':path', '/'], [':authority', 'www.example.com']],
  [[':method', 'GET'], [':scheme', 'http'], [':path', '/'], [':authority', 'www.example.com'], ['cache-control', 'no-cache']],
  [[':method', 'GET'], [':scheme', 'https'], [':path', '/index.html'], [':authority', 'www.example.com'], ['custom-key', 'custom-value']],
];
const RFC_TABLES = [
  [[':authority', 'www.example.com']],
  [['cache-control', 'no-cache'], [':authority', 'www.example.com']],
  [['custom-key', 'custom-value'], ['cache-control', 'no-cache'], [':authority', 'www.example.com']],
];

for (const [label, blocks] of [
  ['C.3 (raw strings)', ['828684410f7777772e6578616d706c652e636f6d', '828684be58086e6f2d6361636865', '828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565']],
  ['C.4 (Huffman)', ['828684418cf1e3c2e5f23a6ba0ab90f4ff', '828684be5886a8eb10649cbf', '828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf']],
] as const) {
  test(`HPACK decoder follows RFC 7541 ${label} and its dynamic table`, (t) => {
    const decoder = new HpackDecoder();
    blocks.forEach((block, i) => {
      t.deepEqual(pairs(decoder.decode(hex(block), 65_535)), RFC_REQUESTS[i], `request ${i + 1}`);
      t.deepEqual(decoder.dynamicTable(), RFC_TABLES[i], `table after request ${i + 1}`);
    });
  });
}

test('Huffman decoding: round trip of every octet value; bad padding and EOS are refused', (t) => {
  for (let i = 0; i < 200; i++) {
    const s = crypto.randomBytes(crypto.randomInt(0, 40)).toString('latin1');
    const coded = huffmanEncode(s);
    t.is(huffmanDecode(coded, 0, coded.length), s);
  }
  const all = Buffer.from(Array.from({ length: 256 }, (_, i) => i)).toString('latin1');
  const coded = huffmanEncode(all);
  t.is(huffmanDecode(coded, 0, coded.length), all);
  // "a" is 00011 (5 bits): padding with zeros, or with a whole octet of ones, is invalid.
  t.throws(() => huffmanDecode(Buffer.from([0x18]), 0, 1), { message: /padding/ });
  t.throws(() => huffmanDecode(Buffer.from([0x1f, 0xff]), 0, 2), { message: /padding/ });
  // 30 ones: EOS.
  t.throws(() => huffmanDecode(Buffer.from([0xff, 0xff, 0xff, 0xfc]), 0, 4), { message: /EOS/ });
});

test('HPACK decoder refuses malformed blocks', (t) => {
  const bad: Array<[string, Buffer]> = [
    ['index 0', Buffer.from([0x80])],
    ['index past the dynamic table', Buffer.from([0xbe])],
    ['truncated integer', Buffer.from([0xff])],
    ['integer too large', Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f])],
    ['string past the block', Buffer.from([0x40, 0x05, 0x61])],
    ['size update after a field', Buffer.from([0x82, 0x20])],
    ['size update above the advertised size', Buffer.from([0x3f, 0xe2, 0x1f])],
    ['truncated literal', Buffer.from([0x04])],
  ];
  for (const [label, block] of bad) t.throws(() => new HpackDecoder().decode(block, 65_535), { instanceOf: HpackError }, label);
  const big = new GoLikeEncoder().encode([{ name: 'x', value: 'y'.repeat(5000) }]);
  t.throws(() => new HpackDecoder().decode(big, 4096), { instanceOf: HeaderListTooLarge });
});

test('HPACK decoder: table size updates evict, and an entry larger than the table empties it', (t) => {
  const encoder = new GoLikeEncoder();
  const decoder = new HpackDecoder();
  decoder.decode(encoder.encode([{ name: 'a', value: '1' }, { name: 'b', value: '2' }]), 65_535);
  t.is(decoder.dynamicTable().length, 2);
  decoder.decode(Buffer.from([0x20]), 65_535);
  t.deepEqual(decoder.dynamicTable(), []);
  decoder.decode(Buffer.from([0x3f, 0x15]), 65_535); // size 52: room for one small entry
  decoder.decode(Buffer.concat([Buffer.from([0x40, 0x01, 0x63, 0x01, 0x33]), Buffer.from([0x40, 0x01, 0x64, 0x01, 0x34])]), 65_535);
  t.deepEqual(decoder.dynamicTable(), [['d', '4']]);
  decoder.decode(Buffer.concat([Buffer.from([0x40, 0x01, 0x65, 0x7f, 0x00]), Buffer.alloc(127, 0x7a)]), 65_535);
  t.deepEqual(decoder.dynamicTable(), []);
});

test('the re-encoded block decodes to the same list and leaves the receiver without dynamic entries', (t) => {
  const encoder = new GoLikeEncoder();
  const decoder = new HpackDecoder();
  for (let round = 0; round < 50; round++) {
    const fields = Array.from({ length: crypto.randomInt(1, 12) }, () => ({
      name: crypto.randomBytes(crypto.randomInt(1, 12)).toString('hex'),
      value: crypto.randomBytes(crypto.randomInt(0, 300)).toString('latin1'),
    }));
    fields.push({ name: ':method', value: 'POST' }, { name: 'content-type', value: 'application/grpc' }, { name: 'x-long', value: 'v'.repeat(200) });
    const decoded = decoder.decode(encoder.encode(fields), 1 << 20);
    t.deepEqual(pairs(decoded), pairs(fields));
    const receiver = new HpackDecoder();
    t.deepEqual(pairs(receiver.decode(encodeHeaderBlock(decoded), 1 << 20)), pairs(fields));
    t.deepEqual(receiver.dynamicTable(), []);
  }
  const sensitive = encodeHeaderBlock([{ name: 'authorization', value: 'secret', sensitive: true }]);
  t.is(sensitive[0] & 0xf0, 0x10, 'never-indexed stays never-indexed');
});

/** A filter over a fake client socket: what reaches the server, and what the client is sent. */
function harness(options: { incompleteFrameTimeoutMs?: number } = {}) {
  const toClient: Buffer[] = [];
  const socket = new Duplex({
    read() {},
    write(chunk: Buffer, _enc, cb) {
      toClient.push(chunk);
      cb();
    },
  });
  const filter = new AuthorityFilter(socket, options);
  // Read synchronously (paused mode), so each step's output can be checked right after it.
  const toServer: Buffer[] = [];
  const drain = (): Buffer[] => {
    for (let chunk: Buffer | null; (chunk = filter.read()) !== null; ) toServer.push(chunk);
    return toServer;
  };
  return {
    socket,
    filter,
    fromClient: (data: Buffer) => socket.emit('data', data),
    fromServer: (data: Buffer) => new Promise<void>((resolve) => filter.write(data, () => resolve())),
    server: () => Buffer.concat(drain()),
    lastRead: () => drain()[toServer.length - 1],
    client: () => Buffer.concat(toClient),
    ended: () => {
      drain();
      return (filter as unknown as { _readableState: { ended: boolean } })._readableState.ended;
    },
  };
}

const capture: { connections: Array<{ toServer: string[]; toClient: string[] }> } = JSON.parse(
  fs.readFileSync(path.join(__dirname, '../../../__test__/fixtures/h2_crictl_capture.json'), 'utf8'),
);
const captured = capture.connections.map((c) => ({
  toServer: c.toServer.map((h) => Buffer.from(h, 'hex')),
  toClient: c.toClient.map((h) => Buffer.from(h, 'hex')),
}));

/** Decodes a filtered client stream as the server would: a fresh decoder, no dynamic entries. */
function serverView(data: Buffer): { headers: string[][][]; others: Buffer[]; receiver: HpackDecoder } {
  t_assertPreface(data);
  const receiver = new HpackDecoder();
  const headers: string[][][] = [];
  const others: Buffer[] = [];
  for (const f of parseFrames(data, H2_PREFACE.length)) {
    if (f.type === 1) {
      t_assertFlag(f.flags & 0x4, 'END_HEADERS');
      headers.push(pairs(receiver.decode(f.payload, 1 << 20)));
    } else {
      others.push(h2Frame(f.type, f.flags, f.streamId, f.payload));
    }
  }
  return { headers, others, receiver };
}
function t_assertPreface(data: Buffer): void {
  if (!data.subarray(0, H2_PREFACE.length).equals(H2_PREFACE)) throw new Error('preface not passed on');
}
function t_assertFlag(flag: number, name: string): void {
  if (!flag) throw new Error(`${name} missing`);
}

/** What crictl sent, decoded with its own HPACK state. */
function clientView(data: Buffer): { headers: string[][][]; others: Buffer[] } {
  const decoder = new HpackDecoder();
  const headers: string[][][] = [];
  const others: Buffer[] = [];
  for (const f of parseFrames(data, H2_PREFACE.length)) {
    if (f.type === 1) headers.push(pairs(decoder.decode(f.payload, 1 << 20)));
    else others.push(h2Frame(f.type, f.flags, f.streamId, f.payload));
  }
  return { headers, others };
}

test("captured crictl connections: the socket path in :authority becomes localhost, nothing else changes", (t) => {
  for (const conn of captured) {
    const h = harness();
    for (const chunk of conn.toServer) h.fromClient(chunk);
    const sent = clientView(Buffer.concat(conn.toServer));
    const seen = serverView(h.server());
    t.true(sent.headers.length >= 2, 'the capture holds two requests on one connection');
    t.deepEqual(
      seen.headers,
      sent.headers.map((list) => list.map(([n, v]) => [n, n === ':authority' ? REPLACEMENT_AUTHORITY : v])),
    );
    t.true(sent.headers.every((list) => list.some(([n, v]) => n === ':authority' && v.startsWith('/'))));
    t.deepEqual(seen.others, sent.others, 'SETTINGS, DATA, PING, WINDOW_UPDATE pass unchanged');
    t.deepEqual(seen.receiver.dynamicTable(), []);
    h.filter.destroy();
  }
});

test('captured crictl connection split at every possible point gives the same output', (t) => {
  const whole = Buffer.concat(captured[0].toServer);
  const reference = harness();
  reference.fromClient(whole);
  const expected = reference.server();
  for (let cut = 1; cut < whole.length; cut++) {
    const h = harness();
    h.fromClient(whole.subarray(0, cut));
    h.fromClient(whole.subarray(cut));
    if (!h.server().equals(expected)) {
      t.fail(`output differs when split at ${cut}`);
      return;
    }
    h.filter.destroy();
  }
  // And one octet at a time.
  const h = harness();
  for (let i = 0; i < whole.length; i++) h.fromClient(whole.subarray(i, i + 1));
  t.true(h.server().equals(expected));
  reference.filter.destroy();
  h.filter.destroy();
});

test('a read without header blocks reaches the server as the same buffer (no copy)', (t) => {
  const h = harness();
  h.fromClient(Buffer.concat([H2_PREFACE, h2Frame(4, 0, 0)]));
  h.server();
  const data = h2Frame(0, 1, 1, Buffer.from('hello'));
  h.fromClient(data);
  t.is(h.lastRead(), data);
  h.filter.destroy();
});

test('valid authorities are kept; empty, path-like and control characters are replaced', (t) => {
  const cases: Array<[string, string]> = [
    ['/run/crisp/crisp.sock', REPLACEMENT_AUTHORITY],
    ['%2Frun%2Fcrisp%2Fcrisp.sock', '%2Frun%2Fcrisp%2Fcrisp.sock'],
    ['localhost', 'localhost'],
    ['', REPLACEMENT_AUTHORITY],
    ['127.0.0.1:8080', '127.0.0.1:8080'],
    ['[::1]:10010', '[::1]:10010'],
    ['a b', REPLACEMENT_AUTHORITY],
  ];
  const h = harness();
  const encoder = new GoLikeEncoder();
  const frames = cases.map(([authority], i) =>
    h2Frame(1, 0x5, 2 * i + 1, encoder.encode([{ name: ':method', value: 'POST' }, { name: ':authority', value: authority }, { name: 'host', value: authority }])),
  );
  h.fromClient(Buffer.concat([H2_PREFACE, ...frames]));
  const seen = serverView(h.server());
  t.deepEqual(
    seen.headers,
    cases.map(([, want]) => [[':method', 'POST'], [':authority', want], ['host', want]]),
  );
  h.filter.destroy();
});

test('padding and priority are handled; a large block is split into CONTINUATION frames within the frame size', (t) => {
  const h = harness();
  const block = new GoLikeEncoder().encode([{ name: ':authority', value: '/x.sock' }, { name: 'big', value: crypto.randomBytes(20_000).toString('hex') }]);
  // HEADERS with PADDED and PRIORITY carrying the first 1000 octets, the rest in CONTINUATIONs.
  const first = Buffer.concat([Buffer.from([3]), Buffer.from([0, 0, 0, 0, 16]), block.subarray(0, 1000), Buffer.alloc(3)]);
  const rest = [block.subarray(1000, 15_000), block.subarray(15_000)];
  h.fromClient(Buffer.concat([H2_PREFACE, h2Frame(1, 0x8 | 0x20 | 0x1, 1, first), h2Frame(9, 0, 1, rest[0]), h2Frame(9, 0x4, 1, rest[1])]));
  const frames = parseFrames(h.server(), H2_PREFACE.length);
  t.true(frames.length >= 3);
  t.is(frames[0].type, 1);
  t.is(frames[0].flags, 0x1 | 0x20, 'END_STREAM and PRIORITY kept, PADDED dropped, END_HEADERS not yet');
  t.deepEqual([...frames[0].payload.subarray(0, 5)], [0, 0, 0, 0, 16]);
  t.true(frames.slice(1).every((f) => f.type === 9 && f.streamId === 1));
  t.is(frames[frames.length - 1].flags, 0x4);
  t.true(frames.every((f) => f.payload.length <= 16_384));
  const reassembled = Buffer.concat([frames[0].payload.subarray(5), ...frames.slice(1).map((f) => f.payload)]);
  const decoded = pairs(new HpackDecoder().decode(reassembled, 1 << 20));
  t.deepEqual(decoded[0], [':authority', REPLACEMENT_AUTHORITY]);
  t.is(decoded[1][1].length, 40_000);
  h.filter.destroy();
});

function goaway(client: Buffer): { lastStreamId: number; code: number; debug: string } | undefined {
  const frame = parseFrames(client).find((f) => f.type === 7);
  if (!frame) return undefined;
  return { lastStreamId: frame.payload.readUInt32BE(0), code: frame.payload.readUInt32BE(4), debug: frame.payload.subarray(8).toString() };
}

/** A header block as HEADERS and CONTINUATION frames of at most 16000 octets. */
function inFrames(streamId: number, block: Buffer): Buffer[] {
  const frames: Buffer[] = [];
  for (let at = 0; at < block.length; at += 16_000) {
    const last = at + 16_000 >= block.length;
    frames.push(h2Frame(at === 0 ? 1 : 9, (at === 0 ? 0x1 : 0) | (last ? 0x4 : 0), streamId, block.subarray(at, at + 16_000)));
  }
  return frames;
}

const okRequest = (streamId: number, encoder = new GoLikeEncoder()): Buffer => h2Frame(1, 0x5, streamId, encoder.encode([{ name: ':method', value: 'POST' }, { name: ':authority', value: '/run/crisp/crisp.sock' }]));

for (const [label, frames, code, debug] of [
  ['a block that fails HPACK decoding', [h2Frame(1, 0x5, 3, Buffer.from([0x80]))], H2_COMPRESSION_ERROR, /index 0/],
  ['an oversized header list', inFrames(3, new GoLikeEncoder().encode(Array.from({ length: 20 }, (_, i) => ({ name: `k${i}`, value: 'v'.repeat(4000) })))), H2_ENHANCE_YOUR_CALM, /header list larger/],
  ['a CONTINUATION flood', [h2Frame(1, 0x1, 3, Buffer.from([0x82])), ...Array.from({ length: 10 }, () => h2Frame(9, 0, 3, Buffer.alloc(16_000, 0x82)))], H2_ENHANCE_YOUR_CALM, /header block larger/],
  ['a frame above the maximum frame size', [h2Frame(0, 0, 3, Buffer.alloc(20_000))], H2_FRAME_SIZE_ERROR, /above the maximum/],
  ['a header block interrupted by DATA', [h2Frame(1, 0x1, 3, Buffer.from([0x82])), h2Frame(0, 0, 3, Buffer.from('x'))], H2_PROTOCOL_ERROR, /interrupted/],
  ['a CONTINUATION out of nowhere', [h2Frame(9, 0x4, 3, Buffer.from([0x82]))], H2_PROTOCOL_ERROR, /CONTINUATION without/],
  ['a PUSH_PROMISE', [h2Frame(5, 0x4, 3, Buffer.from([0, 0, 0, 2, 0x82]))], H2_PROTOCOL_ERROR, /PUSH_PROMISE/],
] as const) {
  test(`${label} ends the connection with GOAWAY ${code}`, async (t) => {
    const h = harness();
    h.fromClient(Buffer.concat([H2_PREFACE, okRequest(1)]));
    const before = h.server().length;
    h.fromClient(Buffer.concat(frames));
    t.is(h.server().length, before, 'nothing of it reaches the server');
    await new Promise((r) => setImmediate(r));
    const away = goaway(h.client());
    t.truthy(away, 'GOAWAY sent');
    t.is(away!.code, code);
    t.is(away!.lastStreamId, 1);
    t.regex(away!.debug, debug);
    t.true(h.ended(), 'the server side sees the end');
    h.fromClient(okRequest(5));
    t.is(h.server().length, before, 'later input is ignored');
    h.filter.destroy();
  });
}

test('a client that never finishes a frame is closed with GOAWAY after the timeout', async (t) => {
  const h = harness({ incompleteFrameTimeoutMs: 100 });
  h.fromClient(Buffer.concat([H2_PREFACE, okRequest(1), okRequest(3).subarray(0, 12)]));
  await new Promise((r) => setTimeout(r, 50));
  t.is(goaway(h.client()), undefined);
  await new Promise((r) => setTimeout(r, 150));
  const away = goaway(h.client());
  t.is(away?.code, H2_ENHANCE_YOUR_CALM);
  t.regex(away!.debug, /not completed/);
  h.filter.destroy();
});

test('a frame completed in time keeps the connection', async (t) => {
  const h = harness({ incompleteFrameTimeoutMs: 100 });
  const second = okRequest(3);
  h.fromClient(Buffer.concat([H2_PREFACE, okRequest(1), second.subarray(0, 5)]));
  await new Promise((r) => setTimeout(r, 60));
  h.fromClient(second.subarray(5));
  await new Promise((r) => setTimeout(r, 120));
  t.is(goaway(h.client()), undefined);
  t.is(serverView(h.server()).headers.length, 2);
  h.filter.destroy();
});

test("the GOAWAY waits for the server's frame in progress to end", async (t) => {
  const h = harness();
  h.fromClient(Buffer.concat([H2_PREFACE, okRequest(1)]));
  const data = h2Frame(0, 0, 1, Buffer.alloc(100, 0x61));
  await h.fromServer(data.subarray(0, 50));
  h.fromClient(h2Frame(1, 0x5, 3, Buffer.from([0x80])));
  t.is(goaway(Buffer.concat([h.client().subarray(50)])), undefined);
  await h.fromServer(data.subarray(50));
  const client = h.client();
  t.true(client.subarray(0, data.length).equals(data), 'the frame is whole');
  t.is(goaway(client.subarray(data.length))?.code, H2_COMPRESSION_ERROR);
  h.filter.destroy();
});

test("the server's SETTINGS set the frame size and header list limits the filter applies", async (t) => {
  const h = harness();
  const settings = Buffer.alloc(12);
  settings.writeUInt16BE(0x5, 0);
  settings.writeUInt32BE(32_768, 2);
  settings.writeUInt16BE(0x6, 6);
  settings.writeUInt32BE(1000, 8);
  await h.fromServer(h2Frame(4, 0, 0, settings));
  h.fromClient(Buffer.concat([H2_PREFACE, h2Frame(0, 0, 1, Buffer.alloc(20_000))]));
  t.is(goaway(h.client()), undefined, '20000-octet frame accepted under a 32768 maximum');
  h.fromClient(h2Frame(1, 0x5, 3, new GoLikeEncoder().encode([{ name: 'k', value: 'v'.repeat(1000) }])));
  t.is(goaway(h.client())?.code, H2_ENHANCE_YOUR_CALM);
  h.filter.destroy();
});

test('what is not HTTP/2 passes through untouched for the server to refuse', (t) => {
  const h = harness();
  const garbage = Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n' + 'z'.repeat(100));
  h.fromClient(garbage);
  t.true(h.server().equals(garbage));
  h.filter.destroy();
});

test('fuzz: random frame sequences in random pieces never throw and always end or pass', (t) => {
  const types = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0x42];
  let ended = 0;
  let headerBlocksSeen = 0;
  for (let round = 0; round < 400; round++) {
    const h = harness();
    const encoder = new GoLikeEncoder();
    // A valid request first, so every round also shows a block that passes; random frames after.
    const parts: Buffer[] = [H2_PREFACE, okRequest(1, encoder)];
    for (let i = 0, n = crypto.randomInt(1, 12); i < n; i++) {
      const type = types[crypto.randomInt(types.length)];
      const flags = crypto.randomInt(256);
      const stream = crypto.randomInt(4) === 0 ? 0 : crypto.randomInt(1, 20);
      const kind = crypto.randomInt(4);
      const payload =
        kind === 0
          ? encoder.encode([{ name: ':authority', value: crypto.randomBytes(8).toString('latin1') }, { name: 'x', value: crypto.randomBytes(crypto.randomInt(50)).toString('hex') }])
          : kind === 1
            ? crypto.randomBytes(crypto.randomInt(0, 40))
            : kind === 2
              ? Buffer.concat([Buffer.from([crypto.randomInt(256)]), crypto.randomBytes(crypto.randomInt(0, 30))])
              : Buffer.alloc(0);
      const frame = h2Frame(type, flags, stream, payload);
      // Sometimes lie about the length.
      if (crypto.randomInt(10) === 0) frame.writeUIntBE(crypto.randomInt(1 << 24), 0, 3);
      parts.push(frame);
    }
    const stream = Buffer.concat(parts);
    let pos = 0;
    t.notThrows(() => {
      while (pos < stream.length) {
        const n = crypto.randomInt(1, 64);
        h.fromClient(stream.subarray(pos, pos + n));
        pos += n;
      }
    });
    // Whatever reached the server decodes from an empty table: the filter never passes on a
    // block the server could not read, whether or not it ended the connection afterwards.
    const seen = h.server();
    const receiver = new HpackDecoder();
    let blocks = 0;
    for (let pos = H2_PREFACE.length; pos + 9 <= seen.length; ) {
      const length = seen.readUIntBE(pos, 3);
      if (pos + 9 + length > seen.length) break;
      if (seen[pos + 3] === 1 && seen[pos + 4] & 0x4) {
        const flags = seen[pos + 4];
        const start = pos + 9 + (flags & 0x20 ? 5 : 0);
        t.notThrows(() => receiver.decode(seen.subarray(start, pos + 9 + length), 1 << 20));
        blocks++;
      }
      pos += 9 + length;
    }
    headerBlocksSeen += blocks;
    if (goaway(h.client())) ended++;
    h.filter.destroy();
  }
  t.true(ended > 0, `${ended} connections ended`);
  t.true(headerBlocksSeen >= 400, `${headerBlocksSeen} header blocks passed in 400 rounds`);
});
