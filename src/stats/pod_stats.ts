import * as fsp from 'node:fs/promises';
import type { CgroupStats } from './cgroup_stats';
import type { InterfaceCounters } from './net_dev';

/** What to sample for one pod. */
export interface PodStatsTarget {
  /** The cgroup whose counters stand for the pod (hierarchical: it includes its children). */
  cgroupPath: string;
  /**
   * A process inside the pod's network namespace (the monitor, which pins it); its
   * /proc/<pid>/net/dev lists the pod's interfaces without entering the namespace. Undefined for
   * host-network pods: kubelet reports node network stats itself.
   */
  netnsPid?: number;
}

/** One reading of a pod's counters. */
export interface PodSample {
  /** Wall-clock time of the reading, nanoseconds since the epoch. */
  timestamp: bigint;
  cgroup: CgroupStats;
  /** Interfaces of the pod's network namespace; undefined when not sampled (host network). */
  interfaces?: InterfaceCounters[];
  /** CPU use in billionths of a core over the last sampling window, once a window exists. */
  usageNanoCores?: bigint;
}

/** Reads net/dev through the kernel's per-process view; async so the read runs off the event loop. */
export function procNetDev(pid: number): Promise<string> {
  return fsp.readFile(`/proc/${pid}/net/dev`, 'utf8');
}
