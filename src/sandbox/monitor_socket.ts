/**
 * The connection to a pod monitor's socket, shared by the control client and the stream sessions,
 * and the errors both report.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { CrispError, type ErrorCode } from '../util/errors';

const DEFAULT_CONNECT_TIMEOUT_MS = 5_000;
/** sun_path holds 108 bytes including the terminator. */
const MAX_SOCKET_PATH_BYTES = 107;

const MONITOR_ERROR_CODES: Record<string, ErrorCode> = {
  invalid_argument: 'InvalidArgument',
  not_found: 'NotFound',
  already_exists: 'AlreadyExists',
  failed_precondition: 'FailedPrecondition',
  unimplemented: 'Unimplemented',
  internal: 'Internal',
};

/**
 * Connects to a monitor's control socket. Rejects with Unavailable when no monitor serves it
 * (missing socket, connection refused) and DeadlineExceeded when the connect hangs.
 */
export function connectMonitorSocket(socketPath: string, timeoutMs = DEFAULT_CONNECT_TIMEOUT_MS): Promise<net.Socket> {
  return new Promise<net.Socket>((resolve, reject) => {
    let dirFd: number | undefined;
    let target = socketPath;
    if (Buffer.byteLength(socketPath) > MAX_SOCKET_PATH_BYTES) {
      // Too long for sun_path: reach the socket through an open descriptor of its directory.
      try {
        dirFd = fs.openSync(path.dirname(socketPath), fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
      } catch (err) {
        reject(monitorUnavailable(socketPath, `cannot open its directory: ${(err as Error).message}`));
        return;
      }
      target = `/proc/self/fd/${dirFd}/${path.basename(socketPath)}`;
    }
    const socket = net.connect(target);
    const done = (): void => {
      clearTimeout(timer);
      socket.removeAllListeners('connect');
      socket.removeAllListeners('error');
      if (dirFd !== undefined) fs.closeSync(dirFd);
      dirFd = undefined;
    };
    const timer = setTimeout(() => {
      done();
      socket.destroy();
      reject(new CrispError('DeadlineExceeded', `connecting to monitor socket ${socketPath} timed out after ${timeoutMs} ms`));
    }, timeoutMs);
    socket.once('connect', () => {
      done();
      resolve(socket);
    });
    socket.once('error', (err: NodeJS.ErrnoException) => {
      done();
      socket.destroy();
      const reason =
        err.code === 'ENOENT'
          ? 'the socket does not exist (monitor not running)'
          : err.code === 'ECONNREFUSED'
            ? 'connection refused (monitor not running)'
            : err.message;
      reject(monitorUnavailable(socketPath, reason, err));
    });
  });
}

/** The error a monitor answered `op` with, keeping its code. */
export function monitorError(op: string, error: { code?: string; message?: string } | undefined): CrispError {
  const code = MONITOR_ERROR_CODES[error?.code ?? ''] ?? 'Internal';
  return new CrispError(code, `monitor ${op}: ${error?.message ?? 'unknown error'}`);
}

/** The error for a monitor that cannot be reached (or went away): Unavailable. */
export function monitorUnavailable(socketPath: string, reason: string, cause?: unknown): CrispError {
  return new CrispError('Unavailable', `monitor at ${socketPath} is unavailable: ${reason}`, { cause });
}
