/**
 * ferry against QEMU at its best, for one scenario: ferry's runs alternated with
 * runs of every QEMU candidate configuration (bench/qemu/configs.ts), round by
 * round, and what the tables print of them. The runners are passed in, so the
 * order and the arithmetic are tested without starting either engine.
 * @module
 */
import type { MigrationRun, ScenarioSpec } from "./qemu/types.ts";
import {
  type CandidateSummary,
  headlineS,
  type QemuConfig,
  rankCandidates,
  withConfig,
} from "./qemu/configs.ts";
import { median } from "./stats.ts";

/** How to run each side once. */
export interface Runners<F extends MigrationRun> {
  readonly ferry: (spec: ScenarioSpec) => Promise<F>;
  /** Absent: no QEMU column (unavailable, or --no-qemu). */
  readonly qemu?: (spec: ScenarioSpec) => Promise<MigrationRun>;
  /** The bare Deno pipe of the same bytes (bench/pipe_floor.ts), seconds. */
  readonly floor?: () => Promise<number>;
  /** Told about every run as it ends (the suite's JSON log and progress lines). */
  readonly onRun?: (engine: string, run: MigrationRun | { totalS: number }) => void;
}

/** Everything measured for one scenario. */
export interface Comparison<F extends MigrationRun> {
  readonly ferry: F[];
  /** Every candidate's runs, best first (see rankCandidates); empty without QEMU. */
  readonly candidates: CandidateSummary[];
  readonly floor: number[];
}

/**
 * The order of round `round`: ferry first (then the floor), then the QEMU
 * candidates starting one further each round, so none always runs right after
 * ferry or last.
 */
export function roundOrder(round: number, candidates: number): number[] {
  return Array.from({ length: candidates }, (_, k) => (k + round) % candidates);
}

/**
 * Runs `spec` `n` times on ferry and `n` times on each of `configs`, alternated
 * round by round (ferry, floor, the candidates in {@link roundOrder}).
 */
export async function compareEngines<F extends MigrationRun>(
  spec: ScenarioSpec,
  n: number,
  configs: readonly QemuConfig[],
  runners: Runners<F>,
): Promise<Comparison<F>> {
  const ferry: F[] = [];
  const floor: number[] = [];
  const byConfig = new Map<QemuConfig, MigrationRun[]>(
    runners.qemu ? configs.map((c) => [c, []]) : [],
  );
  for (let i = 0; i < n; i++) {
    const f = await runners.ferry({ ...spec, wall: true });
    ferry.push(f);
    runners.onRun?.("ferry", f);
    if (runners.floor) {
      const s = await runners.floor();
      floor.push(s);
      runners.onRun?.("floor", { totalS: s });
    }
    if (!runners.qemu) continue;
    for (const k of roundOrder(i, configs.length)) {
      const c = configs[k];
      const q = await runners.qemu(withConfig({ ...spec, wall: true }, c));
      byConfig.get(c)!.push(q);
      runners.onRun?.(`qemu ${c.name}`, q);
    }
  }
  return { ferry, candidates: rankCandidates(byConfig), floor };
}

/** Numbers as the tables print them. */
export const fmt = {
  s: (x: number) =>
    Number.isNaN(x) ? "—" : x < 1 ? `${(x * 1000).toFixed(0)} ms` : `${x.toFixed(2)} s`,
  ms: (x: number) => Number.isNaN(x) ? "—" : `${x.toFixed(x < 10 ? 1 : 0)} ms`,
  ratio: (a: number, b: number) =>
    Number.isNaN(a) || Number.isNaN(b) || b === 0 ? "—" : `${(a / b).toFixed(2)}×`,
};

/** `median (min–max)` of the numbers that are not NaN, or "—" when there are none. */
export function spread(xs: readonly number[], f: (x: number) => string): string {
  const ok = xs.filter((x) => !Number.isNaN(x));
  if (ok.length === 0) return "—";
  if (ok.length === 1) return f(ok[0]);
  return `${f(median(ok))} (${f(Math.min(...ok))}–${f(Math.max(...ok))})`;
}

/** What one engine's side of a table row says. */
export interface Side {
  /** `completed/runs`. */
  readonly done: string;
  /** Headline: wall clock to the destination's completion, median (range). */
  readonly wall: string;
  /** The engine's own total time, median (range). */
  readonly total: string;
  /** The engine's own downtime, median (range). */
  readonly downtime: string;
  /** Share of all runs that completed within the downtime limit. */
  readonly withinLimit: string;
  /** Dirty-log syncs, median. */
  readonly passes: string;
  /** The median headline, seconds (for ratios). */
  readonly medianS: number;
}

/** One engine's runs as a table row's cells; `limitMs` for the ≤ limit share. */
export function side(runs: readonly MigrationRun[], limitMs: number): Side {
  const done = runs.filter((r) => r.completed);
  const within = done.filter((r) => r.downtimeMs <= limitMs).length;
  return {
    done: `${done.length}/${runs.length}`,
    wall: spread(done.map(headlineS), fmt.s),
    total: spread(done.map((r) => r.totalS), fmt.s),
    downtime: spread(done.map((r) => r.downtimeMs), fmt.ms),
    withinLimit: runs.length ? `${Math.round((100 * within) / runs.length)} %` : "—",
    passes: runs.length ? `${median(runs.map((r) => r.passes))}` : "—",
    medianS: median(done.map(headlineS)),
  };
}

/**
 * The candidates table: one row per scenario, one column per configuration, each
 * cell the median headline time (with completed/runs when some did not complete);
 * the best of the row in bold.
 */
export function candidatesRows(
  rows: readonly { readonly scenario: string; readonly candidates: readonly CandidateSummary[] }[],
  configs: readonly QemuConfig[],
): string[][] {
  return rows.map(({ scenario, candidates }) => [
    scenario,
    ...configs.map((c) => {
      const found = candidates.find((x) => x.config === c);
      if (!found) return "—";
      const cell = found.completed === 0 ? `never (0/${found.runs.length})` : fmt.s(found.medianS) +
        (found.completed < found.runs.length ? ` (${found.completed}/${found.runs.length})` : "");
      return candidates[0] === found ? `**${cell}**` : cell;
    }),
  ]);
}

/**
 * A markdown table, columns padded: the first left-aligned, the others right
 * (fit for BENCHMARKS.md as printed).
 */
export function markdownTable(head: readonly string[], rows: readonly string[][]): string {
  for (const r of rows) {
    if (r.length !== head.length) {
      throw new RangeError(`a row has ${r.length} cells, the head ${head.length}`);
    }
  }
  const w = head.map((h, i) => Math.max(3, h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: readonly string[]) =>
    "| " + cells.map((c, i) => i === 0 ? c.padEnd(w[i]) : c.padStart(w[i])).join(" | ") + " |";
  const sep = "|" +
    w.map((n, i) => (i === 0 ? ":" : "-") + "-".repeat(n) + (i === 0 ? "-" : ":")).join("|") +
    "|";
  return [line(head), sep, ...rows.map(line)].join("\n");
}
