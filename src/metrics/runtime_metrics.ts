import type * as grpc from '@grpc/grpc-js';

export type RunningKind = 'pods' | 'containers';

/**
 * What the daemon reports to its metrics. Without a metrics endpoint nothing reads them, so the
 * daemon then uses `noMetrics` and never loads prom-client (several megabytes of resident memory).
 */
export interface RuntimeMetrics {
  /** The instrument hook: one finished (or refused) CRI call. */
  observeRpc(method: string, code: grpc.status, seconds: number): void;
  /** The registry client's byte hook. */
  observePullBytes(bytes: number, info: { host: string; kind: string }): void;
  /** Sets where a running gauge reads its value at scrape time. */
  countRunning(kind: RunningKind, count: () => number): void;
}

export const noMetrics: RuntimeMetrics = {
  observeRpc: () => undefined,
  observePullBytes: () => undefined,
  countRunning: () => undefined,
};
