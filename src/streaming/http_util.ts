import { STATUS_CODES, type IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';

/** Answers an upgrade request that will not be upgraded, then closes the socket. */
export function rejectUpgrade(socket: Duplex, statusCode: number, message: string, headers: Record<string, string | string[]> = {}): void {
  if (socket.destroyed) return;
  const body = Buffer.from(`${message}\n`, 'utf8');
  const lines = [`HTTP/1.1 ${statusCode} ${STATUS_CODES[statusCode] ?? 'Error'}`];
  for (const [name, value] of Object.entries(headers)) {
    for (const v of Array.isArray(value) ? value : [value]) lines.push(`${name}: ${v}`);
  }
  lines.push('Content-Type: text/plain; charset=utf-8', 'X-Content-Type-Options: nosniff', `Content-Length: ${body.length}`, 'Connection: close');
  socket.end(Buffer.concat([Buffer.from(`${lines.join('\r\n')}\r\n\r\n`, 'latin1'), body]));
  setTimeout(() => socket.destroy(), 1000).unref();
}

/** All values of a header that may be repeated or comma-joined, trimmed, in order. */
export function headerValues(req: IncomingMessage, name: string): string[] {
  const raw = req.headersDistinct[name.toLowerCase()] ?? [];
  return raw
    .flatMap((v) => v.split(','))
    .map((v) => v.trim())
    .filter((v) => v.length > 0);
}

export const HEADER_STREAM_PROTOCOL_VERSION = 'X-Stream-Protocol-Version';
export const HEADER_ACCEPTED_STREAM_PROTOCOL_VERSIONS = 'X-Accept-Stream-Protocol-Version';
export const SPDY_UPGRADE_TOKEN = 'SPDY/3.1';

/** Whether the request asks for the SPDY/3.1 upgrade Kubernetes clients use. */
export function isSpdyUpgrade(req: IncomingMessage): boolean {
  const connection = (req.headers.connection ?? '').toLowerCase();
  const upgrade = (req.headers.upgrade ?? '').toLowerCase();
  return connection.includes('upgrade') && upgrade.includes(SPDY_UPGRADE_TOKEN.toLowerCase());
}

export class UpgradeRejection extends Error {
  constructor(
    readonly statusCode: number,
    message: string,
    readonly headers: Record<string, string | string[]> = {},
  ) {
    super(message);
    this.name = 'UpgradeRejection';
  }
}

/**
 * Picks the SPDY subprotocol from X-Stream-Protocol-Version: the first of `serverProtocols` (most
 * preferred first) the client offers.
 */
export function negotiateSpdyProtocol(req: IncomingMessage, serverProtocols: readonly string[]): string {
  const offered = headerValues(req, HEADER_STREAM_PROTOCOL_VERSION);
  if (offered.length === 0) throw new UpgradeRejection(400, `unable to upgrade: ${HEADER_STREAM_PROTOCOL_VERSION} is required`);
  const chosen = serverProtocols.find((p) => offered.includes(p));
  if (!chosen) {
    throw new UpgradeRejection(
      403,
      `unable to upgrade: unable to negotiate protocol: client supports [${offered.join(' ')}], server accepts [${serverProtocols.join(' ')}]`,
      { [HEADER_ACCEPTED_STREAM_PROTOCOL_VERSIONS]: [...serverProtocols] },
    );
  }
  return chosen;
}

/** Writes the 101 response that switches the connection to SPDY/3.1. */
export function acceptSpdyUpgrade(socket: Duplex, protocol: string): void {
  socket.write(
    'HTTP/1.1 101 Switching Protocols\r\n' +
      'Connection: Upgrade\r\n' +
      `Upgrade: ${SPDY_UPGRADE_TOKEN}\r\n` +
      `${HEADER_STREAM_PROTOCOL_VERSION}: ${protocol}\r\n\r\n`,
  );
}

/** Ends a writable and waits until its data is flushed (or it is gone). */
export function endWritable(stream: NodeJS.WritableStream & { writableFinished?: boolean; destroyed?: boolean }): Promise<void> {
  if (stream.writableFinished || stream.destroyed) return Promise.resolve();
  return new Promise((resolve) => {
    const done = (): void => {
      stream.removeListener('finish', done);
      stream.removeListener('close', done);
      stream.removeListener('error', done);
      resolve();
    };
    stream.once('finish', done);
    stream.once('close', done);
    stream.once('error', done);
    stream.end();
  });
}
