import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from '../log';
import { errorMessage, invalidArgument } from '../util/errors';
import type { CriMetrics } from './cri_metrics';

/**
 * Splits `host:port`, `[v6]:port` or `:port` (every interface). Port 0 picks a free one.
 * Throws InvalidArgument for anything else.
 */
export function parseListenAddress(address: string): { host?: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(address.trim());
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw invalidArgument(`metrics address "${address}": expected host:port, [ipv6]:port or :port`);
  const host = m[1] ?? m[2];
  return { host: host === '' ? undefined : host, port };
}

/** Serves `GET /metrics` in the Prometheus text format on a plain HTTP listener. */
export class MetricsServer {
  private server?: http.Server;

  constructor(
    private readonly metrics: CriMetrics,
    private readonly log: Logger,
  ) {}

  async listen(address: string): Promise<AddressInfo> {
    const { host, port } = parseListenAddress(address);
    const server = http.createServer((req, res) => void this.handle(req, res));
    // Scrapers keep connections open; they must not hold up shutdown.
    server.keepAliveTimeout = 5_000;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host, port }, () => {
        server.off('error', reject);
        resolve();
      });
    });
    server.on('error', (err) => this.log.error({ err }, 'metrics server error'));
    this.server = server;
    const bound = server.address() as AddressInfo;
    this.log.info({ address: bound.address, port: bound.port }, 'serving Prometheus metrics');
    return bound;
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0];
    if (path !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: metrics are served at /metrics\n');
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain' }).end('method not allowed\n');
      return;
    }
    try {
      const body = await this.metrics.render();
      res.writeHead(200, { 'content-type': this.metrics.contentType, 'content-length': Buffer.byteLength(body) });
      res.end(req.method === 'HEAD' ? undefined : body);
    } catch (err) {
      this.log.warn({ err: errorMessage(err) }, 'rendering metrics failed');
      res.writeHead(500, { 'content-type': 'text/plain' }).end(`rendering metrics failed: ${errorMessage(err)}\n`);
    }
  }

  async close(): Promise<void> {
    const server = this.server;
    if (!server) return;
    this.server = undefined;
    await new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    });
  }
}
