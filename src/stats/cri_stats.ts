import {
  type Metric,
  type MetricDescriptor,
  MetricType,
  type NetworkInterfaceUsage,
  type PodSandboxAttributes,
  type PodSandboxStats,
  type UInt64Value,
} from '../generated/runtime/v1/api';
import type { InterfaceCounters } from './net_dev';
import type { PodSample } from './pod_stats';

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

/**
 * A pod's CRI stats from one sample. Available memory is reported only under a limit, as the
 * headroom above the working set (kubelet's eviction signal). Container stats are not part of
 * this function; callers append them.
 */
export function toCriPodStats(attributes: PodSandboxAttributes, sample: PodSample): PodSandboxStats {
  const { timestamp, cgroup } = sample;
  const { cpu, memory, pids } = cgroup;
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
      cpu: cpu && {
        timestamp,
        usageCoreNanoSeconds: u64(cpu.usageNanos),
        usageNanoCores: u64(sample.usageNanoCores),
        psi: undefined,
      },
      memory: memory && {
        timestamp,
        workingSetBytes: u64(memory.workingSetBytes),
        availableBytes: memory.limitBytes === undefined ? undefined : u64(memory.limitBytes > memory.workingSetBytes ? memory.limitBytes - memory.workingSetBytes : 0n),
        usageBytes: u64(memory.usageBytes),
        rssBytes: u64(memory.rssBytes),
        pageFaults: u64(memory.pageFaults),
        majorPageFaults: u64(memory.majorPageFaults),
        psi: undefined,
      },
      network,
      process: pids && { timestamp, processCount: u64(pids.current) },
      containers: [],
      io: undefined,
    },
    windows: undefined,
  };
}

/** Label keys shared by every metric, as cAdvisor names them: the cgroup path and container name. */
const BASE_LABELS = ['id', 'name'];
const NETWORK_LABELS = [...BASE_LABELS, 'interface'];
const FAILURE_LABELS = [...BASE_LABELS, 'failure_type', 'scope'];

/**
 * The cAdvisor-named metrics crisp reports through ListPodSandboxMetrics. kubelet builds its
 * /metrics/cadvisor descriptors from this list and drops values whose name is not in it, so it
 * names exactly what `podSandboxMetrics` can produce.
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

/**
 * Pod-level metrics from one sample, labelled as cAdvisor labels a pod cgroup: `id` is the
 * cgroup path and `name` empty (kubelet adds namespace, pod and container itself). CRI metric
 * values are unsigned integers, so CPU seconds are whole seconds. The timestamp is 0: the values
 * were read for this call, not cached.
 */
export function podSandboxMetricValues(cgroupPath: string, sample: PodSample): Metric[] {
  const base = [cgroupPath, ''];
  const out: Metric[] = [];
  const add = (name: string, type: MetricType, value: bigint | undefined, extraLabels: string[] = []): void => {
    if (value === undefined) return;
    out.push({ name, timestamp: 0n, metricType: type, labelValues: [...base, ...extraLabels], value: { value } });
  };
  const { cpu, memory, pids } = sample.cgroup;
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
    // The pod cgroup's counters include its children: hierarchy scope in cAdvisor's terms.
    add('container_memory_failures_total', MetricType.COUNTER, memory.pageFaults, ['pgfault', 'hierarchy']);
    add('container_memory_failures_total', MetricType.COUNTER, memory.majorPageFaults, ['pgmajfault', 'hierarchy']);
    // cAdvisor reports an unlimited cgroup's limit as 0.
    add('container_spec_memory_limit_bytes', MetricType.GAUGE, memory.limitBytes ?? 0n);
    add('container_oom_events_total', MetricType.COUNTER, memory.oomKills);
  }
  if (pids) add('container_processes', MetricType.GAUGE, pids.current);
  for (const i of podInterfaces(sample.interfaces ?? [])) {
    const labels = [i.name];
    add('container_network_receive_bytes_total', MetricType.COUNTER, i.rxBytes, labels);
    add('container_network_receive_packets_total', MetricType.COUNTER, i.rxPackets, labels);
    add('container_network_receive_packets_dropped_total', MetricType.COUNTER, i.rxDropped, labels);
    add('container_network_receive_errors_total', MetricType.COUNTER, i.rxErrors, labels);
    add('container_network_transmit_bytes_total', MetricType.COUNTER, i.txBytes, labels);
    add('container_network_transmit_packets_total', MetricType.COUNTER, i.txPackets, labels);
    add('container_network_transmit_packets_dropped_total', MetricType.COUNTER, i.txDropped, labels);
    add('container_network_transmit_errors_total', MetricType.COUNTER, i.txErrors, labels);
  }
  return out;
}
