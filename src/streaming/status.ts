/**
 * The metav1.Status objects remote command sessions end with. From protocol v4 on, the error
 * stream carries one as JSON (field order and omitted empty fields as Go's encoding/json writes
 * them); older protocols carry only the message of a failure.
 */

export interface StatusCause {
  reason?: string;
  message?: string;
  field?: string;
}

export interface Status {
  status: 'Success' | 'Failure';
  message?: string;
  reason?: string;
  details?: { causes?: StatusCause[] };
  code?: number;
}

export const NON_ZERO_EXIT_CODE_REASON = 'NonZeroExitCode';
export const EXIT_CODE_CAUSE = 'ExitCode';

export function successStatus(): Status {
  return { status: 'Success' };
}

/** The status of a command that ran and exited with a non-zero code. */
export function exitCodeStatus(cmd: readonly string[], exitCode: number): Status {
  return {
    status: 'Failure',
    message: `command terminated with non-zero exit code: error executing command [${cmd.join(' ')}], exit code ${exitCode}`,
    reason: NON_ZERO_EXIT_CODE_REASON,
    details: { causes: [{ reason: EXIT_CODE_CAUSE, message: String(exitCode) }] },
  };
}

/** What apierrors.NewInternalError produces for `message`. */
export function internalErrorStatus(message: string): Status {
  return {
    status: 'Failure',
    message: `Internal error occurred: ${message}`,
    reason: 'InternalError',
    details: { causes: [{ message }] },
    code: 500,
  };
}

export function encodeStatus(status: Status): string {
  const out: Record<string, unknown> = { metadata: {}, status: status.status };
  if (status.message) out.message = status.message;
  if (status.reason) out.reason = status.reason;
  if (status.details) {
    out.details = {
      causes: status.details.causes?.map((c) => {
        const cause: Record<string, string> = {};
        if (c.reason) cause.reason = c.reason;
        if (c.message) cause.message = c.message;
        if (c.field) cause.field = c.field;
        return cause;
      }),
    };
  }
  if (status.code) out.code = status.code;
  return JSON.stringify(out);
}
