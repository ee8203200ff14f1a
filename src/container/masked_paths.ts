/** Paths hidden from an unprivileged container: kernel state that leaks host information. */
export const DEFAULT_MASKED_PATHS: readonly string[] = [
  '/proc/acpi',
  '/proc/asound',
  '/proc/kcore',
  '/proc/keys',
  '/proc/latency_stats',
  '/proc/timer_list',
  '/proc/timer_stats',
  '/proc/sched_debug',
  '/proc/scsi',
  '/sys/firmware',
  '/sys/devices/virtual/powercap',
];

/** Paths an unprivileged container sees read-only: writing them would reconfigure the host kernel. */
export const DEFAULT_READONLY_PATHS: readonly string[] = ['/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger'];

export interface ProcPaths {
  maskedPaths: string[];
  readonlyPaths: string[];
}

/**
 * The masked and read-only paths of a container. kubelet sends its own lists (derived from the
 * pod's procMount); a non-empty list replaces the default, an empty one means "the runtime's
 * defaults". Privileged containers see everything.
 */
export function resolveProcPaths(
  security: { maskedPaths: readonly string[]; readonlyPaths: readonly string[] } | undefined,
  privileged: boolean,
): ProcPaths {
  if (privileged) return { maskedPaths: [], readonlyPaths: [] };
  const masked = security?.maskedPaths ?? [];
  const readonly = security?.readonlyPaths ?? [];
  return {
    maskedPaths: masked.length > 0 ? [...masked] : [...DEFAULT_MASKED_PATHS],
    readonlyPaths: readonly.length > 0 ? [...readonly] : [...DEFAULT_READONLY_PATHS],
  };
}
