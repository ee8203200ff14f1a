import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from '../log';
import { errorMessage, invalidArgument } from '../util/errors';
import {
  acceptSpdyUpgrade,
  isSpdyUpgrade,
  negotiateSpdyProtocol,
  rejectUpgrade,
  UpgradeRejection,
} from './http_util';
import { parsePort, serveSpdyPortForward, serveWebSocketPortForward, SPDY_PORT_FORWARD_PROTOCOLS, WEBSOCKET_PORT_FORWARD_PROTOCOLS } from './portforward';
import {
  openSpdyRemoteCommand,
  openWebSocketRemoteCommand,
  runRemoteCommand,
  SPDY_REMOTE_COMMAND_PROTOCOLS,
  WEBSOCKET_REMOTE_COMMAND_PROTOCOLS,
  type RemoteCommandSession,
  type StreamOptions,
  type WebSocketChannelProtocol,
} from './remotecommand';
import { DEFAULT_TOKEN_TTL_MS, RequestCache } from './request_cache';
import { SpdyConnection } from './spdy/connection';
import { exitCodeStatus, successStatus } from './status';
import type { AttachRequest, ExecRequest, PortForwardRequest, StreamingBackend } from './types';
import { acceptWebSocket, handshakeAccept, isWebSocketRequest, offeredSubprotocols, WebSocketHandshakeError } from './websocket';

export interface StreamingServerOptions {
  /** Address to listen on; URLs handed out name it too. */
  address: string;
  /** TCP port; 0 picks a free one. */
  port: number;
  backend: StreamingBackend;
  log: Logger;
  /** How long a URL stays valid (default 60 s). */
  tokenTtlMs?: number;
  /** How long a SPDY client may take to open its streams (default 30 s). */
  streamCreationTimeoutMs?: number;
  /** Close a session after this long without traffic (default 4 h; 0: never). */
  streamIdleTimeoutMs?: number;
}

type CachedRequest =
  | { kind: 'exec'; request: ExecRequest }
  | { kind: 'attach'; request: AttachRequest }
  | { kind: 'portforward'; request: PortForwardRequest };

const DEFAULT_STREAM_CREATION_TIMEOUT_MS = 30_000;
const DEFAULT_STREAM_IDLE_TIMEOUT_MS = 4 * 60 * 60 * 1000;
const ROUTE = /^\/(exec|attach|portforward)\/([A-Za-z0-9_-]+)$/;

function validateStreams(what: string, req: { containerId: string; tty: boolean; stdin: boolean; stdout: boolean; stderr: boolean }): void {
  if (!req.containerId) throw invalidArgument(`${what}: missing required container_id`);
  // With a terminal, stdout and stderr share one stream; there is no way to tell them apart.
  if (req.tty && req.stderr) throw invalidArgument(`${what}: tty and stderr cannot both be true`);
  if (!req.stdin && !req.stdout && !req.stderr) throw invalidArgument(`${what}: one of stdin, stdout, or stderr must be set`);
}

/**
 * The CRI streaming server: Exec, Attach and PortForward hand out single-use URLs on this
 * server, which the kubelet (or a client it redirects) then upgrades to SPDY/3.1 or WebSocket.
 */
export class StreamingServer {
  private readonly httpServer: http.Server;
  private readonly cache: RequestCache<CachedRequest>;
  private readonly sockets = new Set<Duplex>();
  private readonly sessions = new Set<Promise<void>>();
  private readonly shutdown = new AbortController();
  private readonly streamCreationTimeoutMs: number;
  private readonly streamIdleTimeoutMs: number;
  private readonly log: Logger;
  private baseUrl: string | undefined;

  constructor(private readonly options: StreamingServerOptions) {
    this.log = options.log;
    this.cache = new RequestCache(options.tokenTtlMs ?? DEFAULT_TOKEN_TTL_MS);
    this.streamCreationTimeoutMs = options.streamCreationTimeoutMs ?? DEFAULT_STREAM_CREATION_TIMEOUT_MS;
    this.streamIdleTimeoutMs = options.streamIdleTimeoutMs ?? DEFAULT_STREAM_IDLE_TIMEOUT_MS;
    this.httpServer = http.createServer((req, res) => this.onRequest(req, res));
    this.httpServer.on('upgrade', (req: http.IncomingMessage, socket: Duplex, head: Buffer) => this.onUpgrade(req, socket, head));
    this.httpServer.on('connection', (socket: Duplex) => this.track(socket));
  }

  async start(): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.httpServer.once('error', reject);
      this.httpServer.listen(this.options.port, this.options.address, () => {
        this.httpServer.off('error', reject);
        resolve();
      });
    });
    const { port } = this.httpServer.address() as AddressInfo;
    const host = this.options.address.includes(':') ? `[${this.options.address}]` : this.options.address;
    this.baseUrl = `http://${host}:${port}`;
    this.log.info({ url: this.baseUrl }, 'streaming server listening');
  }

  /** The server's base URL (after `start`). */
  url(): string {
    if (!this.baseUrl) throw new Error('streaming server is not started');
    return this.baseUrl;
  }

  getExecUrl(req: ExecRequest): string {
    validateStreams('exec', req);
    if (req.cmd.length === 0) throw invalidArgument('exec: cmd must not be empty');
    return this.issue({ kind: 'exec', request: { ...req, cmd: [...req.cmd] } });
  }

  getAttachUrl(req: AttachRequest): string {
    validateStreams('attach', req);
    return this.issue({ kind: 'attach', request: { ...req } });
  }

  getPortForwardUrl(req: PortForwardRequest): string {
    if (!req.podSandboxId) throw invalidArgument('port forward: missing required pod_sandbox_id');
    for (const port of req.ports) {
      if (!Number.isInteger(port) || port < 1 || port > 65535) throw invalidArgument(`port forward: invalid port ${port}`);
    }
    return this.issue({ kind: 'portforward', request: { podSandboxId: req.podSandboxId, ports: [...req.ports] } });
  }

  /** Stops accepting, aborts every session (the backend sees its signal fire) and waits for them. */
  async close(): Promise<void> {
    this.shutdown.abort(new Error('streaming server shutting down'));
    const closed = new Promise<void>((resolve) => this.httpServer.close(() => resolve()));
    for (const socket of this.sockets) socket.destroy();
    await Promise.allSettled([...this.sessions]);
    await closed;
  }

  private issue(entry: CachedRequest): string {
    const token = this.cache.insert(entry);
    return `${this.url()}/${entry.kind}/${token}`;
  }

  private track(socket: Duplex): void {
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
  }

  private lookup(rawUrl: string | undefined, method: string | undefined): { entry?: CachedRequest; status?: number; message?: string } {
    const url = new URL(rawUrl ?? '/', 'http://streaming.invalid');
    const match = ROUTE.exec(url.pathname);
    if (!match) return { status: 404, message: '404 page not found' };
    if (method !== 'GET' && method !== 'POST') return { status: 405, message: `method ${method ?? ''} not allowed` };
    const entry = this.cache.consume(match[2]!);
    if (!entry || entry.kind !== match[1]) return { status: 404, message: '404 page not found' };
    return { entry };
  }

  private onRequest(req: http.IncomingMessage, res: http.ServerResponse): void {
    const found = this.lookup(req.url, req.method);
    const status = found.status ?? 400;
    const message = found.message ?? 'unable to upgrade: missing upgrade headers in request';
    res.writeHead(status, { 'Content-Type': 'text/plain; charset=utf-8', 'X-Content-Type-Options': 'nosniff' });
    res.end(`${message}\n`);
  }

  private onUpgrade(req: http.IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on('error', (err: Error) => this.log.debug({ err: err.message }, 'streaming socket error'));
    if (this.shutdown.signal.aborted) {
      socket.destroy();
      return;
    }
    const found = this.lookup(req.url, req.method);
    if (!found.entry) {
      rejectUpgrade(socket, found.status!, found.message!);
      return;
    }
    const entry = found.entry;
    const session = this.serve(entry, req, socket, head).catch((err: unknown) => {
      if (err instanceof UpgradeRejection) rejectUpgrade(socket, err.statusCode, err.message, err.headers);
      else if (err instanceof WebSocketHandshakeError) rejectUpgrade(socket, err.statusCode, err.message, err.headers);
      else {
        this.log.warn({ kind: entry.kind, err: errorMessage(err) }, 'streaming session failed');
        socket.destroy();
      }
    });
    this.sessions.add(session);
    void session.finally(() => this.sessions.delete(session));
  }

  private async serve(entry: CachedRequest, req: http.IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    if (isWebSocketRequest(req)) {
      return entry.kind === 'portforward' ? this.serveWebSocketPortForward(entry.request, req, socket, head) : this.serveWebSocketRemoteCommand(entry, req, socket, head);
    }
    if (!isSpdyUpgrade(req)) throw new UpgradeRejection(400, 'unable to upgrade: missing upgrade headers in request');
    const protocols = entry.kind === 'portforward' ? SPDY_PORT_FORWARD_PROTOCOLS : SPDY_REMOTE_COMMAND_PROTOCOLS;
    const protocol = negotiateSpdyProtocol(req, protocols);
    acceptSpdyUpgrade(socket, protocol);
    const conn = new SpdyConnection(socket, { server: true, log: this.log, idleTimeoutMs: this.streamIdleTimeoutMs, head });
    if (entry.kind === 'portforward') {
      await serveSpdyPortForward(conn, {
        podSandboxId: entry.request.podSandboxId,
        allowedPorts: entry.request.ports,
        backend: this.options.backend,
        streamCreationTimeoutMs: this.streamCreationTimeoutMs,
        signal: this.shutdown.signal,
        log: this.log,
      });
      return;
    }
    let session: RemoteCommandSession;
    try {
      session = await openSpdyRemoteCommand(conn, protocol, streamOptions(entry.request), this.streamCreationTimeoutMs, this.log);
    } catch (err) {
      this.log.info({ kind: entry.kind, err: errorMessage(err) }, 'streaming session not established');
      conn.destroy();
      return;
    }
    await this.runRemoteCommand(entry, session);
  }

  private async serveWebSocketRemoteCommand(entry: CachedRequest & { kind: 'exec' | 'attach' }, req: http.IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    const [name, protocol] = chooseWebSocketProtocol(req, WEBSOCKET_REMOTE_COMMAND_PROTOCOLS);
    handshakeAccept(req);
    const ws = acceptWebSocket(req, socket, name || undefined, { idleTimeoutMs: this.streamIdleTimeoutMs, head });
    const session = openWebSocketRemoteCommand(ws, protocol, streamOptions(entry.request), this.log);
    await this.runRemoteCommand(entry, session);
  }

  private async serveWebSocketPortForward(request: PortForwardRequest, req: http.IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    const [name, protocol] = chooseWebSocketProtocol(req, WEBSOCKET_PORT_FORWARD_PROTOCOLS);
    let ports = request.ports;
    if (ports.length === 0) {
      // The ports of a WebSocket session are fixed up front; take them from the query if the request named none.
      const query = new URL(req.url ?? '/', 'http://streaming.invalid').searchParams.getAll('port');
      const parsed = query.map((p) => parsePort(p));
      if (parsed.some((p) => p === undefined)) throw new UpgradeRejection(400, `invalid port in query: ${query.join(',')}`);
      ports = parsed as number[];
    }
    if (ports.length === 0) throw new UpgradeRejection(400, 'query parameter "port" is required');
    handshakeAccept(req);
    const ws = acceptWebSocket(req, socket, name || undefined, { idleTimeoutMs: this.streamIdleTimeoutMs, head });
    await serveWebSocketPortForward(ws, protocol, {
      podSandboxId: request.podSandboxId,
      ports,
      backend: this.options.backend,
      signal: this.shutdown.signal,
      log: this.log,
    });
  }

  private async runRemoteCommand(entry: CachedRequest & { kind: 'exec' | 'attach' }, session: RemoteCommandSession): Promise<void> {
    const backend = this.options.backend;
    if (entry.kind === 'exec') {
      const request = entry.request;
      await runRemoteCommand(
        session,
        this.shutdown.signal,
        'error executing command in container',
        async (signal) => {
          const { exitCode } = await backend.exec({ ...request, signal }, session.io);
          return exitCode === 0 ? successStatus() : exitCodeStatus(request.cmd, exitCode);
        },
        this.log,
      );
    } else {
      const request = entry.request;
      await runRemoteCommand(
        session,
        this.shutdown.signal,
        'error attaching to container',
        async (signal) => {
          await backend.attach({ ...request, signal }, session.io);
          return successStatus();
        },
        this.log,
      );
    }
  }
}

function streamOptions(req: ExecRequest | AttachRequest): StreamOptions {
  return { stdin: req.stdin, stdout: req.stdout, stderr: req.stderr, tty: req.tty };
}

/** The client's most preferred subprotocol that is supported ('' when it offers none). */
function chooseWebSocketProtocol(req: http.IncomingMessage, supported: ReadonlyMap<string, WebSocketChannelProtocol>): [string, WebSocketChannelProtocol] {
  const offered = offeredSubprotocols(req);
  if (offered.length === 0) return ['', supported.get('')!];
  for (const name of offered) {
    const protocol = name ? supported.get(name) : undefined;
    if (protocol) return [name, protocol];
  }
  const names = [...supported.keys()].filter((n) => n !== '');
  throw new WebSocketHandshakeError(403, `requested protocol(s) are not supported: [${offered.join(' ')}]; supports [${names.join(' ')}]`);
}
