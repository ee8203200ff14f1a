/**
 * Errors that carry the gRPC status they should be reported with. Everything below the RPC layer
 * throws these; anything else that escapes a handler is reported as Internal.
 */
export type ErrorCode =
  | 'InvalidArgument'
  | 'NotFound'
  | 'AlreadyExists'
  | 'FailedPrecondition'
  | 'DeadlineExceeded'
  | 'Unimplemented'
  | 'Unavailable'
  | 'PermissionDenied'
  | 'Unauthenticated'
  | 'ResourceExhausted'
  | 'Internal'
  | 'Aborted'
  | 'Canceled';

export class CrispError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'CrispError';
  }
}

export const invalidArgument = (message: string): CrispError => new CrispError('InvalidArgument', message);
export const notFound = (message: string): CrispError => new CrispError('NotFound', message);
export const alreadyExists = (message: string): CrispError => new CrispError('AlreadyExists', message);
export const failedPrecondition = (message: string): CrispError => new CrispError('FailedPrecondition', message);
export const deadlineExceeded = (message: string): CrispError => new CrispError('DeadlineExceeded', message);
export const unimplemented = (message: string): CrispError => new CrispError('Unimplemented', message);
export const unavailable = (message: string): CrispError => new CrispError('Unavailable', message);
export const unauthenticated = (message: string): CrispError => new CrispError('Unauthenticated', message);
export const internal = (message: string, cause?: unknown): CrispError =>
  new CrispError('Internal', message, { cause });

export function isCrispError(err: unknown, code?: ErrorCode): err is CrispError {
  return err instanceof CrispError && (code === undefined || err.code === code);
}

/** The message of any thrown value, for logs and wrapped errors. */
export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
