/**
 * Network namespace path checks used around CNI calls.
 */
import * as fsp from 'node:fs/promises';

/** statfs(2) f_type of nsfs, the filesystem namespace files (and their bind mounts) live on. */
export const NSFS_MAGIC = 0x6e736673;

/**
 * Whether `nsPath` currently refers to a namespace: a bind-mounted netns file (e.g. /run/netns/x)
 * or /proc/<pid>/ns/net. A mount point whose namespace was unmounted is a plain empty file and does
 * not count; neither does a missing path.
 */
export async function isNamespacePath(nsPath: string): Promise<boolean> {
  if (nsPath === '') return false;
  try {
    const st = await fsp.statfs(nsPath);
    return st.type === NSFS_MAGIC;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR' || code === 'ESRCH') return false;
    throw err;
  }
}
