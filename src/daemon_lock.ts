import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { writeFileAtomic } from './util/fsutil';

/**
 * Ensures one daemon per root directory. The lock is an abstract unix socket named after the
 * root's real path: the kernel releases it when the holder dies, even by SIGKILL, so a crashed
 * daemon never leaves a stale lock behind. `<state>/crisp.pid` records the holder for operators.
 */
export class DaemonLock {
  private constructor(
    private readonly server: net.Server,
    private readonly pidFile: string,
  ) {}

  static async acquire(root: string, state: string): Promise<DaemonLock> {
    const real = fs.realpathSync(root);
    const name = `\0crisp-${crypto.createHash('sha256').update(real).digest('hex').slice(0, 32)}`;
    const pidFile = path.join(state, 'crisp.pid');
    const server = net.createServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err: NodeJS.ErrnoException) => {
        if (err.code === 'EADDRINUSE') {
          let holder = '';
          try {
            holder = ` (pid ${fs.readFileSync(pidFile, 'utf8').trim()})`;
          } catch {
            // The pid file is informational only.
          }
          reject(new Error(`another crisp daemon${holder} is already using root ${real}`));
        } else {
          reject(err);
        }
      });
      server.listen({ path: name, exclusive: true }, () => resolve());
    });
    server.unref();
    await writeFileAtomic(pidFile, `${process.pid}\n`, 0o644);
    return new DaemonLock(server, pidFile);
  }

  release(): void {
    try {
      const recorded = fs.readFileSync(this.pidFile, 'utf8').trim();
      if (recorded === String(process.pid)) fs.rmSync(this.pidFile, { force: true });
    } catch {
      // Already gone.
    }
    this.server.close();
  }
}
