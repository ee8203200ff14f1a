import {
  type ContainerAttributes,
  type ContainerStats,
  type CpuUsage,
  type IoUsage,
  type MemoryUsage,
  type Metric,
  type MetricDescriptor,
  MetricType,
  type NetworkInterfaceUsage,
  type PodSandboxAttributes,
  type PodSandboxStats,
  type PsiData,
  type PsiStats,
  type SwapUsage,
  type UInt64Value,
} from '../generated/runtime/v1/api';
import type { CgroupStats, Pressure, PressureLine } from './cgroup_stats';
import type { InterfaceCounters } from './net_dev';
import type { PodSample } from './pod_stats';
import type { ContainerSample } from './stats_collector';

/** The interface CNI plugins create in the pod; kubelet reports it as the pod's network usage. */
export const DEFAULT_INTERFACE = 'eth0';

const u64 = (value: bigint | undefined): UInt64Value | undefined => (value === undefined ? undefined : { value });

function interfaceUsage(i: InterfaceCounters): NetworkInterfaceUsage {
  return { name: i.name, rxBytes: u64(i.rxBytes), rxErrors: u64(i.rxErrors), txBytes: u64(i.txBytes), txErrors: u64(i.txErrors) };
}

/** Interfaces worth reporting: loopback traffic never leaves the pod. */
function podInterfaces(interfaces: InterfaceCounters[]): InterfaceCounters[] {
  return interfaces.filter((i) => i.name !== 'lo');
}

function psiData(line: PressureLine): PsiData {
  // The kernel counts stall time in microseconds; CRI carries nanoseconds.
  return { Total: line.totalMicros * 1000n, Avg10: line.avg10, Avg60: line.avg60, Avg300: line.avg300 };
}

/** CRI pressure from one pressure file; `full` and `some` each absent when the kernel gave none. */
export function toCriPsi(pressure: Pressure | undefined): PsiStats | undefined {
  if (!pressure || (!pressure.some && !pressure.full)) return undefined;
  return { Full: pressure.full && psiData(pressure.full), Some: pressure.some && psiData(pressure.some) };
}

function cpuUsage(timestamp: bigint, stats: CgroupStats, usageNanoCores: bigint | undefined): CpuUsage | undefined {
  const { cpu, pressure } = stats;
  if (!cpu) return undefined;
  return { timestamp, usageCoreNanoSeconds: u64(cpu.usageNanos), usageNanoCores: u64(usageNanoCores), psi: toCriPsi(pressure?.cpu) };
}

/**
 * Available memory is reported only under a limit, as the headroom above the working set
 * (kubelet's eviction signal).
 */
function memoryUsage(timestamp: bigint, stats: CgroupStats): MemoryUsage | undefined {
  const { memory, pressure } = stats;
  if (!memory) return undefined;
  const { limitBytes, workingSetBytes } = memory;
  return {
    timestamp,
    workingSetBytes: u64(workingSetBytes),
    availableBytes: limitBytes === undefined ? undefined : u64(limitBytes > workingSetBytes ? limitBytes - workingSetBytes : 0n),
    usageBytes: u64(memory.usageBytes),
    rssBytes: u64(memory.rssBytes),
    pageFaults: u64(memory.pageFaults),
    majorPageFaults: u64(memory.majorPageFaults),
    psi: toCriPsi(pressure?.memory),
  };
}

/** IoUsage carries nothing but pressure: absent without it. */
function ioUsage(timestamp: bigint, stats: CgroupStats): IoUsage | undefined {
  const psi = toCriPsi(stats.pressure?.io);
  return psi && { timestamp, psi };
}

/** Swap in use, and what is left of the swap limit when there is one. */
function swapUsage(timestamp: bigint, stats: CgroupStats): SwapUsage | undefined {
  const memory = stats.memory;
  if (memory?.swapUsageBytes === undefined) return undefined;
  const { swapUsageBytes: used, swapLimitBytes: limit } = memory;
  return { timestamp, swapUsageBytes: u64(used), swapAvailableBytes: limit === undefined ? undefined : u64(limit > used ? limit - used : 0n) };
}

/**
 * A container's CRI stats: its cgroup's counters, and its writable layer on the image
 * filesystem (`imageFsMountpoint`, the fs_id kubelet matches against ImageFsInfo).
 */
export function toCriContainerStats(attributes: ContainerAttributes, sample: ContainerSample, imageFsMountpoint: string): ContainerStats {
  const { timestamp, stats, usageNanoCores } = sample.cgroup;
  const layer = sample.layer;
  return {
    attributes,
    cpu: cpuUsage(timestamp, stats, usageNanoCores),
    memory: memoryUsage(timestamp, stats),
    writableLayer: layer && {
      timestamp: layer.timestamp,
      fsId: { mountpoint: imageFsMountpoint },
      usedBytes: u64(layer.usage.bytes),
      inodesUsed: u64(layer.usage.inodes),
    },
    swap: swapUsage(timestamp, stats),
    io: ioUsage(timestamp, stats),
  };
}

/** A pod's CRI stats from one sample, with `containers` (its running containers) as given. */
export function toCriPodStats(attributes: PodSandboxAttributes, sample: PodSample, containers: ContainerStats[] = []): PodSandboxStats {
  const { timestamp, cgroup } = sample;
  const { pids } = cgroup;
  let network: NonNullable<PodSandboxStats['linux']>['network'];
  if (sample.interfaces) {
    const interfaces = podInterfaces(sample.interfaces);
    const primary = interfaces.find((i) => i.name === DEFAULT_INTERFACE);
    network = {
      timestamp,
      defaultInterface: primary && interfaceUsage(primary),
      interfaces: interfaces.filter((i) => i !== primary).map(interfaceUsage),
    };
  }
  return {
    attributes,
    linux: {
      cpu: cpuUsage(timestamp, cgroup, sample.usageNanoCores),
      memory: memoryUsage(timestamp, cgroup),
      network,
      process: pids && { timestamp, processCount: u64(pids.current) },
      containers,
      io: ioUsage(timestamp, cgroup),
    },
    windows: undefined,
  };
}

/**
 * Label keys shared by every metric, cAdvisor's: the pod's and container's names and namespace
 * (kubelet passes runtime labels through unchanged), the cgroup path as `id`, the runtime's name
 * for the container (its id) and its image. A pod-level series has empty container, name and
 * image, as cAdvisor reports a pod cgroup.
 */
const BASE_LABELS = ['container', 'id', 'image', 'name', 'namespace', 'pod'];
const NETWORK_LABELS = [...BASE_LABELS, 'interface'];
const FAILURE_LABELS = [...BASE_LABELS, 'failure_type', 'scope'];

/** Values of BASE_LABELS for one cgroup's series. */
export interface MetricLabels {
  /** Container name; '' for the pod. */
  container: string;
  cgroupPath: string;
  /** Container image; '' for the pod. */
  image: string;
  /** Container id; '' for the pod. */
  name: string;
  namespace: string;
  pod: string;
}

function baseLabelValues(l: MetricLabels): string[] {
  return [l.container, l.cgroupPath, l.image, l.name, l.namespace, l.pod];
}

/**
 * The cAdvisor-named metrics crisp reports through ListPodSandboxMetrics. kubelet builds its
 * /metrics/cadvisor descriptors from this list and drops values whose name is not in it, so it
 * names exactly what `podSandboxMetricValues` and `containerMetricValues` can produce.
 */
export const METRIC_DESCRIPTORS: readonly MetricDescriptor[] = [
  { name: 'container_cpu_usage_seconds_total', help: 'Cumulative CPU time consumed in seconds.', labelKeys: BASE_LABELS },
  { name: 'container_cpu_user_seconds_total', help: 'Cumulative user CPU time consumed in seconds.', labelKeys: BASE_LABELS },
  { name: 'container_cpu_system_seconds_total', help: 'Cumulative system CPU time consumed in seconds.', labelKeys: BASE_LABELS },
  { name: 'container_cpu_cfs_periods_total', help: 'Number of elapsed enforcement period intervals.', labelKeys: BASE_LABELS },
  { name: 'container_cpu_cfs_throttled_periods_total', help: 'Number of throttled period intervals.', labelKeys: BASE_LABELS },
  { name: 'container_cpu_cfs_throttled_seconds_total', help: 'Total time duration the container has been throttled.', labelKeys: BASE_LABELS },
  { name: 'container_memory_usage_bytes', help: 'Current memory usage in bytes, including all memory regardless of when it was accessed.', labelKeys: BASE_LABELS },
  { name: 'container_memory_working_set_bytes', help: 'Current working set in bytes.', labelKeys: BASE_LABELS },
  { name: 'container_memory_rss', help: 'Size of RSS in bytes.', labelKeys: BASE_LABELS },
  { name: 'container_memory_cache', help: 'Number of bytes of page cache memory.', labelKeys: BASE_LABELS },
  { name: 'container_memory_swap', help: 'Container swap usage in bytes.', labelKeys: BASE_LABELS },
  { name: 'container_memory_max_usage_bytes', help: 'Maximum memory usage recorded in bytes.', labelKeys: BASE_LABELS },
  { name: 'container_memory_failures_total', help: 'Cumulative count of memory allocation failures.', labelKeys: FAILURE_LABELS },
  { name: 'container_spec_memory_limit_bytes', help: 'Memory limit for the container in bytes.', labelKeys: BASE_LABELS },
  { name: 'container_oom_events_total', help: 'Count of out of memory events observed for the container.', labelKeys: BASE_LABELS },
  { name: 'container_processes', help: 'Number of processes running inside the container.', labelKeys: BASE_LABELS },
  { name: 'container_fs_usage_bytes', help: "Number of bytes that are consumed by the container's writable layer.", labelKeys: BASE_LABELS },
  { name: 'container_fs_inodes_total', help: "Number of inodes used by the container's writable layer.", labelKeys: BASE_LABELS },
  { name: 'container_network_receive_bytes_total', help: 'Cumulative count of bytes received.', labelKeys: NETWORK_LABELS },
  { name: 'container_network_receive_packets_total', help: 'Cumulative count of packets received.', labelKeys: NETWORK_LABELS },
  { name: 'container_network_receive_packets_dropped_total', help: 'Cumulative count of packets dropped while receiving.', labelKeys: NETWORK_LABELS },
  { name: 'container_network_receive_errors_total', help: 'Cumulative count of errors encountered while receiving.', labelKeys: NETWORK_LABELS },
  { name: 'container_network_transmit_bytes_total', help: 'Cumulative count of bytes transmitted.', labelKeys: NETWORK_LABELS },
  { name: 'container_network_transmit_packets_total', help: 'Cumulative count of packets transmitted.', labelKeys: NETWORK_LABELS },
  { name: 'container_network_transmit_packets_dropped_total', help: 'Cumulative count of packets dropped while transmitting.', labelKeys: NETWORK_LABELS },
  { name: 'container_network_transmit_errors_total', help: 'Cumulative count of errors encountered while transmitting.', labelKeys: NETWORK_LABELS },
];

const NS_PER_SECOND = 1_000_000_000n;

type AddMetric = (name: string, type: MetricType, value: bigint | undefined, extraLabels?: string[]) => void;

function metricSink(labels: MetricLabels, timestamp: bigint, out: Metric[]): AddMetric {
  const base = baseLabelValues(labels);
  return (name, metricType, value, extraLabels = []) => {
    if (value === undefined) return;
    out.push({ name, timestamp, metricType, labelValues: [...base, ...extraLabels], value: { value } });
  };
}

/**
 * Counters of one cgroup. CRI metric values are unsigned integers, so CPU seconds are whole
 * seconds. `scope` is cAdvisor's for memory failures: `hierarchy` for a pod cgroup, whose
 * counters include its children, `container` for a container's own.
 */
function cgroupMetrics(add: AddMetric, stats: CgroupStats, scope: 'hierarchy' | 'container'): void {
  const { cpu, memory, pids } = stats;
  if (cpu) {
    add('container_cpu_usage_seconds_total', MetricType.COUNTER, cpu.usageNanos / NS_PER_SECOND);
    add('container_cpu_user_seconds_total', MetricType.COUNTER, cpu.userNanos === undefined ? undefined : cpu.userNanos / NS_PER_SECOND);
    add('container_cpu_system_seconds_total', MetricType.COUNTER, cpu.systemNanos === undefined ? undefined : cpu.systemNanos / NS_PER_SECOND);
    add('container_cpu_cfs_periods_total', MetricType.COUNTER, cpu.nrPeriods);
    add('container_cpu_cfs_throttled_periods_total', MetricType.COUNTER, cpu.nrThrottled);
    add('container_cpu_cfs_throttled_seconds_total', MetricType.COUNTER, cpu.throttledNanos / NS_PER_SECOND);
  }
  if (memory) {
    add('container_memory_usage_bytes', MetricType.GAUGE, memory.usageBytes);
    add('container_memory_working_set_bytes', MetricType.GAUGE, memory.workingSetBytes);
    add('container_memory_rss', MetricType.GAUGE, memory.rssBytes);
    add('container_memory_cache', MetricType.GAUGE, memory.cacheBytes);
    add('container_memory_swap', MetricType.GAUGE, memory.swapUsageBytes);
    add('container_memory_max_usage_bytes', MetricType.GAUGE, memory.maxUsageBytes);
    add('container_memory_failures_total', MetricType.COUNTER, memory.pageFaults, ['pgfault', scope]);
    add('container_memory_failures_total', MetricType.COUNTER, memory.majorPageFaults, ['pgmajfault', scope]);
    // cAdvisor reports an unlimited cgroup's limit as 0.
    add('container_spec_memory_limit_bytes', MetricType.GAUGE, memory.limitBytes ?? 0n);
    add('container_oom_events_total', MetricType.COUNTER, memory.oomKills);
  }
  if (pids) add('container_processes', MetricType.GAUGE, pids.current);
}

/** Pod-level metrics from one sample: the pod cgroup's counters and the pod's interfaces. */
export function podSandboxMetricValues(labels: MetricLabels, sample: PodSample): Metric[] {
  const out: Metric[] = [];
  const add = metricSink(labels, sample.timestamp, out);
  cgroupMetrics(add, sample.cgroup, 'hierarchy');
  for (const i of podInterfaces(sample.interfaces ?? [])) {
    const extra = [i.name];
    add('container_network_receive_bytes_total', MetricType.COUNTER, i.rxBytes, extra);
    add('container_network_receive_packets_total', MetricType.COUNTER, i.rxPackets, extra);
    add('container_network_receive_packets_dropped_total', MetricType.COUNTER, i.rxDropped, extra);
    add('container_network_receive_errors_total', MetricType.COUNTER, i.rxErrors, extra);
    add('container_network_transmit_bytes_total', MetricType.COUNTER, i.txBytes, extra);
    add('container_network_transmit_packets_total', MetricType.COUNTER, i.txPackets, extra);
    add('container_network_transmit_packets_dropped_total', MetricType.COUNTER, i.txDropped, extra);
    add('container_network_transmit_errors_total', MetricType.COUNTER, i.txErrors, extra);
  }
  return out;
}

/** Container-level metrics: the container cgroup's counters and its writable layer. */
export function containerMetricValues(labels: MetricLabels, sample: ContainerSample): Metric[] {
  const out: Metric[] = [];
  cgroupMetrics(metricSink(labels, sample.cgroup.timestamp, out), sample.cgroup.stats, 'container');
  if (sample.layer) {
    const add = metricSink(labels, sample.layer.timestamp, out);
    add('container_fs_usage_bytes', MetricType.GAUGE, sample.layer.usage.bytes);
    add('container_fs_inodes_total', MetricType.GAUGE, sample.layer.usage.inodes);
  }
  return out;
}
