import pino from 'pino';
import type { LogLevel } from './config/config';

export type Logger = pino.Logger;

/**
 * The daemon's logger: JSON lines on stderr, which is what node operators ship to their log
 * pipelines. The level can be changed at run time through `setLevel`.
 */
export function createLogger(level: LogLevel, destination: pino.DestinationStream | number = 2): Logger {
  const stream = typeof destination === 'number' ? pino.destination({ fd: destination, sync: false }) : destination;
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
