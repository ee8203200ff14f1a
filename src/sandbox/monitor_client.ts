/**
 * Client for a pod monitor's control socket (`<bundle>/monitor.sock`): newline-delimited JSON,
 * requests `{"id":n,"op":"…",…}` answered by `{"id":n,"ok":true,"result":…}` or
 * `{"id":n,"ok":false,"error":{"code":"…","message":"…"}}` in any order, plus pushed events
 * (`{"event":"…",…}`) once subscribed. Shapes mirror `crates/core/src/monitor_proto.rs`.
 *
 * One client is one connection. When the monitor goes away every pending and later call fails
 * with Unavailable; connect again (a dead monitor refuses with Unavailable too).
 */
import type * as net from 'node:net';
import * as os from 'node:os';
import type {
  AttachStreamParams,
  ContainerRuntime,
  CreateContainerParams,
  ExecParams,
  ExecResult,
  ExecStreamParams,
  ProcessStream,
  RuntimeEvent,
} from '../runtime/container_runtime';
import { CrispError } from '../util/errors';
import { connectMonitorSocket, monitorError, monitorUnavailable } from './monitor_socket';
import { openAttachStream, openExecStream } from './monitor_stream';

/** The protocol version this client speaks; `status().protocolVersion` reports the monitor's. */
export const MONITOR_PROTOCOL_VERSION = 1;

const DEFAULT_CONNECT_TIMEOUT_MS = 5_000;
const DEFAULT_REQUEST_TIMEOUT_MS = 10_000;
/** The longest delay setTimeout supports. */
const MAX_TIMER_MS = 2 ** 31 - 1;
/**
 * Longest line accepted from the monitor before the connection is considered broken: an exec
 * reply carries up to 16 MiB per stream, base64-encoded.
 */
const MAX_LINE_CHARS = 48 << 20;

export interface MonitorStatus {
  protocolVersion: number;
  /** The monitor binary's version. */
  version: string;
  sandboxId: string;
  pid: number;
  initPid?: number;
  startedAtMs: number;
  state: 'running' | 'shutting_down';
  /** Containers the monitor knows of, exited ones included. */
  containers: MonitorContainer[];
}

export type MonitorContainerState = 'created' | 'running' | 'exited';

export interface MonitorContainer {
  containerId: string;
  /** In the node's PID namespace. */
  pid: number;
  state: MonitorContainerState;
  /** Once exited. */
  exitCode?: number;
}

/** What a monitor pushes to a subscribed connection. */
export type MonitorEvent = RuntimeEvent;

export interface MonitorClientOptions {
  connectTimeoutMs?: number;
  /** Default per-request timeout. */
  requestTimeoutMs?: number;
}

interface Pending {
  op: string;
  resolve: (result: unknown) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
}

interface ResponseLine {
  id: number;
  ok: boolean;
  result?: unknown;
  error?: { code?: string; message?: string };
}

/** A pod monitor's control connection: the `ContainerRuntime` of crisp's own launcher. */
export class MonitorClient implements ContainerRuntime {
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private readonly listeners = new Set<(event: MonitorEvent) => void>();
  private readonly closeListeners = new Set<(err?: Error) => void>();
  private buffer = '';
  private closedError: CrispError | undefined;
  private subscribed: Promise<void> | undefined;

  private constructor(
    private readonly socket: net.Socket,
    readonly socketPath: string,
    private readonly requestTimeoutMs: number,
  ) {
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.onData(chunk));
    socket.on('error', (err) => this.teardown(monitorUnavailable(socketPath, `connection failed: ${err.message}`)));
    socket.on('close', () => this.teardown(monitorUnavailable(socketPath, 'the monitor closed the connection')));
  }

  /**
   * Connects to a monitor's control socket. Rejects with Unavailable when no monitor serves it
   * (missing socket, connection refused) and DeadlineExceeded when the connect hangs.
   */
  static async connect(socketPath: string, options: MonitorClientOptions = {}): Promise<MonitorClient> {
    const socket = await connectMonitorSocket(socketPath, options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS);
    return new MonitorClient(socket, socketPath, options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS);
  }

  /** Whether the connection is gone; every call then fails with Unavailable. */
  get closed(): boolean {
    return this.closedError !== undefined;
  }

  /** Sends one request and resolves with its `result`. Monitor-side errors keep their code. */
  private request<T = unknown>(op: string, params: Record<string, unknown> = {}, timeoutMs = this.requestTimeoutMs): Promise<T> {
    if (this.closedError) return Promise.reject(this.closedError);
    const id = this.nextId++;
    const line = `${JSON.stringify({ ...params, id, op })}\n`;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new CrispError('DeadlineExceeded', `monitor ${this.socketPath} did not answer ${op} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { op, resolve: resolve as (r: unknown) => void, reject, timer });
      this.socket.write(line);
    });
  }

  async status(timeoutMs?: number): Promise<MonitorStatus> {
    const status = await this.request<MonitorStatus>('status', {}, timeoutMs);
    return { ...status, containers: status.containers ?? [] };
  }

  /**
   * Forks the container process from the bundle; resolves once it is set up (namespaces,
   * root filesystem, credentials) and waits to be started. Set-up failures reject with the
   * failing step: InvalidArgument when the spec is at fault, Internal otherwise.
   */
  create(params: CreateContainerParams, timeoutMs?: number): Promise<{ pid: number }> {
    return this.request<{ pid: number }>('create', { ...params }, timeoutMs);
  }

  /**
   * Lets the created container exec its program. Resolves once execve succeeded; rejects with
   * the reason (`exec: "/nope": no such file or directory`) if it did not, in which case the
   * container is recorded as exited with code 128.
   */
  start(containerId: string, timeoutMs?: number): Promise<{ pid: number; startedAtMs: number }> {
    return this.request<{ pid: number; startedAtMs: number }>('start', { containerId }, timeoutMs);
  }

  /** Sends a signal to the container's main process (or an exec's process group); a process that is already gone is not an error. */
  async signal(containerId: string, signal: number | NodeJS.Signals, execId?: string): Promise<void> {
    const signo = typeof signal === 'number' ? signal : os.constants.signals[signal];
    if (signo === undefined) throw new CrispError('InvalidArgument', `unknown signal ${String(signal)}`);
    await this.request('signal', execId === undefined ? { containerId, signal: signo } : { containerId, execId, signal: signo });
  }

  /**
   * Runs a process in the running container and collects its output (ExecSync). The request
   * timeout defaults to the exec timeout plus the client's request timeout; without an exec
   * timeout it waits indefinitely.
   */
  async execSync(params: ExecParams, timeoutMs?: number): Promise<ExecResult> {
    const execTimeout = Math.max(0, Math.floor(params.timeoutMs ?? 0));
    const requestTimeout = timeoutMs ?? (execTimeout > 0 ? execTimeout + this.requestTimeoutMs : MAX_TIMER_MS);
    const reply = await this.request<{ exitCode: number; stdout: string; stderr: string; timedOut: boolean; truncated: boolean }>(
      'exec',
      { ...params, timeoutMs: execTimeout },
      requestTimeout,
    );
    return {
      exitCode: reply.exitCode,
      stdout: Buffer.from(reply.stdout, 'base64'),
      stderr: Buffer.from(reply.stderr, 'base64'),
      timedOut: reply.timedOut,
      truncated: reply.truncated,
    };
  }

  /** An interactive exec, on a stream connection of its own. */
  exec(params: ExecStreamParams): Promise<ProcessStream> {
    return openExecStream(this.socketPath, params);
  }

  /** Attaches to the container's main process, on a stream connection of its own. */
  attach(params: AttachStreamParams): Promise<ProcessStream> {
    return openAttachStream(this.socketPath, params);
  }

  /** Reopens the container's log file (after kubelet rotated it away). */
  async reopenLog(containerId: string, timeoutMs?: number): Promise<void> {
    await this.request('reopen_log', { containerId }, timeoutMs);
  }

  /**
   * Asks the monitor to stop everything it runs (SIGTERM, SIGKILL after `graceMs`), release the
   * pod's init, and exit. Resolves once it has; the monitor then closes the connection. The
   * timeout defaults to the grace period plus the request timeout.
   */
  async shutdown(graceMs: number, timeoutMs?: number): Promise<void> {
    const grace = Math.max(0, Math.floor(graceMs));
    await this.request('shutdown', { graceMs: grace }, timeoutMs ?? grace + this.requestTimeoutMs);
  }

  /**
   * Calls `listener` for every event the monitor pushes; the first call subscribes the
   * connection. Returns a function that removes the listener.
   */
  async onEvent(listener: (event: MonitorEvent) => void): Promise<() => void> {
    this.listeners.add(listener);
    try {
      this.subscribed ??= this.request('subscribe').then(() => undefined);
      await this.subscribed;
    } catch (err) {
      this.listeners.delete(listener);
      this.subscribed = undefined;
      throw err;
    }
    return () => this.listeners.delete(listener);
  }

  /** Called once when the connection ends, with the reason unless `close()` ended it. */
  onClose(listener: (err?: Error) => void): void {
    if (this.closedError) {
      queueMicrotask(() => listener(this.closedError));
      return;
    }
    this.closeListeners.add(listener);
  }

  close(): void {
    this.teardown(monitorUnavailable(this.socketPath, 'the client closed the connection'), true);
    this.socket.destroy();
  }

  private onData(chunk: string): void {
    this.buffer += chunk;
    let newline: number;
    while ((newline = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, newline).trim();
      this.buffer = this.buffer.slice(newline + 1);
      if (line !== '') this.onLine(line);
    }
    if (this.buffer.length > MAX_LINE_CHARS) {
      this.teardown(monitorUnavailable(this.socketPath, 'the monitor sent an oversized message'));
      this.socket.destroy();
    }
  }

  private onLine(line: string): void {
    let message: Record<string, unknown>;
    try {
      message = JSON.parse(line) as Record<string, unknown>;
    } catch {
      this.teardown(monitorUnavailable(this.socketPath, `the monitor sent malformed JSON: ${line.slice(0, 200)}`));
      this.socket.destroy();
      return;
    }
    if (typeof message.event === 'string') {
      for (const listener of this.listeners) {
        try {
          listener(message as unknown as MonitorEvent);
        } catch {
          // A listener's failure is its own; the connection goes on.
        }
      }
      return;
    }
    const response = message as unknown as ResponseLine;
    const pending = this.pending.get(response.id);
    if (!pending) return; // Timed out already, or an answer to a malformed line (id 0).
    this.pending.delete(response.id);
    clearTimeout(pending.timer);
    if (response.ok) {
      pending.resolve(response.result);
      return;
    }
    pending.reject(monitorError(pending.op, response.error));
  }

  private teardown(err: CrispError, byClient = false): void {
    if (this.closedError) return;
    this.closedError = err;
    for (const [id, pending] of this.pending) {
      clearTimeout(pending.timer);
      pending.reject(err);
      this.pending.delete(id);
    }
    for (const listener of this.closeListeners) listener(byClient ? undefined : err);
    this.closeListeners.clear();
    this.listeners.clear();
  }
}
