/**
 * OCI distribution (registry API v2) client for pulling: resolving references, fetching
 * manifests, and streaming blobs to disk with verification. It assembles the layers, each in its
 * own file, lowest first: HTTP transport (`registry_transport`), authentication
 * (`registry_auth`), requests to a repository's endpoints with failover (`registry_requester`),
 * then manifests and platform selection (`registry_manifests`) and blobs (`registry_blobs`).
 */
import type { Logger } from 'pino';
import { MAX_MANIFEST_BYTES, type Descriptor } from './media_types';
import { type Platform, hostPlatform } from './platform';
import type { ImageReference } from './reference';
import { RegistryAuthenticator, TokenCache } from './registry_auth';
import { type BlobFetchOptions, type BlobFetchResult, BlobFetcher } from './registry_blobs';
import type { RegistryHosts } from './registry_hosts';
import { type FetchedManifest, ManifestFetcher, type ResolvedImage } from './registry_manifests';
import { RepositoryRequester, type RequestOptions, repoContext } from './registry_requester';
import { type ByteCounter, RegistryTransport } from './registry_transport';

export type { BlobFetchOptions, BlobFetchResult } from './registry_blobs';
export type { FetchedManifest, ResolvedImage } from './registry_manifests';
export type { RequestOptions } from './registry_requester';

export interface RegistryClientOptions {
  hosts: RegistryHosts;
  userAgent?: string;
  /** Abort a transfer when no bytes arrive for this long. Default 60 s. */
  stallTimeoutMs?: number;
  /** Attempts per request against the last endpoint (the first try included). Default 4. */
  maxAttempts?: number;
  /** First retry delay; doubles per attempt, with jitter. Default 500 ms. */
  retryBaseDelayMs?: number;
  /** Longest wait between attempts, including a server's Retry-After. Default 10 s. */
  retryMaxDelayMs?: number;
  /** Blob downloads in flight at once across all pulls. Default 3 (containerd's default). */
  maxConcurrentDownloads?: number;
  /** Platform to select from image indexes. Default: this host. */
  platform?: Platform;
  maxManifestBytes?: number;
  logger?: Logger;
  /** Called with every chunk of bytes received from a registry (for metrics). */
  onBytes?: ByteCounter;
}

export class RegistryClient {
  private readonly platform: Platform;
  private readonly transport: RegistryTransport;
  private readonly manifests: ManifestFetcher;
  private readonly blobs: BlobFetcher;

  constructor(opts: RegistryClientOptions) {
    const userAgent = opts.userAgent ?? 'crisp';
    this.platform = opts.platform ?? hostPlatform();
    this.transport = new RegistryTransport(opts.stallTimeoutMs ?? 60_000, opts.onBytes);
    const requests = new RepositoryRequester({
      transport: this.transport,
      hosts: opts.hosts,
      authn: new RegistryAuthenticator({ tokenCache: new TokenCache(), clientId: userAgent.split('/')[0] }),
      userAgent,
      maxAttempts: Math.max(1, opts.maxAttempts ?? 4),
      retryBaseDelayMs: opts.retryBaseDelayMs ?? 500,
      retryMaxDelayMs: opts.retryMaxDelayMs ?? 10_000,
      ...(opts.logger ? { logger: opts.logger } : {}),
    });
    this.manifests = new ManifestFetcher(requests, opts.maxManifestBytes ?? MAX_MANIFEST_BYTES);
    this.blobs = new BlobFetcher(requests, opts.maxConcurrentDownloads ?? 3);
  }

  /** Closes pooled connections. In-flight requests fail. */
  close(): void {
    this.transport.close();
  }

  /**
   * Resolves a reference to the descriptor of what it names (an index or a manifest), preferring
   * HEAD and falling back to GET when the registry does not report the digest.
   */
  async resolve(ref: ImageReference, opts: RequestOptions = {}): Promise<Descriptor> {
    return this.manifests.resolve(repoContext(ref, opts));
  }

  /**
   * Fetches and verifies a manifest or index. `target` is a descriptor (as found in an index), a
   * digest, or a tag; it defaults to what `ref` names.
   */
  async fetchManifest(ref: ImageReference, target?: Descriptor | string, opts: RequestOptions = {}): Promise<FetchedManifest> {
    return this.manifests.fetchManifest(repoContext(ref, opts), target);
  }

  /**
   * Resolves `ref` to the image manifest for the configured platform (or `platform`), walking
   * through indexes. Returns every document on the way so the caller can store them all.
   */
  async fetchImageManifest(ref: ImageReference, opts: RequestOptions & { platform?: Platform } = {}): Promise<ResolvedImage> {
    const { platform, ...request } = opts;
    return this.manifests.fetchImageManifest(repoContext(ref, request), platform ?? this.platform);
  }

  /** See {@link BlobFetcher.fetchBlob}. */
  fetchBlob(ref: ImageReference, desc: Descriptor, destination: string, opts: BlobFetchOptions = {}): Promise<BlobFetchResult> {
    return this.blobs.fetchBlob(ref, desc, destination, opts);
  }
}
