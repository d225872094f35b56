/**
 * Validates the planner (POST /migrations/plan) against real migrations: for each
 * scenario of a grid (dirty rate, hot set, downtime limit, bandwidth,
 * auto-converge) two ferries are started, the source's dirty rate is measured,
 * the plan asked for, and then the migration run; the table compares the plan
 * with what happened.
 *
 *   deno task bench:plan                 # the full grid: 48 scenarios, ~20-30 min
 *   deno task bench:plan -- --small      # 3 scenarios, a smoke run
 *   deno task bench:plan -- --ram 256M --measure 4000 --stall-windows 100
 *
 * Targets (docs/ARCHITECTURE.md, "Planning a migration"): converge or not
 * predicted right in ≥ 95 % of the scenarios; the predicted total time within
 * ±25 % of the measured one in ≥ 80 %.
 * @module
 */
import { parseArgs } from "node:util";
import { FerryProcess } from "../testing/ferry_process.ts";
import { parseSize } from "../vm/ram.ts";

/** One scenario of the grid. */
export interface PlanScenario {
  /** Bytes of pages the guest dirties per second. */
  readonly rate: number;
  /** The hot set, `P%:Q%` (Q % of writes land in the first P % of pages), or null. */
  readonly hot: string | null;
  readonly limitMs: number;
  /** max_bandwidth, bytes/s. */
  readonly bandwidth: number;
  readonly autoConverge: boolean;
}

/** What one scenario predicted and measured. */
export interface PlanRow {
  readonly scenario: PlanScenario;
  readonly planned: { converges: boolean; totalMs: number; passes: number; downtimeMs: number };
  readonly measured: {
    converged: boolean;
    status: string;
    totalMs: number;
    passes: number;
    downtimeMs: number;
    throttle: number;
  };
  /** The measured dirty rate, MiB/s. */
  readonly dirtyMiBs: number;
}

const MIB = 2 ** 20;

/** The grid: rates 10, 50, 200 MiB/s × no hot set or 10 %:90 % × 30 and 300 ms × 2 bandwidths × auto-converge off and on. */
export function planGrid(bandwidths: readonly number[] = [64 * MIB, 256 * MIB]): PlanScenario[] {
  const out: PlanScenario[] = [];
  for (const rate of [10 * MIB, 50 * MIB, 200 * MIB]) {
    for (const hot of [null, "10%:90%"]) {
      for (const limitMs of [30, 300]) {
        for (const bandwidth of bandwidths) {
          for (const autoConverge of [false, true]) {
            out.push({ rate, hot, limitMs, bandwidth, autoConverge });
          }
        }
      }
    }
  }
  return out;
}

/** A few scenarios across the range, for a smoke run. */
export function smallGrid(): PlanScenario[] {
  return [
    { rate: 10 * MIB, hot: null, limitMs: 300, bandwidth: 256 * MIB, autoConverge: false },
    { rate: 200 * MIB, hot: null, limitMs: 30, bandwidth: 64 * MIB, autoConverge: false },
    { rate: 50 * MIB, hot: "10%:90%", limitMs: 30, bandwidth: 64 * MIB, autoConverge: true },
  ];
}

const FINAL = new Set(["completed", "failed", "cancelled"]);

/** Runs one scenario between two fresh ferries. */
export async function runPlanScenario(
  s: PlanScenario,
  opts: { ram: string; measureMs: number; stallWindows: number; timeoutMs: number },
): Promise<PlanRow> {
  const workload = `random:rate=${s.rate}${s.hot ? `,hot=${s.hot}` : ""}`;
  await using dst = await FerryProcess.destination(opts.ram, "tcp:127.0.0.1:0");
  await using src = await FerryProcess.start([
    "--ram",
    opts.ram,
    "--fill",
    "random",
    "--workload",
    workload,
  ]);
  const ok = (what: string, r: { status: number; body: unknown }) => {
    if (r.status >= 300) throw new Error(`${what}: ${r.status} ${JSON.stringify(r.body)}`);
    return r;
  };
  ok(
    "capabilities",
    await src.api("PUT", "/migrations/capabilities", { auto_converge: s.autoConverge }),
  );
  ok(
    "parameters",
    await src.api("PATCH", "/migrations/parameters", {
      max_bandwidth: s.bandwidth,
      downtime_limit: s.limitMs,
      stall_windows: opts.stallWindows,
      stall_action: "fail",
    }),
  );
  ok("dirty-rate", await src.api("POST", "/vm/dirty-rate", { calc_time_ms: opts.measureMs }));
  const measured = await src.waitFor(
    "/vm/dirty-rate",
    (b) => b.status !== "measuring",
    opts.measureMs + 30_000,
  );
  if (measured.status !== "measured") throw new Error(`measurement ${measured.status}`);
  const plan = ok("plan", await src.api("POST", "/migrations/plan", { uri: dst.incoming }))
    .body as Record<string, number | boolean>;
  ok("migrate", await src.api("POST", "/migrations", { uri: dst.incoming }));
  let throttle = 0;
  const deadline = Date.now() + opts.timeoutMs;
  // deno-lint-ignore no-explicit-any
  let info: any;
  for (;;) {
    info = (await src.api("GET", "/migrations/current")).body;
    throttle = Math.max(throttle, info.cpu_throttle_percentage ?? 0);
    if (FINAL.has(info.status)) break;
    if (Date.now() > deadline) {
      await src.api("DELETE", "/migrations/current");
      info = await src.waitFor("/migrations/current", (b) => FINAL.has(b.status), 30_000);
      break;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  const warnings: string[] = (info.warnings ?? []).map((w: { code: string }) => w.code);
  const converged = info.status === "completed" &&
    !warnings.some((c) => c.startsWith("stalled") || c === "downtime-limit-unachievable");
  return {
    scenario: s,
    planned: {
      converges: plan.converges as boolean,
      totalMs: plan.total_time_ms as number,
      passes: plan.passes as number,
      downtimeMs: plan.downtime_ms as number,
    },
    measured: {
      converged,
      status: info.status,
      totalMs: info.total_time ?? NaN,
      passes: info.ram?.dirty_sync_count ?? NaN,
      downtimeMs: info.downtime ?? NaN,
      throttle,
    },
    dirtyMiBs: measured.mib_per_second,
  };
}

/** Whether a row's total time is within ±25 % of the measured one. */
export function totalWithin(row: PlanRow, tolerance = 0.25): boolean {
  const { planned, measured } = row;
  return Math.abs(planned.totalMs - measured.totalMs) <= tolerance * measured.totalMs;
}

const mib = (b: number) => `${Math.round(b / MIB)}`;
const s1 = (ms: number) => Number.isFinite(ms) ? (ms / 1000).toFixed(1) : "—";

/** The markdown table and the two scores. */
export function planReport(rows: readonly PlanRow[]): string {
  const lines = [
    "| dirty MiB/s (measured) | hot set | limit ms | MiB/s | auto-converge | plan: converges | total s | passes | measured: converged | total s | passes | throttle % | converge right | total ±25 % |",
    "| ---: | --- | ---: | ---: | --- | --- | ---: | ---: | --- | ---: | ---: | ---: | --- | --- |",
  ];
  for (const r of rows) {
    const s = r.scenario;
    lines.push(
      `| ${mib(s.rate)} (${r.dirtyMiBs.toFixed(0)}) | ${s.hot ?? "—"} | ${s.limitMs} | ` +
        `${mib(s.bandwidth)} | ${s.autoConverge ? "on" : "off"} | ` +
        `${r.planned.converges ? "yes" : "no"} | ${
          s1(r.planned.totalMs)
        } | ${r.planned.passes} | ` +
        `${r.measured.converged ? "yes" : `no (${r.measured.status})`} | ${
          s1(r.measured.totalMs)
        } | ` +
        `${r.measured.passes} | ${r.measured.throttle} | ` +
        `${r.planned.converges === r.measured.converged ? "✓" : "✗"} | ${
          totalWithin(r) ? "✓" : "✗"
        } |`,
    );
  }
  const n = rows.length;
  const right = rows.filter((r) => r.planned.converges === r.measured.converged).length;
  const within = rows.filter((r) => totalWithin(r)).length;
  const pct = (k: number) => `${(100 * k / Math.max(1, n)).toFixed(0)} %`;
  lines.push("");
  lines.push(
    `Converge right: ${right}/${n} (${pct(right)}, target ≥ 95 %): ` +
      `${right >= 0.95 * n ? "met" : "missed"}. ` +
      `Total within ±25 %: ${within}/${n} (${pct(within)}, target ≥ 80 %): ` +
      `${within >= 0.8 * n ? "met" : "missed"}.`,
  );
  return lines.join("\n");
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args.filter((a, i) => !(a === "--" && i === 0)),
    options: {
      small: { type: "boolean", default: false },
      ram: { type: "string", default: "256M" },
      measure: { type: "string", default: "4000" },
      "stall-windows": { type: "string", default: "100" },
      timeout: { type: "string", default: "120000" },
    },
  });
  parseSize(values.ram); // a bad --ram fails here, not in a ferry
  const grid = values.small ? smallGrid() : planGrid();
  const opts = {
    ram: values.ram,
    measureMs: Number(values.measure),
    stallWindows: Number(values["stall-windows"]),
    timeoutMs: Number(values.timeout),
  };
  const rows: PlanRow[] = [];
  for (const [i, s] of grid.entries()) {
    const row = await runPlanScenario(s, opts);
    rows.push(row);
    console.error(
      `bench:plan ${i + 1}/${grid.length}: ${mib(s.rate)} MiB/s ${s.hot ?? ""} ${s.limitMs} ms ` +
        `${mib(s.bandwidth)} MiB/s ac=${s.autoConverge}: plan ${row.planned.converges} ` +
        `${s1(row.planned.totalMs)} s, measured ${row.measured.converged} ` +
        `${s1(row.measured.totalMs)} s`,
    );
  }
  console.log(
    `bench:plan: ${grid.length} scenarios, --ram ${opts.ram}, dirty rate measured for ` +
      `${opts.measureMs} ms, stall_windows ${opts.stallWindows} (stall_action fail)\n`,
  );
  console.log(planReport(rows));
}
