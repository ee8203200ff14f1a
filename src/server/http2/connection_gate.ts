import type * as net from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from '../../log';
import { AuthorityFilter, authorityIsValid } from './authority_filter';
import { FLAG_ACK, FLAG_END_HEADERS, FrameType, frameHeader, parseFrameHeader, PREFACE, splitHeadersPayload } from './frames';
import { HpackDecoder } from './hpack';

/**
 * Decides per connection whether it needs the `:authority` filter. The filter must see every
 * header block of a connection that needs it, and a filtered connection costs each call a trip
 * through JavaScript streams (about 50 µs here), so a connection whose first request already
 * carries an authority Node accepts (grpc-js, and Go clients that dial `unix://`) is handed to the
 * HTTP/2 server as the bare socket, read natively from then on. Clients keep one authority per
 * connection, so the first request speaks for the rest.
 *
 * Clients send no request before the server's connection preface, which the HTTP/2 server only
 * sends once it has the connection: the gate sends an empty SETTINGS frame of its own (a valid
 * preface), and drops the client's acknowledgement of it, which the server would not expect.
 * Everything else the client sent meanwhile is handed on unchanged, in order.
 */

/** What a client may send before its first request without the gate deciding at once. */
const EARLY_FRAME_TYPES = new Set<number>([FrameType.SETTINGS, FrameType.WINDOW_UPDATE, FrameType.PRIORITY, FrameType.PING, FrameType.HEADERS, FrameType.CONTINUATION]);
const EMPTY_SETTINGS = frameHeader(0, FrameType.SETTINGS, 0, 0);
const PING_ACK_HEADER = frameHeader(8, FrameType.PING, FLAG_ACK, 0);
/** Past this much before a decision, the filter takes the connection (it enforces the limits). */
const MAX_HELD = 64 * 1024;

export interface GateOptions {
  log?: Logger;
  /** Receives the connection: the socket itself, or the filter in front of it. */
  inject: (connection: Duplex) => void;
  incompleteFrameTimeoutMs?: number;
}

export function gateConnection(socket: net.Socket, options: GateOptions): void {
  const held: Buffer[] = [];
  let heldLength = 0;
  /** Parse position in the concatenation of `held`. */
  let scanned = 0;
  let ackDropped = false;
  let firstBlock: { fragments: Buffer[]; done: boolean } | undefined;
  let decided = false;

  const decide = (native: boolean, data: Buffer, ackSeen = ackDropped): void => {
    decided = true;
    clearTimeout(timer);
    socket.off('data', onData);
    socket.off('close', onClose);
    socket.pause();
    if (data.length > 0) socket.unshift(data);
    if (native) {
      // The HTTP/2 session reads what is buffered here first, then the socket natively.
      options.inject(socket);
    } else {
      options.inject(
        new AuthorityFilter(socket, { log: options.log, incompleteFrameTimeoutMs: options.incompleteFrameTimeoutMs, dropFirstSettingsAck: !ackSeen }),
      );
      socket.resume();
    }
  };

  const onData = (chunk: Buffer): void => {
    if (decided) return;
    scan(chunk);
    watchForStall();
  };

  const scan = (chunk: Buffer): void => {
    held.push(chunk);
    heldLength += chunk.length;
    let data = held.length === 1 ? held[0] : Buffer.concat(held);
    held.length = 0;
    held.push(data);
    if (heldLength > MAX_HELD || !data.subarray(0, Math.min(PREFACE.length, data.length)).equals(PREFACE.subarray(0, Math.min(PREFACE.length, data.length)))) {
      decide(false, data);
      return;
    }
    if (scanned === 0) scanned = Math.min(PREFACE.length, data.length);
    while (scanned + 9 <= data.length && !(firstBlock?.done && ackDropped)) {
      const { length, type, flags } = parseFrameHeader(data, scanned);
      if (!EARLY_FRAME_TYPES.has(type)) {
        // Anything else before the first request: the filter handles every case.
        decide(false, data);
        return;
      }
      if (scanned + 9 + length > data.length) break;
      const payload = data.subarray(scanned + 9, scanned + 9 + length);
      const ourAck = type === FrameType.SETTINGS && flags & FLAG_ACK && !ackDropped;
      // A keep-alive PING while the client is idle: answered here, as the server would.
      const ping = type === FrameType.PING && !(flags & FLAG_ACK) && length === 8;
      if (ourAck || ping) {
        // The acknowledgement of the gate's own SETTINGS goes nowhere: the server never sent them.
        if (ourAck) ackDropped = true;
        else socket.write(Buffer.concat([PING_ACK_HEADER, payload]));
        data = Buffer.concat([data.subarray(0, scanned), data.subarray(scanned + 9 + length)]);
        held[0] = data;
        heldLength = data.length;
        continue;
      }
      if (type === FrameType.PING) {
        decide(false, data, ackDropped);
        return;
      }
      if (type === FrameType.HEADERS && !firstBlock) {
        const parts = splitHeadersPayload(payload, flags);
        if (!parts) {
          decide(false, data);
          return;
        }
        firstBlock = { fragments: [parts.fragment], done: (flags & FLAG_END_HEADERS) !== 0 };
      } else if (type === FrameType.CONTINUATION && firstBlock && !firstBlock.done) {
        firstBlock.fragments.push(payload);
        firstBlock.done = (flags & FLAG_END_HEADERS) !== 0;
      }
      scanned += 9 + length;
    }
    if (!firstBlock?.done || !ackDropped) return;
    let native = false;
    try {
      const fields = new HpackDecoder().decode(Buffer.concat(firstBlock.fragments), 1 << 20);
      native = fields.every((f) => (f.name !== ':authority' && f.name !== 'host') || authorityIsValid(f.value));
    } catch {
      // Broken HPACK: the filter ends the connection with the right error.
    }
    decide(native, data);
  };

  const onClose = (): void => clearTimeout(timer);
  // An idle client that has said hello is left alone, as the HTTP/2 server would leave it; one
  // that stops half-way through a frame or the preface is handed to the filter, whose frame
  // timeout then applies.
  let timer: NodeJS.Timeout | undefined;
  const watchForStall = (): void => {
    clearTimeout(timer);
    timer = undefined;
    const data = held[0];
    if (decided || !data) return;
    // A request waits for the acknowledgement of the gate's SETTINGS, which a conforming client
    // sends before or right after it; one that does not send it is not kept waiting long.
    const requestWaiting = firstBlock?.done === true;
    const atBoundary = scanned === data.length && scanned >= PREFACE.length && firstBlock === undefined;
    if (atBoundary) return;
    timer = setTimeout(() => {
      if (!decided) decide(false, held[0] ?? Buffer.alloc(0));
    }, requestWaiting ? 100 : 1000);
    timer.unref();
  };
  socket.on('data', onData);
  socket.on('close', onClose);
  socket.on('error', () => socket.destroy());
  socket.write(EMPTY_SETTINGS);
}
