/**
 * SPDY/3 frame layout (draft 3, section 2.2). Every frame has an 8-byte header:
 *
 *   control: |1| version(15) | type(16) | flags(8) | length(24) | payload
 *   data:    |0| stream id(31)           | flags(8) | length(24) | payload
 *
 * This module only (de)serializes frames; header blocks stay compressed here and are handled by
 * `HeaderCompressor`/`HeaderDecompressor`, which need per-connection state.
 */

import { ByteQueue } from '../../util/byte_queue';

export const SPDY_VERSION = 3;

export const enum ControlType {
  SynStream = 1,
  SynReply = 2,
  RstStream = 3,
  Settings = 4,
  Ping = 6,
  GoAway = 7,
  Headers = 8,
  WindowUpdate = 9,
}

export const FLAG_FIN = 0x01;
export const FLAG_UNIDIRECTIONAL = 0x02;
export const FLAG_SETTINGS_CLEAR = 0x01;

/** RST_STREAM status codes. */
export const RstStatus = {
  ProtocolError: 1,
  InvalidStream: 2,
  RefusedStream: 3,
  UnsupportedVersion: 4,
  Cancel: 5,
  InternalError: 6,
  FlowControlError: 7,
  StreamInUse: 8,
  StreamAlreadyClosed: 9,
  FrameTooLarge: 11,
} as const;

/** GOAWAY status codes. */
export const GoAwayStatus = {
  Ok: 0,
  ProtocolError: 1,
  InternalError: 11,
} as const;

/** SETTINGS ids; only the initial window size matters to this implementation. */
export const SettingsId = {
  MaxConcurrentStreams: 4,
  InitialWindowSize: 7,
} as const;

export const FRAME_HEADER_LENGTH = 8;
export const MAX_FRAME_PAYLOAD = 0xffffff;
const STREAM_ID_MASK = 0x7fffffff;

export interface DataFrame {
  kind: 'data';
  streamId: number;
  flags: number;
  data: Buffer;
}

export interface SynStreamFrame {
  kind: 'syn_stream';
  streamId: number;
  associatedStreamId: number;
  priority: number;
  slot: number;
  flags: number;
  headerBlock: Buffer;
}

export interface SynReplyFrame {
  kind: 'syn_reply';
  streamId: number;
  flags: number;
  headerBlock: Buffer;
}

export interface RstStreamFrame {
  kind: 'rst_stream';
  streamId: number;
  status: number;
}

export interface SettingsEntry {
  id: number;
  flags: number;
  value: number;
}

export interface SettingsFrame {
  kind: 'settings';
  flags: number;
  entries: SettingsEntry[];
}

export interface PingFrame {
  kind: 'ping';
  id: number;
}

export interface GoAwayFrame {
  kind: 'goaway';
  lastGoodStreamId: number;
  status: number;
}

export interface HeadersFrame {
  kind: 'headers';
  streamId: number;
  flags: number;
  headerBlock: Buffer;
}

export interface WindowUpdateFrame {
  kind: 'window_update';
  streamId: number;
  delta: number;
}

/** A control frame of a type this implementation does not know; the spec says to ignore it. */
export interface UnknownControlFrame {
  kind: 'unknown';
  type: number;
  flags: number;
  payload: Buffer;
}

export type Frame =
  | DataFrame
  | SynStreamFrame
  | SynReplyFrame
  | RstStreamFrame
  | SettingsFrame
  | PingFrame
  | GoAwayFrame
  | HeadersFrame
  | WindowUpdateFrame
  | UnknownControlFrame;

/** A violation of the framing layer; the connection cannot continue after one. */
export class SpdyProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SpdyProtocolError';
  }
}

function controlFrame(type: number, flags: number, payload: Buffer): Buffer {
  if (payload.length > MAX_FRAME_PAYLOAD) throw new SpdyProtocolError(`control frame payload of ${payload.length} bytes is too large`);
  const out = Buffer.allocUnsafe(FRAME_HEADER_LENGTH + payload.length);
  out.writeUInt16BE(0x8000 | SPDY_VERSION, 0);
  out.writeUInt16BE(type, 2);
  out.writeUInt32BE((((flags & 0xff) << 24) | payload.length) >>> 0, 4);
  payload.copy(out, FRAME_HEADER_LENGTH);
  return out;
}

function checkStreamId(id: number): void {
  if (!Number.isInteger(id) || id < 0 || id > STREAM_ID_MASK) throw new RangeError(`invalid SPDY stream id ${id}`);
}

export function encodeFrame(frame: Frame): Buffer {
  switch (frame.kind) {
    case 'data': {
      checkStreamId(frame.streamId);
      if (frame.streamId === 0) throw new RangeError('data frames need a stream id');
      if (frame.data.length > MAX_FRAME_PAYLOAD) throw new RangeError(`data frame of ${frame.data.length} bytes is too large`);
      const out = Buffer.allocUnsafe(FRAME_HEADER_LENGTH + frame.data.length);
      out.writeUInt32BE(frame.streamId, 0);
      out.writeUInt32BE((((frame.flags & 0xff) << 24) | frame.data.length) >>> 0, 4);
      frame.data.copy(out, FRAME_HEADER_LENGTH);
      return out;
    }
    case 'syn_stream': {
      checkStreamId(frame.streamId);
      checkStreamId(frame.associatedStreamId);
      const payload = Buffer.allocUnsafe(10 + frame.headerBlock.length);
      payload.writeUInt32BE(frame.streamId, 0);
      payload.writeUInt32BE(frame.associatedStreamId, 4);
      payload.writeUInt8((frame.priority & 0x7) << 5, 8);
      payload.writeUInt8(frame.slot & 0xff, 9);
      frame.headerBlock.copy(payload, 10);
      return controlFrame(ControlType.SynStream, frame.flags, payload);
    }
    case 'syn_reply':
    case 'headers': {
      checkStreamId(frame.streamId);
      const payload = Buffer.allocUnsafe(4 + frame.headerBlock.length);
      payload.writeUInt32BE(frame.streamId, 0);
      frame.headerBlock.copy(payload, 4);
      return controlFrame(frame.kind === 'syn_reply' ? ControlType.SynReply : ControlType.Headers, frame.flags, payload);
    }
    case 'rst_stream': {
      checkStreamId(frame.streamId);
      const payload = Buffer.allocUnsafe(8);
      payload.writeUInt32BE(frame.streamId, 0);
      payload.writeUInt32BE(frame.status >>> 0, 4);
      return controlFrame(ControlType.RstStream, 0, payload);
    }
    case 'settings': {
      const payload = Buffer.allocUnsafe(4 + 8 * frame.entries.length);
      payload.writeUInt32BE(frame.entries.length, 0);
      frame.entries.forEach((entry, i) => {
        payload.writeUInt32BE((((entry.flags & 0xff) << 24) | (entry.id & 0xffffff)) >>> 0, 4 + 8 * i);
        payload.writeUInt32BE(entry.value >>> 0, 8 + 8 * i);
      });
      return controlFrame(ControlType.Settings, frame.flags, payload);
    }
    case 'ping': {
      const payload = Buffer.allocUnsafe(4);
      payload.writeUInt32BE(frame.id >>> 0, 0);
      return controlFrame(ControlType.Ping, 0, payload);
    }
    case 'goaway': {
      checkStreamId(frame.lastGoodStreamId);
      const payload = Buffer.allocUnsafe(8);
      payload.writeUInt32BE(frame.lastGoodStreamId, 0);
      payload.writeUInt32BE(frame.status >>> 0, 4);
      return controlFrame(ControlType.GoAway, 0, payload);
    }
    case 'window_update': {
      checkStreamId(frame.streamId);
      if (frame.delta < 1 || frame.delta > STREAM_ID_MASK) throw new RangeError(`invalid window delta ${frame.delta}`);
      const payload = Buffer.allocUnsafe(8);
      payload.writeUInt32BE(frame.streamId, 0);
      payload.writeUInt32BE(frame.delta, 4);
      return controlFrame(ControlType.WindowUpdate, 0, payload);
    }
    case 'unknown':
      return controlFrame(frame.type, frame.flags, frame.payload);
  }
}

function expectLength(name: string, payload: Buffer, exact?: number, min?: number): void {
  if (exact !== undefined && payload.length !== exact) {
    throw new SpdyProtocolError(`${name} frame has length ${payload.length}, want ${exact}`);
  }
  if (min !== undefined && payload.length < min) {
    throw new SpdyProtocolError(`${name} frame has length ${payload.length}, want at least ${min}`);
  }
}

function decodeControlFrame(version: number, type: number, flags: number, payload: Buffer): Frame {
  if (version !== SPDY_VERSION) throw new SpdyProtocolError(`unsupported SPDY version ${version}`);
  switch (type) {
    case ControlType.SynStream:
      expectLength('SYN_STREAM', payload, undefined, 10);
      return {
        kind: 'syn_stream',
        streamId: payload.readUInt32BE(0) & STREAM_ID_MASK,
        associatedStreamId: payload.readUInt32BE(4) & STREAM_ID_MASK,
        priority: payload.readUInt8(8) >> 5,
        slot: payload.readUInt8(9),
        flags,
        headerBlock: payload.subarray(10),
      };
    case ControlType.SynReply:
    case ControlType.Headers:
      expectLength(type === ControlType.SynReply ? 'SYN_REPLY' : 'HEADERS', payload, undefined, 4);
      return {
        kind: type === ControlType.SynReply ? 'syn_reply' : 'headers',
        streamId: payload.readUInt32BE(0) & STREAM_ID_MASK,
        flags,
        headerBlock: payload.subarray(4),
      };
    case ControlType.RstStream:
      expectLength('RST_STREAM', payload, 8);
      return { kind: 'rst_stream', streamId: payload.readUInt32BE(0) & STREAM_ID_MASK, status: payload.readUInt32BE(4) };
    case ControlType.Settings: {
      expectLength('SETTINGS', payload, undefined, 4);
      const count = payload.readUInt32BE(0);
      if (payload.length !== 4 + count * 8) throw new SpdyProtocolError(`SETTINGS frame with ${count} entries has length ${payload.length}`);
      const entries: SettingsEntry[] = [];
      for (let i = 0; i < count; i++) {
        const flagsAndId = payload.readUInt32BE(4 + 8 * i);
        entries.push({ flags: flagsAndId >>> 24, id: flagsAndId & 0xffffff, value: payload.readUInt32BE(8 + 8 * i) });
      }
      return { kind: 'settings', flags, entries };
    }
    case ControlType.Ping:
      expectLength('PING', payload, 4);
      return { kind: 'ping', id: payload.readUInt32BE(0) };
    case ControlType.GoAway:
      expectLength('GOAWAY', payload, 8);
      return { kind: 'goaway', lastGoodStreamId: payload.readUInt32BE(0) & STREAM_ID_MASK, status: payload.readUInt32BE(4) };
    case ControlType.WindowUpdate:
      expectLength('WINDOW_UPDATE', payload, 8);
      return { kind: 'window_update', streamId: payload.readUInt32BE(0) & STREAM_ID_MASK, delta: payload.readUInt32BE(4) & STREAM_ID_MASK };
    default:
      return { kind: 'unknown', type, flags, payload };
  }
}

/**
 * Splits a byte stream into frames. Bytes are buffered until a whole frame is present; a frame
 * whose declared length exceeds `maxFrameLength` is refused before it is buffered.
 */
export class FrameDecoder {
  private readonly queue = new ByteQueue();

  constructor(private readonly maxFrameLength = MAX_FRAME_PAYLOAD) {}

  /** Feeds bytes and returns every frame they complete, in order. */
  push(chunk: Buffer): Frame[] {
    this.queue.push(chunk);
    const frames: Frame[] = [];
    while (this.queue.length >= FRAME_HEADER_LENGTH) {
      const header = this.queue.peek(FRAME_HEADER_LENGTH);
      const length = header.readUInt32BE(4) & 0xffffff;
      if (length > this.maxFrameLength) throw new SpdyProtocolError(`frame of ${length} bytes exceeds the limit of ${this.maxFrameLength}`);
      if (this.queue.length < FRAME_HEADER_LENGTH + length) break;
      frames.push(decodeFrame(this.queue.take(FRAME_HEADER_LENGTH + length)));
    }
    return frames;
  }

  /** Bytes received that do not yet form a whole frame. */
  get pendingBytes(): number {
    return this.queue.length;
  }
}

/** Decodes exactly one whole frame (header included). */
export function decodeFrame(raw: Buffer): Frame {
  if (raw.length < FRAME_HEADER_LENGTH) throw new SpdyProtocolError('truncated frame header');
  const first = raw.readUInt32BE(0);
  const flagsAndLength = raw.readUInt32BE(4);
  const flags = flagsAndLength >>> 24;
  const length = flagsAndLength & 0xffffff;
  if (raw.length !== FRAME_HEADER_LENGTH + length) throw new SpdyProtocolError(`frame length ${length} does not match ${raw.length - FRAME_HEADER_LENGTH} payload bytes`);
  const payload = raw.subarray(FRAME_HEADER_LENGTH);
  if ((first & 0x80000000) !== 0) {
    return decodeControlFrame((first >>> 16) & 0x7fff, first & 0xffff, flags, payload);
  }
  const streamId = first & STREAM_ID_MASK;
  if (streamId === 0) throw new SpdyProtocolError('data frame on stream 0');
  return { kind: 'data', streamId, flags, data: payload };
}
