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
