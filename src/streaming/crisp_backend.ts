import * as crypto from 'node:crypto';
import * as net from 'node:net';
import type { Duplex, Readable, Writable } from 'node:stream';
import { finished } from 'node:stream/promises';
import type { CriService } from '../server/service';
import type { ProcessStream } from '../runtime/container_runtime';
import { CrispError, failedPrecondition, unavailable } from '../util/errors';
import type { AttachCall, ExecCall, StreamingBackend, StreamingIO } from './types';

/** How long a port-forward connect inside the pod may take before the stream reports an error. */
const PORT_FORWARD_CONNECT_TIMEOUT_MS = 5000;

/**
 * Runs streaming sessions against crisp's pods: exec and attach through the pod's container
 * runtime (a stream connection of their own to the pod's monitor), port-forward through a socket the native core connects inside the pod's network
 * namespace.
 */
export class CrispStreamingBackend implements StreamingBackend {
  constructor(private readonly svc: CriService) {}

  private async runningContainer(containerId: string) {
    const c = this.svc.containers.resolve(containerId);
    await this.svc.exits.reconcile(c);
    if (c.state !== 'running') throw failedPrecondition(`container ${c.id} is not running`);
    const sandbox = this.svc.sandboxes.resolve(c.record.sandboxId);
    return { c, runtime: await this.svc.pods.runtimeOf(sandbox) };
  }

  async exec(call: ExecCall, io: StreamingIO): Promise<{ exitCode: number }> {
    const { c, runtime } = await this.runningContainer(call.containerId);
    const stream = await runtime.exec({
      containerId: c.id,
      execId: crypto.randomBytes(8).toString('hex'),
      // Environment, working directory and user default to the container's.
      process: { args: call.cmd },
      tty: call.tty,
      stdin: io.stdin !== undefined,
      stdout: io.stdout !== undefined,
      // A terminal's output is all stdout.
      stderr: io.stderr !== undefined && !call.tty,
    });
    const exitCode = await connect(stream, io, call.signal);
    if (exitCode === undefined) {
      if (call.signal.aborted) throw new CrispError('Aborted', 'the client went away');
      throw unavailable(`the monitor of container ${c.id} went away before the command finished`);
    }
    return { exitCode };
  }

  async attach(call: AttachCall, io: StreamingIO): Promise<void> {
    const { c, runtime } = await this.runningContainer(call.containerId);
    const stream = await runtime.attach({
      containerId: c.id,
      stdin: io.stdin !== undefined,
      stdout: io.stdout !== undefined,
      stderr: io.stderr !== undefined,
    });
    // Done when the container exits (the monitor reports it) or the client leaves.
    await connect(stream, io, call.signal);
  }

  async portForward(podSandboxId: string, port: number, conn: Duplex, signal: AbortSignal): Promise<void> {
    const sandbox = this.svc.sandboxes.resolve(podSandboxId);
    if (sandbox.state !== 'ready') throw failedPrecondition(`pod sandbox ${sandbox.id} is not ready`);
    const nsPath = sandbox.hostNetwork ? undefined : sandbox.netnsPath;
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

/**
 * Wires the client's streams to a monitor stream session until the monitor reports the exit
 * (resolving with it once all output is handed on) or the session ends otherwise (undefined).
 * An abort closes the session, which makes the monitor kill an exec or detach an attach.
 */
async function connect(stream: ProcessStream, io: StreamingIO, signal: AbortSignal): Promise<number | undefined> {
  // Output a departed client will never take must not keep the call waiting.
  let clientGone!: () => void;
  const aborted = new Promise<void>((resolve) => (clientGone = resolve));
  const onAbort = (): void => {
    stream.close();
    clientGone();
  };
  signal.addEventListener('abort', onAbort, { once: true });
  if (signal.aborted) onAbort();
  const outputs = Promise.all([forward(stream.stdout, io.stdout), forward(stream.stderr, io.stderr)]);
  io.stdin?.pipe(stream.stdin);
  if (io.tty && io.resize) {
    const resize = io.resize;
    void (async () => {
      for await (const size of resize) stream.resize(size.width, size.height);
    })().catch(() => undefined);
  }
  try {
    const code = await stream.exit;
    await Promise.race([outputs, aborted]);
    return code;
  } finally {
    signal.removeEventListener('abort', onAbort);
    io.stdin?.unpipe(stream.stdin);
    stream.close();
  }
}

/** Hands a session's output to the client's stream (or drops it); resolves once it has ended. */
async function forward(from: Readable, to: Writable | undefined): Promise<void> {
  if (to) from.pipe(to, { end: false });
  else from.resume();
  await finished(from).catch(() => undefined);
}
