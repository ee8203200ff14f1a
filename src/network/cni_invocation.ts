/**
 * One CNI plugin call as the CNI spec defines it: the binary found in the plugin directories, the
 * CNI_* variables in its environment (over the daemon's, stray CNI_* removed), the config on
 * stdin, the result on stdout, an error object or stderr when it fails, a timeout and
 * cancellation that kill its process group.
 */
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import type { Logger } from 'pino';
import { CrispError, errorMessage, type ErrorCode } from '../util/errors';
import type { PluginLauncher } from './plugin_launcher';

export const DEFAULT_CNI_BIN_DIRS: readonly string[] = ['/opt/cni/bin', '/usr/lib/cni'];
/** Per plugin invocation; a hung plugin is killed after this long. */
export const DEFAULT_PLUGIN_TIMEOUT_MS = 60_000;

/** Plugins find helpers (iptables, ip, ...) through PATH; a daemon started with an empty PATH still needs them. */
const FALLBACK_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
const MAX_STDOUT_BYTES = 4 << 20;
const MAX_STDERR_BYTES = 64 << 10;

export type CniCommand = 'ADD' | 'DEL' | 'CHECK' | 'VERSION' | 'STATUS';

/** A failed plugin invocation; `cniCode` is the CNI error code when the plugin reported one. */
export class CniPluginError extends CrispError {
  override readonly name = 'CniPluginError';
  constructor(
    code: ErrorCode,
    message: string,
    readonly plugin: string,
    readonly command: CniCommand,
    readonly cniCode?: number,
    readonly stderr = '',
  ) {
    super(code, message);
  }
}

export interface PluginInvocation {
  plugin: string;
  command: CniCommand;
  /** The CNI_* variables of this call. */
  cniEnv: Record<string, string>;
  stdin: string;
  binDirs: readonly string[];
  timeoutMs: number;
  signal?: AbortSignal;
  logger: Logger;
  launcher: PluginLauncher;
}

export function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** The first executable regular file named `plugin` in `binDirs`. */
export async function findPlugin(plugin: string, binDirs: readonly string[]): Promise<string | undefined> {
  for (const dir of binDirs) {
    const candidate = path.join(dir, plugin);
    try {
      const st = await fsp.stat(candidate);
      if (!st.isFile()) continue;
      await fsp.access(candidate, fsp.constants.X_OK);
      return candidate;
    } catch {
      // Not in this directory (or not executable): keep looking.
    }
  }
  return undefined;
}

function pluginEnvironment(cniEnv: Record<string, string>): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [key, value] of Object.entries(process.env)) {
    // Stray CNI_* variables in the daemon's environment must not leak into a call.
    if (value !== undefined && !key.startsWith('CNI_')) env[key] = value;
  }
  if (!env.PATH) env.PATH = FALLBACK_PATH;
  return Object.assign(env, cniEnv);
}

/** Keeps at most `limit` bytes: the head of stdout (a result) or the tail of stderr (the latest log lines). */
class OutputBuffer {
  private chunks: Buffer[] = [];
  private size = 0;
  truncated = false;
  constructor(
    private readonly limit: number,
    private readonly keep: 'head' | 'tail',
  ) {}

  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.size += chunk.length;
    if (this.size <= this.limit) return;
    this.truncated = true;
    const all = Buffer.concat(this.chunks);
    const kept = this.keep === 'head' ? all.subarray(0, this.limit) : all.subarray(all.length - this.limit);
    this.chunks = [kept];
    this.size = kept.length;
  }

  text(): string {
    return Buffer.concat(this.chunks).toString('utf8');
  }
}

function describeStderr(stderr: string): string {
  const trimmed = stderr.trim();
  return trimmed === '' ? '' : `; stderr: ${trimmed}`;
}

/** The error a plugin printed ({code, msg, details}), from stdout or, failing that, stderr. */
function parsePluginError(stdout: string, stderr: string): { code?: number; msg: string; details?: string } | undefined {
  for (const text of [stdout, stderr]) {
    const trimmed = text.trim();
    if (!trimmed.startsWith('{')) continue;
    try {
      const obj: unknown = JSON.parse(trimmed);
      if (isObject(obj) && (typeof obj.msg === 'string' || typeof obj.code === 'number')) {
        return {
          code: typeof obj.code === 'number' ? obj.code : undefined,
          msg: typeof obj.msg === 'string' ? obj.msg : '',
          details: typeof obj.details === 'string' && obj.details !== '' ? obj.details : undefined,
        };
      }
    } catch {
      // Not a JSON error object; reported verbatim below.
    }
  }
  return undefined;
}

/**
 * Runs one plugin binary: CNI variables in the environment, config on stdin, result on stdout.
 * The plugin runs in its own process group so a timeout also kills the IPAM plugin it delegated to.
 */
export async function invokePlugin(inv: PluginInvocation): Promise<string> {
  const { plugin, command } = inv;
  const binary = await findPlugin(plugin, inv.binDirs);
  if (binary === undefined) {
    throw new CniPluginError('FailedPrecondition', `plugin ${plugin} not found in ${inv.binDirs.join(', ')}`, plugin, command);
  }
  if (inv.signal?.aborted) {
    throw new CniPluginError('Canceled', `plugin ${plugin} (${command}) not started: operation canceled`, plugin, command);
  }
  const started = Date.now();
  return new Promise<string>((resolve, reject) => {
    const child = inv.launcher(binary, pluginEnvironment(inv.cniEnv));
    const stdout = new OutputBuffer(MAX_STDOUT_BYTES, 'head');
    const stderr = new OutputBuffer(MAX_STDERR_BYTES, 'tail');
    let settled = false;
    let stopReason: 'timeout' | 'canceled' | undefined;

    const killGroup = (): void => {
      if (child.pid === undefined) return;
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {
        try {
          process.kill(child.pid, 'SIGKILL');
        } catch {
          // Gone already.
        }
      }
    };
    const onAbort = (): void => {
      stopReason ??= 'canceled';
      killGroup();
    };
    const timer = setTimeout(() => {
      stopReason ??= 'timeout';
      killGroup();
    }, inv.timeoutMs);
    inv.signal?.addEventListener('abort', onAbort, { once: true });

    const finish = (err: Error | undefined, out?: string): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      inv.signal?.removeEventListener('abort', onAbort);
      if (err !== undefined) reject(err);
      else resolve(out ?? '');
    };

    child.stdout.on('data', (chunk: Buffer) => stdout.push(chunk));
    child.stderr.on('data', (chunk: Buffer) => stderr.push(chunk));
    // A plugin may exit without reading its config (e.g. a usage error); that is reported via its exit.
    child.stdin.on('error', () => undefined);
    const onClose = (code: number | null, sig: NodeJS.Signals | null): void => {
      const out = stdout.text();
      const errText = stderr.text();
      const elapsed = Date.now() - started;
      if (stopReason === 'timeout') {
        finish(
          new CniPluginError(
            'DeadlineExceeded',
            `plugin ${plugin} timed out after ${inv.timeoutMs} ms (${command}) and was killed${describeStderr(errText)}`,
            plugin,
            command,
            undefined,
            errText,
          ),
        );
        return;
      }
      if (stopReason === 'canceled') {
        finish(new CniPluginError('Canceled', `plugin ${plugin} (${command}) canceled and killed`, plugin, command, undefined, errText));
        return;
      }
      if (code === 0) {
        inv.logger.debug({ plugin, command, elapsedMs: elapsed, stderr: errText.trim() || undefined }, 'CNI plugin succeeded');
        if (stdout.truncated) {
          finish(new CniPluginError('Internal', `plugin ${plugin} (${command}) printed more than ${MAX_STDOUT_BYTES} bytes`, plugin, command));
          return;
        }
        finish(undefined, out);
        return;
      }
      const reported = parsePluginError(out, errText);
      let message: string;
      if (reported !== undefined) {
        message = `plugin ${plugin} failed (${command}): ${reported.msg}`;
        if (reported.details !== undefined) message += `: ${reported.details}`;
      } else {
        const how = code !== null ? `exit status ${code}` : `killed by signal ${sig}`;
        const said = out.trim();
        message = `plugin ${plugin} failed (${command}): ${how}${said === '' ? '' : `: ${said}`}`;
      }
      message += describeStderr(errText);
      inv.logger.debug({ plugin, command, elapsedMs: elapsed, code, signal: sig }, 'CNI plugin failed');
      finish(new CniPluginError('Internal', message, plugin, command, reported?.code, errText));
    };
    child.done.then(
      ({ code, signal: sig }) => onClose(code, sig),
      (err: Error) => finish(new CniPluginError('Internal', `plugin ${plugin} (${command}) could not be started: ${err.message}`, plugin, command)),
    );

    child.stdin.end(inv.stdin);
  });
}

/** A plugin's stdout parsed as the JSON object every result and VERSION answer is. */
export function parsePluginOutput(text: string, plugin: string, command: CniCommand): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new CniPluginError('Internal', `plugin ${plugin} returned an invalid result (${command}): ${errorMessage(err)}`, plugin, command);
  }
  if (!isObject(value)) {
    throw new CniPluginError('Internal', `plugin ${plugin} returned an invalid result (${command}): not a JSON object`, plugin, command);
  }
  return value;
}
