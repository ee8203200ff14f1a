import { EventEmitter } from 'node:events';
import { Duplex } from 'node:stream';
import type { Logger } from '../../log';
import {
  encodeFrame,
  FLAG_FIN,
  FLAG_UNIDIRECTIONAL,
  FrameDecoder,
  GoAwayStatus,
  RstStatus,
  SettingsId,
  SpdyProtocolError,
  type Frame,
} from './frames';
import { HeaderCompressor, HeaderDecompressor, toHeaderMap, type HeaderInit, type HeaderMap } from './headers';

/** The per-stream and per-session window every SPDY/3.1 endpoint starts with. */
export const DEFAULT_INITIAL_WINDOW = 64 * 1024;
const MAX_WINDOW = 0x7fffffff;
/** Payload bytes per DATA frame we send, so streams interleave fairly on the socket. */
const MAX_DATA_CHUNK = 16 * 1024;

/**
 * When to hold back DATA frames because the peer's receive window is exhausted.
 * - 'always': from the start, as the spec says.
 * - 'auto': once the peer has shown it does flow control, by sending a WINDOW_UPDATE or a SETTINGS
 *   frame carrying INITIAL_WINDOW_SIZE. Go's spdystream, which every Kubernetes client and the
 *   API server use, never sends WINDOW_UPDATE; waiting for one would stall every stream after its
 *   first 64 KiB.
 * - 'never': windows are tracked but never waited on.
 */
export type PeerFlowControl = 'always' | 'auto' | 'never';

export interface SpdyConnectionOptions {
  /** Servers answer odd (client) stream ids and open even ones; clients the reverse. */
  server: boolean;
  log?: Logger;
  peerFlowControl?: PeerFlowControl;
  /** Bytes a stream may hold unread before the whole connection stops reading from the socket. */
  maxStreamReadBuffer?: number;
  /** Close the connection after this long without traffic in either direction (0: never). */
  idleTimeoutMs?: number;
  /** Bytes already read from the socket past the upgrade response headers. */
  head?: Buffer;
}

export class SpdyStreamResetError extends Error {
  constructor(
    readonly streamId: number,
    readonly status: number,
    byPeer: boolean,
  ) {
    super(`SPDY stream ${streamId} was reset ${byPeer ? 'by the peer' : 'locally'} (status ${status})`);
    this.name = 'SpdyStreamResetError';
  }
}

export class SpdyConnectionClosedError extends Error {
  constructor(reason: string) {
    super(`SPDY connection closed: ${reason}`);
    this.name = 'SpdyConnectionClosedError';
  }
}

function hasHeaderBlock(frame: Frame): frame is Extract<Frame, { headerBlock: Buffer }> {
  return frame.kind === 'syn_stream' || frame.kind === 'syn_reply' || frame.kind === 'headers';
}

/**
 * One SPDY stream as a Node duplex: the readable side carries the peer's DATA, the writable side
 * sends ours, `end()` sends FIN. `destroy()` before both directions are closed resets the stream.
 */
export class SpdyStream extends Duplex {
  /** Headers of the SYN_STREAM that opened the stream. */
  readonly headers: HeaderMap;
  /** Headers of the SYN_REPLY, once received (streams we opened). */
  replyHeaders: HeaderMap | undefined;

  /** Set once our FIN (or a unidirectional open by the peer) closed our sending side. */
  localClosed = false;
  /** Set once the peer's FIN closed its sending side. */
  remoteClosed = false;
  /** Set once a RST_STREAM went either way. */
  resetStatus: number | undefined;
  /** For streams the peer opened: we sent SYN_REPLY. For ours: SYN_REPLY arrived. */
  replied = false;

  sendWindow: number;
  /** Bytes received, and bytes already granted back to the peer as window. */
  receivedBytes = 0;
  grantedBytes = 0;

  private replyWaiters: { resolve: (h: HeaderMap) => void; reject: (e: Error) => void }[] = [];

  constructor(
    private readonly conn: SpdyConnection,
    readonly id: number,
    readonly initiatedLocally: boolean,
    headers: HeaderMap,
    sendWindow: number,
  ) {
    super({ allowHalfOpen: true, readableHighWaterMark: DEFAULT_INITIAL_WINDOW, writableHighWaterMark: DEFAULT_INITIAL_WINDOW });
    this.headers = headers;
    this.sendWindow = sendWindow;
  }

  /** First value of a SYN_STREAM header (names are case-insensitive). */
  header(name: string): string | undefined {
    return this.headers.get(name.toLowerCase())?.[0];
  }

  /** Accepts a stream the peer opened. Sending data replies implicitly with no headers. */
  reply(headers?: HeaderInit, options: { fin?: boolean } = {}): void {
    this.conn.sendReply(this, toHeaderMap(headers), options.fin ?? false);
  }

  /** Resolves with the peer's SYN_REPLY headers (streams we opened). */
  waitReply(): Promise<HeaderMap> {
    if (this.replyHeaders) return Promise.resolve(this.replyHeaders);
    if (this.resetStatus !== undefined) return Promise.reject(new SpdyStreamResetError(this.id, this.resetStatus, true));
    if (this.destroyed) return Promise.reject(new SpdyConnectionClosedError('stream destroyed before its reply'));
    return new Promise((resolve, reject) => this.replyWaiters.push({ resolve, reject }));
  }

  /** Aborts both directions with RST_STREAM. */
  reset(status: number = RstStatus.Cancel): void {
    this.conn.resetStream(this, status);
    this.destroy();
  }

  /** @internal */
  settleReply(headers: HeaderMap | undefined, err?: Error): void {
    if (headers) this.replyHeaders = headers;
    const waiters = this.replyWaiters;
    this.replyWaiters = [];
    for (const w of waiters) {
      if (headers) w.resolve(headers);
      else w.reject(err ?? new SpdyConnectionClosedError('no reply'));
    }
  }

  override _read(): void {
    this.conn.onStreamRead(this);
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.conn.sendData(this, chunk).then(() => callback(), callback);
  }

  override _final(callback: (error?: Error | null) => void): void {
    this.conn.sendFin(this).then(() => callback(), callback);
  }

  override _destroy(err: Error | null, callback: (error?: Error | null) => void): void {
    this.conn.onStreamDestroyed(this);
    this.settleReply(undefined, err ?? new SpdyConnectionClosedError('stream destroyed'));
    callback(err);
  }
}

/**
 * A SPDY/3.1 session over a byte stream (an upgraded HTTP connection). Emits:
 * - 'stream' (SpdyStream): the peer opened a stream; call `reply()` or `reset()`.
 * - 'goaway' (lastGoodStreamId, status): the peer will open no more streams.
 * - 'close' (Error | undefined): the socket is gone; every stream has been destroyed.
 */
export class SpdyConnection extends EventEmitter {
  private readonly server: boolean;
  private readonly log: Logger | undefined;
  private readonly decoder = new FrameDecoder();
  private readonly compressor = new HeaderCompressor();
  private readonly decompressor = new HeaderDecompressor();
  private readonly streams = new Map<number, SpdyStream>();
  private readonly congested = new Set<SpdyStream>();
  private readonly windowWaiters = new Set<() => void>();
  private readonly pings = new Map<number, { start: bigint; resolve: (ms: number) => void; reject: (e: Error) => void }>();
  private readonly peerFlowControl: PeerFlowControl;
  private readonly maxStreamReadBuffer: number;

  private nextStreamId: number;
  private nextPingId: number;
  private lastRemoteStreamId = 0;
  private peerInitialWindow = DEFAULT_INITIAL_WINDOW;
  private sessionSendWindow = DEFAULT_INITIAL_WINDOW;
  private enforcePeerWindow: boolean;

  private inboundChain: Promise<void> = Promise.resolve();
  private inboundBacklog = 0;
  private outboundChain: Promise<void> = Promise.resolve();
  private outboundBacklog = 0;

  private goAwaySent = false;
  private goAwayReceived = false;
  private terminated = false;
  private closeError: Error | undefined;

  constructor(
    private readonly socket: Duplex,
    options: SpdyConnectionOptions,
  ) {
    super();
    this.server = options.server;
    this.log = options.log;
    this.peerFlowControl = options.peerFlowControl ?? 'auto';
    this.enforcePeerWindow = this.peerFlowControl === 'always';
    this.maxStreamReadBuffer = options.maxStreamReadBuffer ?? 1024 * 1024;
    this.nextStreamId = this.server ? 2 : 1;
    this.nextPingId = this.server ? 2 : 1;

    socket.on('data', (chunk: Buffer) => this.onSocketData(chunk));
    // Frames already received may still wait for header decompression; handle them first.
    const terminateAfterInbound = (err: Error): void => {
      void this.inboundChain.then(() => this.terminate(err));
    };
    socket.on('end', () => terminateAfterInbound(new SpdyConnectionClosedError('peer closed the connection')));
    socket.on('error', (err: Error) => terminateAfterInbound(err));
    socket.on('close', () => terminateAfterInbound(new SpdyConnectionClosedError('socket closed')));
    const idle = options.idleTimeoutMs ?? 0;
    if (idle > 0 && 'setTimeout' in socket && typeof socket.setTimeout === 'function') {
      (socket as Duplex & { setTimeout(ms: number, cb: () => void): void }).setTimeout(idle, () =>
        this.destroy(new SpdyConnectionClosedError(`idle for ${idle} ms`)),
      );
    }
    if (options.head && options.head.length > 0) this.onSocketData(options.head);
  }

  get closed(): boolean {
    return this.terminated;
  }

  get activeStreams(): number {
    return this.streams.size;
  }

  /** Opens a stream (client side of an exchange). Resolve its reply with `waitReply()`. */
  openStream(headers: HeaderInit, options: { fin?: boolean; priority?: number } = {}): SpdyStream {
    if (this.terminated) throw new SpdyConnectionClosedError(this.closeError?.message ?? 'closed');
    if (this.goAwayReceived || this.goAwaySent) throw new SpdyConnectionClosedError('connection is going away');
    const id = this.nextStreamId;
    if (id > 0x7fffffff) throw new SpdyConnectionClosedError('stream ids exhausted');
    this.nextStreamId += 2;
    const map = toHeaderMap(headers);
    const stream = new SpdyStream(this, id, true, map, this.peerInitialWindow);
    this.streams.set(id, stream);
    const fin = options.fin ?? false;
    if (fin) {
      stream.localClosed = true;
      stream.end();
    }
    this.enqueue(
      this.compressor.compress(map).then((headerBlock) =>
        encodeFrame({
          kind: 'syn_stream',
          streamId: id,
          associatedStreamId: 0,
          priority: options.priority ?? 0,
          slot: 0,
          flags: fin ? FLAG_FIN : 0,
          headerBlock,
        }),
      ),
    ).catch(() => undefined);
    return stream;
  }

  /** Round-trip time of a PING, in milliseconds. */
  ping(): Promise<number> {
    if (this.terminated) return Promise.reject(new SpdyConnectionClosedError('closed'));
    const id = this.nextPingId;
    this.nextPingId = this.nextPingId >= 0x7ffffffd ? (this.server ? 2 : 1) : this.nextPingId + 2;
    return new Promise((resolve, reject) => {
      this.pings.set(id, { start: process.hrtime.bigint(), resolve, reject });
      this.enqueue(encodeFrame({ kind: 'ping', id })).catch(reject);
    });
  }

  /** Announces this endpoint's settings (used to tell a peer we do flow control). */
  sendSettings(entries: { id: number; value: number }[]): Promise<void> {
    return this.enqueue(encodeFrame({ kind: 'settings', flags: 0, entries: entries.map((e) => ({ ...e, flags: 0 })) }));
  }

  /** Tells the peer to open no more streams. */
  goAway(status: number = GoAwayStatus.Ok): Promise<void> {
    if (this.goAwaySent || this.terminated) return Promise.resolve();
    this.goAwaySent = true;
    return this.enqueue(encodeFrame({ kind: 'goaway', lastGoodStreamId: this.lastRemoteStreamId, status }));
  }

  /**
   * Graceful close: GOAWAY, then everything queued is flushed and our side of the socket ends. The
   * socket is destroyed when the peer closes its side or after `lingerMs`.
   */
  async close(lingerMs = 5000): Promise<void> {
    if (this.terminated) return;
    await this.goAway().catch(() => undefined);
    await this.outboundChain;
    if (this.terminated) return;
    this.socket.end();
    const timer = setTimeout(() => this.destroy(), lingerMs);
    timer.unref();
    await new Promise<void>((resolve) => {
      if (this.terminated) resolve();
      else this.once('close', () => resolve());
    });
    clearTimeout(timer);
  }

  /** Tears the connection down at once; open streams fail with `err` (or a closed error). */
  destroy(err?: Error): void {
    this.terminate(err ?? new SpdyConnectionClosedError('destroyed'));
    this.socket.destroy();
  }

  // ---- inbound ----

  private onSocketData(chunk: Buffer): void {
    if (this.terminated) return;
    let frames: Frame[];
    try {
      frames = this.decoder.push(chunk);
    } catch (err) {
      this.protocolFailure(err as Error);
      return;
    }
    for (const frame of frames) this.dispatch(frame);
  }

  private dispatch(frame: Frame): void {
    if (this.inboundBacklog === 0 && !hasHeaderBlock(frame)) {
      this.handleFrame(frame, undefined);
      return;
    }
    // Header blocks decompress asynchronously; later frames wait behind them to keep order.
    let headers: Promise<HeaderMap> | undefined;
    if (hasHeaderBlock(frame)) {
      headers = this.decompressor.decompress(frame.headerBlock);
      headers.catch(() => undefined);
    }
    this.inboundBacklog++;
    this.inboundChain = this.inboundChain
      .then(async () => {
        const decoded = headers ? await headers : undefined;
        if (!this.terminated) this.handleFrame(frame, decoded);
      })
      .catch((err: Error) => this.protocolFailure(err))
      .finally(() => {
        this.inboundBacklog--;
      });
  }

  private handleFrame(frame: Frame, headers: HeaderMap | undefined): void {
    switch (frame.kind) {
      case 'data':
        return this.onDataFrame(frame.streamId, frame.data, (frame.flags & FLAG_FIN) !== 0);
      case 'syn_stream':
        return this.onSynStream(frame.streamId, frame.flags, headers!);
      case 'syn_reply':
        return this.onSynReply(frame.streamId, frame.flags, headers!);
      case 'headers': {
        const stream = this.streams.get(frame.streamId);
        if (!stream) return;
        for (const [name, values] of headers!) stream.headers.set(name, [...(stream.headers.get(name) ?? []), ...values]);
        stream.emit('headers', headers);
        if ((frame.flags & FLAG_FIN) !== 0) this.onRemoteFin(stream);
        return;
      }
      case 'rst_stream':
        return this.onRstStream(frame.streamId, frame.status);
      case 'settings':
        for (const entry of frame.entries) {
          if (entry.id === SettingsId.InitialWindowSize) this.onPeerInitialWindow(entry.value);
        }
        return;
      case 'ping':
        return this.onPing(frame.id);
      case 'goaway':
        this.goAwayReceived = true;
        for (const [id, stream] of this.streams) {
          // Streams we opened past the last one the peer accepted were never processed.
          if (stream.initiatedLocally && id > frame.lastGoodStreamId) stream.destroy(new SpdyStreamResetError(id, RstStatus.RefusedStream, true));
        }
        this.emit('goaway', frame.lastGoodStreamId, frame.status);
        return;
      case 'window_update':
        return this.onWindowUpdate(frame.streamId, frame.delta);
      case 'unknown':
        return;
    }
  }

  private isLocalId(id: number): boolean {
    return (id % 2 === 0) === this.server;
  }

  /** Whether `id` names a stream that existed at some point (so late frames for it are harmless). */
  private knownStreamId(id: number): boolean {
    return this.isLocalId(id) ? id < this.nextStreamId : id <= this.lastRemoteStreamId;
  }

  private onDataFrame(id: number, data: Buffer, fin: boolean): void {
    const stream = this.streams.get(id);
    if (!stream) {
      if (!this.knownStreamId(id)) this.sendRst(id, RstStatus.InvalidStream);
      return;
    }
    if (stream.remoteClosed) {
      this.resetStream(stream, RstStatus.StreamAlreadyClosed);
      stream.destroy(new SpdyStreamResetError(id, RstStatus.StreamAlreadyClosed, false));
      return;
    }
    if (data.length > 0) {
      stream.receivedBytes += data.length;
      if (!stream.destroyed) {
        stream.push(data);
        if (stream.readableLength > this.maxStreamReadBuffer && !this.congested.has(stream)) {
          // The reader is far behind: stop reading the socket until it catches up.
          this.congested.add(stream);
          this.socket.pause();
        }
      }
      this.grantWindow(stream);
    }
    if (fin) this.onRemoteFin(stream);
  }

  private onSynStream(id: number, flags: number, headers: HeaderMap): void {
    if (this.isLocalId(id) || id <= this.lastRemoteStreamId) {
      this.protocolFailure(new SpdyProtocolError(`peer opened stream ${id} out of order (last ${this.lastRemoteStreamId})`));
      return;
    }
    this.lastRemoteStreamId = id;
    if (this.goAwaySent) {
      this.sendRst(id, RstStatus.RefusedStream);
      return;
    }
    const stream = new SpdyStream(this, id, false, headers, this.peerInitialWindow);
    this.streams.set(id, stream);
    if ((flags & FLAG_UNIDIRECTIONAL) !== 0) {
      stream.localClosed = true;
      stream.replied = true;
      stream.end();
    }
    if ((flags & FLAG_FIN) !== 0) this.onRemoteFin(stream);
    if (this.listenerCount('stream') === 0) {
      stream.reset(RstStatus.RefusedStream);
      return;
    }
    this.emit('stream', stream);
  }

  private onSynReply(id: number, flags: number, headers: HeaderMap): void {
    const stream = this.streams.get(id);
    if (!stream) return;
    if (!stream.initiatedLocally || stream.replied) {
      this.resetStream(stream, RstStatus.StreamInUse);
      stream.destroy(new SpdyStreamResetError(id, RstStatus.StreamInUse, false));
      return;
    }
    stream.replied = true;
    stream.settleReply(headers);
    if ((flags & FLAG_FIN) !== 0) this.onRemoteFin(stream);
  }

  private onRemoteFin(stream: SpdyStream): void {
    if (stream.remoteClosed) return;
    stream.remoteClosed = true;
    if (!stream.destroyed) stream.push(null);
    this.retireIfDone(stream);
  }

  private onRstStream(id: number, status: number): void {
    const stream = this.streams.get(id);
    if (!stream) return;
    stream.resetStatus = status;
    this.streams.delete(id);
    this.congestionRelieved(stream);
    this.wakeWindowWaiters();
    const finished = stream.localClosed && stream.remoteClosed;
    stream.destroy(finished ? undefined : new SpdyStreamResetError(id, status, true));
  }

  private onPing(id: number): void {
    const ours = (id % 2 === 0) === this.server;
    if (!ours) {
      this.enqueue(encodeFrame({ kind: 'ping', id })).catch(() => undefined);
      return;
    }
    const pending = this.pings.get(id);
    if (!pending) return;
    this.pings.delete(id);
    pending.resolve(Number(process.hrtime.bigint() - pending.start) / 1e6);
  }

  private onPeerInitialWindow(value: number): void {
    if (value > MAX_WINDOW) {
      this.protocolFailure(new SpdyProtocolError(`initial window ${value} is too large`));
      return;
    }
    const delta = value - this.peerInitialWindow;
    this.peerInitialWindow = value;
    for (const stream of this.streams.values()) stream.sendWindow += delta;
    if (this.peerFlowControl === 'auto') this.enforcePeerWindow = true;
    this.wakeWindowWaiters();
  }

  private onWindowUpdate(id: number, delta: number): void {
    if (this.peerFlowControl === 'auto') this.enforcePeerWindow = true;
    if (id === 0) {
      this.sessionSendWindow = Math.min(this.sessionSendWindow + delta, MAX_WINDOW);
    } else {
      const stream = this.streams.get(id);
      if (!stream) return;
      if (stream.sendWindow + delta > MAX_WINDOW) {
        this.resetStream(stream, RstStatus.FlowControlError);
        stream.destroy(new SpdyStreamResetError(id, RstStatus.FlowControlError, false));
        return;
      }
      stream.sendWindow += delta;
    }
    this.wakeWindowWaiters();
  }

  // ---- stream callbacks ----

  /** @internal The reader wants more: return window to the peer and resume a paused socket. */
  onStreamRead(stream: SpdyStream): void {
    this.grantWindow(stream);
    if (this.congested.has(stream) && stream.readableLength <= this.maxStreamReadBuffer) this.congestionRelieved(stream);
  }

  /** @internal */
  onStreamDestroyed(stream: SpdyStream): void {
    this.congestionRelieved(stream);
    if (this.streams.get(stream.id) !== stream) return;
    this.streams.delete(stream.id);
    if (!this.terminated && stream.resetStatus === undefined && !(stream.localClosed && stream.remoteClosed)) {
      this.resetStream(stream, RstStatus.Cancel);
    }
    this.wakeWindowWaiters();
  }

  /** @internal */
  sendReply(stream: SpdyStream, headers: HeaderMap, fin: boolean): void {
    if (stream.initiatedLocally) throw new Error(`stream ${stream.id} was opened locally and takes no reply`);
    if (stream.replied) return;
    stream.replied = true;
    if (fin) {
      stream.localClosed = true;
      stream.end();
    }
    this.enqueue(
      this.compressor.compress(headers).then((headerBlock) =>
        encodeFrame({ kind: 'syn_reply', streamId: stream.id, flags: fin ? FLAG_FIN : 0, headerBlock }),
      ),
    ).catch(() => undefined);
    if (fin) this.retireIfDone(stream);
  }

  /** @internal */
  resetStream(stream: SpdyStream, status: number): void {
    if (stream.resetStatus !== undefined) return;
    stream.resetStatus = status;
    this.streams.delete(stream.id);
    this.wakeWindowWaiters();
    if (!this.terminated) this.sendRst(stream.id, status);
  }

  /** @internal Sends `chunk` as DATA frames, respecting windows and socket backpressure. */
  async sendData(stream: SpdyStream, chunk: Buffer): Promise<void> {
    if (!stream.initiatedLocally && !stream.replied) this.sendReply(stream, new Map(), false);
    let offset = 0;
    while (offset < chunk.length) {
      this.checkWritable(stream);
      let size = Math.min(MAX_DATA_CHUNK, chunk.length - offset);
      if (this.enforcePeerWindow) {
        await this.waitForWindow(stream);
        size = Math.min(size, stream.sendWindow, this.sessionSendWindow);
      }
      stream.sendWindow -= size;
      this.sessionSendWindow -= size;
      const piece = chunk.subarray(offset, offset + size);
      offset += size;
      await this.enqueue(encodeFrame({ kind: 'data', streamId: stream.id, flags: 0, data: piece }));
      await this.drained();
    }
  }

  /** @internal */
  async sendFin(stream: SpdyStream): Promise<void> {
    if (stream.localClosed) return;
    if (!stream.initiatedLocally && !stream.replied) {
      this.sendReply(stream, new Map(), true);
      return;
    }
    this.checkWritable(stream);
    stream.localClosed = true;
    const written = this.enqueue(encodeFrame({ kind: 'data', streamId: stream.id, flags: FLAG_FIN, data: Buffer.alloc(0) }));
    this.retireIfDone(stream);
    await written;
  }

  private checkWritable(stream: SpdyStream): void {
    if (this.terminated) throw this.closeError ?? new SpdyConnectionClosedError('closed');
    if (stream.resetStatus !== undefined) throw new SpdyStreamResetError(stream.id, stream.resetStatus, true);
    if (stream.localClosed) throw new Error(`SPDY stream ${stream.id} is closed for writing`);
  }

  private async waitForWindow(stream: SpdyStream): Promise<void> {
    while (stream.sendWindow <= 0 || this.sessionSendWindow <= 0) {
      this.checkWritable(stream);
      if (!this.enforcePeerWindow) return;
      await new Promise<void>((resolve) => {
        this.windowWaiters.add(resolve);
      });
    }
  }

  private wakeWindowWaiters(): void {
    const waiters = [...this.windowWaiters];
    this.windowWaiters.clear();
    for (const wake of waiters) wake();
  }

  /** Returns consumed bytes to the peer as window once half the window has been read. */
  private grantWindow(stream: SpdyStream): void {
    if (this.terminated || stream.remoteClosed || stream.resetStatus !== undefined) return;
    const consumed = stream.receivedBytes - stream.readableLength;
    const pending = consumed - stream.grantedBytes;
    if (pending <= 0 || pending < DEFAULT_INITIAL_WINDOW / 2) return;
    stream.grantedBytes = consumed;
    this.enqueue(encodeFrame({ kind: 'window_update', streamId: stream.id, delta: pending })).catch(() => undefined);
    this.enqueue(encodeFrame({ kind: 'window_update', streamId: 0, delta: pending })).catch(() => undefined);
  }

  private congestionRelieved(stream: SpdyStream): void {
    if (!this.congested.delete(stream)) return;
    if (this.congested.size === 0 && !this.terminated) this.socket.resume();
  }

  private retireIfDone(stream: SpdyStream): void {
    if (stream.localClosed && stream.remoteClosed && this.streams.get(stream.id) === stream) {
      this.streams.delete(stream.id);
      this.wakeWindowWaiters();
    }
  }

  // ---- outbound ----

  private sendRst(streamId: number, status: number): void {
    this.enqueue(encodeFrame({ kind: 'rst_stream', streamId, status })).catch(() => undefined);
  }

  /**
   * Writes frames in the order they were queued, even when some still wait for header
   * compression. Resolves once the frame has been handed to the socket.
   */
  private enqueue(frame: Buffer | Promise<Buffer>): Promise<void> {
    if (this.terminated) return Promise.reject(this.closeError ?? new SpdyConnectionClosedError('closed'));
    if (Buffer.isBuffer(frame) && this.outboundBacklog === 0) {
      this.socket.write(frame);
      return Promise.resolve();
    }
    if (!Buffer.isBuffer(frame)) frame.catch(() => undefined);
    this.outboundBacklog++;
    const written = this.outboundChain.then(async () => {
      const bytes = await frame;
      if (this.terminated) throw this.closeError ?? new SpdyConnectionClosedError('closed');
      this.socket.write(bytes);
    });
    this.outboundChain = written
      .catch((err: Error) => {
        if (!this.terminated) this.protocolFailure(err);
      })
      .finally(() => {
        this.outboundBacklog--;
      });
    return written;
  }

  private drained(): Promise<void> {
    if (this.terminated) return Promise.reject(this.closeError ?? new SpdyConnectionClosedError('closed'));
    if (!this.socket.writableNeedDrain) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const onDrain = (): void => {
        cleanup();
        resolve();
      };
      const onClose = (): void => {
        cleanup();
        reject(this.closeError ?? new SpdyConnectionClosedError('closed'));
      };
      const cleanup = (): void => {
        this.socket.off('drain', onDrain);
        this.off('close', onClose);
      };
      this.socket.on('drain', onDrain);
      this.once('close', onClose);
    });
  }

  // ---- teardown ----

  private protocolFailure(err: Error): void {
    if (this.terminated) return;
    this.log?.warn({ err: err.message }, 'SPDY protocol error; closing connection');
    if (!this.goAwaySent) {
      this.goAwaySent = true;
      try {
        this.socket.write(encodeFrame({ kind: 'goaway', lastGoodStreamId: this.lastRemoteStreamId, status: GoAwayStatus.ProtocolError }));
      } catch {
        // The socket is already unusable; destroying it below is all that is left.
      }
    }
    this.socket.end();
    this.terminate(err);
    setTimeout(() => this.socket.destroy(), 1000).unref();
  }

  private terminate(err: Error): void {
    if (this.terminated) return;
    this.terminated = true;
    this.closeError = err;
    this.congested.clear();
    for (const stream of [...this.streams.values()]) {
      this.streams.delete(stream.id);
      if (!stream.remoteClosed) {
        stream.destroy(err);
      } else if (stream.readableEnded) {
        stream.destroy();
      } else {
        // The peer finished sending before the connection went away: let the reader drain what
        // arrived, then release the stream. Writing to it fails from now on.
        stream.once('end', () => stream.destroy());
      }
    }
    for (const ping of this.pings.values()) ping.reject(err);
    this.pings.clear();
    this.wakeWindowWaiters();
    this.compressor.close();
    this.decompressor.close();
    if (!this.socket.destroyed && this.socket.writableEnded) {
      // Our side is done; give the peer a moment to read, then let the socket go.
      setTimeout(() => this.socket.destroy(), 1000).unref();
    } else if (!this.socket.writableEnded) {
      this.socket.destroy();
    }
    this.emit('close', err);
  }
}
