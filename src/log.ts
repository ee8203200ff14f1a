import * as tty from 'node:tty';
import pino from 'pino';
import type { LogLevel } from './config/config';

export type Logger = pino.Logger;

export interface LoggerOptions {
  /**
   * One human-readable, coloured line per record instead of JSON. Defaults to true when the
   * destination is a file descriptor attached to a terminal (an operator running crisp by hand).
   */
  pretty?: boolean;
}

/**
 * The daemon's logger: JSON lines on stderr, which is what node operators ship to their log
 * pipelines, or readable lines on a terminal. The level can be changed at run time by assigning
 * `logger.level`; child loggers follow their parent's level.
 */
export function createLogger(level: LogLevel, destination: pino.DestinationStream | number = 2, options: LoggerOptions = {}): Logger {
  let stream = typeof destination === 'number' ? pino.destination({ fd: destination, sync: false }) : destination;
  const pretty = options.pretty ?? (typeof destination === 'number' && tty.isatty(destination));
  if (pretty) stream = new PrettyStream(stream, { color: typeof destination === 'number' && !process.env.NO_COLOR });
  return pino(
    {
      level,
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    stream,
  );
}

/** A logger that drops everything, for unit tests. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}

const LEVEL_COLOR: Record<string, number> = { trace: 90, debug: 36, info: 32, warn: 33, error: 31, fatal: 35 };
/** Keys every record has; shown in the line's fixed part or not at all. */
const FIXED_KEYS = new Set(['level', 'time', 'msg', 'pid', 'hostname', 'err']);

function fieldValue(value: unknown): string {
  if (typeof value === 'string') return /^[^\s"=]+$/.test(value) ? value : JSON.stringify(value);
  return JSON.stringify(value, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v)) ?? String(value);
}

/**
 * Formats one JSON log record as `HH:MM:SS.mmm LEVEL message key=value ...`, with the error's
 * stack on the following lines for errors. Anything that is not a JSON record passes through.
 */
export function formatLogLine(line: string, color = false): string {
  let record: Record<string, unknown>;
  try {
    record = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return line;
  }
  if (typeof record !== 'object' || record === null) return line;
  const paint = (code: number, text: string): string => (color ? `\x1b[${code}m${text}\x1b[0m` : text);
  const level = String(record.level ?? '');
  const time = typeof record.time === 'string' ? record.time.slice(11, 23) : String(record.time ?? '');
  const fields = Object.entries(record)
    .filter(([key]) => !FIXED_KEYS.has(key))
    .map(([key, value]) => `${paint(90, `${key}=`)}${fieldValue(value)}`);
  let out = `${paint(90, time)} ${paint(LEVEL_COLOR[level] ?? 0, level.toUpperCase().padEnd(5))} ${String(record.msg ?? '')}`;
  if (fields.length > 0) out += ` ${fields.join(' ')}`;
  const err = record.err as { message?: unknown; stack?: unknown } | string | undefined;
  if (typeof err === 'string') out += ` ${paint(90, 'err=')}${fieldValue(err)}`;
  else if (err && typeof err === 'object') {
    out += ` ${paint(90, 'err=')}${fieldValue(err.message)}`;
    if (typeof err.stack === 'string') out += `\n${err.stack.replace(/^/gm, '    ')}`;
  }
  return `${out}\n`;
}

/** Reformats pino's JSON lines on their way to the real destination. */
class PrettyStream implements pino.DestinationStream {
  constructor(
    private readonly target: pino.DestinationStream,
    private readonly options: { color: boolean },
  ) {}

  write(chunk: string): void {
    this.target.write(formatLogLine(chunk.endsWith('\n') ? chunk.slice(0, -1) : chunk, this.options.color));
  }

  /** pino's `logger.flush()` reaches the destination through this. */
  flush(cb?: (err?: Error) => void): void {
    const target = this.target as { flush?: (cb?: (err?: Error) => void) => void };
    if (typeof target.flush === 'function') target.flush(cb);
    else cb?.();
  }

  flushSync(): void {
    (this.target as { flushSync?: () => void }).flushSync?.();
  }
}
