import type { ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import type { CriClient } from '../../src/client/cri_client';
import { removeAllPods } from '../cri';
import { removeCgroupTree, unmountUnder } from '../env/host';
import { killAll } from '../env/proc';
import { exited, stopProcess } from './runtime';

/**
 * Removes everything a benchmarked runtime created, in the order that leaves nothing behind: its
 * pods through CRI while the daemon still runs, the daemon, pod processes a failed removal left
 * (shims and monitors outlive their daemons by design), mounts, cgroups and its directory.
 */
export async function tearDownRuntime(runtime: {
  child?: ChildProcess;
  clients: CriClient[];
  client(): CriClient;
  podProcesses(): number[];
  dir: string;
  cgroupParent: string;
}): Promise<void> {
  if (runtime.child && !exited(runtime.child)) await removeAllPods(runtime.clients[0] ?? runtime.client()).catch(() => undefined);
  for (const c of runtime.clients) c.close();
  await stopProcess(runtime.child, 15_000);
  await killAll(runtime.podProcesses());
  await unmountUnder(runtime.dir);
  await removeCgroupTree(runtime.cgroupParent);
  fs.rmSync(runtime.dir, { recursive: true, force: true });
}
