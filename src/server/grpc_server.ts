import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { ImageServiceService, RuntimeServiceService } from '../generated/runtime/v1/api';
import type { Logger } from '../log';
import { gateConnection } from './http2/connection_gate';
import { aliasService, type ApiVersion, instrument, type RpcTable } from './instrument';

/** kubelet sends and accepts messages up to 16 MiB; list responses on big nodes need the room. */
const MAX_MESSAGE_BYTES = 16 * 1024 * 1024;

export interface GrpcServerOptions {
  socket: string;
  table: RpcTable;
  log: Logger;
  isReady: () => boolean;
  onFinished?: (method: string, code: grpc.status, seconds: number) => void;
}

/**
 * Serves RuntimeService and ImageService under both runtime.v1 and runtime.v1alpha2 on a unix
 * socket only root can reach.
 */
export class GrpcServer {
  private server?: grpc.Server;
  private listener?: net.Server;
  /** Every accepted connection, also those the HTTP/2 server does not have yet. */
  private readonly sockets = new Set<net.Socket>();

  constructor(private readonly options: GrpcServerOptions) {}

  async listen(): Promise<void> {
    const { socket, log } = this.options;
    await prepareSocketPath(socket);
    const server = new grpc.Server({
      'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
      'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
      // Nothing reads channelz here, and its per-call bookkeeping is a third of grpc-js's own
      // cost of a small call.
      'grpc.enable_channelz': 0,
    });
    const add = (definition: grpc.ServiceDefinition, apiVersion: ApiVersion): void => {
      server.addService(
        definition,
        instrument(definition, this.options.table, {
          log: this.options.log,
          apiVersion,
          isReady: this.options.isReady,
          onFinished: this.options.onFinished,
        }),
      );
    };
    const runtime = RuntimeServiceService as unknown as grpc.ServiceDefinition;
    const image = ImageServiceService as unknown as grpc.ServiceDefinition;
    add(runtime, 'v1');
    add(image, 'v1');
    add(aliasService(runtime, 'runtime.v1', 'runtime.v1alpha2'), 'v1alpha2');
    add(aliasService(image, 'runtime.v1', 'runtime.v1alpha2'), 'v1alpha2');

    // crisp owns the listener so that connections whose :authority Node's HTTP/2 server would
    // refuse (Go clients send the socket path) pass a filter before grpc-js gets them.
    const injector = server.createConnectionInjector(grpc.ServerCredentials.createInsecure());
    const listener = net.createServer((conn) => {
      this.sockets.add(conn);
      conn.once('close', () => this.sockets.delete(conn));
      gateConnection(conn, { log, inject: (c) => injector.injectConnection(c) });
    });
    // The socket is created with the process umask; tighten it before anyone can race us to it.
    const oldMask = process.umask(0o117);
    try {
      await new Promise<void>((resolve, reject) => {
        listener.once('error', reject);
        listener.listen(socket, () => {
          listener.off('error', reject);
          resolve();
        });
      });
    } finally {
      process.umask(oldMask);
    }
    listener.on('error', (err) => log.error({ err }, 'CRI socket listener failed'));
    fs.chmodSync(socket, 0o660);
    this.server = server;
    this.listener = listener;
    log.info({ socket }, 'serving CRI v1 and v1alpha2');
  }

  /** Stops accepting calls and waits for in-flight ones, forcing them after `graceMs`. */
  async close(graceMs = 10_000): Promise<void> {
    const server = this.server;
    if (!server) return;
    this.server = undefined;
    // No new connections; the socket file goes with the listener.
    this.listener?.close();
    this.listener = undefined;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        server.forceShutdown();
        resolve();
      }, graceMs);
      server.tryShutdown(() => {
        clearTimeout(timer);
        resolve();
      });
    });
    // Connections that never sent a request were never the HTTP/2 server's to close.
    for (const conn of this.sockets) conn.destroy();
    fs.rmSync(this.options.socket, { force: true });
  }
}

/**
 * Creates the socket's directory (0711, like containerd's) and clears a stale socket left by a
 * crashed daemon. A socket that still accepts connections belongs to a live server: refuse.
 */
export async function prepareSocketPath(socket: string): Promise<void> {
  const dir = path.dirname(socket);
  if (!fs.existsSync(dir)) fs.mkdirSync(dir, { recursive: true, mode: 0o711 });
  let st: fs.Stats;
  try {
    st = fs.lstatSync(socket);
  } catch {
    return;
  }
  if (!st.isSocket()) throw new Error(`${socket} exists and is not a socket`);
  const live = await new Promise<boolean>((resolve) => {
    const conn = net.connect({ path: socket });
    conn.once('connect', () => {
      conn.destroy();
      resolve(true);
    });
    conn.once('error', () => resolve(false));
  });
  if (live) throw new Error(`socket ${socket} is in use by another process`);
  fs.rmSync(socket, { force: true });
}
