/**
 * Blob downloads: verified while streaming, resumed with Range requests after connection drops,
 * bounded by a concurrency limit, and shared by concurrent callers of the same digest.
 */
import { createHash, type Hash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { CrispError, errorMessage, failedPrecondition, internal, unavailable } from '../util/errors';
import type { Descriptor } from './media_types';
import { type ImageReference, parseDigest } from './reference';
import {
  EndpointFailure,
  PRIORITY_CONNECTION,
  PRIORITY_CONTENT,
  type RepoContext,
  type RepositoryRequester,
  type RequestOptions,
  networkFailure,
  repoContext,
  verificationFailure,
} from './registry_requester';
import { canceled, discard, headerString } from './registry_transport';

export interface BlobFetchOptions extends RequestOptions {
  /** Bytes received so far for this blob, and its size. */
  onProgress?: (received: number, total: number) => void;
  /**
   * Moves the verified file into place and returns where it ended up (e.g. a content store's
   * commit). It runs once per transfer, inside it, so every caller sharing the transfer sees the
   * blob already committed; with a shared transfer the first caller's function is used.
   */
  finalize?: (verifiedPath: string) => Promise<string>;
}

export interface BlobFetchResult {
  digest: string;
  size: number;
  /**
   * Where the verified, synced blob is: what `finalize` returned, or else the destination. When a
   * fetch of the same digest was already in flight this is that fetch's result, not necessarily
   * the caller's destination.
   */
  path: string;
}

/** Counting semaphore for bounding parallel downloads. */
export class Semaphore {
  private available: number;
  private readonly waiters: Array<() => void> = [];

  constructor(permits: number) {
    this.available = Math.max(1, Math.floor(permits));
  }

  async acquire(signal?: AbortSignal): Promise<() => void> {
    signal?.throwIfAborted();
    if (this.available > 0) {
      this.available--;
      return this.releaser();
    }
    return new Promise((resolve, reject) => {
      const grant = () => {
        signal?.removeEventListener('abort', onAbort);
        resolve(this.releaser());
      };
      const onAbort = () => {
        const i = this.waiters.indexOf(grant);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(signal?.reason);
      };
      this.waiters.push(grant);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  private releaser(): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.waiters.shift();
      if (next) next();
      else this.available++;
    };
  }
}

interface Transfer {
  promise: Promise<BlobFetchResult>;
  controller: AbortController;
  /** Callers that can cancel; the transfer is aborted when all of them have. */
  cancellable: number;
  /** Set when some caller cannot cancel, so the transfer must run to completion. */
  pinned: boolean;
  listeners: Set<(received: number, total: number) => void>;
}

export class BlobFetcher {
  private readonly downloads: Semaphore;
  private readonly transfers = new Map<string, Transfer>();

  constructor(
    private readonly requests: RepositoryRequester,
    maxConcurrentDownloads: number,
  ) {
    this.downloads = new Semaphore(maxConcurrentDownloads);
  }

  /**
   * Downloads a blob of `ref`'s repository to `destination`, verifying size and digest as it
   * streams. The file is synced before the promise resolves and removed if the download fails;
   * the caller moves it into place. Concurrent fetches of the same digest share one transfer (and
   * without a signal receive the very same promise).
   */
  fetchBlob(ref: ImageReference, desc: Descriptor, destination: string, opts: BlobFetchOptions = {}): Promise<BlobFetchResult> {
    let baseContext: RepoContext;
    try {
      parseDigest(desc.digest, 'blob digest');
      baseContext = repoContext(ref, { ...(opts.auth ? { auth: opts.auth } : {}) });
    } catch (err) {
      return Promise.reject(err);
    }
    if (!Number.isSafeInteger(desc.size) || desc.size < 0) {
      return Promise.reject(failedPrecondition(`blob ${desc.digest} has an invalid size ${desc.size}`));
    }
    const what = `pulling ${desc.digest}`;
    if (opts.signal?.aborted) return Promise.reject(canceled(what, opts.signal));

    let t = this.transfers.get(desc.digest);
    if (!t) {
      const controller = new AbortController();
      const transfer: Transfer = { controller, cancellable: 0, pinned: false, listeners: new Set(), promise: undefined as never };
      transfer.promise = this.download({ ...baseContext, signal: controller.signal }, desc, destination, transfer, opts.finalize).finally(() => {
        if (this.transfers.get(desc.digest) === transfer) this.transfers.delete(desc.digest);
      });
      // Failures are delivered to callers; a transfer everyone abandoned must not be unhandled.
      transfer.promise.catch(() => {});
      this.transfers.set(desc.digest, transfer);
      t = transfer;
    }
    const transfer = t;
    if (opts.onProgress) transfer.listeners.add(opts.onProgress);
    const signal = opts.signal;
    if (!signal) {
      transfer.pinned = true;
      return transfer.promise;
    }
    transfer.cancellable++;
    return new Promise<BlobFetchResult>((resolve, reject) => {
      let done = false;
      const finish = () => {
        done = true;
        signal.removeEventListener('abort', onAbort);
        if (opts.onProgress) transfer.listeners.delete(opts.onProgress);
      };
      const onAbort = () => {
        if (done) return;
        finish();
        transfer.cancellable--;
        if (transfer.cancellable === 0 && !transfer.pinned) transfer.controller.abort(canceled(what));
        reject(canceled(what, signal));
      };
      signal.addEventListener('abort', onAbort, { once: true });
      transfer.promise.then(
        (v) => {
          if (done) return;
          finish();
          resolve(v);
        },
        (err) => {
          if (done) return;
          finish();
          reject(err);
        },
      );
    });
  }

  /** The body of a shared blob transfer. */
  private async download(
    ctx: RepoContext,
    desc: Descriptor,
    destination: string,
    transfer: Transfer,
    finalize: BlobFetchOptions['finalize'],
  ): Promise<BlobFetchResult> {
    const what = `pulling ${desc.digest}`;
    const release = await this.downloads.acquire(ctx.signal).catch((err) => {
      throw err instanceof CrispError ? err : canceled(what, ctx.signal);
    });
    const { transport } = this.requests;
    const { algorithm } = parseDigest(desc.digest);
    let fh: fsp.FileHandle | undefined;
    let hash: Hash = createHash(algorithm);
    let written = 0;
    const reset = async () => {
      hash = createHash(algorithm);
      written = 0;
      await fh?.truncate(0);
    };
    try {
      fh = await fsp.open(destination, 'w', 0o644);
      const file = fh;
      await this.requests.tryEndpoints(ctx, ['pull'], what, async (ep) => {
        const headers: Record<string, string> = { Accept: '*/*' };
        if (written > 0) headers.Range = `bytes=${written}-`;
        const res = await this.requests.send(ctx, ep, 'GET', `blobs/${desc.digest}`, headers, what);
        if (res.statusCode === 206) {
          const range = headerString(res.headers['content-range']) ?? '';
          if (written === 0 || !range.startsWith(`bytes ${written}-`)) {
            discard(res);
            await reset();
            throw new EndpointFailure(unavailable(`${what} from ${ep.host}: unexpected Content-Range "${range}"`), true, PRIORITY_CONNECTION);
          }
        } else if (res.statusCode === 200) {
          if (written > 0) await reset(); // the server ignored our Range; start over
          const length = res.headers['content-length'];
          if (length !== undefined && Number(length) !== desc.size) {
            discard(res);
            throw new EndpointFailure(
              failedPrecondition(`${what} from ${ep.host}: size ${length} does not match the expected ${desc.size}`),
              false,
              PRIORITY_CONTENT,
            );
          }
        } else {
          throw await this.requests.statusFailure(res, ep, ctx, `blob ${desc.digest}`, 'blob');
        }

        try {
          await transport.consume(res, ep.host, what, ctx.signal, async (chunk) => {
            if (written + chunk.length > desc.size) {
              throw new EndpointFailure(
                failedPrecondition(`${what} from ${ep.host}: more data than the expected ${desc.size} bytes`),
                false,
                PRIORITY_CONTENT,
              );
            }
            await file.write(chunk, 0, chunk.length, written);
            hash.update(chunk);
            written += chunk.length;
            transport.countBytes(chunk.length, ep.host, 'blob');
            for (const l of transfer.listeners) l(written, desc.size);
            return true;
          });
        } catch (err) {
          if (err instanceof EndpointFailure) {
            await reset();
            throw err;
          }
          // Keep what was received: the retry resumes with a Range request.
          throw networkFailure(err, ep, what);
        }
        if (written < desc.size) {
          throw new EndpointFailure(
            unavailable(`${what} from ${ep.host}: connection ended after ${written} of ${desc.size} bytes`),
            true,
            PRIORITY_CONNECTION,
          );
        }
        const got = `${algorithm}:${hash.digest('hex')}`;
        if (got !== desc.digest) {
          await reset();
          throw new EndpointFailure(verificationFailure(`blob ${desc.digest}`, ep, got), false, PRIORITY_CONTENT);
        }
      });
      await file.sync();
      await file.close();
      fh = undefined;
      const finalPath = finalize ? await finalize(destination) : destination;
      return { digest: desc.digest, size: desc.size, path: finalPath };
    } catch (err) {
      await fh?.close().catch(() => {});
      fh = undefined;
      await fsp.rm(destination, { force: true }).catch(() => {});
      if (err instanceof CrispError) throw err;
      if ((err as NodeJS.ErrnoException).code === 'ENOSPC') {
        throw new CrispError('ResourceExhausted', `${what}: no space left writing ${destination}`, { cause: err });
      }
      throw internal(`${what}: ${errorMessage(err)}`, err);
    } finally {
      release();
    }
  }
}
