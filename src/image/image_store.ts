import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { notFound } from '../util/errors';
import { readJsonIfExists, writeJsonAtomic } from '../util/fsutil';

/** What crisp knows about one pulled image. The id is the config digest, as in containerd. */
export interface ImageRecord {
  id: string;
  repoTags: string[];
  repoDigests: string[];
  /** Bytes of the manifest's layers and config as stored in the registry (what containerd reports). */
  size: number;
  manifestDigest: string;
  manifestMediaType: string;
  /** Manifests (index included) and the config kept in the content store for this image. */
  blobs: string[];
  /** Snapshot keys (chain ids) of the layers, lowest first. */
  chainIds: string[];
  diffIds: string[];
  /** The image config's User, as written. */
  user: string;
  pinned: boolean;
  pulledAt: number;
}

interface IndexFile {
  version: 1;
  images: ImageRecord[];
}

/**
 * The image records, kept in memory and persisted as one index file replaced atomically on every
 * change, so a crash leaves either the old or the new set of images, never a half-written image.
 */
export class ImageStore {
  private readonly images = new Map<string, ImageRecord>();
  private readonly file: string;
  private writing: Promise<void> = Promise.resolve();

  constructor(readonly dir: string) {
    this.file = path.join(dir, 'images.json');
  }

  async load(): Promise<void> {
    await fsp.mkdir(this.dir, { recursive: true, mode: 0o700 });
    const index = await readJsonIfExists<IndexFile>(this.file);
    this.images.clear();
    for (const image of index?.images ?? []) this.images.set(image.id, image);
  }

  list(): ImageRecord[] {
    return [...this.images.values()];
  }

  get(id: string): ImageRecord | undefined {
    return this.images.get(id);
  }

  /**
   * Finds an image by id (full or `sha256:`-less, or a unique prefix of at least 12 hex digits),
   * by a normalized tag, or by a repo digest.
   */
  find(key: string): ImageRecord | undefined {
    const direct = this.images.get(key) ?? this.images.get(`sha256:${key}`);
    if (direct) return direct;
    for (const image of this.images.values()) {
      if (image.repoTags.includes(key) || image.repoDigests.includes(key)) return image;
    }
    const hex = key.startsWith('sha256:') ? key.slice(7) : key;
    if (/^[0-9a-f]{12,63}$/.test(hex)) {
      const matches = [...this.images.values()].filter((i) => i.id.startsWith(`sha256:${hex}`));
      if (matches.length === 1) return matches[0];
    }
    return undefined;
  }

  /**
   * Records a pulled image. A tag moves to the new image; an image left with no tag and no digest
   * keeps existing (kubelet may still reference it by id) until removed, as containerd does.
   */
  async put(image: ImageRecord): Promise<ImageRecord> {
    return this.mutate(() => {
      for (const other of this.images.values()) {
        if (other.id === image.id) continue;
        other.repoTags = other.repoTags.filter((t) => !image.repoTags.includes(t));
      }
      const existing = this.images.get(image.id);
      const merged: ImageRecord = existing
        ? {
            ...image,
            repoTags: union(existing.repoTags, image.repoTags),
            repoDigests: union(existing.repoDigests, image.repoDigests),
            pinned: existing.pinned || image.pinned,
          }
        : image;
      this.images.set(image.id, merged);
      return merged;
    });
  }

  async remove(id: string): Promise<ImageRecord> {
    return this.mutate(() => {
      const image = this.images.get(id);
      if (!image) throw notFound(`image ${id} not found`);
      this.images.delete(id);
      return image;
    });
  }

  /** Serializes changes so concurrent pulls never lose each other's updates. */
  private mutate<T>(change: () => T): Promise<T> {
    const result = this.writing.then(async () => {
      const before = new Map([...this.images].map(([k, v]) => [k, structuredClone(v)]));
      const value = change();
      try {
        await writeJsonAtomic(this.file, { version: 1, images: [...this.images.values()] } satisfies IndexFile);
      } catch (err) {
        this.images.clear();
        for (const [k, v] of before) this.images.set(k, v);
        throw err;
      }
      return value;
    });
    this.writing = result.then(
      () => undefined,
      () => undefined,
    );
    return result;
  }
}

function union(a: string[], b: string[]): string[] {
  return [...new Set([...a, ...b])];
}
