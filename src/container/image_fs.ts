import * as fsp from 'node:fs/promises';
import * as path from 'node:path';

/** Image files such as /etc/passwd are small; a bigger one is not a passwd file worth parsing. */
const MAX_READ_BYTES = 4 * 1024 * 1024;

function isWhiteout(st: { isCharacterDevice(): boolean; rdev: number }): boolean {
  return st.isCharacterDevice() && st.rdev === 0;
}

/**
 * Reads a file of an image through its unpacked layers (`lowerDirs`, top first) the way overlayfs
 * would show it: the topmost layer that has the path wins and a whiteout hides lower layers.
 * Opaque-directory markers are xattrs, which are not readable from here: a file under a directory
 * made opaque in a higher layer may still be found in a lower one. Symlinks are not followed: files
 * such as /etc/passwd are regular files, and following a link out of a layer would read the host.
 */
export async function readFileInLayers(lowerDirs: string[], absPath: string): Promise<Buffer | undefined> {
  const rel = path.posix.normalize(absPath).replace(/^\/+/, '');
  if (rel === '' || rel.startsWith('..')) return undefined;
  const parts = rel.split('/');
  for (const layer of lowerDirs) {
    let hidden = false;
    // A whiteout or an opaque marker on a parent directory in this layer ends the search here.
    for (let i = 1; i <= parts.length; i++) {
      const p = path.join(layer, ...parts.slice(0, i));
      const st = await fsp.lstat(p).catch(() => undefined);
      if (!st) break;
      if (isWhiteout(st)) {
        hidden = true;
        break;
      }
      if (i === parts.length) {
        if (!st.isFile() || st.size > MAX_READ_BYTES) return undefined;
        return fsp.readFile(p);
      }
    }
    if (hidden) return undefined;
  }
  return undefined;
}

/**
 * Remembers small files read through image layers. Layers never change once unpacked and a
 * snapshot path names its content, so /etc/passwd and /etc/group are read once per image rather
 * than on every container create. Bounded in entries and in the size of what it keeps.
 */
export class ImageFileCache {
  private readonly entries = new Map<string, Promise<Buffer | undefined>>();

  constructor(
    private readonly maxEntries = 256,
    private readonly maxFileBytes = 64 * 1024,
    private readonly read: typeof readFileInLayers = readFileInLayers,
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
