import type { Duplex, Readable, Writable } from 'node:stream';
import type { AttachRequest as CriAttachRequest, ExecRequest as CriExecRequest } from '../generated/runtime/v1/api';

/** What GetExecUrl was asked for (the CRI ExecRequest; the audit id is kubelet's business). */
export type ExecRequest = Omit<CriExecRequest, 'auditRequestId'>;

/** What GetAttachUrl was asked for (the CRI AttachRequest). */
export type AttachRequest = Omit<CriAttachRequest, 'auditRequestId'>;

/** What GetPortForwardUrl was asked for (the CRI PortForwardRequest). */
export interface PortForwardRequest {
  podSandboxId: string;
  /** Ports the client may forward; empty lets a SPDY client name any port per stream. */
  ports: number[];
}

export interface TerminalSize {
  width: number;
  height: number;
}

/**
 * The client's end of an exec or attach session. Only the streams the request asked for are
 * present. The backend may `end()` stdout/stderr itself; the server ends them once the call
 * settles. `resize` (tty only) yields the terminal size whenever the client changes it; sizes the
 * backend has not consumed yet are coalesced to the latest one.
 */
export interface StreamingIO {
  stdin?: Readable;
  stdout?: Writable;
  stderr?: Writable;
  tty: boolean;
  resize?: AsyncIterable<TerminalSize>;
}

/**
 * Every backend call carries an AbortSignal that fires when the client goes away or the server
 * shuts down; the backend must then stop the process (exec) or detach (attach) and release
 * every file descriptor it holds for the session.
 */
export interface ExecCall extends ExecRequest {
  signal: AbortSignal;
}

export interface AttachCall extends AttachRequest {
  signal: AbortSignal;
}

/** Runs the sessions the streaming server accepted. */
export interface StreamingBackend {
  /** Runs `cmd` in the container wired to `io`; resolves with its exit code once it has exited. */
  exec(call: ExecCall, io: StreamingIO): Promise<{ exitCode: number }>;
  /** Connects `io` to the container's main process until the client or the container is done. */
  attach(call: AttachCall, io: StreamingIO): Promise<void>;
  /**
   * Connects `conn` to `port` on the pod's loopback inside its network namespace. Resolves once
   * both directions are done; rejects if the connection cannot be made.
   */
  portForward(podSandboxId: string, port: number, conn: Duplex, signal: AbortSignal): Promise<void>;
}
