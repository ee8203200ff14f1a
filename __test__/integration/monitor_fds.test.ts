/**
 * The monitor keeps only the descriptors it is given (stdio and the readiness pipe): anything a
 * parent leaked would otherwise reach the pod init and every process it starts.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { monitorBinaryPath } from '../../src/sandbox/monitor_spawn';

const isRoot = process.getuid?.() === 0;
const serial = isRoot ? test.serial : test.skip;

serial('descriptors a parent leaked to the monitor are closed', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'crisp-test-monitor-fds-'));
  let pid: number | undefined;
  t.teardown(() => {
    if (pid) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // Gone already.
      }
    }
    fs.rmSync(dir, { recursive: true, force: true });
  });
  fs.writeFileSync(
    path.join(dir, 'monitor.json'),
    JSON.stringify({ sandboxId: 'fds', namespaces: { network: 'node', ipc: 'node', uts: 'node', pid: 'node' } }),
  );
  const leaked = path.join(dir, 'leaked-file');
  fs.writeFileSync(leaked, '');
  // The shell opens descriptors 5 and 9 without close-on-exec and execs the monitor with them;
  // descriptor 3 is the readiness pipe, as the daemon gives it.
  const child = spawn('/bin/sh', ['-c', `exec 5<"$2" 9<"$2"; exec "$0" "$1"`, monitorBinaryPath(), dir, leaked], {
    stdio: ['ignore', 'ignore', 'ignore', 'pipe'],
  });
  pid = child.pid;
  const ready = await new Promise<string>((resolve, reject) => {
    let line = '';
    const pipe = child.stdio[3]!;
    pipe.on('data', (d: Buffer) => {
      line += d.toString();
      if (line.includes('\n')) resolve(line);
    });
    child.once('exit', (code) => reject(new Error(`monitor exited (${code}) before it was ready`)));
  });
  t.true(JSON.parse(ready).ok, ready);
  const fds = fs.readdirSync(`/proc/${pid}/fd`).map(Number);
  const targets = fds.map((fd) => {
    try {
      return fs.readlinkSync(`/proc/${pid}/fd/${fd}`);
    } catch {
      return '';
    }
  });
  t.false(targets.includes(leaked), `the leaked file is not open in the monitor: ${targets.join(', ')}`);
  const exited = new Promise((resolve) => child.once('exit', resolve));
  process.kill(pid!, 'SIGTERM');
  await exited;
  pid = undefined;
});
