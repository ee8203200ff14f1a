/** HTTP/2 framing (RFC 9113 §4, §6) as the CRI socket's connection gate and filter follow it. */

export const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');
export const FRAME_HEADER = 9;

export const enum FrameType {
  DATA = 0x0,
  HEADERS = 0x1,
  PRIORITY = 0x2,
  SETTINGS = 0x4,
  PUSH_PROMISE = 0x5,
  PING = 0x6,
  GOAWAY = 0x7,
  WINDOW_UPDATE = 0x8,
  CONTINUATION = 0x9,
}
export const FLAG_END_STREAM = 0x1;
export const FLAG_ACK = 0x1;
export const FLAG_END_HEADERS = 0x4;
export const FLAG_PADDED = 0x8;
export const FLAG_PRIORITY = 0x20;

export const SETTINGS_HEADER_TABLE_SIZE = 0x1;
export const SETTINGS_MAX_FRAME_SIZE = 0x5;
export const SETTINGS_MAX_HEADER_LIST_SIZE = 0x6;

/** HTTP/2 error codes (RFC 9113 §7) connections are ended with. */
export const H2_PROTOCOL_ERROR = 0x1;
export const H2_FRAME_SIZE_ERROR = 0x6;
export const H2_COMPRESSION_ERROR = 0x9;
export const H2_ENHANCE_YOUR_CALM = 0xb;

/** The fields of the frame header at `offset` (9 octets must be there). */
export function parseFrameHeader(buf: Buffer, offset = 0): { length: number; type: number; flags: number; streamId: number } {
  return {
    length: (buf[offset] << 16) | (buf[offset + 1] << 8) | buf[offset + 2],
    type: buf[offset + 3],
    flags: buf[offset + 4],
    streamId: buf.readUInt32BE(offset + 5) & 0x7fffffff,
  };
}

export function frameHeader(length: number, type: number, flags: number, streamId: number): Buffer {
  const h = Buffer.allocUnsafe(FRAME_HEADER);
  h[0] = (length >>> 16) & 0xff;
  h[1] = (length >>> 8) & 0xff;
  h[2] = length & 0xff;
  h[3] = type;
  h[4] = flags;
  h.writeUInt32BE(streamId, 5);
  return h;
}

/**
 * A HEADERS payload's parts: its priority fields (if flagged) and its header block fragment
 * without padding. Undefined when the padding does not fit the frame.
 */
export function splitHeadersPayload(payload: Buffer, flags: number): { priority?: Buffer; fragment: Buffer } | undefined {
  let start = 0;
  let end = payload.length;
  if (flags & FLAG_PADDED) {
    if (payload.length < 1) return undefined;
    end -= payload[0];
    start = 1;
  }
  let priority: Buffer | undefined;
  if (flags & FLAG_PRIORITY) {
    priority = payload.subarray(start, start + 5);
    start += 5;
  }
  if (end < start) return undefined;
  return { priority, fragment: payload.subarray(start, end) };
}
