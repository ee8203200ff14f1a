/**
 * A benchmark killed with SIGKILL cannot clean up: the kernel stops its daemons (parent-death
 * signal) but shims, monitors, pods, mounts, cgroups and the bridge stay. Each run records its
 * owner and tag in its work directory; the next run removes what dead runs left.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { deleteLink, removeCgroupTree, unmountUnder } from './host';
import { removeStaleShimSockets } from '../runtimes/containerd';
import { isAlive, killAll, listProcesses } from './proc';

export const WORK_DIR_PREFIX = 'crisp-bench-';
const OWNER_FILE = 'owner.json';

interface Owner {
  pid: number;
  bridge: string;
  cgroupParents: string[];
}

export function recordOwner(workDir: string, owner: Omit<Owner, 'pid'>): void {
  const file = path.join(workDir, OWNER_FILE);
  fs.writeFileSync(`${file}.tmp`, JSON.stringify({ pid: process.pid, ...owner }));
  fs.renameSync(`${file}.tmp`, file);
}

/** Removes the leftovers of every earlier run whose process is gone. Returns the directories cleaned. */
export async function removeAbandonedRuns(): Promise<string[]> {
  const cleaned: string[] = [];
  for (const name of fs.readdirSync(os.tmpdir())) {
    if (!name.startsWith(WORK_DIR_PREFIX)) continue;
    const dir = path.join(os.tmpdir(), name);
    let owner: Owner;
    try {
      owner = JSON.parse(fs.readFileSync(path.join(dir, OWNER_FILE), 'utf8')) as Owner;
    } catch {
      continue; // being set up right now, or not a benchmark directory
    }
    if (isAlive(owner.pid)) continue;
    // Shims and monitors name the directory on their command line; pod processes sit in the cgroups.
    await killAll(listProcesses().filter((p) => p.argv.some((a) => a === dir || a.includes(`${dir}/`))).map((p) => p.pid));
    for (const parent of owner.cgroupParents) await removeCgroupTree(parent);
    await unmountUnder(dir);
    await deleteLink(owner.bridge);
    fs.rmSync(dir, { recursive: true, force: true });
    cleaned.push(dir);
  }
  if (cleaned.length > 0) removeStaleShimSockets();
  return cleaned;
}
