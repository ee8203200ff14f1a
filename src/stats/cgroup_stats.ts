/**
 * Usage counters of one cgroup as the native core reports them (crates/core/src/cgroup/stats.rs).
 * Counters are bigints: CPU time in nanoseconds outgrows a double's exact integers within days.
 * A section is absent when its controller is not mounted or the cgroup does not exist.
 */
export interface CgroupStats {
  cpu?: CgroupCpuStats;
  memory?: CgroupMemoryStats;
  pids?: CgroupPidsStats;
  /** Pressure stall information: cgroup v2 only (v1 has it system-wide at most). */
  pressure?: CgroupPressureStats;
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
  /** Swap the cgroup may use; absent when unlimited. */
  swapLimitBytes?: bigint;
  /** cgroup v1 only: the high-water mark of usage. */
  maxUsageBytes?: bigint;
  oomKills?: bigint;
}

export interface CgroupPidsStats {
  current: bigint;
  /** Absent when unlimited. */
  limit?: bigint;
}

export interface CgroupPressureStats {
  cpu?: Pressure;
  memory?: Pressure;
  io?: Pressure;
}

/** One pressure file: `some` task stalled, and `full` (all non-idle tasks stalled). */
export interface Pressure {
  some?: PressureLine;
  full?: PressureLine;
}

export interface PressureLine {
  /** Share of wall time stalled over the last 10 s, 60 s and 300 s, in percent. */
  avg10: number;
  avg60: number;
  avg300: number;
  /** Cumulative stall time, microseconds (the kernel's unit). */
  totalMicros: bigint;
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

function fraction(section: Raw, key: string, where: string): number {
  const value = section[key];
  const n = typeof value === 'string' && /^\d+(\.\d+)?$/.test(value) ? Number(value) : NaN;
  if (!Number.isFinite(n)) throw new Error(`cgroup stats: ${where}.${key} is not a decimal number`);
  return n;
}

function sectionOf(doc: Raw, key: string): Raw | undefined {
  const value = doc[key];
  if (value === null || value === undefined) return undefined;
  if (typeof value !== 'object' || Array.isArray(value)) throw new Error(`cgroup stats: ${key} is not an object`);
  return value as Raw;
}

function pressureLine(pressure: Raw, key: string, where: string): PressureLine | undefined {
  const line = sectionOf(pressure, key);
  if (!line) return undefined;
  const at = `${where}.${key}`;
  return { avg10: fraction(line, 'avg10', at), avg60: fraction(line, 'avg60', at), avg300: fraction(line, 'avg300', at), totalMicros: counter(line, 'totalMicros', at) };
}

function decodePressure(doc: Raw): CgroupPressureStats | undefined {
  const section = sectionOf(doc, 'pressure');
  if (!section) return undefined;
  const out: CgroupPressureStats = {};
  for (const resource of ['cpu', 'memory', 'io'] as const) {
    const file = sectionOf(section, resource);
    if (!file) continue;
    const where = `pressure.${resource}`;
    out[resource] = { some: pressureLine(file, 'some', where), full: pressureLine(file, 'full', where) };
  }
  return out;
}

function isObject(doc: unknown): doc is Raw {
  return typeof doc === 'object' && doc !== null && !Array.isArray(doc);
}

/** Decodes the addon's stats JSON (every number a decimal string, absent values null). */
export function decodeCgroupStats(text: string): CgroupStats {
  const doc = JSON.parse(text) as unknown;
  if (!isObject(doc)) throw new Error('cgroup stats: not a JSON object');
  return decodeStatsObject(doc);
}

/** A cgroup the addon could not read, with the addon's error code (an errno name, EINVAL...). */
export class CgroupReadError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'CgroupReadError';
  }
}

/**
 * Decodes the addon's batch answer: one element per requested path, in order, each the stats
 * or a `CgroupReadError`. A malformed element throws: it means the addon and this file disagree.
 */
export function decodeCgroupStatsBatch(text: string, expected: number): Array<CgroupStats | CgroupReadError> {
  const doc = JSON.parse(text) as unknown;
  if (!Array.isArray(doc) || doc.length !== expected) throw new Error(`cgroup stats batch: expected an array of ${expected}`);
  return doc.map((item: unknown) => {
    if (!isObject(item)) throw new Error('cgroup stats batch: element is not an object');
    const error = item.error;
    if (isObject(error)) return new CgroupReadError(String(error.code), String(error.message));
    return decodeStatsObject(item);
  });
}

function decodeStatsObject(doc: Raw): CgroupStats {
  const out: CgroupStats = {};
  const cpu = sectionOf(doc, 'cpu');
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
  const memory = sectionOf(doc, 'memory');
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
      swapLimitBytes: optionalCounter(memory, 'swapLimitBytes', 'memory'),
      maxUsageBytes: optionalCounter(memory, 'maxUsageBytes', 'memory'),
      oomKills: optionalCounter(memory, 'oomKills', 'memory'),
    };
  }
  const pids = sectionOf(doc, 'pids');
  if (pids) out.pids = { current: counter(pids, 'current', 'pids'), limit: optionalCounter(pids, 'limit', 'pids') };
  const pressure = decodePressure(doc);
  if (pressure) out.pressure = pressure;
  return out;
}
