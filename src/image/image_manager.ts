import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import type { AuthConfig } from '../generated/runtime/v1/api';
import type { Logger } from '../log';
import { CrispError, failedPrecondition, internal, invalidArgument, notFound } from '../util/errors';
import { ContentStore } from './content_store';
import { type ImageRecord, ImageStore } from './image_store';
import { layerCompression, MAX_IMAGE_CONFIG_BYTES, MAX_IMAGE_CONFIG_ENTRIES } from './media_types';
import { isImageId, normalizeImageId, parseReference, type ImageReference } from './reference';
import type { RegistryClient } from './registry_client';
import { chainIds, SnapshotStore } from './snapshot_store';

/** The parts of an OCI image config crisp uses (image-spec config.md). */
export interface ImageConfig {
  architecture?: string;
  os?: string;
  config?: {
    User?: string;
    Env?: string[];
    Entrypoint?: string[] | null;
    Cmd?: string[] | null;
    WorkingDir?: string;
    Volumes?: Record<string, unknown>;
    ExposedPorts?: Record<string, unknown>;
    StopSignal?: string;
    Labels?: Record<string, string>;
  };
  rootfs?: { type: string; diff_ids: string[] };
  history?: unknown[];
}

/**
 * Checks the parts of a parsed config crisp reads: their types, and at most
 * MAX_IMAGE_CONFIG_ENTRIES entries in each list or map, so one image cannot make every container
 * built from it carry an unbounded environment, volume or label set.
 */
export function checkImageConfig(digest: string, parsed: unknown): ImageConfig {
  const bad = (what: string) => failedPrecondition(`image config ${digest}: ${what}`);
  const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
  if (!isObject(parsed)) throw bad('not a JSON object');
  const bounded = (name: string, value: unknown, kind: 'strings' | 'map' | 'stringMap') => {
    if (value === undefined || value === null) return;
    if (kind === 'strings') {
      if (!Array.isArray(value) || !value.every((v) => typeof v === 'string')) throw bad(`${name} is not a list of strings`);
      if (value.length > MAX_IMAGE_CONFIG_ENTRIES) throw bad(`${name} has ${value.length} entries, more than the ${MAX_IMAGE_CONFIG_ENTRIES} allowed`);
      return;
    }
    if (!isObject(value)) throw bad(`${name} is not an object`);
    const keys = Object.keys(value);
    if (keys.length > MAX_IMAGE_CONFIG_ENTRIES) throw bad(`${name} has ${keys.length} entries, more than the ${MAX_IMAGE_CONFIG_ENTRIES} allowed`);
    if (kind === 'stringMap' && !keys.every((k) => typeof value[k] === 'string')) throw bad(`${name} values are not all strings`);
  };
  const c = parsed.config;
  if (c !== undefined && c !== null) {
    if (!isObject(c)) throw bad('config is not an object');
    for (const name of ['User', 'WorkingDir', 'StopSignal'] as const) {
      if (c[name] !== undefined && c[name] !== null && typeof c[name] !== 'string') throw bad(`config.${name} is not a string`);
    }
    bounded('config.Env', c.Env, 'strings');
    bounded('config.Entrypoint', c.Entrypoint, 'strings');
    bounded('config.Cmd', c.Cmd, 'strings');
    bounded('config.Volumes', c.Volumes, 'map');
    bounded('config.ExposedPorts', c.ExposedPorts, 'map');
    bounded('config.Labels', c.Labels, 'stringMap');
  }
  const rootfs = parsed.rootfs;
  if (rootfs !== undefined && rootfs !== null) {
    if (!isObject(rootfs)) throw bad('rootfs is not an object');
    bounded('rootfs.diff_ids', rootfs.diff_ids, 'strings');
  }
  const history = parsed.history;
  if (history !== undefined && history !== null) {
    if (!Array.isArray(history)) throw bad('history is not a list');
    if (history.length > MAX_IMAGE_CONFIG_ENTRIES) throw bad(`history has ${history.length} entries, more than the ${MAX_IMAGE_CONFIG_ENTRIES} allowed`);
  }
  return parsed as ImageConfig;
}

export type LayerCompression = 'gzip' | 'zstd' | 'none';

/** Unpacks one layer blob into an empty directory (the native addon, off the event loop). */
export type LayerUnpacker = (
  blobPath: string,
  compression: LayerCompression,
  dest: string,
) => Promise<{ entries: number; tarBytes: number; diffId?: string }>;

export interface ImageManagerOptions {
  root: string;
  registry: RegistryClient;
  unpackLayer: LayerUnpacker;
  log: Logger;
}

/** Chain ids that something other than an image (a container's rootfs) still needs. */
export type SnapshotUsers = () => Iterable<string>;

/**
 * Pulls, stores and removes images: manifests and configs in the content store, layers unpacked
 * into snapshots keyed by chain id, and image records written only once every layer is in place —
 * so a pull killed half-way leaves no visible image, and the next pull picks up what was done.
 */
export class ImageManager {
  readonly content: ContentStore;
  readonly snapshots: SnapshotStore;
  readonly images: ImageStore;
  private readonly pulls = new Map<string, Promise<ImageRecord>>();
  private readonly configs = new Map<string, ImageConfig>();
  private snapshotUsers: SnapshotUsers = () => [];

  constructor(private readonly opts: ImageManagerOptions) {
    this.content = new ContentStore(path.join(opts.root, 'content'));
    this.snapshots = new SnapshotStore(path.join(opts.root, 'snapshots'));
    this.images = new ImageStore(path.join(opts.root, 'images'));
  }

  async load(): Promise<void> {
    await this.content.load();
    await this.snapshots.load();
    await this.images.load();
  }

  setSnapshotUsers(users: SnapshotUsers): void {
    this.snapshotUsers = users;
  }

  /** Pulls `reference`; concurrent pulls of the same reference share one pull. */
  pull(reference: string, auth: AuthConfig | undefined, signal?: AbortSignal): Promise<ImageRecord> {
    if (!reference) throw invalidArgument('image reference is empty');
    const ref = parseReference(reference);
    const key = ref.toString();
    let pending = this.pulls.get(key);
    if (!pending) {
      pending = this.doPull(ref, auth, signal).finally(() => this.pulls.delete(key));
      this.pulls.set(key, pending);
    }
    return pending;
  }

  private async doPull(ref: ImageReference, auth: AuthConfig | undefined, signal?: AbortSignal): Promise<ImageRecord> {
    const { registry, log } = this.opts;
    const started = Date.now();
    const resolved = await registry.fetchImageManifest(ref, { auth, signal });
    const manifest = resolved.manifest.manifest;
    for (const doc of resolved.documents) {
      if (!this.content.has(doc.descriptor.digest)) await this.content.write(doc.descriptor.digest, doc.bytes);
    }
    const configDigest = manifest.config.digest;
    // The descriptor's size is enforced while the blob streams, so this bounds the download too.
    if (manifest.config.size > MAX_IMAGE_CONFIG_BYTES) {
      throw failedPrecondition(
        `image "${ref.toString()}": config ${configDigest} is ${manifest.config.size} bytes, more than the ${MAX_IMAGE_CONFIG_BYTES} allowed`,
      );
    }
    if (!this.content.has(configDigest)) {
      // finalize runs once per shared transfer, so concurrent pulls never race on the rename.
      await registry.fetchBlob(ref, manifest.config, this.content.ingestPath(configDigest), {
        auth,
        signal,
        finalize: (verified) => this.content.commit(verified, configDigest),
      });
    }
    let config: ImageConfig;
    try {
      config = await this.readConfig(configDigest);
    } catch (err) {
      // A config that is refused is not kept: the next pull fetches it again.
      if (err instanceof CrispError && err.code === 'FailedPrecondition') await this.content.remove(configDigest);
      throw err;
    }
    const diffIds = config.rootfs?.diff_ids ?? [];
    if (diffIds.length !== manifest.layers.length) {
      throw failedPrecondition(
        `image "${ref.toString()}": config lists ${diffIds.length} layers but the manifest has ${manifest.layers.length}`,
      );
    }
    const chain = chainIds(diffIds);
    await Promise.all(
      manifest.layers.map((layer, i) =>
        this.snapshots.ensure(chain[i], diffIds[i], async (fsDir) => {
          const compression = layerCompression(layer.mediaType);
          if (compression === undefined) throw failedPrecondition(`layer ${layer.digest} has unsupported media type ${layer.mediaType}`);
          const tmp = this.content.ingestPath(layer.digest);
          const fetched = await registry.fetchBlob(ref, layer, tmp, { auth, signal });
          try {
            const stats = await this.opts.unpackLayer(fetched.path, compression, fsDir);
            if (stats.diffId && stats.diffId !== diffIds[i]) {
              throw failedPrecondition(`layer ${layer.digest}: uncompressed digest ${stats.diffId} does not match the config's ${diffIds[i]}`);
            }
          } catch (err) {
            if (err instanceof CrispError) throw err;
            throw invalidArgument(`unpacking layer ${layer.digest} of "${ref.toString()}": ${(err as Error).message}`);
          } finally {
            // Layer blobs are not kept once unpacked; a shared in-flight download is removed by its owner.
            if (fetched.path === tmp) await fsp.rm(tmp, { force: true });
          }
        }),
      ),
    );
    const topDigest = resolved.target.digest;
    const tagged = ref.tagged();
    const size =
      resolved.manifest.descriptor.size + manifest.config.size + manifest.layers.reduce((sum, l) => sum + l.size, 0);
    const record = await this.images.put({
      id: configDigest,
      repoTags: tagged ? [tagged] : [],
      repoDigests: [ref.digested(topDigest)],
      size,
      manifestDigest: resolved.manifest.descriptor.digest,
      manifestMediaType: resolved.manifest.descriptor.mediaType,
      blobs: resolved.documents.map((d) => d.descriptor.digest).concat(configDigest),
      chainIds: chain,
      diffIds,
      user: config.config?.User ?? '',
      pinned: false,
      pulledAt: Date.now(),
    });
    log.info({ image: ref.toString(), id: configDigest, ms: Date.now() - started, layers: manifest.layers.length }, 'image pulled');
    return record;
  }

  /**
   * The parsed config blob, cached. FailedPrecondition for one over the size or entry bounds or
   * not shaped as the image spec says (checked before and after parsing, since a blob stored by
   * an older version was never checked); Internal when it cannot be read.
   */
  async readConfig(configDigest: string): Promise<ImageConfig> {
    let config = this.configs.get(configDigest);
    if (!config) {
      let bytes: Buffer;
      try {
        const size = await this.content.size(configDigest);
        if (size > MAX_IMAGE_CONFIG_BYTES) {
          throw failedPrecondition(`image config ${configDigest} is ${size} bytes, more than the ${MAX_IMAGE_CONFIG_BYTES} allowed`);
        }
        bytes = await this.content.read(configDigest);
      } catch (err) {
        if (err instanceof CrispError) throw err;
        throw internal(`reading image config ${configDigest}: ${(err as Error).message}`, err);
      }
      let parsed: unknown;
      try {
        parsed = JSON.parse(bytes.toString('utf8'));
      } catch (err) {
        throw failedPrecondition(`image config ${configDigest} is not valid JSON: ${(err as Error).message}`);
      }
      config = checkImageConfig(configDigest, parsed);
      this.configs.set(configDigest, config);
    }
    return config;
  }

  /**
   * Finds an image as kubelet names it: by id (or unique id prefix), by tag (normalised, so
   * `busybox` finds `docker.io/library/busybox:latest`), or by repo digest.
   */
  /** The unpacked layer directories of `image`, topmost first (overlay lowerdir order). */
  layerDirs(image: ImageRecord): string[] {
    return [...image.chainIds].reverse().map((c) => this.snapshots.fsPath(c));
  }

  find(name: string): ImageRecord | undefined {
    if (!name) return undefined;
    if (isImageId(name)) return this.images.find(normalizeImageId(name));
    const direct = this.images.find(name);
    if (direct) return direct;
    let ref: ImageReference;
    try {
      ref = parseReference(name);
    } catch {
      return undefined;
    }
    if (ref.digest) return this.images.find(ref.digested());
    const tagged = ref.tagged();
    return tagged ? this.images.find(tagged) : undefined;
  }

  /** Like find(), but NotFound naming the image when absent. */
  get(name: string): ImageRecord {
    const image = this.find(name);
    if (!image) throw notFound(`image "${name}" not found`);
    return image;
  }

  list(): ImageRecord[] {
    return this.images.list();
  }

  /** Removes an image with all its tags, then whatever no image or container needs any more. */
  async remove(name: string): Promise<boolean> {
    const image = this.find(name);
    if (!image) return false;
    await this.images.remove(image.id);
    this.configs.delete(image.id);
    await this.collectGarbage();
    return true;
  }

  /** Deletes snapshots and blobs no image or container references. */
  async collectGarbage(): Promise<void> {
    const liveChains = new Set<string>(this.snapshotUsers());
    const liveBlobs = new Set<string>();
    for (const image of this.images.list()) {
      for (const c of image.chainIds) liveChains.add(c);
      for (const b of image.blobs ?? [image.manifestDigest, image.id]) liveBlobs.add(b);
    }
    for (const snap of this.snapshots.list()) {
      if (!liveChains.has(snap.chainId)) {
        await this.snapshots.remove(snap.chainId);
        this.opts.log.debug({ chainId: snap.chainId }, 'snapshot removed');
      }
    }
    for (const blob of await this.content.list()) {
      if (!liveBlobs.has(blob)) await this.content.remove(blob);
    }
  }

  /** Bytes and inodes the image filesystem uses, from what was measured at unpack time. */
  usage(): { mountpoint: string; bytes: number; inodes: number } {
    const u = this.snapshots.usage();
    return { mountpoint: this.snapshots.dir, bytes: u.bytes, inodes: u.inodes };
  }
}
