import * as zlib from 'node:zlib';
import { SPDY3_HEADER_DICTIONARY } from './dictionary';
import { SpdyProtocolError } from './frames';

/**
 * SPDY/3 name/value header blocks (draft 3, section 2.6.10): a 32-bit pair count, then per pair a
 * 32-bit length and the lowercase name, a 32-bit length and the value. Several values of one name
 * travel as one value joined by NUL bytes. Blocks are compressed with zlib primed with the SPDY
 * dictionary, using a single compression context per direction for the whole connection, each
 * block ending with a sync flush so the peer can decode it on its own.
 */

/** Header names (lowercase) to their values, in receipt order. */
export type HeaderMap = Map<string, string[]>;

export type HeaderInit = HeaderMap | Record<string, string | readonly string[]> | Iterable<readonly [string, string]>;

/** Normalizes any accepted header shape into a map with lowercase names. */
export function toHeaderMap(init: HeaderInit | undefined): HeaderMap {
  const out: HeaderMap = new Map();
  if (init === undefined) return out;
  const add = (name: string, value: string | readonly string[]): void => {
    const key = name.toLowerCase();
    const list = out.get(key) ?? [];
    if (typeof value === 'string') list.push(value);
    else list.push(...value);
    out.set(key, list);
  };
  if (init instanceof Map) {
    for (const [name, values] of init) add(name, values);
  } else if (Symbol.iterator in init) {
    for (const [name, value] of init as Iterable<readonly [string, string]>) add(name, value);
  } else {
    for (const [name, value] of Object.entries(init)) add(name, value);
  }
  return out;
}

export function serializeHeaderBlock(headers: HeaderMap): Buffer {
  const parts: Buffer[] = [];
  const count = Buffer.allocUnsafe(4);
  count.writeUInt32BE(headers.size);
  parts.push(count);
  for (const [name, values] of headers) {
    if (name.length === 0) throw new RangeError('header names must not be empty');
    for (const value of values) {
      if (value.includes('\0')) throw new RangeError(`header ${name} has a value containing a NUL byte`);
    }
    for (const field of [Buffer.from(name.toLowerCase(), 'utf8'), Buffer.from(values.join('\0'), 'utf8')]) {
      const length = Buffer.allocUnsafe(4);
      length.writeUInt32BE(field.length);
      parts.push(length, field);
    }
  }
  return Buffer.concat(parts);
}

export function parseHeaderBlock(block: Buffer): HeaderMap {
  const headers: HeaderMap = new Map();
  let offset = 0;
  const readField = (what: string): string => {
    if (offset + 4 > block.length) throw new SpdyProtocolError(`header block truncated in ${what} length`);
    const length = block.readUInt32BE(offset);
    offset += 4;
    if (offset + length > block.length) throw new SpdyProtocolError(`header block truncated in ${what}`);
    const value = block.toString('utf8', offset, offset + length);
    offset += length;
    return value;
  };
  if (block.length < 4) throw new SpdyProtocolError('header block truncated in pair count');
  const pairs = block.readUInt32BE(0);
  offset = 4;
  for (let i = 0; i < pairs; i++) {
    // Go's framer lowercases names it receives; be as lenient with peers that send mixed case.
    const name = readField('name').toLowerCase();
    if (name.length === 0) throw new SpdyProtocolError('header block contains an empty name');
    const values = readField('value').split('\0');
    const existing = headers.get(name);
    if (existing) existing.push(...values);
    else headers.set(name, values);
  }
  if (offset !== block.length) throw new SpdyProtocolError(`header block has ${block.length - offset} trailing bytes`);
  return headers;
}

/**
 * One direction's zlib context. Each `process` call feeds one header block and resolves with the
 * bytes that block produced; calls are serialized so blocks come out in the order they went in.
 */
class ZlibContext {
  private chain: Promise<unknown> = Promise.resolve();
  private output: Buffer[] = [];
  private outputBytes = 0;
  private failure: Error | undefined;
  /** Rejects the block in progress; zlib may fail without ever calling the write callback. */
  private abortCurrent: ((err: Error) => void) | undefined;

  constructor(
    private readonly engine: zlib.Deflate | zlib.Inflate,
    private readonly maxOutput: number,
  ) {
    engine.on('data', (chunk: Buffer) => {
      this.output.push(chunk);
      this.outputBytes += chunk.length;
      if (this.outputBytes > this.maxOutput) {
        // Stop inflating at once: a small block can expand enormously.
        this.output = [];
        engine.destroy(new SpdyProtocolError(`header block decompresses to more than ${this.maxOutput} bytes`));
      }
    });
    engine.on('error', (err: Error) => {
      this.failure = err;
      this.abortCurrent?.(err);
    });
  }

  process(input: Buffer): Promise<Buffer> {
    const run = (): Promise<Buffer> =>
      new Promise<Buffer>((resolve, reject) => {
        if (this.failure) {
          reject(this.failure);
          return;
        }
        this.output = [];
        this.outputBytes = 0;
        let settled = false;
        this.abortCurrent = (err) => {
          if (settled) return;
          settled = true;
          this.abortCurrent = undefined;
          reject(err);
        };
        this.engine.write(input, (err) => {
          if (settled) return;
          settled = true;
          this.abortCurrent = undefined;
          // Anything still buffered on the readable side belongs to this block; reading it emits 'data'.
          while (this.engine.read() !== null);
          const failure = err ?? this.failure;
          if (failure) {
            this.failure = failure;
            reject(failure);
          } else if (this.outputBytes > this.maxOutput) {
            reject(new SpdyProtocolError(`header block decompresses to more than ${this.maxOutput} bytes`));
          } else {
            resolve(this.output.length === 1 ? this.output[0]! : Buffer.concat(this.output));
          }
          this.output = [];
          this.outputBytes = 0;
        });
      });
    const result = this.chain.then(run);
    this.chain = result.catch(() => undefined);
    return result;
  }

  close(): void {
    this.abortCurrent?.(new Error('header compression context closed'));
    this.engine.destroy();
  }
}

/** The sending direction: serializes and compresses header blocks. */
export class HeaderCompressor {
  private readonly context = new ZlibContext(
    zlib.createDeflate({ dictionary: SPDY3_HEADER_DICTIONARY, flush: zlib.constants.Z_SYNC_FLUSH }),
    Number.MAX_SAFE_INTEGER,
  );

  compress(headers: HeaderMap): Promise<Buffer> {
    return this.context.process(serializeHeaderBlock(headers));
  }

  close(): void {
    this.context.close();
  }
}

/** The receiving direction: decompresses and parses header blocks, bounding their size. */
export class HeaderDecompressor {
  private readonly context: ZlibContext;

  constructor(maxHeaderBlockBytes = 256 * 1024) {
    this.context = new ZlibContext(
      zlib.createInflate({ dictionary: SPDY3_HEADER_DICTIONARY, flush: zlib.constants.Z_SYNC_FLUSH }),
      maxHeaderBlockBytes,
    );
  }

  async decompress(compressed: Buffer): Promise<HeaderMap> {
    return parseHeaderBlock(await this.context.process(compressed));
  }

  close(): void {
    this.context.close();
  }
}
