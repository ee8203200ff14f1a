import * as fs from 'node:fs';
import * as path from 'node:path';
import { nativeErrorCode } from './native';
import { writeFileAtomic } from './util/fsutil';

/** Takes the exclusive lock on a file; returns the descriptor holding it (`NativeCore.lockFile`). */
export type FileLocker = (file: string) => number;

/** The lock file's name under the root. */
export const DAEMON_LOCK_FILE = 'crisp.lock';

/**
 * Ensures one daemon per root directory: an exclusive `flock` on `<root>/crisp.lock`, a 0600 file
 * only root can open, so no other local user (or host-network pod) can take it first. The kernel
 * releases it when the holder dies, even by SIGKILL, so a crashed daemon never leaves a stale lock
 * behind; the descriptor is close-on-exec, so the pod monitors, which outlive the daemon, never
 * hold it. `<state>/crisp.pid` records the holder for operators.
 */
export class DaemonLock {
  private constructor(
    private fd: number | undefined,
    private readonly pidFile: string,
  ) {}

  static async acquire(root: string, state: string, lockFile: FileLocker): Promise<DaemonLock> {
    const real = fs.realpathSync(root);
    const pidFile = path.join(state, 'crisp.pid');
    let fd: number;
    try {
      fd = lockFile(path.join(real, DAEMON_LOCK_FILE));
    } catch (err) {
      if (nativeErrorCode(err) !== 'EAGAIN') throw err;
      let holder = '';
      try {
        holder = ` (pid ${fs.readFileSync(pidFile, 'utf8').trim()})`;
      } catch {
        // The pid file is informational only.
      }
      throw new Error(`another crisp daemon${holder} is already using root ${real}`);
    }
    try {
      await writeFileAtomic(pidFile, `${process.pid}\n`, 0o644);
    } catch (err) {
      fs.closeSync(fd);
      throw err;
    }
    return new DaemonLock(fd, pidFile);
  }

  release(): void {
    try {
      const recorded = fs.readFileSync(this.pidFile, 'utf8').trim();
      if (recorded === String(process.pid)) fs.rmSync(this.pidFile, { force: true });
    } catch {
      // Already gone.
    }
    if (this.fd !== undefined) fs.closeSync(this.fd);
    this.fd = undefined;
  }
}
