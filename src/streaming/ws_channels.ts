import { EventEmitter } from 'node:events';
import { Duplex } from 'node:stream';
import { CloseCode, type WebSocketConnection } from './websocket';

/**
 * The Kubernetes channel protocols over WebSocket ("channel.k8s.io" and its versions): every
 * message starts with the number of the channel it belongs to. The binary form prefixes a byte;
 * the base64 form ("base64.channel.k8s.io") sends text, the channel as an ASCII digit followed by
 * the base64 of the data. v5 adds a close signal: a message on channel 255 whose next byte names
 * a channel the client has finished sending on.
 */

/** How the server uses a channel: read from the client, write to it, both, or neither. */
export type ChannelMode = 'ignore' | 'read' | 'write' | 'readwrite';

export interface ChannelCodec {
  /** true for "…channel.k8s.io", false for "…base64.channel.k8s.io". */
  binary: boolean;
  /** v5: the client may half-close a channel with [255, channel]. */
  streamClose: boolean;
}

export const STREAM_CLOSE_CHANNEL = 255;

/** One channel as a duplex: the readable side is what the client sent, writes go to the client. */
export class ChannelStream extends Duplex {
  constructor(
    private readonly mux: ChannelConnection,
    readonly channel: number,
    readonly mode: ChannelMode,
  ) {
    super({ allowHalfOpen: true, readableHighWaterMark: 64 * 1024 });
    if (mode === 'ignore' || mode === 'write') this.push(null);
  }

  get readsFromClient(): boolean {
    return this.mode === 'read' || this.mode === 'readwrite';
  }

  get writesToClient(): boolean {
    return this.mode === 'write' || this.mode === 'readwrite';
  }

  /** Sends a message with no data on this channel (readiness signal). */
  sendEmpty(): Promise<void> {
    return this.mux.send(this.channel, Buffer.alloc(0));
  }

  override _read(): void {
    this.mux.onChannelRead(this);
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    // Data written to a channel the client does not read is dropped, as kubelet does.
    if (!this.writesToClient) {
      callback();
      return;
    }
    this.mux.send(this.channel, chunk).then(() => callback(), callback);
  }

  override _final(callback: (error?: Error | null) => void): void {
    callback();
  }
}

/**
 * Demultiplexes a WebSocket into channels. Emits 'close' (code, reason) when the socket closes;
 * every channel's readable side then ends.
 */
export class ChannelConnection extends EventEmitter {
  readonly channels: ChannelStream[];
  private readonly congested = new Set<ChannelStream>();
  private closed = false;

  constructor(
    private readonly ws: WebSocketConnection,
    modes: ChannelMode[],
    private readonly codec: ChannelCodec,
    private readonly maxChannelBuffer = 1024 * 1024,
  ) {
    super();
    if (modes.length > STREAM_CLOSE_CHANNEL) throw new RangeError('too many channels');
    this.channels = modes.map((mode, i) => new ChannelStream(this, i, mode));
    ws.on('message', (data: Buffer, binary: boolean) => this.onMessage(data, binary));
    ws.on('close', (code: number, reason: string) => {
      this.closed = true;
      for (const channel of this.channels) {
        if (channel.readsFromClient && !channel.readableEnded) channel.push(null);
        channel.destroy();
      }
      this.emit('close', code, reason);
    });
  }

  get isOpen(): boolean {
    return !this.closed && this.ws.isOpen;
  }

  send(channel: number, data: Buffer): Promise<void> {
    if (this.codec.binary) {
      const message = Buffer.allocUnsafe(data.length + 1);
      message[0] = channel;
      data.copy(message, 1);
      return this.ws.send(message, true);
    }
    return this.ws.send(String.fromCharCode(0x30 + channel) + data.toString('base64'), false);
  }

  close(code: number = CloseCode.Normal, reason = ''): void {
    this.ws.close(code, reason);
  }

  /** @internal */
  onChannelRead(channel: ChannelStream): void {
    if (this.congested.delete(channel) && this.congested.size === 0) this.ws.resume();
  }

  private onMessage(data: Buffer, binary: boolean): void {
    if (data.length === 0) return;
    if (binary !== this.codec.binary) {
      this.close(CloseCode.UnsupportedData, binary ? 'binary message on a base64 channel protocol' : 'text message on a binary channel protocol');
      return;
    }
    const channel = this.codec.binary ? data[0]! : data[0]! - 0x30;
    if (this.codec.streamClose && data[0] === STREAM_CLOSE_CHANNEL) {
      if (data.length !== 2) {
        this.close(CloseCode.ProtocolError, 'a stream close signal names exactly one channel');
        return;
      }
      const target = this.channels[data[1]!];
      if (target?.readsFromClient && !target.readableEnded) target.push(null);
      return;
    }
    const stream = this.channels[channel];
    if (!stream || !stream.readsFromClient || stream.readableEnded) return;
    let payload = data.subarray(1);
    if (!this.codec.binary) {
      const text = payload.toString('latin1');
      if (!/^[A-Za-z0-9+/]*={0,2}$/.test(text)) {
        this.close(CloseCode.InvalidPayload, 'malformed base64');
        return;
      }
      payload = Buffer.from(text, 'base64');
    }
    if (payload.length === 0) return;
    stream.push(payload);
    if (stream.readableLength > this.maxChannelBuffer && !this.congested.has(stream)) {
      this.congested.add(stream);
      this.ws.pause();
    }
  }
}
