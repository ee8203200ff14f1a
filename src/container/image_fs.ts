import * as fsp from 'node:fs/promises';

/** Image files such as /etc/passwd are small; a bigger one is not a passwd file worth parsing. */
const MAX_READ_BYTES = 4 * 1024 * 1024;

/** Finds where the merged view of an image's layers has a regular file (the native core's lookup). */
export type ImageFileLocator = (lowerDirs: readonly string[], absPath: string) => Promise<{ path: string; size: number } | undefined>;

/**
 * Reads a file of an image through its unpacked layers (`lowerDirs`, top first) as the
 * container's overlay root will show it: `locate` decides which layer's file that is (whiteouts,
 * opaque directories and links respected); a missing, non-regular or oversized file is undefined.
 */
export async function readFileInLayers(locate: ImageFileLocator, lowerDirs: readonly string[], absPath: string): Promise<Buffer | undefined> {
  const found = await locate(lowerDirs, absPath);
  if (!found || found.size > MAX_READ_BYTES) return undefined;
  return fsp.readFile(found.path);
}

/**
 * Remembers small files read through image layers. Layers never change once unpacked and a
 * snapshot path names its content, so /etc/passwd and /etc/group are read once per image rather
 * than on every container create. Bounded in entries and in the size of what it keeps.
 */
export class ImageFileCache {
  private readonly entries = new Map<string, Promise<Buffer | undefined>>();

  constructor(
    private readonly read: (lowerDirs: string[], absPath: string) => Promise<Buffer | undefined>,
    private readonly maxEntries = 256,
    private readonly maxFileBytes = 64 * 1024,
  ) {}

  /** `readFileInLayers`; callers share the returned buffer and must not modify it. */
  get(lowerDirs: string[], absPath: string): Promise<Buffer | undefined> {
    const key = `${lowerDirs.join('\n')}\n\n${absPath}`;
    const hit = this.entries.get(key);
    if (hit) {
      // Most recently used last.
      this.entries.delete(key);
      this.entries.set(key, hit);
      return hit;
    }
    const pending = this.read(lowerDirs, absPath);
    this.entries.set(key, pending);
    pending.then(
      (buf) => {
        if (buf && buf.length > this.maxFileBytes && this.entries.get(key) === pending) this.entries.delete(key);
      },
      () => {
        if (this.entries.get(key) === pending) this.entries.delete(key);
      },
    );
    while (this.entries.size > this.maxEntries) this.entries.delete(this.entries.keys().next().value!);
    return pending;
  }
}
