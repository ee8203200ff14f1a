/**
 * Host facts for the report, and removing host state a runtime leaves behind: mounts under its
 * directories and the cgroups of its pods.
 */
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { killAll } from './proc';

const execFileAsync = promisify(execFile);

/** Runs a command and returns its stdout; rejects with stderr in the message when it fails. */
export async function run(cmd: string, args: string[], timeoutMs = 60_000): Promise<string> {
  try {
    const { stdout } = await execFileAsync(cmd, args, { timeout: timeoutMs, maxBuffer: 32 << 20 });
    return stdout;
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`${cmd} ${args.join(' ')}: ${(e.stderr || e.message).trim()}`);
  }
}

export const CGROUP_ROOT = '/sys/fs/cgroup';

export function cgroupVersion(): 1 | 2 {
  return fs.existsSync(path.join(CGROUP_ROOT, 'cgroup.controllers')) ? 2 : 1;
}

export interface MachineInfo {
  cores: number;
  cpuModel: string;
  kernel: string;
  cgroupVersion: 1 | 2;
  memoryBytes: number;
  os: string;
  node: string;
}

export function machineInfo(): MachineInfo {
  let osName = 'linux';
  try {
    const release = fs.readFileSync('/etc/os-release', 'utf8');
    osName = /^PRETTY_NAME="?([^"\n]*)"?$/m.exec(release)?.[1] ?? osName;
  } catch {
    // not every system has it
  }
  return {
    cores: os.availableParallelism(),
    cpuModel: os.cpus()[0]?.model ?? 'unknown',
    kernel: os.release(),
    cgroupVersion: cgroupVersion(),
    memoryBytes: os.totalmem(),
    os: osName,
    node: process.version,
  };
}

/** Decodes the octal escapes mountinfo uses for spaces, tabs, newlines and backslashes. */
function unescapeMountPath(p: string): string {
  return p.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}

/** Mount points at or below `dir`, deepest first. */
export function mountsUnder(dir: string): string[] {
  const prefix = dir.endsWith('/') ? dir : `${dir}/`;
  const points = fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((line) => line.split(' ')[4])
    .filter((p): p is string => p !== undefined)
    .map(unescapeMountPath)
    .filter((p) => p === dir || p.startsWith(prefix));
  return [...new Set(points)].sort((a, b) => b.length - a.length);
}

/**
 * Unmounts everything under `dir`. Lazy (detached) unmounts: a mount still held by a dying
 * process must not stop the cleanup; the kernel frees it when the last user goes.
 */
/**
 * A runtime's state directory on tmpfs, as /run is on a systemd host (this machine's /run is not):
 * both runtimes keep their runtime state there in production, and fsync on tmpfs costs nothing.
 */
export async function mountStateTmpfs(dir: string): Promise<void> {
  fs.mkdirSync(dir, { recursive: true, mode: 0o711 });
  await run('mount', ['-t', 'tmpfs', '-o', 'mode=0711,nosuid,nodev', 'tmpfs', dir]);
}

export async function unmountUnder(dir: string): Promise<void> {
  for (let round = 0; round < 5; round++) {
    const points = mountsUnder(dir);
    if (points.length === 0) return;
    for (const p of points) {
      try {
        await run('umount', ['-l', p]);
      } catch {
        // Already gone with its parent, or stacked: the next round sees what is left.
      }
    }
  }
}

/** Cgroup hierarchies: each v1 controller mount, or the single v2 root. */
function hierarchies(): string[] {
  if (cgroupVersion() === 2) return [CGROUP_ROOT];
  return fs
    .readdirSync(CGROUP_ROOT, { withFileTypes: true })
    .filter((e) => e.isDirectory())
    .map((e) => path.join(CGROUP_ROOT, e.name));
}

function cgroupDirsDeepestFirst(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string): void => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) if (e.isDirectory()) walk(path.join(d, e.name));
    out.push(d);
  };
  walk(dir);
  return out;
}

/**
 * Removes the cgroup `parent` (e.g. "/crisp-bench-1a2b3c") with all its children in every
 * hierarchy, killing whatever still runs in it first.
 */
export async function removeCgroupTree(parent: string): Promise<void> {
  for (const hierarchy of hierarchies()) {
    const top = path.join(hierarchy, parent);
    if (!fs.existsSync(top)) continue;
    for (let attempt = 0; attempt < 50; attempt++) {
      const dirs = cgroupDirsDeepestFirst(top);
      const pids = dirs.flatMap((d) => {
        try {
          return fs.readFileSync(path.join(d, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean).map(Number);
        } catch {
          return [];
        }
      });
      if (pids.length > 0) await killAll(pids);
      for (const d of dirs) {
        try {
          fs.rmdirSync(d);
        } catch {
          // EBUSY while the last task exits: retried below.
        }
      }
      if (!fs.existsSync(top)) break;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

/** Deletes a network link if it exists. */
export async function deleteLink(name: string): Promise<void> {
  try {
    await run('ip', ['link', 'delete', name]);
  } catch {
    // never created
  }
}
