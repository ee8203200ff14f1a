import { HuffmanError, huffmanDecode } from './huffman';

/**
 * HPACK (RFC 7541) as a proxy between an HTTP/2 client and crisp's own HTTP/2 server needs it:
 * a decoder that follows the client's dynamic table, and an encoder that never uses one, so the
 * server's decoder state depends on nothing the client sent. Names and values are latin1 strings:
 * one character per octet, whatever the octets are.
 */

export interface HeaderField {
  name: string;
  value: string;
  /** Sent as "never indexed" (RFC 7541 §6.2.3); kept so on re-encoding. */
  sensitive: boolean;
}

/** The static table (RFC 7541, Appendix A); index 1 is the first entry. */
export const STATIC_TABLE: ReadonlyArray<readonly [string, string]> = [
  [':authority', ''], [':method', 'GET'], [':method', 'POST'], [':path', '/'], [':path', '/index.html'],
  [':scheme', 'http'], [':scheme', 'https'], [':status', '200'], [':status', '204'], [':status', '206'],
  [':status', '304'], [':status', '400'], [':status', '404'], [':status', '500'], ['accept-charset', ''],
  ['accept-encoding', 'gzip, deflate'], ['accept-language', ''], ['accept-ranges', ''], ['accept', ''],
  ['access-control-allow-origin', ''], ['age', ''], ['allow', ''], ['authorization', ''], ['cache-control', ''],
  ['content-disposition', ''], ['content-encoding', ''], ['content-language', ''], ['content-length', ''],
  ['content-location', ''], ['content-range', ''], ['content-type', ''], ['cookie', ''], ['date', ''], ['etag', ''],
  ['expect', ''], ['expires', ''], ['from', ''], ['host', ''], ['if-match', ''], ['if-modified-since', ''],
  ['if-none-match', ''], ['if-range', ''], ['if-unmodified-since', ''], ['last-modified', ''], ['link', ''],
  ['location', ''], ['max-forwards', ''], ['proxy-authenticate', ''], ['proxy-authorization', ''], ['range', ''],
  ['referer', ''], ['refresh', ''], ['retry-after', ''], ['server', ''], ['set-cookie', ''],
  ['strict-transport-security', ''], ['transfer-encoding', ''], ['user-agent', ''], ['vary', ''], ['via', ''],
  ['www-authenticate', ''],
];

const STATIC_NAME_INDEX = new Map<string, number>();
const STATIC_PAIR_INDEX = new Map<string, number>();
STATIC_TABLE.forEach(([name, value], i) => {
  if (!STATIC_NAME_INDEX.has(name)) STATIC_NAME_INDEX.set(name, i + 1);
  if (value !== '') STATIC_PAIR_INDEX.set(`${name}\0${value}`, i + 1);
});

/** RFC 7541 §4.1: an entry's size is its name and value lengths in octets plus 32. */
const ENTRY_OVERHEAD = 32;

export class HpackError extends Error {}

/** Thrown when a block decodes to more than the caller allowed; the decoder state is then lost. */
export class HeaderListTooLarge extends Error {}

/**
 * Decodes header blocks with the dynamic table their sender keeps. A block that fails to decode
 * leaves the table in an unknown state: the connection must end (COMPRESSION_ERROR).
 */
export class HpackDecoder {
  /** Newest entry last. */
  private entries: Array<[string, string]> = [];
  private size = 0;
  private capacity: number;

  /** `maxTableSize` is what our side advertised as SETTINGS_HEADER_TABLE_SIZE. */
  constructor(private maxTableSize = 4096) {
    this.capacity = maxTableSize;
  }

  /** A new SETTINGS_HEADER_TABLE_SIZE from our side bounds later size updates. */
  setMaxTableSize(size: number): void {
    this.maxTableSize = Math.max(this.maxTableSize, size);
  }

  /**
   * Decodes one complete header block. `maxListSize` bounds the decoded header list (RFC 9113
   * §6.5.2 size): the block is refused past it, before more memory is spent on it.
   */
  decode(block: Buffer, maxListSize: number): HeaderField[] {
    const fields: HeaderField[] = [];
    let listSize = 0;
    let pos = 0;
    let sawField = false;
    const add = (name: string, value: string, sensitive: boolean): void => {
      listSize += name.length + value.length + ENTRY_OVERHEAD;
      if (listSize > maxListSize) throw new HeaderListTooLarge(`header list larger than ${maxListSize} octets`);
      fields.push({ name, value, sensitive });
      sawField = true;
    };
    const integer = (prefixBits: number): number => {
      const mask = (1 << prefixBits) - 1;
      if (pos >= block.length) throw new HpackError('truncated integer');
      let value = block[pos++] & mask;
      if (value < mask) return value;
      for (let shift = 0; ; shift += 7) {
        if (pos >= block.length) throw new HpackError('truncated integer');
        if (shift > 21) throw new HpackError('integer too large');
        const octet = block[pos++];
        value += (octet & 0x7f) * 2 ** shift;
        if ((octet & 0x80) === 0) return value;
      }
    };
    const string = (): string => {
      if (pos >= block.length) throw new HpackError('truncated string');
      const huffman = (block[pos] & 0x80) !== 0;
      const length = integer(7);
      if (length > block.length - pos) throw new HpackError('string longer than its block');
      const start = pos;
      pos += length;
      if (!huffman) return block.toString('latin1', start, pos);
      try {
        return huffmanDecode(block, start, pos);
      } catch (err) {
        if (err instanceof HuffmanError) throw new HpackError(err.message);
        throw err;
      }
    };
    const entry = (index: number): readonly [string, string] => {
      if (index === 0) throw new HpackError('index 0');
      if (index <= STATIC_TABLE.length) return STATIC_TABLE[index - 1];
      const dynamic = index - STATIC_TABLE.length;
      if (dynamic > this.entries.length) throw new HpackError(`index ${index} beyond the dynamic table`);
      return this.entries[this.entries.length - dynamic];
    };
    while (pos < block.length) {
      const first = block[pos];
      if (first & 0x80) {
        const [name, value] = entry(integer(7));
        add(name, value, false);
      } else if (first & 0x40) {
        const index = integer(6);
        const name = index === 0 ? string() : entry(index)[0];
        const value = string();
        add(name, value, false);
        this.insert(name, value);
      } else if (first & 0x20) {
        // RFC 7541 §4.2: size updates only at the start of a block.
        if (sawField) throw new HpackError('dynamic table size update after a header field');
        const size = integer(5);
        if (size > this.maxTableSize) throw new HpackError(`dynamic table size ${size} above the advertised ${this.maxTableSize}`);
        this.capacity = size;
        this.evict(0);
      } else {
        const sensitive = (first & 0x10) !== 0;
        const index = integer(4);
        const name = index === 0 ? string() : entry(index)[0];
        add(name, string(), sensitive);
      }
    }
    return fields;
  }

  private insert(name: string, value: string): void {
    const size = name.length + value.length + ENTRY_OVERHEAD;
    this.evict(size);
    // An entry larger than the table empties it and is not added (RFC 7541 §4.4).
    if (size > this.capacity) return;
    this.entries.push([name, value]);
    this.size += size;
  }

  private evict(room: number): void {
    let drop = 0;
    while (this.size + room > this.capacity && drop < this.entries.length) {
      const [name, value] = this.entries[drop++];
      this.size -= name.length + value.length + ENTRY_OVERHEAD;
    }
    if (drop > 0) this.entries.splice(0, drop);
  }

  /** For tests: the table's entries, newest first, as HPACK indexes them. */
  dynamicTable(): Array<[string, string]> {
    return [...this.entries].reverse();
  }
}

/**
 * Encodes a header list without touching the receiver's dynamic table: static-table references
 * where an entry matches, literals without indexing (or never indexed, as the sender marked them)
 * otherwise, strings as raw octets.
 */
export function encodeHeaderBlock(fields: readonly HeaderField[]): Buffer {
  let size = 0;
  for (const f of fields) size += f.name.length + f.value.length + 16;
  const out = Buffer.allocUnsafe(size);
  let pos = 0;
  const string = (s: string): void => {
    pos = writeInteger(out, pos, s.length, 7, 0);
    pos += out.write(s, pos, 'latin1');
  };
  for (const f of fields) {
    const pair = f.sensitive ? undefined : STATIC_PAIR_INDEX.get(`${f.name}\0${f.value}`);
    if (pair !== undefined) {
      pos = writeInteger(out, pos, pair, 7, 0x80);
      continue;
    }
    const nameIndex = STATIC_NAME_INDEX.get(f.name) ?? 0;
    pos = writeInteger(out, pos, nameIndex, 4, f.sensitive ? 0x10 : 0x00);
    if (nameIndex === 0) string(f.name);
    string(f.value);
  }
  return out.subarray(0, pos);
}

/** Writes an HPACK integer (RFC 7541 §5.1) at `pos`; returns the position after it. */
export function writeInteger(out: Buffer, pos: number, value: number, prefixBits: number, firstBits: number): number {
  const mask = (1 << prefixBits) - 1;
  if (value < mask) {
    out[pos++] = firstBits | value;
    return pos;
  }
  out[pos++] = firstBits | mask;
  value -= mask;
  while (value >= 0x80) {
    out[pos++] = (value % 0x80) | 0x80;
    value = Math.floor(value / 0x80);
  }
  out[pos++] = value;
  return pos;
}
