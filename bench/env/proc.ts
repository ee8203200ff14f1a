/**
 * Reading and ending processes through /proc: finding a runtime's helper processes, summing their
 * memory, and killing what a runtime left behind.
 */
import * as fs from 'node:fs';

export interface ProcInfo {
  pid: number;
  ppid: number;
  /** The kernel's short name (/proc/<pid>/comm). */
  comm: string;
  argv: string[];
}

function readProc(pid: number): ProcInfo | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // comm may contain spaces and parentheses: the fields after it start past the last ')'.
    const close = stat.lastIndexOf(')');
    const comm = stat.slice(stat.indexOf('(') + 1, close);
    const rest = stat.slice(close + 2).split(' ');
    if (rest[0] === 'Z') return undefined;
    const argv = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    if (argv[argv.length - 1] === '') argv.pop();
    return { pid, ppid: Number(rest[1]), comm, argv };
  } catch {
    return undefined; // exited while being read
  }
}

/** Every live (non-zombie) process on the host. */
export function listProcesses(): ProcInfo[] {
  const out: ProcInfo[] = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const info = readProc(Number(name));
    if (info) out.push(info);
  }
  return out;
}

/** The given roots and all their descendants, each once. */
export function withDescendants(roots: readonly number[], all: readonly ProcInfo[] = listProcesses()): number[] {
  const children = new Map<number, number[]>();
  for (const p of all) children.set(p.ppid, [...(children.get(p.ppid) ?? []), p.pid]);
  const seen = new Set<number>();
  const queue = [...roots];
  while (queue.length > 0) {
    const pid = queue.pop()!;
    if (seen.has(pid)) continue;
    seen.add(pid);
    queue.push(...(children.get(pid) ?? []));
  }
  return [...seen];
}

export interface MemoryUsage {
  /** Proportional set size: shared pages divided among the processes mapping them. */
  pssBytes: number;
  rssBytes: number;
  processes: number;
}

function kbField(text: string, field: string): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(text);
  return m ? Number(m[1]) * 1024 : 0;
}

/**
 * Sums PSS and RSS over processes. PSS is the fairer cost of N processes sharing one binary: RSS
 * would count the shared text of every shim or monitor N times.
 */
export function memoryOf(pids: readonly number[]): MemoryUsage {
  const usage: MemoryUsage = { pssBytes: 0, rssBytes: 0, processes: 0 };
  for (const pid of pids) {
    try {
      const rollup = fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
      usage.pssBytes += kbField(rollup, 'Pss');
      usage.rssBytes += kbField(rollup, 'Rss');
      usage.processes++;
    } catch {
      // Exited, or a kernel thread without an address space.
    }
  }
  return usage;
}

export function isAlive(pid: number): boolean {
  return readProc(pid) !== undefined;
}

/** SIGKILLs the processes (children first, so none is re-parented mid-way) and waits for them to go. */
export async function killAll(pids: readonly number[], timeoutMs = 5000): Promise<void> {
  for (const pid of [...pids].reverse()) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  const deadline = Date.now() + timeoutMs;
  while (pids.some(isAlive) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
}
