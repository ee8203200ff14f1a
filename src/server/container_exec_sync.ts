import * as crypto from 'node:crypto';
import type { ExecSyncRequest, ExecSyncResponse } from '../generated/runtime/v1/api';
import { deadlineExceeded, failedPrecondition, invalidArgument } from '../util/errors';
import type { CallContext } from './instrument';
import type { CriService } from './service';

/**
 * What ExecSync returns of each stream. Probes print a few bytes; a runaway command must not make
 * the reply exceed kubelet's 16 MiB gRPC message limit, so both streams together stay below it.
 */
export const EXEC_OUTPUT_LIMIT = 8 * 1024 * 1024 - 4096;
const TRUNCATED_MARKER = Buffer.from(`\n[crisp: output truncated at ${EXEC_OUTPUT_LIMIT} bytes]\n`);

/**
 * Names for ExecSync processes, unique within a monitor across daemon restarts: a random prefix
 * per daemon and a counter (random bytes per call cost a getrandom each).
 */
const EXEC_ID_PREFIX = `sync-${crypto.randomBytes(4).toString('hex')}-`;
let execCounter = 0;

/**
 * Runs a command in a running container through the pod's monitor (no helper binary per call) and
 * returns its output and exit code. The timeout is enforced by the monitor, which kills the
 * command's process group; the call then fails with DeadlineExceeded, as kubelet's probes expect.
 */
export async function execSync(svc: CriService, req: ExecSyncRequest, ctx: CallContext): Promise<ExecSyncResponse> {
  if (!req.containerId) throw invalidArgument('container id is empty');
  if (req.cmd.length === 0) throw invalidArgument('exec command is empty');
  const c = svc.containers.resolve(req.containerId);
  await svc.exits.reconcile(c);
  if (c.state !== 'running') throw failedPrecondition(`container ${c.id} is not running (${c.state})`);
  const sandbox = svc.sandboxes.resolve(c.record.sandboxId);
  const timeoutMs = Number(req.timeout) * 1000;
  const runtime = await svc.pods.runtimeOf(sandbox);
  const reply = await runtime.execSync(
    {
      containerId: c.id,
      execId: `${EXEC_ID_PREFIX}${(++execCounter).toString(36)}`,
      // Environment, working directory and user default to the container's, whose spec the
      // monitor holds.
      process: { args: req.cmd },
      tty: false,
      stdin: false,
      timeoutMs,
    },
    // The monitor answers at the deadline at the latest; give it a moment beyond.
    timeoutMs > 0 ? timeoutMs + 5000 : 24 * 3600 * 1000,
  );
  if (reply.timedOut) throw deadlineExceeded(`command ${JSON.stringify(req.cmd)} timed out after ${req.timeout}s`);
  const cap = (b: Buffer): Buffer => (b.length > EXEC_OUTPUT_LIMIT ? Buffer.concat([b.subarray(0, EXEC_OUTPUT_LIMIT), TRUNCATED_MARKER]) : b);
  const { stdout, stderr } = reply;
  if (reply.truncated || stdout.length > EXEC_OUTPUT_LIMIT || stderr.length > EXEC_OUTPUT_LIMIT) {
    ctx.log.warn({ container: c.id.slice(0, 12) }, 'exec output truncated');
  }
  return { stdout: cap(stdout), stderr: cap(stderr), exitCode: reply.exitCode };
}
