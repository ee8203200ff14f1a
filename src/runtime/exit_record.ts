import * as path from 'node:path';
import { readJsonIfExists } from '../util/fsutil';

/**
 * The file in a container's bundle where its runtime records the exit. The monitor writes it
 * (`EXIT_FILE` and `ExitRecord` in crates/core/src/monitor_proto.rs), atomically, before it
 * announces the exit, so an exit that happened while the daemon was down is found here.
 */
export const CONTAINER_EXIT_FILE = 'exit.json';

/** `<container bundle>/exit.json`, as the monitor writes it. */
export interface ContainerExitRecord {
  /** The exit status, or 128 + signal number; 128 when the program could not be started. */
  exitCode: number;
  signal: number | null;
  oomKilled: boolean;
  /** null when the process never got to exec its program. */
  startedAtMs: number | null;
  finishedAtMs: number;
  /** Why the program could not be started. */
  startError?: string;
}

/** The exit recorded in a container bundle, if the container has exited. */
export async function readExitRecord(bundleDir: string): Promise<ContainerExitRecord | undefined> {
  return readJsonIfExists<ContainerExitRecord>(path.join(bundleDir, CONTAINER_EXIT_FILE)).catch(() => undefined);
}
