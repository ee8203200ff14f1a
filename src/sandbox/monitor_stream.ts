/**
 * Stream sessions with a pod monitor: an interactive exec, or an attach to a container's main
 * process, each on a connection of its own to `<bundle>/monitor.sock`. The session's request is
 * the connection's only request line; after the monitor's reply line the connection carries
 * frames `[kind: u8][length: u32 big-endian][payload]` both ways (`frame` in
 * crates/core/src/monitor_proto.rs).
 *
 * Closing the connection ends the session: the monitor kills an exec'd process (its process group
 * and session) or detaches an attached client.
 */
import type * as net from 'node:net';
import { Readable, Writable } from 'node:stream';
import { ByteQueue } from '../util/byte_queue';
import { CrispError } from '../util/errors';
import type { AttachStreamParams, ExecStreamParams, ProcessStream } from '../runtime/container_runtime';
import { connectMonitorSocket, monitorError, monitorUnavailable } from './monitor_socket';

export const StreamFrame = {
  /** Daemon → monitor: bytes for stdin; an empty payload closes it. */
  Stdin: 0,
  Stdout: 1,
  Stderr: 2,
  /** Daemon → monitor: `[width: u16][height: u16]` big-endian. */
  Resize: 3,
  /** Monitor → daemon: `{"exitCode":n}`, after the last output; the monitor then closes. */
  Exit: 4,
} as const;

const HEADER_LEN = 5;
/** The largest frame payload either side sends or accepts. */
export const MAX_FRAME_PAYLOAD = 1 << 20;
/** The reply line is short; anything this long before a newline is not one. */
const MAX_REPLY_BYTES = 64 << 10;
const DEFAULT_REPLY_TIMEOUT_MS = 30_000;

export type { AttachStreamParams, ExecStreamParams };

export interface StreamOptions {
  connectTimeoutMs?: number;
  /** How long the monitor may take to answer (an exec: until its program runs). */
  replyTimeoutMs?: number;
}

/**
 * Opens an exec session; resolves once the process has exec'd its program. Set-up failures
 * reject with the monitor's error (`exec: "nope": executable file not found in $PATH`).
 */
export async function openExecStream(socketPath: string, params: ExecStreamParams, options: StreamOptions = {}): Promise<MonitorStream> {
  return openStream(socketPath, 'exec_stream', { ...params }, options);
}

/** Attaches to a running container's main process. */
export async function openAttachStream(socketPath: string, params: AttachStreamParams, options: StreamOptions = {}): Promise<MonitorStream> {
  return openStream(socketPath, 'attach', { ...params }, options);
}

async function openStream(socketPath: string, op: string, params: Record<string, unknown>, options: StreamOptions): Promise<MonitorStream> {
  const socket = await connectMonitorSocket(socketPath, options.connectTimeoutMs);
  const replyTimeoutMs = options.replyTimeoutMs ?? DEFAULT_REPLY_TIMEOUT_MS;
  return new Promise<MonitorStream>((resolve, reject) => {
    let head: Buffer = Buffer.alloc(0);
    const fail = (err: Error): void => {
      cleanup();
      socket.destroy();
      reject(err);
    };
    const cleanup = (): void => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('close', onClose);
      socket.off('error', onError);
    };
    const onData = (chunk: Buffer): void => {
      head = head.length === 0 ? chunk : Buffer.concat([head, chunk]);
      const newline = head.indexOf(0x0a);
      if (newline < 0) {
        if (head.length > MAX_REPLY_BYTES) fail(monitorUnavailable(socketPath, `the monitor sent an oversized reply to ${op}`));
        return;
      }
      let reply: { ok?: boolean; result?: unknown; error?: { code?: string; message?: string } };
      try {
        reply = JSON.parse(head.subarray(0, newline).toString('utf8')) as typeof reply;
      } catch {
        fail(monitorUnavailable(socketPath, `the monitor sent a malformed reply to ${op}`));
        return;
      }
      if (!reply.ok) {
        fail(monitorError(op, reply.error));
        return;
      }
      cleanup();
      // Frames may have come in the same chunk as the reply.
      resolve(new MonitorStream(socket, socketPath, reply.result, head.subarray(newline + 1)));
    };
    const onClose = (): void => fail(monitorUnavailable(socketPath, `the monitor closed the connection before answering ${op}`));
    const onError = (): void => undefined; // 'close' follows
    const timer = setTimeout(() => {
      fail(new CrispError('DeadlineExceeded', `monitor ${socketPath} did not answer ${op} within ${replyTimeoutMs} ms`));
    }, replyTimeoutMs);
    socket.on('data', onData);
    socket.once('close', onClose);
    socket.on('error', onError);
    socket.write(`${JSON.stringify({ ...params, id: 1, op })}\n`);
  });
}

/** Frames split across socket chunks, reassembled without copying more than once. */
class FrameReader {
  private readonly queue = new ByteQueue();

  push(chunk: Buffer): void {
    this.queue.push(chunk);
  }

  /** The next complete frame; undefined while incomplete. Throws on an oversized frame. */
  next(): { kind: number; payload: Buffer } | undefined {
    if (this.queue.length < HEADER_LEN) return undefined;
    const header = this.queue.peek(HEADER_LEN);
    const size = header.readUInt32BE(1);
    if (size > MAX_FRAME_PAYLOAD) throw new Error(`frame of ${size} bytes exceeds the ${MAX_FRAME_PAYLOAD}-byte limit`);
    if (this.queue.length < HEADER_LEN + size) return undefined;
    const kind = header[0]!;
    return { kind, payload: this.queue.take(HEADER_LEN + size).subarray(HEADER_LEN) };
  }
}

/**
 * An open stream session. Output arrives on `stdout`/`stderr` (the connection is paused while
 * either is not being consumed, which in turn makes the monitor stop reading the process);
 * `stdin` sends input and, when ended, EOF.
 */
export class MonitorStream implements ProcessStream {
  readonly stdout: Readable;
  readonly stderr: Readable;
  readonly stdin: Writable;
  /**
   * The exit code the monitor reported (the exec'd process's, or for attach the container's), or
   * undefined when the connection ended without one (closed by us, or the monitor went away).
   */
  readonly exit: Promise<number | undefined>;
  private resolveExit!: (code: number | undefined) => void;
  private readonly reader = new FrameReader();
  /** Output streams whose consumer has not asked for more. */
  private readonly full = new Set<Readable>();
  private ended = false;

  constructor(
    private readonly socket: net.Socket,
    readonly socketPath: string,
    /** The monitor's reply (`{pid}` for an exec). */
    readonly reply: unknown,
    initial: Buffer,
  ) {
    this.exit = new Promise((resolve) => (this.resolveExit = resolve));
    const output = (): Readable => {
      const r: Readable = new Readable({
        read: () => {
          this.full.delete(r);
          if (this.full.size === 0 && !this.ended) socket.resume();
        },
      });
      return r;
    };
    this.stdout = output();
    this.stderr = output();
    this.stdin = new Writable({
      write: (chunk: Buffer, _encoding, callback) => this.send(StreamFrame.Stdin, chunk, callback),
      final: (callback) => this.send(StreamFrame.Stdin, Buffer.alloc(0), callback),
    });
    // A write after the session ended is dropped by send(); nothing else fails.
    this.stdin.on('error', () => undefined);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', () => undefined); // 'close' follows
    socket.once('close', () => this.end(undefined));
    if (initial.length > 0) this.onData(initial);
  }

  /** The process's pid (exec), from the monitor's reply. */
  get pid(): number | undefined {
    const pid = (this.reply as { pid?: unknown } | undefined)?.pid;
    return typeof pid === 'number' ? pid : undefined;
  }

  /** Sets the terminal size (columns, rows); ignored by the monitor without a terminal. */
  resize(width: number, height: number): void {
    const payload = Buffer.alloc(4);
    payload.writeUInt16BE(clampU16(width), 0);
    payload.writeUInt16BE(clampU16(height), 2);
    this.send(StreamFrame.Resize, payload, () => undefined);
  }

  /** Ends the session by closing the connection: an exec is killed, an attach detached. */
  close(): void {
    this.socket.destroy();
    this.end(undefined);
  }

  private send(kind: number, payload: Buffer, callback: (err?: Error | null) => void): void {
    if (this.ended || this.socket.destroyed) {
      callback();
      return;
    }
    let offset = 0;
    do {
      const piece = payload.subarray(offset, offset + MAX_FRAME_PAYLOAD);
      offset += piece.length;
      const header = Buffer.alloc(HEADER_LEN);
      header[0] = kind;
      header.writeUInt32BE(piece.length, 1);
      const last = offset >= payload.length;
      // The callback runs once the kernel took the bytes: the caller's backpressure.
      this.socket.write(Buffer.concat([header, piece]), last ? () => callback() : undefined);
    } while (offset < payload.length);
  }

  private onData(chunk: Buffer): void {
    this.reader.push(chunk);
    for (;;) {
      let next: { kind: number; payload: Buffer } | undefined;
      try {
        next = this.reader.next();
      } catch {
        this.close();
        return;
      }
      if (!next || this.ended) return;
      const { kind, payload } = next;
      if (kind === StreamFrame.Stdout || kind === StreamFrame.Stderr) {
        const target = kind === StreamFrame.Stdout ? this.stdout : this.stderr;
        if (!target.push(payload)) {
          this.full.add(target);
          this.socket.pause();
        }
      } else if (kind === StreamFrame.Exit) {
        let code: number | undefined;
        try {
          const parsed = JSON.parse(payload.toString('utf8')) as { exitCode?: unknown };
          if (typeof parsed.exitCode === 'number') code = parsed.exitCode;
        } catch {
          // Reported as no exit status.
        }
        this.end(code);
        this.socket.end();
        return;
      }
    }
  }

  private end(code: number | undefined): void {
    if (this.ended) return;
    this.ended = true;
    this.stdout.push(null);
    this.stderr.push(null);
    this.resolveExit(code);
  }
}

function clampU16(n: number): number {
  return Math.max(0, Math.min(0xffff, Math.floor(Number.isFinite(n) ? n : 0)));
}
