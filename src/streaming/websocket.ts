import { createHash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { ByteQueue } from '../util/byte_queue';

/**
 * The server side of RFC 6455 WebSockets, as much as the Kubernetes streaming protocols need: no
 * extensions, binary and text messages, fragmentation, ping/pong and the closing handshake.
 */

const HANDSHAKE_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

const OP_CONTINUATION = 0x0;
const OP_TEXT = 0x1;
const OP_BINARY = 0x2;
const OP_CLOSE = 0x8;
const OP_PING = 0x9;
const OP_PONG = 0xa;

export const CloseCode = {
  Normal: 1000,
  GoingAway: 1001,
  ProtocolError: 1002,
  UnsupportedData: 1003,
  InvalidPayload: 1007,
  PolicyViolation: 1008,
  MessageTooBig: 1009,
  InternalError: 1011,
} as const;

/** Whether the request asks for a WebSocket upgrade (`Upgrade: websocket`, `Connection: ...upgrade...`). */
export function isWebSocketRequest(req: IncomingMessage): boolean {
  const upgrade = req.headers.upgrade ?? '';
  const connection = (req.headers.connection ?? '').toLowerCase();
  return upgrade.toLowerCase() === 'websocket' && connection.split(',').some((token) => token.trim() === 'upgrade');
}

/** Subprotocols offered in `Sec-WebSocket-Protocol`, in the client's order of preference. */
export function offeredSubprotocols(req: IncomingMessage): string[] {
  const raw = req.headers['sec-websocket-protocol'];
  const joined = Array.isArray(raw) ? raw.join(',') : (raw ?? '');
  return joined
    .split(',')
    .map((p) => p.trim())
    .filter((p) => p.length > 0);
}

export class WebSocketHandshakeError extends Error {
  constructor(
    readonly statusCode: number,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = 'WebSocketHandshakeError';
  }
}

/** Validates the opening handshake and returns the `Sec-WebSocket-Accept` value. */
export function handshakeAccept(req: IncomingMessage): string {
  if (req.method !== 'GET') throw new WebSocketHandshakeError(405, 'websocket upgrades must use GET');
  const version = req.headers['sec-websocket-version'];
  if (version !== '13') {
    throw new WebSocketHandshakeError(426, `unsupported websocket version ${String(version)}`, { 'Sec-WebSocket-Version': '13' });
  }
  const key = req.headers['sec-websocket-key'];
  if (typeof key !== 'string' || Buffer.from(key.trim(), 'base64').length !== 16) {
    throw new WebSocketHandshakeError(400, 'missing or malformed Sec-WebSocket-Key');
  }
  return createHash('sha1').update(key.trim() + HANDSHAKE_GUID).digest('base64');
}

export interface WebSocketOptions {
  /** Largest message accepted from the client; bigger ones close the connection with 1009. */
  maxMessageBytes?: number;
  /** Close after this long without traffic (0: never). */
  idleTimeoutMs?: number;
  /** Bytes already read from the socket past the request headers. */
  head?: Buffer;
}

/**
 * Completes the handshake on an upgraded socket (after `handshakeAccept` succeeded) and returns
 * the connection. `protocol` is the chosen subprotocol, or undefined for none.
 */
export function acceptWebSocket(req: IncomingMessage, socket: Duplex, protocol: string | undefined, options: WebSocketOptions = {}): WebSocketConnection {
  const accept = handshakeAccept(req);
  const lines = ['HTTP/1.1 101 Switching Protocols', 'Upgrade: websocket', 'Connection: Upgrade', `Sec-WebSocket-Accept: ${accept}`];
  if (protocol) lines.push(`Sec-WebSocket-Protocol: ${protocol}`);
  socket.write(`${lines.join('\r\n')}\r\n\r\n`);
  return new WebSocketConnection(socket, options);
}

/**
 * An open WebSocket. Emits 'message' (data: Buffer, binary: boolean) and, once, 'close'
 * (code: number, reason: string) when the socket is gone.
 */
export class WebSocketConnection extends EventEmitter {
  /** Bytes received and not yet parsed: chunks are queued, not appended to one growing buffer. */
  private readonly received = new ByteQueue();
  private fragments: Buffer[] = [];
  private fragmentBytes = 0;
  private fragmentOpcode = 0;
  private closeSent = false;
  private closed = false;
  private closeCode: number = CloseCode.GoingAway;
  private closeReason = '';
  private readonly maxMessageBytes: number;

  constructor(
    private readonly socket: Duplex,
    options: WebSocketOptions = {},
  ) {
    super();
    this.maxMessageBytes = options.maxMessageBytes ?? 32 * 1024 * 1024;
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', () => this.finish());
    socket.on('end', () => this.finish());
    socket.on('close', () => this.finish());
    const idle = options.idleTimeoutMs ?? 0;
    if (idle > 0 && 'setTimeout' in socket && typeof socket.setTimeout === 'function') {
      (socket as Duplex & { setTimeout(ms: number, cb: () => void): void }).setTimeout(idle, () => this.close(CloseCode.GoingAway, 'idle timeout'));
    }
    if (options.head && options.head.length > 0) this.onData(options.head);
  }

  get isOpen(): boolean {
    return !this.closed && !this.closeSent;
  }

  /** Sends one message; resolves when the socket has room for more. */
  send(data: Buffer | string, binary = Buffer.isBuffer(data)): Promise<void> {
    if (!this.isOpen) return Promise.reject(new Error('websocket is closed'));
    const payload = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
    this.socket.write(encodeServerFrame(binary ? OP_BINARY : OP_TEXT, payload));
    return this.drained();
  }

  /** Starts the closing handshake; the socket ends once the peer answers (or after a grace period). */
  close(code: number = CloseCode.Normal, reason = ''): void {
    if (this.closed || this.closeSent) return;
    this.closeSent = true;
    this.closeCode = code;
    this.closeReason = reason;
    const reasonBytes = Buffer.from(reason, 'utf8').subarray(0, 123);
    const payload = Buffer.alloc(2 + reasonBytes.length);
    payload.writeUInt16BE(code, 0);
    reasonBytes.copy(payload, 2);
    this.socket.write(encodeServerFrame(OP_CLOSE, payload));
    setTimeout(() => this.destroy(), 2000).unref();
  }

  destroy(): void {
    this.socket.destroy();
    this.finish();
  }

  /** Stops reading from the socket (inbound backpressure); `resume` undoes it. */
  pause(): void {
    this.socket.pause();
  }

  resume(): void {
    if (!this.closed) this.socket.resume();
  }

  private drained(): Promise<void> {
    if (!this.socket.writableNeedDrain) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const onDrain = (): void => {
        this.off('close', onClose);
        resolve();
      };
      const onClose = (): void => {
        this.socket.off('drain', onDrain);
        reject(new Error('websocket closed'));
      };
      this.socket.once('drain', onDrain);
      this.once('close', onClose);
    });
  }

  private fail(code: number, reason: string): void {
    this.close(code, reason);
    this.socket.end();
  }

  private onData(chunk: Buffer): void {
    // Queued as is: appending each chunk to one buffer would copy a large frame over and over
    // while it arrives (quadratic in its size).
    this.received.push(chunk);
    while (!this.closed) {
      const frame = this.parseFrame();
      if (!frame) return;
      this.onFrame(frame.fin, frame.opcode, frame.payload);
    }
  }

  private parseFrame(): { fin: boolean; opcode: number; payload: Buffer } | undefined {
    const received = this.received;
    if (received.length < 2) return undefined;
    // The longest header: 2 bytes, 8 of extended length, 4 of mask.
    const buf = received.peek(Math.min(received.length, 14));
    const fin = (buf[0]! & 0x80) !== 0;
    const rsv = buf[0]! & 0x70;
    const opcode = buf[0]! & 0x0f;
    const masked = (buf[1]! & 0x80) !== 0;
    let length = buf[1]! & 0x7f;
    let offset = 2;
    if (length === 126) {
      if (buf.length < 4) return undefined;
      length = buf.readUInt16BE(2);
      offset = 4;
    } else if (length === 127) {
      if (buf.length < 10) return undefined;
      const big = buf.readBigUInt64BE(2);
      if (big > BigInt(this.maxMessageBytes)) {
        this.fail(CloseCode.MessageTooBig, 'frame too large');
        return undefined;
      }
      length = Number(big);
      offset = 10;
    }
    if (rsv !== 0) {
      this.fail(CloseCode.ProtocolError, 'reserved bits set');
      return undefined;
    }
    if (!masked) {
      this.fail(CloseCode.ProtocolError, 'client frames must be masked');
      return undefined;
    }
    if (length > this.maxMessageBytes) {
      this.fail(CloseCode.MessageTooBig, 'frame too large');
      return undefined;
    }
    if (received.length < offset + 4 + length) return undefined;
    // One copy per frame at most (when it spans chunks), then unmasked in place: the bytes are
    // this connection's own.
    const frame = received.take(offset + 4 + length);
    const mask = Buffer.from(frame.subarray(offset, offset + 4));
    const payload = frame.subarray(offset + 4);
    for (let i = 0; i < payload.length; i++) payload[i]! ^= mask[i & 3]!;
    return { fin, opcode, payload };
  }

  private onFrame(fin: boolean, opcode: number, payload: Buffer): void {
    if (opcode >= 0x8) {
      if (!fin || payload.length > 125) {
        this.fail(CloseCode.ProtocolError, 'invalid control frame');
        return;
      }
      if (opcode === OP_PING) {
        if (this.isOpen) this.socket.write(encodeServerFrame(OP_PONG, payload));
      } else if (opcode === OP_CLOSE) {
        const code = payload.length >= 2 ? payload.readUInt16BE(0) : CloseCode.Normal;
        if (!this.closeSent) {
          this.closeCode = code;
          this.closeReason = payload.subarray(2).toString('utf8');
          this.closeSent = true;
          this.socket.write(encodeServerFrame(OP_CLOSE, payload.subarray(0, 2)));
        }
        this.socket.end();
        this.finish();
      } else if (opcode !== OP_PONG) {
        this.fail(CloseCode.ProtocolError, `unknown opcode ${opcode}`);
      }
      return;
    }
    if (opcode === OP_CONTINUATION) {
      if (this.fragmentOpcode === 0) {
        this.fail(CloseCode.ProtocolError, 'continuation without a message');
        return;
      }
    } else if (opcode === OP_TEXT || opcode === OP_BINARY) {
      if (this.fragmentOpcode !== 0) {
        this.fail(CloseCode.ProtocolError, 'new message inside a fragmented one');
        return;
      }
      this.fragmentOpcode = opcode;
    } else {
      this.fail(CloseCode.ProtocolError, `unknown opcode ${opcode}`);
      return;
    }
    this.fragments.push(payload);
    this.fragmentBytes += payload.length;
    if (this.fragmentBytes > this.maxMessageBytes) {
      this.fail(CloseCode.MessageTooBig, 'message too large');
      return;
    }
    if (!fin) return;
    const message = this.fragments.length === 1 ? this.fragments[0]! : Buffer.concat(this.fragments);
    const binary = this.fragmentOpcode === OP_BINARY;
    this.fragments = [];
    this.fragmentBytes = 0;
    this.fragmentOpcode = 0;
    if (!binary && !isValidUtf8(message)) {
      this.fail(CloseCode.InvalidPayload, 'text message is not valid UTF-8');
      return;
    }
    if (!this.closeSent) this.emit('message', message, binary);
  }

  private finish(): void {
    if (this.closed) return;
    this.closed = true;
    if (!this.socket.destroyed && this.socket.writableEnded) setTimeout(() => this.socket.destroy(), 1000).unref();
    this.emit('close', this.closeCode, this.closeReason);
  }
}

const utf8Decoder = new TextDecoder('utf-8', { fatal: true });

function isValidUtf8(data: Buffer): boolean {
  try {
    utf8Decoder.decode(data);
    return true;
  } catch {
    return false;
  }
}

function encodeServerFrame(opcode: number, payload: Buffer): Buffer {
  let header: Buffer;
  if (payload.length < 126) {
    header = Buffer.from([0x80 | opcode, payload.length]);
  } else if (payload.length < 0x10000) {
    header = Buffer.alloc(4);
    header[0] = 0x80 | opcode;
    header[1] = 126;
    header.writeUInt16BE(payload.length, 2);
  } else {
    header = Buffer.alloc(10);
    header[0] = 0x80 | opcode;
    header[1] = 127;
    header.writeBigUInt64BE(BigInt(payload.length), 2);
  }
  return Buffer.concat([header, payload]);
}
