/**
 * Manifests from a registry: resolving a reference to a descriptor (HEAD, falling back to GET),
 * fetching and verifying manifest and index documents, and walking an index down to the image
 * manifest of one platform.
 */
import { createHash } from 'node:crypto';
import { failedPrecondition, notFound } from '../util/errors';
import {
  type Descriptor,
  type ImageIndex,
  type ImageManifest,
  MANIFEST_ACCEPT,
  bareMediaType,
  isIndexMediaType,
  isManifestMediaType,
  isSchema1MediaType,
  parseManifest,
} from './media_types';
import { type Platform, formatPlatform, selectPlatformEntry } from './platform';
import { isDigest, parseDigest } from './reference';
import type { HostCapability, RegistryEndpoint } from './registry_hosts';
import {
  EndpointFailure,
  PRIORITY_CONTENT,
  type RepoContext,
  type RepositoryRequester,
  networkFailure,
  verificationFailure,
} from './registry_requester';
import { discard, headerString } from './registry_transport';

export type FetchedManifest = { descriptor: Descriptor; bytes: Buffer } & (
  | { kind: 'index'; index: ImageIndex }
  | { kind: 'manifest'; manifest: ImageManifest }
);

export interface ResolvedImage {
  /** The descriptor the reference resolves to (an index or a manifest). */
  target: Descriptor;
  /** Every manifest document walked from the target down to the image manifest, in that order. */
  documents: FetchedManifest[];
  /** The platform-specific image manifest (the last of `documents`). */
  manifest: FetchedManifest & { kind: 'manifest' };
}

/** `manifest sha256:…` or `manifest for tag "v1"`, for messages. */
function describeManifest(object: string): string {
  return isDigest(object) ? `manifest ${object}` : `manifest for tag "${object}"`;
}

export class ManifestFetcher {
  constructor(
    private readonly requests: RepositoryRequester,
    private readonly maxManifestBytes: number,
  ) {}

  /**
   * Resolves a reference to the descriptor of what it names (an index or a manifest), preferring
   * HEAD and falling back to GET when the registry does not report the digest.
   */
  async resolve(ctx: RepoContext): Promise<Descriptor> {
    const { ref } = ctx;
    const caps: HostCapability[] = ref.digest ? ['pull'] : ['pull', 'resolve'];
    const object = ref.object();
    return this.requests.tryEndpoints(ctx, caps, `resolving image "${ref.toString()}"`, async (ep) => {
      const res = await this.requests.send(ctx, ep, 'HEAD', `manifests/${object}`, { Accept: MANIFEST_ACCEPT }, describeManifest(object));
      if (res.statusCode === 405) {
        // Some registries do not implement HEAD on manifests.
        discard(res);
        return (await this.getManifest(ctx, ep, object, undefined)).descriptor;
      }
      if (res.statusCode !== 200) throw await this.requests.statusFailure(res, ep, ctx, describeManifest(object), 'manifest');
      discard(res);
      const mediaType = bareMediaType(res.headers['content-type']);
      if (isSchema1MediaType(mediaType)) {
        // Let the manifest parser produce the canonical error.
        return (await this.getManifest(ctx, ep, object, undefined)).descriptor;
      }
      const headerDigest = headerString(res.headers['docker-content-digest']);
      const length = res.headers['content-length'];
      const size = length !== undefined && /^\d+$/.test(length) ? Number(length) : undefined;
      if (ref.digest && headerDigest && headerDigest !== ref.digest && headerDigest.split(':')[0] === ref.digest.split(':')[0]) {
        throw new EndpointFailure(verificationFailure(`manifest ${ref.digest}`, ep, headerDigest), false, PRIORITY_CONTENT);
      }
      const digest = ref.digest ?? (headerDigest && isDigest(headerDigest) ? headerDigest : undefined);
      if (!digest || size === undefined || !(isIndexMediaType(mediaType) || isManifestMediaType(mediaType))) {
        return (await this.getManifest(ctx, ep, object, undefined)).descriptor;
      }
      if (size > this.maxManifestBytes) throw this.manifestTooLarge(ep, object, size);
      return { mediaType, digest, size };
    });
  }

  /**
   * Fetches and verifies a manifest or index. `target` is a descriptor (as found in an index), a
   * digest, or a tag; it defaults to what the context's reference names. Documents fetched by
   * digest are checked against it; documents fetched by tag are checked against the registry's
   * Docker-Content-Digest header when it uses the same algorithm.
   */
  async fetchManifest(ctx: RepoContext, target?: Descriptor | string): Promise<FetchedManifest> {
    const { ref } = ctx;
    const desc = typeof target === 'object' ? target : undefined;
    const object = desc?.digest ?? (typeof target === 'string' ? target : ref.object());
    const byDigest = isDigest(object);
    const caps: HostCapability[] = byDigest ? ['pull'] : ['pull', 'resolve'];
    return this.requests.tryEndpoints(ctx, caps, `fetching manifest ${object} of "${ref.toString()}"`, (ep) =>
      this.getManifest(ctx, ep, object, desc),
    );
  }

  /**
   * Resolves the context's reference to the image manifest for `platform`, walking through
   * indexes. Returns every document on the way so the caller can store them all.
   */
  async fetchImageManifest(ctx: RepoContext, platform: Platform): Promise<ResolvedImage> {
    const { ref } = ctx;
    const documents: FetchedManifest[] = [];
    let current = await this.fetchManifest(ctx, undefined);
    documents.push(current);
    while (current.kind === 'index') {
      if (documents.length > 4) throw failedPrecondition(`image "${ref.toString()}": indexes nested too deeply`);
      const entry = selectPlatformEntry(current.index.manifests, platform);
      if (!entry) {
        const available = current.index.manifests
          .filter((m) => m.platform)
          .map((m) => formatPlatform(m.platform as Platform))
          .join(', ');
        throw notFound(
          `image "${ref.toString()}" has no manifest for platform ${formatPlatform(platform)}` +
            (available ? ` (available: ${available})` : ''),
        );
      }
      current = await this.fetchManifest(ctx, entry);
      documents.push(current);
    }
    return { target: documents[0].descriptor, documents, manifest: current };
  }

  private manifestTooLarge(ep: RegistryEndpoint, object: string, size: number): EndpointFailure {
    return new EndpointFailure(
      failedPrecondition(`manifest ${object} from ${ep.host} is ${size} bytes, more than the ${this.maxManifestBytes} allowed`),
      false,
      PRIORITY_CONTENT,
    );
  }

  /** GET a manifest from one endpoint, verify it and parse it. */
  private async getManifest(ctx: RepoContext, ep: RegistryEndpoint, object: string, desc: Descriptor | undefined): Promise<FetchedManifest> {
    const what = describeManifest(object);
    const accept = desc?.mediaType && (isIndexMediaType(desc.mediaType) || isManifestMediaType(desc.mediaType)) ? `${desc.mediaType}, ${MANIFEST_ACCEPT}` : MANIFEST_ACCEPT;
    const res = await this.requests.send(ctx, ep, 'GET', `manifests/${object}`, { Accept: accept }, what);
    if (res.statusCode !== 200) throw await this.requests.statusFailure(res, ep, ctx, what, 'manifest');
    const length = res.headers['content-length'];
    if (length !== undefined && Number(length) > this.maxManifestBytes) {
      discard(res);
      throw this.manifestTooLarge(ep, object, Number(length));
    }
    let bytes: Buffer;
    try {
      bytes = await this.requests.transport.readBody(res, this.maxManifestBytes, ep.host, `pulling ${what}`, 'manifest', false, ctx.signal);
    } catch (err) {
      throw networkFailure(err, ep, `pulling ${what}`);
    }

    let digest: string;
    if (isDigest(object)) {
      const { algorithm } = parseDigest(object);
      const got = `${algorithm}:${createHash(algorithm).update(bytes).digest('hex')}`;
      if (got !== object) throw new EndpointFailure(verificationFailure(what, ep, got), false, PRIORITY_CONTENT);
      digest = object;
    } else {
      digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
      const header = headerString(res.headers['docker-content-digest']);
      if (header && header.startsWith('sha256:') && header !== digest) {
        throw new EndpointFailure(
          failedPrecondition(`${what} from ${ep.host} failed verification: registry says ${header}, content has digest ${digest}`),
          false,
          PRIORITY_CONTENT,
        );
      }
    }
    if (desc && desc.size !== bytes.length) {
      throw new EndpointFailure(
        failedPrecondition(`${what} from ${ep.host} is ${bytes.length} bytes, the descriptor says ${desc.size}`),
        false,
        PRIORITY_CONTENT,
      );
    }
    const parsed = parseManifest(bytes, desc?.mediaType ?? headerString(res.headers['content-type']), `${what} of "${ctx.ref.toString()}"`);
    const descriptor: Descriptor = { mediaType: parsed.mediaType, digest, size: bytes.length };
    return parsed.kind === 'index'
      ? { kind: 'index', index: parsed.index, descriptor, bytes }
      : { kind: 'manifest', manifest: parsed.manifest, descriptor, bytes };
  }
}
