/** Text tables for the terminal and the JSON file holding every sample. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { MachineInfo } from './env/host';
import type { BenchOptions } from './options';
import { goalMet, type MetricResult, type RuntimeOutcome, ratioOf, summaryOf, type WorkloadResult } from './result';
import type { RuntimeName, RuntimeVersion } from './runtimes/runtime';
import { summarize } from './stats';

export interface BenchReport {
  startedAt: string;
  finishedAt: string;
  options: BenchOptions;
  machine: MachineInfo;
  runtimes: Partial<Record<RuntimeName, RuntimeVersion>>;
  /** What the run created on the host (all removed at the end). */
  environment: { workDir: string; bridge: string; subnet: string; registry: string; cgroupParents: string[] };
  /** Why a runtime is missing from the whole run (e.g. containerd not installed). */
  absent: Partial<Record<RuntimeName, string>>;
  workloads: WorkloadResult[];
}

function num(x: number | undefined): string {
  if (x === undefined || !Number.isFinite(x)) return '-';
  const a = Math.abs(x);
  if (a >= 1000) return x.toFixed(0);
  if (a >= 100) return x.toFixed(1);
  if (a >= 1) return x.toFixed(2);
  return x.toFixed(3);
}

function cells(outcome: RuntimeOutcome | undefined): string[] {
  if (!outcome) return ['', '', ''];
  if (outcome.kind === 'unavailable') return ['n/a', '', ''];
  if (outcome.kind === 'failed') return ['FAILED', '', ''];
  const s = summaryOf(outcome);
  if (!s) return ['-', '', ''];
  if (s.n === 1) return [num(s.p50), '', ''];
  return [num(s.p50), num(s.p90), num(s.p99)];
}

function goalCell(m: MetricResult): string {
  if (!m.goal) return '';
  const met = goalMet(m);
  const mark = met === undefined ? 'n/a' : met ? '✓' : '✗';
  return `${m.goal.stat} ${m.goal.comparison === '<=' ? '≤' : '≥'} ${m.goal.ratio} ${mark}`;
}

function table(rows: string[][], rightAligned: (col: number) => boolean): string {
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => [...(r[c] ?? '')].length)));
  return rows
    .map((r) =>
      r
        .map((cell, c) => {
          const pad = ' '.repeat(widths[c]! - [...cell].length);
          return rightAligned(c) ? pad + cell : cell + pad;
        })
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}

/** One workload as a table: percentiles per runtime, ratios, and goals. */
export function renderWorkload(w: WorkloadResult, runtimes: readonly RuntimeName[]): string {
  const params = Object.entries(w.parameters)
    .map(([k, v]) => `${k} ${v}`)
    .join(', ');
  const header = ['metric', 'unit'];
  for (const rt of runtimes) header.push(`${rt} p50`, 'p90', 'p99');
  const both = runtimes.includes('crisp') && runtimes.includes('containerd');
  if (both) header.push('ratio p50', 'ratio p99', 'goal');
  const rows = [header];
  for (const m of w.metrics) {
    const row = [m.name, m.unit];
    for (const rt of runtimes) row.push(...cells(m.outcomes[rt]));
    if (both) row.push(num(ratioOf(m, 'p50')), num(ratioOf(m, 'p99')), goalCell(m));
    rows.push(row);
  }
  const lines = [`== ${w.title} (${params})`, table(rows, (c) => c >= 2 && c < rows[0]!.length - (both ? 1 : 0))];
  const reasons = new Set<string>();
  for (const m of w.metrics) {
    for (const rt of runtimes) {
      const o = m.outcomes[rt];
      if (o && o.kind !== 'samples') reasons.add(`${rt} ${o.kind === 'unavailable' ? 'not available' : 'FAILED'}: ${o.reason}`);
    }
  }
  for (const r of reasons) lines.push(`   ${r}`);
  for (const n of w.notes) lines.push(`   note: ${n}`);
  return lines.join('\n');
}

export function renderHeader(report: Pick<BenchReport, 'machine' | 'runtimes' | 'absent'>): string {
  const m = report.machine;
  const lines = [
    `machine: ${m.cores} cores (${m.cpuModel}), ${(m.memoryBytes / 2 ** 30).toFixed(1)} GiB, kernel ${m.kernel}, cgroup v${m.cgroupVersion}, ${m.os}, node ${m.node}`,
  ];
  for (const [name, v] of Object.entries(report.runtimes)) {
    const extra = Object.entries(v.details)
      .map(([k, d]) => `${k}: ${d}`)
      .join('; ');
    lines.push(`${name}: ${v.runtimeName} ${v.runtimeVersion} (CRI ${v.runtimeApiVersion})${extra ? ` — ${extra}` : ''}`);
  }
  for (const [name, why] of Object.entries(report.absent)) lines.push(`${name}: not measured — ${why}`);
  lines.push('ratio = crisp / containerd (lower is better for times and memory, higher for throughput)');
  return lines.join('\n');
}

/** Writes the report with every sample and its summary; returns the file path. */
export function writeJson(report: BenchReport): string {
  fs.mkdirSync(report.options.outDir, { recursive: true });
  const stamp = report.startedAt.replace(/[:.]/g, '-');
  const file = path.join(report.options.outDir, `results-${stamp}.json`);
  const workloads = report.workloads.map((w) => ({
    ...w,
    metrics: w.metrics.map((m) => ({
      ...m,
      summaries: Object.fromEntries(
        Object.entries(m.outcomes)
          .filter(([, o]) => o?.kind === 'samples' && o.samples.length > 0)
          .map(([rt, o]) => [rt, summarize((o as { samples: number[] }).samples)]),
      ),
      ratio: { p50: ratioOf(m, 'p50') ?? null, p99: ratioOf(m, 'p99') ?? null },
      goalMet: goalMet(m) ?? null,
    })),
  }));
  const tmp = `${file}.tmp`;
  fs.writeFileSync(tmp, `${JSON.stringify({ ...report, workloads }, null, 2)}\n`);
  fs.renameSync(tmp, file);
  return file;
}
