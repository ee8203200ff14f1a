import * as crypto from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import type { Logger } from '../log';
import { CrispError, type ErrorCode, errorMessage } from '../util/errors';

/** What every RPC implementation receives besides its request. */
export interface CallContext {
  /** Short id that ties together all log lines of one call. */
  readonly id: string;
  /** PascalCase RPC name, e.g. "RunPodSandbox". */
  readonly method: string;
  /** "v1", or "v1alpha2" when an older kubelet called through the legacy service name. */
  readonly apiVersion: ApiVersion;
  readonly log: Logger;
  /** Aborted when the client cancels or its deadline passes. */
  readonly signal: AbortSignal;
}

export type ApiVersion = 'v1' | 'v1alpha2';

/**
 * One RPC: unary ones resolve with their response; server-streaming ones call `send` per message
 * and resolve when done.
 */
export type RpcImpl = (request: any, ctx: CallContext, send: (message: unknown) => Promise<void>) => Promise<unknown>;
type UnaryImpl = RpcImpl;
type StreamImpl = RpcImpl;

/** Implementations by PascalCase RPC name. Names missing here answer UNIMPLEMENTED. */
export type RpcTable = Partial<Record<string, RpcImpl>>;

const STATUS_OF: Record<ErrorCode, grpc.status> = {
  InvalidArgument: grpc.status.INVALID_ARGUMENT,
  NotFound: grpc.status.NOT_FOUND,
  AlreadyExists: grpc.status.ALREADY_EXISTS,
  FailedPrecondition: grpc.status.FAILED_PRECONDITION,
  DeadlineExceeded: grpc.status.DEADLINE_EXCEEDED,
  Unimplemented: grpc.status.UNIMPLEMENTED,
  Unavailable: grpc.status.UNAVAILABLE,
  PermissionDenied: grpc.status.PERMISSION_DENIED,
  Unauthenticated: grpc.status.UNAUTHENTICATED,
  ResourceExhausted: grpc.status.RESOURCE_EXHAUSTED,
  Internal: grpc.status.INTERNAL,
  Aborted: grpc.status.ABORTED,
  Canceled: grpc.status.CANCELLED,
};

/**
 * Calls kubelet makes every second or so; logging them at info would drown everything else.
 */
const HIGH_FREQUENCY = new Set([
  'Version',
  'Status',
  'RuntimeConfig',
  'ListPodSandbox',
  'PodSandboxStatus',
  'ListContainers',
  'ContainerStatus',
  'ListContainerStats',
  'ContainerStats',
  'PodSandboxStats',
  'ListPodSandboxStats',
  'ListImages',
  'ImageStatus',
  'ImageFsInfo',
  'ExecSync',
  'ListMetricDescriptors',
  'ListPodSandboxMetrics',
]);

export function toServiceError(err: unknown): Partial<grpc.StatusObject> {
  if (err instanceof CrispError) return { code: STATUS_OF[err.code], details: err.message };
  return { code: grpc.status.INTERNAL, details: errorMessage(err) };
}

export interface InstrumentOptions {
  log: Logger;
  apiVersion: ApiVersion;
  /** False until recovery finished: calls are refused with UNAVAILABLE meanwhile. */
  isReady: () => boolean;
  /** Observes every finished call (metrics). */
  onFinished?: (method: string, code: grpc.status, seconds: number) => void;
}

const notStreaming = (): Promise<void> => Promise.reject(new Error('send() called from a unary RPC'));

function methodName(path: string): string {
  return path.slice(path.lastIndexOf('/') + 1);
}

let sequence = 0;
const idPrefix = crypto.randomBytes(3).toString('hex');
function nextCallId(): string {
  sequence = (sequence + 1) % 0x1000000;
  return `${idPrefix}${sequence.toString(16).padStart(6, '0')}`;
}

/**
 * Builds a grpc-js service implementation for `definition` in which every method goes through the
 * same gate: readiness, a call id, one log line with outcome and duration, error-to-status mapping,
 * and a guarantee that no exception escapes into grpc-js.
 */
export function instrument(
  definition: grpc.ServiceDefinition,
  table: RpcTable,
  options: InstrumentOptions,
): grpc.UntypedServiceImplementation {
  const impl: grpc.UntypedServiceImplementation = {};
  for (const [key, method] of Object.entries(definition)) {
    const name = methodName(method.path);
    const run = table[name];
    const level = HIGH_FREQUENCY.has(name) ? 'debug' : 'info';
    /** Opens a call: its cancellation, context and refusal if any. */
    const begin = (
      call: grpc.ServerUnaryCall<unknown, unknown> | grpc.ServerWritableStream<unknown, unknown>,
    ): { ctx: CallContext; cancellation: CallCancellation; started: bigint; refused?: Partial<grpc.StatusObject> } => {
      const cancellation = new CallCancellation();
      // grpc-js also reports a finished call's stream closing as a cancel; only a signal someone
      // holds needs to hear of it.
      call.on('cancelled', () => cancellation.cancel());
      const started = process.hrtime.bigint();
      const id = nextCallId();
      let log: Logger | undefined;
      // Most calls never look at their signal, and log nothing at the configured level: neither
      // is built until used.
      const ctx: CallContext = {
        id,
        method: name,
        apiVersion: options.apiVersion,
        get log(): Logger {
          return (log ??= options.log.child({ rpc: name, call: id }));
        },
        get signal(): AbortSignal {
          return cancellation.signal;
        },
      };
      let refused: Partial<grpc.StatusObject> | undefined;
      if (!options.isReady()) {
        refused = { code: grpc.status.UNAVAILABLE, details: 'crisp is starting: recovery has not finished yet' };
      } else if (!run) {
        refused = { code: grpc.status.UNIMPLEMENTED, details: `${name} is not implemented by crisp` };
      }
      if (refused) {
        options.onFinished?.(name, refused.code!, 0);
        ctx.log.debug({ code: grpc.status[refused.code!] }, refused.details!);
      }
      return { ctx, cancellation, started, refused };
    };
    const finish = (ctx: CallContext, started: bigint, err?: unknown): Partial<grpc.StatusObject> | undefined => {
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      const status = err === undefined ? undefined : toServiceError(err);
      const code = status?.code ?? grpc.status.OK;
      if (status === undefined) {
        if (options.log.isLevelEnabled(level)) ctx.log[level]({ ms: Math.round(seconds * 1e6) / 1e3 }, 'ok');
      } else {
        const internal = code === grpc.status.INTERNAL;
        ctx.log[internal ? 'error' : level === 'debug' ? 'debug' : 'warn'](
          { ms: Math.round(seconds * 1e6) / 1e3, code: grpc.status[code], err: internal ? err : undefined },
          status.details ?? 'failed',
        );
      }
      options.onFinished?.(name, code, seconds);
      return status;
    };

    if (!method.requestStream && !method.responseStream) {
      impl[key] = ((call: grpc.ServerUnaryCall<unknown, unknown>, callback: grpc.sendUnaryData<unknown>) => {
        const { ctx, started, refused } = begin(call);
        if (refused) {
          callback(refused, null);
          return;
        }
        if (options.log.isLevelEnabled('trace')) ctx.log.trace({ request: redactRequest(call.request) }, 'request');
        (run as UnaryImpl)(call.request, ctx, notStreaming).then(
          (response) => {
            finish(ctx, started);
            callback(null, response);
          },
          (err: unknown) => callback(finish(ctx, started, err)!, null),
        );
      }) as grpc.handleUnaryCall<unknown, unknown>;
    } else if (!method.requestStream && method.responseStream) {
      impl[key] = ((call: grpc.ServerWritableStream<unknown, unknown>) => {
        const { ctx, cancellation, started, refused } = begin(call);
        const signal = cancellation.signal;
        if (refused) {
          call.emit('error', Object.assign(new Error(refused.details), refused));
          return;
        }
        const send = (message: unknown): Promise<void> => {
          if (signal.aborted) return Promise.reject(signal.reason);
          if (call.write(message)) return Promise.resolve();
          // Respect HTTP/2 flow control: a slow reader must not make the daemon buffer without bound.
          return new Promise((resolve, reject) => {
            const onDrain = (): void => {
              signal.removeEventListener('abort', onAbort);
              resolve();
            };
            const onAbort = (): void => {
              call.off('drain', onDrain);
              reject(signal.reason);
            };
            call.once('drain', onDrain);
            signal.addEventListener('abort', onAbort, { once: true });
          });
        };
        (run as StreamImpl)(call.request, ctx, send).then(
          () => {
            finish(ctx, started);
            call.end();
          },
          (err: unknown) => {
            const status = finish(ctx, started, err)!;
            if (!signal.aborted) call.emit('error', Object.assign(new Error(status.details), status));
          },
        );
      }) as grpc.handleServerStreamingCall<unknown, unknown>;
    } else {
      throw new Error(`${method.path}: client-streaming RPCs are not part of CRI`);
    }
  }
  return impl;
}

const REDACTED = '<redacted>';
/** Fields whose every string is a secret (AuthConfig of PullImage and of image volumes). */
const SECRET_OBJECTS = new Set(['auth']);
/** Fields that are secrets wherever they appear. */
const SECRET_FIELDS = new Set(['password', 'identityToken', 'registryToken', 'auth']);

/**
 * A copy of a request fit for the trace log: registry credentials and the values of
 * environment variables (which routinely carry tokens and passwords) replaced by a marker.
 */
export function redactRequest(value: unknown, key = ''): unknown {
  if (typeof value === 'string') return SECRET_FIELDS.has(key) && value !== '' ? REDACTED : value;
  if (Buffer.isBuffer(value) || value instanceof Uint8Array) return value;
  if (Array.isArray(value)) {
    if (key === 'envs') return value.map((e: { key?: unknown; value?: unknown }) => ({ ...e, value: e?.value === undefined ? undefined : REDACTED }));
    return value.map((v) => redactRequest(v));
  }
  if (typeof value !== 'object' || value === null) return value;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) {
    if (SECRET_OBJECTS.has(k) && typeof v === 'object' && v !== null) {
      out[k] = Object.fromEntries(Object.entries(v).map(([f, x]) => [f, f === 'serverAddress' || x === '' || typeof x !== 'string' ? x : REDACTED]));
    } else {
      out[k] = redactRequest(v, k);
    }
  }
  return out;
}

/**
 * A call's cancellation. The AbortSignal (and the error it carries) is made only when someone
 * asks for it: grpc-js signals a cancel for every call whose stream closes, finished ones included.
 */
class CallCancellation {
  private controller?: AbortController;
  private cancelled = false;

  cancel(): void {
    if (this.cancelled) return;
    this.cancelled = true;
    this.controller?.abort(cancelledByClient());
  }

  get signal(): AbortSignal {
    if (!this.controller) {
      this.controller = new AbortController();
      if (this.cancelled) this.controller.abort(cancelledByClient());
    }
    return this.controller.signal;
  }
}

function cancelledByClient(): CrispError {
  return new CrispError('Canceled', 'the client cancelled the call');
}

/**
 * The same service under another package name. CRI v1alpha2 and v1 share messages and field numbers
 * for everything v1alpha2 has, so one set of handlers serves both.
 */
export function aliasService(definition: grpc.ServiceDefinition, fromPackage: string, toPackage: string): grpc.ServiceDefinition {
  const out: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  const prefix = `/${fromPackage}.`;
  for (const [key, method] of Object.entries(definition)) {
    if (!method.path.startsWith(prefix)) throw new Error(`${method.path} is not in package ${fromPackage}`);
    out[key] = { ...method, path: `/${toPackage}.${method.path.slice(prefix.length)}` };
  }
  return out;
}
