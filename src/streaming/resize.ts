import type { Readable } from 'node:stream';
import type { TerminalSize } from './types';

/**
 * Terminal sizes as an async iterable. Sizes the consumer has not taken yet collapse into the
 * latest one: only the current size of the client's terminal matters.
 */
export class ResizeQueue implements AsyncIterable<TerminalSize> {
  private pending: TerminalSize | undefined;
  private ended = false;
  private waiter: ((result: IteratorResult<TerminalSize>) => void) | undefined;

  push(size: TerminalSize): void {
    if (this.ended) return;
    if (this.waiter) {
      const wake = this.waiter;
      this.waiter = undefined;
      wake({ value: size, done: false });
    } else {
      this.pending = size;
    }
  }

  end(): void {
    if (this.ended) return;
    this.ended = true;
    if (this.waiter && this.pending === undefined) {
      const wake = this.waiter;
      this.waiter = undefined;
      wake({ value: undefined, done: true });
    }
  }

  [Symbol.asyncIterator](): AsyncIterator<TerminalSize> {
    return {
      next: () => {
        if (this.pending !== undefined) {
          const value = this.pending;
          this.pending = undefined;
          return Promise.resolve({ value, done: false });
        }
        if (this.ended) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve) => {
          this.waiter = resolve;
        });
      },
      return: () => {
        this.end();
        return Promise.resolve({ value: undefined, done: true });
      },
    };
  }
}

const MAX_PENDING_JSON = 64 * 1024;

/**
 * Reads a stream of concatenated JSON objects `{"Width":w,"Height":h}` (what kubectl's
 * json.Encoder writes) into `queue`. Like kubelet, reading stops at the first malformed object.
 */
export function decodeResizeStream(source: Readable, queue: ResizeQueue): void {
  let text = '';
  let depth = 0;
  let inString = false;
  let escaped = false;
  let start = -1;
  let scanned = 0;
  const stop = (): void => {
    source.off('data', onData);
    source.resume();
    queue.end();
  };
  const onData = (chunk: Buffer): void => {
    text += chunk.toString('utf8');
    for (; scanned < text.length; scanned++) {
      const c = text[scanned];
      if (inString) {
        if (escaped) escaped = false;
        else if (c === '\\') escaped = true;
        else if (c === '"') inString = false;
        continue;
      }
      if (c === '"') inString = true;
      else if (c === '{') {
        if (depth === 0) start = scanned;
        depth++;
      } else if (c === '}') {
        depth--;
        if (depth < 0) return stop();
        if (depth === 0) {
          const size = parseSize(text.slice(start, scanned + 1));
          if (!size) return stop();
          queue.push(size);
          text = text.slice(scanned + 1);
          scanned = -1;
        }
      } else if (depth === 0 && !/\s/.test(c!)) {
        return stop();
      }
    }
    if (text.length > MAX_PENDING_JSON) stop();
  };
  source.on('data', onData);
  source.once('end', () => queue.end());
  source.once('close', () => queue.end());
  source.once('error', () => queue.end());
}

function parseSize(json: string): TerminalSize | undefined {
  let value: unknown;
  try {
    value = JSON.parse(json);
  } catch {
    return undefined;
  }
  if (typeof value !== 'object' || value === null) return undefined;
  const { Width: width = 0, Height: height = 0 } = value as { Width?: unknown; Height?: unknown };
  const valid = (n: unknown): n is number => typeof n === 'number' && Number.isInteger(n) && n >= 0 && n <= 0xffff;
  if (!valid(width) || !valid(height)) return undefined;
  return { width, height };
}
