import type { Logger } from '../log';
import { errorMessage } from '../util/errors';
import { endWritable } from './http_util';
import { StreamType, type WebSocketChannelProtocol } from './remotecommand';
import { RstStatus } from './spdy/frames';
import type { SpdyConnection, SpdyStream } from './spdy/connection';
import type { StreamingBackend } from './types';
import { ChannelConnection, type ChannelMode } from './ws_channels';
import type { WebSocketConnection } from './websocket';

/**
 * Port forwarding. Over SPDY the client opens a pair of streams per forwarded connection, an
 * error stream and a data stream sharing a `requestID` header, both naming the pod port in a
 * `port` header. Over WebSocket the ports are fixed by the request; port i gets data channel 2i
 * and error channel 2i+1, each of which first carries the port as a little-endian uint16.
 */

export const SPDY_PORT_FORWARD_PROTOCOLS = ['portforward.k8s.io'] as const;

export const WEBSOCKET_PORT_FORWARD_PROTOCOLS: ReadonlyMap<string, WebSocketChannelProtocol> = new Map([
  ['v4.channel.k8s.io', { binary: true, streamClose: false, jsonStatus: false }],
  ['v4.base64.channel.k8s.io', { binary: false, streamClose: false, jsonStatus: false }],
  ['', { binary: true, streamClose: false, jsonStatus: false }],
]);

/** Parses a port as Kubernetes does (decimal, 1-65535). */
export function parsePort(value: string | undefined): number | undefined {
  if (value === undefined || !/^[0-9]{1,5}$/.test(value)) return undefined;
  const port = Number(value);
  return port >= 1 && port <= 65535 ? port : undefined;
}

function forwardError(port: number, podSandboxId: string, err: unknown): string {
  return `error forwarding port ${port} to pod ${podSandboxId}, uid : ${errorMessage(err)}`;
}

/** Errors after which the client may keep using the connection for other streams. */
function isConnectionLocalError(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return code === 'EPIPE' || code === 'ECONNRESET';
}

interface StreamPair {
  requestId: string;
  data?: SpdyStream;
  error?: SpdyStream;
  timer: NodeJS.Timeout;
}

export interface SpdyPortForwardOptions {
  podSandboxId: string;
  /** Ports the request allowed; empty allows any. */
  allowedPorts: readonly number[];
  backend: StreamingBackend;
  streamCreationTimeoutMs: number;
  signal: AbortSignal;
  log: Logger;
}

/** Serves forwarded connections until the SPDY connection closes. */
export function serveSpdyPortForward(conn: SpdyConnection, options: SpdyPortForwardOptions): Promise<void> {
  const { podSandboxId, backend, log } = options;
  const pairs = new Map<string, StreamPair>();
  const running = new Set<Promise<void>>();
  const connection = new AbortController();
  const onParentAbort = (): void => {
    connection.abort(options.signal.reason);
    conn.destroy();
  };
  options.signal.addEventListener('abort', onParentAbort, { once: true });

  const requestIdOf = (stream: SpdyStream, type: string): string => {
    const id = stream.header('requestid');
    if (id) return id;
    // Clients that predate request ids open the error stream, then the data stream, back to back.
    return String(type === StreamType.Error ? stream.id : stream.id - 2);
  };

  const forward = async (pair: StreamPair): Promise<void> => {
    const data = pair.data!;
    const error = pair.error!;
    const port = parsePort(data.header('port'))!;
    const controller = new AbortController();
    const abort = (): void => controller.abort(connection.signal.reason);
    connection.signal.addEventListener('abort', abort, { once: true });
    data.once('error', () => controller.abort(new Error('data stream reset')));
    try {
      await backend.portForward(podSandboxId, port, data, controller.signal);
    } catch (err) {
      if (!controller.signal.aborted) {
        const message = forwardError(port, podSandboxId, err);
        log.info({ port, requestId: pair.requestId, err: errorMessage(err) }, 'port forward failed');
        // The client drops the whole connection unless the failure only concerns this stream.
        const body = isConnectionLocalError(err) ? { message } : { closeConnection: true, message };
        if (!error.destroyed) error.write(`${JSON.stringify(body)}\n`);
      }
    } finally {
      connection.signal.removeEventListener('abort', abort);
    }
    await Promise.all([endWritable(data), endWritable(error)]);
  };

  const onStream = (stream: SpdyStream): void => {
    stream.on('error', (err: Error) => log.debug({ err: err.message, stream: stream.id }, 'port forward stream error'));
    const type = stream.header('streamtype');
    const port = parsePort(stream.header('port'));
    if ((type !== StreamType.Data && type !== StreamType.Error) || port === undefined) {
      log.debug({ streamType: type, port: stream.header('port') }, 'refusing malformed port forward stream');
      stream.reset(RstStatus.RefusedStream);
      return;
    }
    if (options.allowedPorts.length > 0 && !options.allowedPorts.includes(port)) {
      log.info({ port }, 'refusing port forward to a port the request did not name');
      stream.reset(RstStatus.RefusedStream);
      return;
    }
    const requestId = requestIdOf(stream, type);
    let pair = pairs.get(requestId);
    if (!pair) {
      const created: StreamPair = {
        requestId,
        timer: setTimeout(() => {
          pairs.delete(requestId);
          const message = `timed out waiting for streams of request ${requestId}`;
          if (created.error && !created.error.destroyed) created.error.end(message);
          created.data?.reset(RstStatus.Cancel);
        }, options.streamCreationTimeoutMs),
      };
      pair = created;
      pairs.set(requestId, pair);
    }
    const slot = type === StreamType.Data ? 'data' : 'error';
    if (pair[slot]) {
      stream.reply();
      stream.end(`error processing stream for request ${requestId}: ${type} stream already assigned`);
      return;
    }
    stream.reply();
    pair[slot] = stream;
    if (slot === 'error') stream.resume();
    if (pair.data && pair.error) {
      clearTimeout(pair.timer);
      pairs.delete(requestId);
      const task = forward(pair).catch((err) => log.debug({ err: errorMessage(err) }, 'port forward cleanup failed'));
      running.add(task);
      void task.finally(() => running.delete(task));
    }
  };

  conn.on('stream', onStream);
  return new Promise<void>((resolve) => {
    conn.once('close', () => {
      conn.off('stream', onStream);
      options.signal.removeEventListener('abort', onParentAbort);
      connection.abort(new Error('client disconnected'));
      for (const pair of pairs.values()) clearTimeout(pair.timer);
      pairs.clear();
      void Promise.allSettled([...running]).then(() => resolve());
    });
  });
}

export interface WebSocketPortForwardOptions {
  podSandboxId: string;
  ports: readonly number[];
  backend: StreamingBackend;
  signal: AbortSignal;
  log: Logger;
}

/** Forwards each requested port over its channel pair; closes the socket once all are done. */
export async function serveWebSocketPortForward(ws: WebSocketConnection, protocol: WebSocketChannelProtocol, options: WebSocketPortForwardOptions): Promise<void> {
  const { podSandboxId, ports, backend, log } = options;
  const modes: ChannelMode[] = ports.flatMap((): ChannelMode[] => ['readwrite', 'write']);
  const mux = new ChannelConnection(ws, modes, { binary: protocol.binary, streamClose: false });
  const controller = new AbortController();
  const abort = (reason: unknown): void => {
    if (!controller.signal.aborted) controller.abort(reason);
  };
  mux.once('close', () => abort(new Error('client disconnected')));
  const onParentAbort = (): void => {
    abort(options.signal.reason);
    ws.destroy();
  };
  options.signal.addEventListener('abort', onParentAbort, { once: true });
  for (const c of mux.channels) c.on('error', (err: Error) => log.debug({ err: err.message, channel: c.channel }, 'port forward channel error'));

  await Promise.all(
    ports.map(async (port, i) => {
      const data = mux.channels[2 * i]!;
      const error = mux.channels[2 * i + 1]!;
      const portBytes = Buffer.alloc(2);
      portBytes.writeUInt16LE(port);
      data.write(portBytes);
      error.write(portBytes);
      try {
        await backend.portForward(podSandboxId, port, data, controller.signal);
      } catch (err) {
        if (controller.signal.aborted) return;
        log.info({ port, err: errorMessage(err) }, 'port forward failed');
        error.write(forwardError(port, podSandboxId, err));
      }
    }),
  );
  options.signal.removeEventListener('abort', onParentAbort);
  if (mux.isOpen) {
    await Promise.all(mux.channels.map((c) => endWritable(c)));
    mux.close();
  }
}
