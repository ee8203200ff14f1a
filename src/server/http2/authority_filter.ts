import { Duplex } from 'node:stream';
import type { Logger } from '../../log';
import {
  FLAG_ACK,
  FLAG_END_HEADERS,
  FLAG_END_STREAM,
  FLAG_PRIORITY,
  FRAME_HEADER,
  FrameType,
  frameHeader,
  H2_COMPRESSION_ERROR,
  H2_ENHANCE_YOUR_CALM,
  H2_FRAME_SIZE_ERROR,
  H2_PROTOCOL_ERROR,
  parseFrameHeader,
  PREFACE,
  SETTINGS_HEADER_TABLE_SIZE,
  SETTINGS_MAX_FRAME_SIZE,
  SETTINGS_MAX_HEADER_LIST_SIZE,
  splitHeadersPayload,
} from './frames';
import { encodeHeaderBlock, HeaderListTooLarge, HpackDecoder, HpackError, type HeaderField } from './hpack';

/**
 * Go CRI clients of kubelet ≤ 1.25's and crictl ≤ 1.26's era dial the unix socket themselves and
 * send its path ("/run/crisp/crisp.sock") as HTTP/2 `:authority`. Node's HTTP/2 server (nghttp2)
 * checks `:authority` against RFC 3986's authority characters and resets such streams with
 * PROTOCOL_ERROR before grpc-js sees them, and offers no switch for it. This filter sits between
 * each accepted connection and grpc-js: it follows the client's frames, decodes every header block
 * with the client's HPACK state, replaces an `:authority` (or `host`) nghttp2 would refuse with
 * "localhost", and re-encodes the block without a dynamic table toward the server. Every other
 * frame passes through untouched (no copy when a read holds no header block); frames from the
 * server are only followed to know their boundaries and the limits the server advertised.
 */

/** RFC 9113 defaults until the server's SETTINGS say otherwise. */
const DEFAULT_MAX_FRAME_SIZE = 16_384;
/** Node's default maxHeaderListSize, which it enforces without advertising it. */
const DEFAULT_MAX_HEADER_LIST = 65_535;

export interface AuthorityFilterOptions {
  log?: Logger;
  /** A frame begun and not finished within this time ends the connection. */
  incompleteFrameTimeoutMs?: number;
  /**
   * The client's first SETTINGS acknowledgement answers a SETTINGS frame sent before the server
   * had the connection (see connection_gate.ts); the server must not see it.
   */
  dropFirstSettingsAck?: boolean;
}

/** RFC 3986 authority characters, as nghttp2 checks them; empty is refused too. */
const VALID_AUTHORITY = /^[A-Za-z0-9\-._~!$&'()*+,;=:@[\]%]+$/;
export const REPLACEMENT_AUTHORITY = 'localhost';

export function authorityIsValid(value: string): boolean {
  return VALID_AUTHORITY.test(value);
}

/** Replaces an `:authority`/`host` value nghttp2 would refuse. */
function sanitizeAuthority(fields: HeaderField[]): void {
  for (const f of fields) {
    if ((f.name === ':authority' || f.name === 'host') && !authorityIsValid(f.value)) f.value = REPLACEMENT_AUTHORITY;
  }
}

class ConnectionError extends Error {
  constructor(readonly code: number, message: string) {
    super(message);
  }
}

export class AuthorityFilter extends Duplex {
  private readonly decoder = new HpackDecoder();
  private readonly timeoutMs: number;

  // Client → server.
  private prefaceSeen = 0;
  /** Not HTTP/2 after all: pass everything on and let the server refuse it. */
  private passthrough = false;
  private readonly header = Buffer.alloc(FRAME_HEADER);
  private headerFill = 0;
  /** Payload octets of the current frame still to come. */
  private remaining = 0;
  /** The current frame belongs to a header block and is being collected. */
  private collecting = false;
  private frameType = 0;
  private frameFlags = 0;
  private frameParts: Buffer[] = [];
  /** An open header block (HEADERS seen, END_HEADERS not yet). */
  private block?: { streamId: number; flags: number; priority?: Buffer; fragments: Buffer[]; size: number };
  private lastStreamId = 0;
  private timer?: NodeJS.Timeout;
  private paused = false;

  // Server → client.
  private serverHeaderFill = 0;
  private readonly serverHeader = Buffer.alloc(FRAME_HEADER);
  private serverRemaining = 0;
  /** Payload of a SETTINGS frame from the server being collected, if any. */
  private serverSettings?: Buffer[];
  private maxFrameSize = DEFAULT_MAX_FRAME_SIZE;
  private maxHeaderList = DEFAULT_MAX_HEADER_LIST;

  /** Set once the connection is being ended for a protocol violation. */
  private failure?: ConnectionError;
  private goawaySent = false;

  private dropSettingsAck: boolean;

  constructor(private readonly socket: Duplex, private readonly options: AuthorityFilterOptions = {}) {
    super();
    this.timeoutMs = options.incompleteFrameTimeoutMs ?? 10_000;
    this.dropSettingsAck = options.dropFirstSettingsAck ?? false;
    socket.on('data', (chunk: Buffer) => this.fromClient(chunk));
    socket.on('end', () => this.push(null));
    socket.on('close', () => this.destroy());
    // The HTTP/2 session sees the close; an error has nothing more to tell it.
    socket.on('error', () => this.destroy());
  }

  override _read(): void {
    if (this.paused && !this.failure) {
      this.paused = false;
      this.socket.resume();
      this.armTimer();
    }
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    if (this.goawaySent) {
      callback();
      return;
    }
    const upTo = this.fromServer(chunk);
    if (upTo < 0) {
      this.socket.write(chunk, callback);
      return;
    }
    this.socket.write(chunk.subarray(0, upTo));
    this.sendGoaway();
    callback();
  }

  override _writev(chunks: Array<{ chunk: Buffer }>, callback: (error?: Error | null) => void): void {
    this.socket.cork();
    let last: Buffer | undefined;
    for (const { chunk } of chunks) {
      if (this.goawaySent) break;
      const upTo = this.fromServer(chunk);
      if (upTo >= 0) {
        this.socket.write(chunk.subarray(0, upTo));
        this.sendGoaway();
        break;
      }
      if (last) this.socket.write(last);
      last = chunk;
    }
    if (last && !this.goawaySent) this.socket.write(last, callback);
    else callback();
    this.socket.uncork();
  }

  override _final(callback: (error?: Error | null) => void): void {
    this.socket.end();
    callback();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    clearTimeout(this.timer);
    this.socket.destroy();
    callback(error);
  }

  /** Follows the client's bytes; pushes them on, with header blocks re-encoded. */
  private fromClient(chunk: Buffer): void {
    if (this.failure) return;
    let out: Buffer[] | undefined;
    let runStart = 0;
    const flushRun = (end: number): void => {
      if (end > runStart) (out ??= []).push(chunk.subarray(runStart, end));
    };
    let pos = 0;
    // Octets from here on are held back: a frame header not yet complete.
    let held = chunk.length;
    // Where the frame being looked at starts: what precedes it is whole frames.
    let frameStart = 0;
    try {
      while (pos < chunk.length) {
        if (this.passthrough) {
          pos = chunk.length;
          break;
        }
        if (this.prefaceSeen < PREFACE.length) {
          const n = Math.min(PREFACE.length - this.prefaceSeen, chunk.length - pos);
          if (!chunk.subarray(pos, pos + n).equals(PREFACE.subarray(this.prefaceSeen, this.prefaceSeen + n))) this.passthrough = true;
          this.prefaceSeen += n;
          pos += n;
          continue;
        }
        if (this.remaining === 0 && !this.collecting) {
          // A frame header, possibly split across reads.
          const headerStart = pos;
          const n = Math.min(FRAME_HEADER - this.headerFill, chunk.length - pos);
          chunk.copy(this.header, this.headerFill, pos, pos + n);
          const split = this.headerFill > 0;
          this.headerFill += n;
          pos += n;
          if (this.headerFill < FRAME_HEADER) {
            held = headerStart;
            break;
          }
          this.headerFill = 0;
          frameStart = headerStart;
          const collect = this.startFrame();
          if (collect) {
            flushRun(headerStart);
            runStart = pos;
          } else if (split) {
            // The header's first octets came in an earlier read and were held back.
            flushRun(headerStart);
            (out ??= []).push(Buffer.from(this.header));
            runStart = pos;
          }
          if (collect && this.remaining === 0) this.endCollectedFrame(out ??= []);
          continue;
        }
        const n = Math.min(this.remaining, chunk.length - pos);
        if (this.collecting) {
          this.frameParts.push(chunk.subarray(pos, pos + n));
          this.remaining -= n;
          pos += n;
          runStart = pos;
          if (this.remaining === 0) this.endCollectedFrame(out ??= []);
        } else {
          this.remaining -= n;
          pos += n;
        }
      }
    } catch (err) {
      if (!(err instanceof ConnectionError)) throw err;
      // The frames before the offending one still reach the server (GOAWAY's last stream id
      // counts them); nothing after it does, and the server learns of the end as it closes.
      flushRun(frameStart);
      if (out && out.length > 0) this.pushOut(out.length === 1 ? out[0] : Buffer.concat(out));
      this.fail(err);
      return;
    }
    if (out === undefined && runStart === 0 && held === chunk.length) {
      this.pushOut(chunk);
    } else {
      flushRun(held);
      if (out && out.length > 0) this.pushOut(out.length === 1 ? out[0] : Buffer.concat(out));
    }
    this.armTimer();
  }

  private pushOut(data: Buffer): void {
    if (!this.push(data) && !this.paused) {
      this.paused = true;
      this.socket.pause();
      clearTimeout(this.timer);
      this.timer = undefined;
    }
  }

  /** At a frame boundary nothing is pending; inside one, the client has a while to finish it. */
  private armTimer(): void {
    const inside = this.headerFill > 0 || this.remaining > 0 || this.block !== undefined;
    if (!inside || this.paused || this.passthrough) {
      clearTimeout(this.timer);
      this.timer = undefined;
    } else if (!this.timer) {
      this.timer = setTimeout(() => {
        this.timer = undefined;
        this.fail(new ConnectionError(H2_ENHANCE_YOUR_CALM, `frame not completed within ${this.timeoutMs} ms`));
      }, this.timeoutMs);
      this.timer.unref();
    }
  }

  /** Reads the frame header just completed; returns whether its payload is collected. */
  private startFrame(): boolean {
    const { length, type, flags, streamId } = parseFrameHeader(this.header);
    if (length > this.maxFrameSize) throw new ConnectionError(H2_FRAME_SIZE_ERROR, `frame of ${length} octets above the maximum ${this.maxFrameSize}`);
    if (this.block && (type !== FrameType.CONTINUATION || streamId !== this.block.streamId)) {
      throw new ConnectionError(H2_PROTOCOL_ERROR, 'header block interrupted by another frame');
    }
    if (type === FrameType.PUSH_PROMISE) throw new ConnectionError(H2_PROTOCOL_ERROR, 'PUSH_PROMISE from a client');
    if (type === FrameType.CONTINUATION && !this.block) throw new ConnectionError(H2_PROTOCOL_ERROR, 'CONTINUATION without a header block');
    this.remaining = length;
    if (type === FrameType.SETTINGS && flags & FLAG_ACK && this.dropSettingsAck) {
      this.dropSettingsAck = false;
      this.collecting = true;
      this.frameType = type;
      this.frameParts = [];
      return true;
    }
    if (type !== FrameType.HEADERS && type !== FrameType.CONTINUATION) return false;
    if (streamId === 0) throw new ConnectionError(H2_PROTOCOL_ERROR, 'header block on stream 0');
    this.collecting = true;
    this.frameType = type;
    this.frameFlags = flags;
    this.frameParts = [];
    if (type === FrameType.HEADERS) this.block = { streamId, flags, fragments: [], size: 0 };
    return true;
  }

  /** A collected HEADERS or CONTINUATION frame is complete. */
  private endCollectedFrame(out: Buffer[]): void {
    this.collecting = false;
    const payload = this.frameParts.length === 1 ? this.frameParts[0] : Buffer.concat(this.frameParts);
    this.frameParts = [];
    // The dropped SETTINGS acknowledgement: nothing to pass on.
    if (this.frameType === FrameType.SETTINGS) return;
    const block = this.block!;
    let fragment = payload;
    if (this.frameType === FrameType.HEADERS) {
      const parts = splitHeadersPayload(payload, this.frameFlags);
      if (!parts) throw new ConnectionError(H2_PROTOCOL_ERROR, 'HEADERS padding longer than the frame');
      if (parts.priority) block.priority = Buffer.from(parts.priority);
      fragment = parts.fragment;
    }
    block.fragments.push(fragment);
    block.size += fragment.length;
    // What a valid header list may encode to; past it the client is only spending our memory.
    if (block.size > this.maxHeaderList + DEFAULT_MAX_FRAME_SIZE) {
      throw new ConnectionError(H2_ENHANCE_YOUR_CALM, `header block larger than ${this.maxHeaderList} octets`);
    }
    if (!(this.frameFlags & FLAG_END_HEADERS)) return;
    this.block = undefined;
    this.emitHeaderBlock(block, out);
  }

  private emitHeaderBlock(block: NonNullable<AuthorityFilter['block']>, out: Buffer[]): void {
    let fields: HeaderField[];
    try {
      fields = this.decoder.decode(block.fragments.length === 1 ? block.fragments[0] : Buffer.concat(block.fragments), this.maxHeaderList);
    } catch (err) {
      if (err instanceof HpackError) throw new ConnectionError(H2_COMPRESSION_ERROR, `header block does not decode: ${err.message}`);
      if (err instanceof HeaderListTooLarge) throw new ConnectionError(H2_ENHANCE_YOUR_CALM, err.message);
      throw err;
    }
    sanitizeAuthority(fields);
    const encoded = encodeHeaderBlock(fields);
    if (block.streamId > this.lastStreamId && block.streamId % 2 === 1) this.lastStreamId = block.streamId;
    const priority = block.priority;
    const firstRoom = this.maxFrameSize - (priority ? 5 : 0);
    let offset = Math.min(firstRoom, encoded.length);
    const endHeaders = offset === encoded.length;
    const flags = (block.flags & FLAG_END_STREAM) | (priority ? FLAG_PRIORITY : 0) | (endHeaders ? FLAG_END_HEADERS : 0);
    out.push(frameHeader(offset + (priority ? 5 : 0), FrameType.HEADERS, flags, block.streamId));
    if (priority) out.push(priority);
    out.push(encoded.subarray(0, offset));
    while (offset < encoded.length) {
      const n = Math.min(this.maxFrameSize, encoded.length - offset);
      const last = offset + n === encoded.length;
      out.push(frameHeader(n, FrameType.CONTINUATION, last ? FLAG_END_HEADERS : 0, block.streamId), encoded.subarray(offset, offset + n));
      offset += n;
    }
  }

  /**
   * Follows the server's frames. Returns -1, or, when the connection is being ended, the offset
   * of the first frame boundary in `chunk` after which the GOAWAY goes.
   */
  private fromServer(chunk: Buffer): number {
    let pos = 0;
    while (pos < chunk.length) {
      if (this.serverRemaining === 0 && !this.serverSettings) {
        if (this.failure && this.serverHeaderFill === 0) return pos;
        const n = Math.min(FRAME_HEADER - this.serverHeaderFill, chunk.length - pos);
        chunk.copy(this.serverHeader, this.serverHeaderFill, pos, pos + n);
        this.serverHeaderFill += n;
        pos += n;
        if (this.serverHeaderFill < FRAME_HEADER) break;
        this.serverHeaderFill = 0;
        const { length, type, flags } = parseFrameHeader(this.serverHeader);
        this.serverRemaining = length;
        if (type === FrameType.SETTINGS && !(flags & FLAG_ACK) && length > 0) this.serverSettings = [];
        continue;
      }
      const n = Math.min(this.serverRemaining, chunk.length - pos);
      if (this.serverSettings) {
        this.serverSettings.push(chunk.subarray(pos, pos + n));
      }
      this.serverRemaining -= n;
      pos += n;
      if (this.serverRemaining === 0 && this.serverSettings) {
        this.applyServerSettings(Buffer.concat(this.serverSettings));
        this.serverSettings = undefined;
      }
    }
    return this.failure && this.serverRemaining === 0 && this.serverHeaderFill === 0 ? chunk.length : -1;
  }

  private applyServerSettings(payload: Buffer): void {
    for (let i = 0; i + 6 <= payload.length; i += 6) {
      const id = payload.readUInt16BE(i);
      const value = payload.readUInt32BE(i + 2);
      if (id === SETTINGS_HEADER_TABLE_SIZE) this.decoder.setMaxTableSize(value);
      else if (id === SETTINGS_MAX_FRAME_SIZE) this.maxFrameSize = value;
      else if (id === SETTINGS_MAX_HEADER_LIST_SIZE) this.maxHeaderList = value;
    }
  }

  /** Ends the connection: GOAWAY to the client at the next boundary of the server's frames. */
  private fail(err: ConnectionError): void {
    if (this.failure) return;
    this.failure = err;
    clearTimeout(this.timer);
    this.timer = undefined;
    this.options.log?.warn({ code: err.code, reason: err.message }, 'closing a CRI connection that broke HTTP/2 rules');
    if (this.serverRemaining === 0 && this.serverHeaderFill === 0 && !this.serverSettings) {
      this.sendGoaway();
    } else {
      // The server is inside a frame; give it a moment to finish it, then close regardless.
      setTimeout(() => this.sendGoaway(), 1000).unref();
    }
  }

  private sendGoaway(): void {
    if (this.goawaySent || !this.failure) return;
    this.goawaySent = true;
    const debug = Buffer.from(this.failure.message);
    const payload = Buffer.alloc(8);
    payload.writeUInt32BE(this.lastStreamId, 0);
    payload.writeUInt32BE(this.failure.code, 4);
    const canWrite = this.serverRemaining === 0 && this.serverHeaderFill === 0 && !this.serverSettings;
    if (canWrite && !this.socket.destroyed) {
      this.socket.end(Buffer.concat([frameHeader(8 + debug.length, FrameType.GOAWAY, 0, 0), payload, debug]));
      // Lingering close: a socket closed with unread input resets the connection, and the client
      // would lose the GOAWAY. What it still sends is read and dropped until it closes or a
      // second has passed.
      this.socket.resume();
      setTimeout(() => this.socket.destroy(), 1000).unref();
    } else {
      this.socket.destroy();
    }
    // The server side learns of the end as the socket closes.
    this.push(null);
  }
}
