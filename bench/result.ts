/**
 * What a workload measured: named metrics, each with every sample per runtime, or the reason a
 * runtime has none.
 */
import type { RuntimeName } from './runtimes/runtime';
import { type Summary, summarize } from './stats';

export type Stat = 'p50' | 'p90' | 'p99';

/** A target for the crisp/containerd ratio of one statistic. */
export interface Goal {
  stat: Stat;
  comparison: '<=' | '>=';
  ratio: number;
}

export type RuntimeOutcome =
  | { kind: 'samples'; samples: number[] }
  /** The runtime does not implement an RPC the metric needs. */
  | { kind: 'unavailable'; reason: string }
  /** The runtime failed while being measured. */
  | { kind: 'failed'; reason: string };

export interface MetricResult {
  name: string;
  unit: string;
  better: 'lower' | 'higher';
  goal?: Goal;
  outcomes: Partial<Record<RuntimeName, RuntimeOutcome>>;
}

export interface WorkloadResult {
  id: string;
  title: string;
  /** Iterations and other parameters, for the table heading and the JSON. */
  parameters: Record<string, number | string>;
  metrics: MetricResult[];
  notes: string[];
}

export interface MetricSpec {
  unit: string;
  better?: 'lower' | 'higher';
  goal?: Goal;
}

export class Recorder {
  private readonly metrics = new Map<string, MetricResult>();
  /** Runtimes out of this workload, and why. */
  private readonly out = new Map<RuntimeName, RuntimeOutcome>();
  readonly notes: string[] = [];

  constructor(
    readonly id: string,
    readonly title: string,
    readonly runtimes: readonly RuntimeName[],
    readonly parameters: Record<string, number | string>,
  ) {}

  /** Declares a metric (fixing its place in the table). */
  metric(name: string, spec: MetricSpec): void {
    if (this.metrics.has(name)) return;
    this.metrics.set(name, { name, unit: spec.unit, better: spec.better ?? 'lower', goal: spec.goal, outcomes: {} });
  }

  add(rt: RuntimeName, name: string, value: number): void {
    const metric = this.metrics.get(name);
    if (!metric) throw new Error(`metric ${name} was not declared`);
    const outcome = metric.outcomes[rt];
    if (outcome === undefined) metric.outcomes[rt] = { kind: 'samples', samples: [value] };
    else if (outcome.kind === 'samples') outcome.samples.push(value);
  }

  /** Marks one metric as not measurable for the runtime (keeps samples of other metrics). */
  unavailableMetric(rt: RuntimeName, name: string, reason: string): void {
    const metric = this.metrics.get(name);
    if (metric) metric.outcomes[rt] = { kind: 'unavailable', reason };
  }

  /** Takes the runtime out of the rest of the workload. */
  stop(rt: RuntimeName, outcome: RuntimeOutcome): void {
    if (!this.out.has(rt)) this.out.set(rt, outcome);
  }

  isOut(rt: RuntimeName): boolean {
    return this.out.has(rt);
  }

  result(): WorkloadResult {
    const metrics = [...this.metrics.values()];
    for (const m of metrics) {
      for (const rt of this.runtimes) {
        const out = this.out.get(rt);
        const own = m.outcomes[rt];
        // A runtime taken out mid-way keeps no partial series: they would not be comparable.
        if (out && (own === undefined || own.kind === 'samples')) m.outcomes[rt] = out;
        else if (own === undefined) m.outcomes[rt] = { kind: 'unavailable', reason: 'not measured' };
      }
    }
    return { id: this.id, title: this.title, parameters: this.parameters, metrics, notes: this.notes };
  }
}

export function summaryOf(outcome: RuntimeOutcome | undefined): Summary | undefined {
  return outcome?.kind === 'samples' && outcome.samples.length > 0 ? summarize(outcome.samples) : undefined;
}

/** crisp/containerd of the goal's statistic (p50 without a goal); undefined when either side is missing. */
export function ratioOf(metric: MetricResult, stat: Stat): number | undefined {
  const a = summaryOf(metric.outcomes.crisp);
  const b = summaryOf(metric.outcomes.containerd);
  if (!a || !b || b[stat] === 0) return undefined;
  return a[stat] / b[stat];
}

export function goalMet(metric: MetricResult): boolean | undefined {
  if (!metric.goal) return undefined;
  const r = ratioOf(metric, metric.goal.stat);
  if (r === undefined) return undefined;
  return metric.goal.comparison === '<=' ? r <= metric.goal.ratio : r >= metric.goal.ratio;
}
