/**
 * OCI and Docker image media types, descriptor/manifest shapes, and validation of manifests
 * received from registries.
 */
import { invalidArgument, unimplemented } from '../util/errors';
import type { Platform } from './platform';
import { parseDigest } from './reference';

export const MediaTypes = {
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  ociLayer: 'application/vnd.oci.image.layer.v1.tar',
  ociLayerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  ociLayerZstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
  ociLayerNondistributable: 'application/vnd.oci.image.layer.nondistributable.v1.tar',
  ociLayerNondistributableGzip: 'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip',
  ociLayerNondistributableZstd: 'application/vnd.oci.image.layer.nondistributable.v1.tar+zstd',
  ociEmpty: 'application/vnd.oci.empty.v1+json',
  dockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  dockerLayer: 'application/vnd.docker.image.rootfs.diff.tar',
  dockerLayerGzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
  dockerLayerForeignGzip: 'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip',
  dockerSchema1: 'application/vnd.docker.distribution.manifest.v1+json',
  dockerSchema1Signed: 'application/vnd.docker.distribution.manifest.v1+prettyjws',
} as const;

/** Accept header for manifest requests: everything we can run, index types first. */
export const MANIFEST_ACCEPT = [
  MediaTypes.ociIndex,
  MediaTypes.dockerManifestList,
  MediaTypes.ociManifest,
  MediaTypes.dockerManifest,
].join(', ');

/** Largest manifest accepted from a registry; real ones are a few KiB. */
export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;

/**
 * Largest image config accepted: real ones are a few KiB, tens with a long history. The config is
 * parsed whole (on pulls, and again after a restart on create and status), so without a bound a
 * digest-valid config of hundreds of MiB would exhaust the daemon's heap every time.
 */
export const MAX_IMAGE_CONFIG_BYTES = 4 * 1024 * 1024;

/** Most entries accepted in each list or map of an image config (Env, Volumes, Labels, ...). */
export const MAX_IMAGE_CONFIG_ENTRIES = 4096;

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  urls?: string[];
  annotations?: Record<string, string>;
  platform?: Platform;
  artifactType?: string;
}

export interface ImageIndex {
  schemaVersion: 2;
  mediaType?: string;
  manifests: Descriptor[];
  annotations?: Record<string, string>;
}

export interface ImageManifest {
  schemaVersion: 2;
  mediaType?: string;
  config: Descriptor;
  layers: Descriptor[];
  annotations?: Record<string, string>;
  subject?: Descriptor;
  artifactType?: string;
}

export function isIndexMediaType(mt: string): boolean {
  return mt === MediaTypes.ociIndex || mt === MediaTypes.dockerManifestList;
}

export function isManifestMediaType(mt: string): boolean {
  return mt === MediaTypes.ociManifest || mt === MediaTypes.dockerManifest;
}

export function isSchema1MediaType(mt: string): boolean {
  return mt === MediaTypes.dockerSchema1 || mt === MediaTypes.dockerSchema1Signed;
}

/** Compression of a layer blob, or undefined if the media type is not a layer we can unpack. */
export function layerCompression(mt: string): 'none' | 'gzip' | 'zstd' | undefined {
  switch (mt) {
    case MediaTypes.ociLayer:
    case MediaTypes.ociLayerNondistributable:
    case MediaTypes.dockerLayer:
      return 'none';
    case MediaTypes.ociLayerGzip:
    case MediaTypes.ociLayerNondistributableGzip:
    case MediaTypes.dockerLayerGzip:
    case MediaTypes.dockerLayerForeignGzip:
      return 'gzip';
    case MediaTypes.ociLayerZstd:
    case MediaTypes.ociLayerNondistributableZstd:
      return 'zstd';
    default:
      return undefined;
  }
}

/** Strips parameters (`; charset=utf-8`) and case from a Content-Type value. */
export function bareMediaType(contentType: string | undefined): string {
  return (contentType ?? '').split(';')[0].trim().toLowerCase();
}

const schema1Error = (what: string) =>
  unimplemented(
    `${what} is a Docker schema 1 manifest, which is no longer supported; rebuild or re-push the image ` +
      `as ${MediaTypes.dockerManifest} or ${MediaTypes.ociManifest}`,
  );

function checkDescriptor(d: unknown, where: string): Descriptor {
  if (typeof d !== 'object' || d === null) throw invalidArgument(`${where}: descriptor is not an object`);
  const desc = d as Record<string, unknown>;
  if (typeof desc.mediaType !== 'string' || desc.mediaType === '') throw invalidArgument(`${where}: descriptor has no mediaType`);
  if (typeof desc.digest !== 'string') throw invalidArgument(`${where}: descriptor has no digest`);
  parseDigest(desc.digest, `${where} digest`);
  if (typeof desc.size !== 'number' || !Number.isSafeInteger(desc.size) || desc.size < 0) {
    throw invalidArgument(`${where}: descriptor ${desc.digest} has an invalid size`);
  }
  return desc as unknown as Descriptor;
}

/**
 * Decides whether a manifest is an index or an image manifest from its declared media type (the
 * response Content-Type or the descriptor pointing at it) and its own `mediaType` field, and
 * validates its structure. Schema 1 manifests are rejected with Unimplemented.
 */
export function parseManifest(
  bytes: Buffer,
  declaredMediaType: string | undefined,
  what: string,
): { kind: 'index'; mediaType: string; index: ImageIndex } | { kind: 'manifest'; mediaType: string; manifest: ImageManifest } {
  const declared = bareMediaType(declaredMediaType);
  if (isSchema1MediaType(declared)) throw schema1Error(what);
  let json: unknown;
  try {
    json = JSON.parse(bytes.toString('utf8'));
  } catch (err) {
    throw invalidArgument(`${what}: manifest is not valid JSON: ${(err as Error).message}`);
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw invalidArgument(`${what}: manifest is not a JSON object`);
  const m = json as Record<string, unknown>;
  if (m.schemaVersion === 1) throw schema1Error(what);
  if (m.schemaVersion !== 2) throw invalidArgument(`${what}: unsupported manifest schemaVersion ${String(m.schemaVersion)}`);

  // The document's own mediaType is authoritative (it is covered by the digest); the declared
  // type (Content-Type, or the descriptor that pointed here) is a fallback for documents that omit
  // it, and registries that serve everything as application/json are handled by shape.
  const inner = typeof m.mediaType === 'string' ? m.mediaType : '';
  if (isSchema1MediaType(inner)) throw schema1Error(what);
  let mediaType: string;
  if (isIndexMediaType(inner) || isManifestMediaType(inner)) mediaType = inner;
  else if (inner !== '') throw invalidArgument(`${what}: unsupported manifest media type ${inner}`);
  else if (isIndexMediaType(declared) || isManifestMediaType(declared)) mediaType = declared;
  else mediaType = Array.isArray(m.manifests) ? MediaTypes.ociIndex : MediaTypes.ociManifest;

  if (isIndexMediaType(mediaType)) {
    if (!Array.isArray(m.manifests)) throw invalidArgument(`${what}: index has no manifests list`);
    m.manifests.forEach((d, i) => checkDescriptor(d, `${what} manifests[${i}]`));
    return { kind: 'index', mediaType, index: m as unknown as ImageIndex };
  }
  if (isManifestMediaType(mediaType)) {
    checkDescriptor(m.config, `${what} config`);
    if (!Array.isArray(m.layers)) throw invalidArgument(`${what}: manifest has no layers list`);
    m.layers.forEach((d, i) => checkDescriptor(d, `${what} layers[${i}]`));
    return { kind: 'manifest', mediaType, manifest: m as unknown as ImageManifest };
  }
  throw invalidArgument(`${what}: unsupported manifest media type ${mediaType}`);
}
