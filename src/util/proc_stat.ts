import * as fs from 'node:fs';

/**
 * The fields of `/proc/<pid>/stat` after the command name, so index 0 is the state (stat's field
 * 3) and index 19 the start time (field 22); undefined if the process is gone. procfs answers from
 * memory, so a synchronous read beats trips to the threadpool.
 */
export function procStatFields(pid: number): string[] | undefined {
  let stat: string;
  try {
    stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // The command name may contain spaces and parentheses; fields resume after the last ')'.
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
}
