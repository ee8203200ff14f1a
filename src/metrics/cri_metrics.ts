import * as grpc from '@grpc/grpc-js';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { RunningKind, RuntimeMetrics } from './runtime_metrics';

/** Prefix of crisp's own series, after CRI-O's `container_runtime_crio_`. */
export const METRIC_PREFIX = 'container_runtime_crisp_';

/** RPC latencies span sub-millisecond list calls to minute-long pulls. */
const RPC_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120];
const PULL_BUCKETS = [0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800];

export type { RunningKind } from './runtime_metrics';

export interface CriMetricsOptions {
  /** Also export the Node process's metrics (CPU, memory, event loop lag, GC, handles). */
  processMetrics?: boolean;
}

/**
 * The daemon's Prometheus metrics, in a registry of its own (never prom-client's global one) so
 * that several daemons in one process, as in tests, do not share series.
 */
export class CriMetrics implements RuntimeMetrics {
  readonly registry = new Registry();
  private readonly operations: Counter<'operation_type'>;
  private readonly errors: Counter<'operation_type' | 'code'>;
  private readonly latency: Histogram<'operation_type'>;
  private readonly pullBytes: Counter<'host' | 'kind'>;
  private readonly pullDuration: Histogram;
  private readonly running = new Map<RunningKind, () => number>();

  constructor(options: CriMetricsOptions = {}) {
    const registers = [this.registry];
    this.operations = new Counter({
      name: `${METRIC_PREFIX}operations_total`,
      help: 'CRI calls served, by RPC.',
      labelNames: ['operation_type'],
      registers,
    });
    this.errors = new Counter({
      name: `${METRIC_PREFIX}operations_errors_total`,
      help: 'CRI calls that failed, by RPC and gRPC status code.',
      labelNames: ['operation_type', 'code'],
      registers,
    });
    this.latency = new Histogram({
      name: `${METRIC_PREFIX}operations_latency_seconds`,
      help: 'Time to serve a CRI call, by RPC.',
      labelNames: ['operation_type'],
      buckets: RPC_BUCKETS,
      registers,
    });
    this.pullBytes = new Counter({
      name: `${METRIC_PREFIX}image_pull_bytes_total`,
      help: 'Bytes received from registries while pulling images, by registry host and content kind.',
      labelNames: ['host', 'kind'],
      registers,
    });
    this.pullDuration = new Histogram({
      name: `${METRIC_PREFIX}image_pull_duration_seconds`,
      help: 'Duration of successful image pulls.',
      buckets: PULL_BUCKETS,
      registers,
    });
    const running = this.running;
    for (const kind of ['pods', 'containers'] as const) {
      new Gauge({
        name: `${METRIC_PREFIX}running_${kind}`,
        help: kind === 'pods' ? 'Pod sandboxes that are ready.' : 'Containers that are running.',
        registers,
        // Read from the stores at scrape time: never stale, nothing to keep in step.
        collect() {
          const count = running.get(kind);
          if (count) this.set(count());
        },
      });
    }
    if (options.processMetrics) collectDefaultMetrics({ register: this.registry });
  }

  /** The instrument hook: one finished (or refused) CRI call. */
  observeRpc(method: string, code: grpc.status, seconds: number): void {
    this.operations.inc({ operation_type: method });
    this.latency.observe({ operation_type: method }, seconds);
    if (code !== grpc.status.OK) this.errors.inc({ operation_type: method, code: grpc.status[code] ?? String(code) });
    else if (method === 'PullImage') this.pullDuration.observe(seconds);
  }

  /** The registry client's byte hook. */
  observePullBytes(bytes: number, info: { host: string; kind: string }): void {
    this.pullBytes.inc({ host: info.host, kind: info.kind }, bytes);
  }

  /** Sets where a running gauge reads its value at scrape time; without a source it reads 0. */
  countRunning(kind: RunningKind, count: () => number): void {
    this.running.set(kind, count);
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  render(): Promise<string> {
    return this.registry.metrics();
  }
}
