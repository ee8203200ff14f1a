import type { Logger } from '../log';
import { errorMessage } from '../util/errors';
import { endWritable } from './http_util';
import { decodeResizeStream, ResizeQueue } from './resize';
import { RstStatus } from './spdy/frames';
import type { SpdyConnection, SpdyStream } from './spdy/connection';
import { encodeStatus, internalErrorStatus, type Status } from './status';
import type { StreamingIO } from './types';
import { ChannelConnection, type ChannelMode, type ChannelStream } from './ws_channels';
import type { WebSocketConnection } from './websocket';

/**
 * Exec and attach sessions ("remote command" in Kubernetes): the client's stdin, stdout, stderr,
 * terminal resize events and the final status, over SPDY streams or WebSocket channels.
 */

/** SPDY subprotocols, most preferred first. v5 only differs from v4 on WebSockets. */
export const SPDY_REMOTE_COMMAND_PROTOCOLS = ['v5.channel.k8s.io', 'v4.channel.k8s.io', 'v3.channel.k8s.io', 'v2.channel.k8s.io', 'channel.k8s.io'] as const;

export interface WebSocketChannelProtocol {
  binary: boolean;
  /** The client may half-close stdin with the close signal. */
  streamClose: boolean;
  /** The error channel carries a JSON Status (v4+) rather than a failure message. */
  jsonStatus: boolean;
}

/** WebSocket subprotocols; '' is what a client that names none gets. */
export const WEBSOCKET_REMOTE_COMMAND_PROTOCOLS: ReadonlyMap<string, WebSocketChannelProtocol> = new Map([
  ['v5.channel.k8s.io', { binary: true, streamClose: true, jsonStatus: true }],
  ['v4.channel.k8s.io', { binary: true, streamClose: false, jsonStatus: true }],
  ['v4.base64.channel.k8s.io', { binary: false, streamClose: false, jsonStatus: true }],
  ['channel.k8s.io', { binary: true, streamClose: false, jsonStatus: false }],
  ['base64.channel.k8s.io', { binary: false, streamClose: false, jsonStatus: false }],
  ['', { binary: true, streamClose: false, jsonStatus: false }],
]);

/** Stream types named by the `streamType` header of SPDY streams. */
export const StreamType = {
  Error: 'error',
  Stdin: 'stdin',
  Stdout: 'stdout',
  Stderr: 'stderr',
  Resize: 'resize',
  Data: 'data',
} as const;

const enum Channel {
  Stdin = 0,
  Stdout = 1,
  Stderr = 2,
  Error = 3,
  Resize = 4,
}

export interface StreamOptions {
  stdin: boolean;
  stdout: boolean;
  stderr: boolean;
  tty: boolean;
}

/** An established session: the client's streams, and how to end the session. */
export interface RemoteCommandSession {
  readonly io: StreamingIO;
  /** Registers `fn` to run if the client goes away. */
  onDisconnect(fn: () => void): void;
  /** Flushes output, reports `status`, and closes the connection gracefully. */
  finish(status: Status): Promise<void>;
  /** Drops the connection at once. */
  abort(): void;
}

function statusPayload(status: Status, json: boolean): string | undefined {
  if (json) return encodeStatus(status);
  return status.status === 'Success' ? undefined : (status.message ?? 'command failed');
}

/**
 * Waits until the client has opened every stream the options call for (each stream is accepted as
 * it arrives), then returns the session. Streams of unknown or unexpected types are refused.
 */
export function openSpdyRemoteCommand(
  conn: SpdyConnection,
  protocol: string,
  options: StreamOptions,
  streamCreationTimeoutMs: number,
  log: Logger,
): Promise<RemoteCommandSession> {
  const supportsResize = protocol === 'v5.channel.k8s.io' || protocol === 'v4.channel.k8s.io' || protocol === 'v3.channel.k8s.io';
  const expected = new Set<string>([StreamType.Error]);
  if (options.stdin) expected.add(StreamType.Stdin);
  if (options.stdout) expected.add(StreamType.Stdout);
  if (options.stderr) expected.add(StreamType.Stderr);
  if (options.tty && supportsResize) expected.add(StreamType.Resize);

  return new Promise((resolve, reject) => {
    const streams = new Map<string, SpdyStream>();
    const cleanup = (): void => {
      clearTimeout(timer);
      conn.off('stream', onStream);
      conn.off('close', onClose);
    };
    const onStream = (stream: SpdyStream): void => {
      stream.on('error', (err: Error) => log.debug({ err: err.message, stream: stream.id }, 'remote command stream error'));
      const type = stream.header('streamtype') ?? '';
      if (!expected.has(type) || streams.has(type)) {
        log.debug({ streamType: type }, 'refusing unexpected remote command stream');
        stream.reset(RstStatus.RefusedStream);
        return;
      }
      stream.reply();
      streams.set(type, stream);
      if (streams.size === expected.size) {
        cleanup();
        resolve(spdySession(conn, protocol, streams, options.tty));
      }
    };
    const onClose = (): void => {
      cleanup();
      reject(new Error('connection closed before the client created its streams'));
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error('timed out waiting for client to create streams'));
    }, streamCreationTimeoutMs);
    conn.on('stream', onStream);
    conn.once('close', onClose);
  });
}

function spdySession(conn: SpdyConnection, protocol: string, streams: Map<string, SpdyStream>, tty: boolean): RemoteCommandSession {
  const error = streams.get(StreamType.Error)!;
  const stdin = streams.get(StreamType.Stdin);
  const stdout = streams.get(StreamType.Stdout);
  const stderr = streams.get(StreamType.Stderr);
  const resizeStream = streams.get(StreamType.Resize);
  // Nothing is read from the streams we only write to; drop whatever a client sends on them.
  for (const s of [error, stdout, stderr]) s?.resume();
  let resize: ResizeQueue | undefined;
  if (resizeStream) {
    resize = new ResizeQueue();
    decodeResizeStream(resizeStream, resize);
  }
  const jsonStatus = protocol === 'v5.channel.k8s.io' || protocol === 'v4.channel.k8s.io';
  return {
    io: { stdin, stdout, stderr, tty, resize },
    onDisconnect(fn) {
      conn.once('close', fn);
    },
    async finish(status) {
      resize?.end();
      await Promise.all([stdout, stderr].map((s) => (s ? endWritable(s) : undefined)));
      const payload = statusPayload(status, jsonStatus);
      if (payload !== undefined && !error.destroyed) error.write(payload);
      await endWritable(error);
      for (const s of [stdin, resizeStream]) if (s && !s.destroyed) s.end();
      await conn.close();
    },
    abort() {
      resize?.end();
      conn.destroy();
    },
  };
}

/** Sets up the channels of an accepted WebSocket and signals readiness to the client. */
export function openWebSocketRemoteCommand(ws: WebSocketConnection, protocol: WebSocketChannelProtocol, options: StreamOptions, log: Logger): RemoteCommandSession {
  const modes: ChannelMode[] = [
    options.stdin ? 'read' : 'ignore',
    options.stdout ? 'write' : 'ignore',
    options.stderr ? 'write' : 'ignore',
    'write',
    options.tty ? 'read' : 'ignore',
  ];
  const mux = new ChannelConnection(ws, modes, { binary: protocol.binary, streamClose: protocol.streamClose });
  const channel = (n: Channel): ChannelStream => mux.channels[n]!;
  for (const c of mux.channels) c.on('error', (err: Error) => log.debug({ err: err.message, channel: c.channel }, 'remote command channel error'));
  // The client learns the session is up from an empty message on the lowest channel it reads.
  const ready = options.stdout ? Channel.Stdout : options.stderr ? Channel.Stderr : Channel.Error;
  channel(ready).sendEmpty().catch(() => undefined);

  let resize: ResizeQueue | undefined;
  if (options.tty) {
    resize = new ResizeQueue();
    decodeResizeStream(channel(Channel.Resize), resize);
  }
  const stdout = options.stdout ? channel(Channel.Stdout) : undefined;
  const stderr = options.stderr ? channel(Channel.Stderr) : undefined;
  return {
    io: { stdin: options.stdin ? channel(Channel.Stdin) : undefined, stdout, stderr, tty: options.tty, resize },
    onDisconnect(fn) {
      mux.once('close', fn);
    },
    async finish(status) {
      resize?.end();
      await Promise.all([stdout, stderr].map((s) => (s ? endWritable(s) : undefined)));
      const payload = statusPayload(status, protocol.jsonStatus);
      if (payload !== undefined && mux.isOpen) await mux.send(Channel.Error, Buffer.from(payload, 'utf8')).catch(() => undefined);
      mux.close();
      await new Promise<void>((resolve) => (mux.isOpen ? mux.once('close', () => resolve()) : resolve()));
    },
    abort() {
      resize?.end();
      ws.destroy();
    },
  };
}

/**
 * Runs `call` for an established session and ends the session with its status. If the client
 * disconnects (or `parent` aborts) first, the call's signal fires and the session is dropped.
 */
export async function runRemoteCommand(
  session: RemoteCommandSession,
  parent: AbortSignal,
  failurePrefix: string,
  call: (signal: AbortSignal) => Promise<Status>,
  log: Logger,
): Promise<void> {
  const controller = new AbortController();
  let settled = false;
  const onParentAbort = (): void => controller.abort(parent.reason);
  parent.addEventListener('abort', onParentAbort, { once: true });
  session.onDisconnect(() => {
    if (!settled) controller.abort(new Error('client disconnected'));
  });
  if (parent.aborted) controller.abort(parent.reason);
  let status: Status;
  try {
    status = await call(controller.signal);
  } catch (err) {
    status = internalErrorStatus(`${failurePrefix}: ${errorMessage(err)}`);
    if (!controller.signal.aborted) log.warn({ err: errorMessage(err) }, failurePrefix);
  } finally {
    settled = true;
    parent.removeEventListener('abort', onParentAbort);
  }
  if (controller.signal.aborted) {
    session.abort();
    return;
  }
  try {
    await session.finish(status);
  } catch (err) {
    log.debug({ err: errorMessage(err) }, 'remote command session ended uncleanly');
    session.abort();
  }
}
