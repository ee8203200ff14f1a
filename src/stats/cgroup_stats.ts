/**
 * Usage counters of one cgroup as the native core reports them (crates/core/src/cgroup/stats.rs).
 * Counters are bigints: CPU time in nanoseconds outgrows a double's exact integers within days.
 * A section is absent when its controller is not mounted or the cgroup does not exist.
 */
export interface CgroupStats {
  cpu?: CgroupCpuStats;
  memory?: CgroupMemoryStats;
  pids?: CgroupPidsStats;
}

export interface CgroupCpuStats {
  /** Total CPU time consumed, in nanoseconds. */
  usageNanos: bigint;
  userNanos?: bigint;
  systemNanos?: bigint;
  nrPeriods: bigint;
  nrThrottled: bigint;
  throttledNanos: bigint;
}

export interface CgroupMemoryStats {
  /** Charged memory, page cache included. */
  usageBytes: bigint;
  /** Usage minus inactive file pages. */
  workingSetBytes: bigint;
  rssBytes: bigint;
  cacheBytes: bigint;
  pageFaults: bigint;
  majorPageFaults: bigint;
  /** Absent when unlimited. */
  limitBytes?: bigint;
  swapUsageBytes?: bigint;
  /** cgroup v1 only: the high-water mark of usage. */
  maxUsageBytes?: bigint;
  oomKills?: bigint;
}

export interface CgroupPidsStats {
  current: bigint;
  /** Absent when unlimited. */
  limit?: bigint;
}

type Raw = Record<string, unknown>;

function counter(section: Raw, key: string, where: string): bigint {
  const value = section[key];
  if (typeof value !== 'string' || !/^\d+$/.test(value)) throw new Error(`cgroup stats: ${where}.${key} is not a decimal counter`);
  return BigInt(value);
}

function optionalCounter(section: Raw, key: string, where: string): bigint | undefined {
  return section[key] === null || section[key] === undefined ? undefined : counter(section, key, where);
}

function sectionOf(doc: Raw, key: string): Raw | undefined {
  const value = doc[key];
  if (value === null || value === undefined) return undefined;
  if (typeof value !== 'object' || Array.isArray(value)) throw new Error(`cgroup stats: ${key} is not an object`);
  return value as Raw;
}

/** Decodes the addon's stats JSON (every counter a decimal string, absent values null). */
export function decodeCgroupStats(text: string): CgroupStats {
  const doc = JSON.parse(text) as unknown;
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw new Error('cgroup stats: not a JSON object');
  const out: CgroupStats = {};
  const cpu = sectionOf(doc as Raw, 'cpu');
  if (cpu) {
    out.cpu = {
      usageNanos: counter(cpu, 'usageNanos', 'cpu'),
      userNanos: optionalCounter(cpu, 'userNanos', 'cpu'),
      systemNanos: optionalCounter(cpu, 'systemNanos', 'cpu'),
      nrPeriods: counter(cpu, 'nrPeriods', 'cpu'),
      nrThrottled: counter(cpu, 'nrThrottled', 'cpu'),
      throttledNanos: counter(cpu, 'throttledNanos', 'cpu'),
    };
  }
  const memory = sectionOf(doc as Raw, 'memory');
  if (memory) {
    out.memory = {
      usageBytes: counter(memory, 'usageBytes', 'memory'),
      workingSetBytes: counter(memory, 'workingSetBytes', 'memory'),
      rssBytes: counter(memory, 'rssBytes', 'memory'),
      cacheBytes: counter(memory, 'cacheBytes', 'memory'),
      pageFaults: counter(memory, 'pageFaults', 'memory'),
      majorPageFaults: counter(memory, 'majorPageFaults', 'memory'),
      limitBytes: optionalCounter(memory, 'limitBytes', 'memory'),
      swapUsageBytes: optionalCounter(memory, 'swapUsageBytes', 'memory'),
      maxUsageBytes: optionalCounter(memory, 'maxUsageBytes', 'memory'),
      oomKills: optionalCounter(memory, 'oomKills', 'memory'),
    };
  }
  const pids = sectionOf(doc as Raw, 'pids');
  if (pids) out.pids = { current: counter(pids, 'current', 'pids'), limit: optionalCounter(pids, 'limit', 'pids') };
  return out;
}
