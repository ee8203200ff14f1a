import * as net from 'node:net';
import type { Duplex } from 'node:stream';
import type { CriService } from '../server/service';
import { processDefaults } from '../server/container_exec_sync';
import { failedPrecondition, unimplemented } from '../util/errors';
import type { AttachCall, ExecCall, StreamingBackend, StreamingIO } from './types';

/** How long a port-forward connect inside the pod may take before the stream reports an error. */
const PORT_FORWARD_CONNECT_TIMEOUT_MS = 5000;

/**
 * Runs streaming sessions against crisp's pods: exec through the pod monitor, port-forward through
 * a socket the native core connects inside the pod's network namespace.
 */
export class CrispStreamingBackend implements StreamingBackend {
  constructor(private readonly svc: CriService) {}

  private runningContainer(containerId: string) {
    const c = this.svc.containers.resolve(containerId);
    if (c.state !== 'running') throw failedPrecondition(`container ${c.id} is not running`);
    return c;
  }

  async exec(call: ExecCall, io: StreamingIO): Promise<{ exitCode: number }> {
    const c = this.runningContainer(call.containerId);
    await this.svc.exits.reconcile(c);
    if (call.tty || call.stdin) {
      throw unimplemented('interactive exec (tty or stdin) is not supported by crisp yet; non-interactive commands are');
    }
    const sandbox = this.svc.sandboxes.resolve(c.record.sandboxId);
    const defaults = processDefaults(c);
    const client = await this.svc.pods.client(sandbox);
    const execId = `stream-${Date.now().toString(36)}`;
    const onAbort = (): void => {
      client.request('signal', { containerId: c.id, execId, signal: 9 }).catch(() => undefined);
    };
    call.signal.addEventListener('abort', onAbort, { once: true });
    try {
      const reply = await client.request<{ exitCode: number; stdout: string; stderr: string }>(
        'exec',
        { containerId: c.id, execId, process: { args: call.cmd, ...defaults }, tty: false, stdin: false, timeoutMs: 0 },
        24 * 3600 * 1000,
      );
      if (io.stdout) io.stdout.write(Buffer.from(reply.stdout, 'base64'));
      if (io.stderr) io.stderr.write(Buffer.from(reply.stderr, 'base64'));
      return { exitCode: reply.exitCode };
    } finally {
      call.signal.removeEventListener('abort', onAbort);
    }
  }

  async attach(call: AttachCall, _io: StreamingIO): Promise<void> {
    this.runningContainer(call.containerId);
    throw unimplemented('attach is not supported by crisp yet');
  }

  async portForward(podSandboxId: string, port: number, conn: Duplex, signal: AbortSignal): Promise<void> {
    const sandbox = this.svc.sandboxes.resolve(podSandboxId);
    if (sandbox.state !== 'ready') throw failedPrecondition(`pod sandbox ${sandbox.id} is not ready`);
    const nsPath = sandbox.record.hostNetwork ? undefined : sandbox.netnsPath;
    const fd = await this.svc.native.connectInNetns(nsPath, port, PORT_FORWARD_CONNECT_TIMEOUT_MS);
    const socket = new net.Socket({ fd, readable: true, writable: true });
    await new Promise<void>((resolve, reject) => {
      let finished = false;
      const done = (err?: Error): void => {
        if (finished) return;
        finished = true;
        signal.removeEventListener('abort', onAbort);
        socket.destroy();
        if (err) reject(err);
        else resolve();
      };
      const onAbort = (): void => done();
      signal.addEventListener('abort', onAbort, { once: true });
      socket.on('error', (err) => done(err));
      conn.on('error', (err) => done(err));
      // Each side's end is passed on as a half-close; the session is over when both are.
      let ends = 0;
      const ended = (): void => {
        if (++ends === 2) done();
      };
      socket.on('end', ended);
      conn.on('end', ended);
      socket.pipe(conn, { end: true });
      conn.pipe(socket, { end: true });
      socket.on('close', () => done());
    });
  }
}
