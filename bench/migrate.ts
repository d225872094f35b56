/**
 * `deno task bench`: ferry against QEMU 7.2 at its best, same scenarios, same machine,
 * same run. Every scenario runs between two real ferry processes and between two real
 * QEMU processes (`bench/qemu/`) in each of QEMU's candidate configurations
 * (bench/qemu/configs.ts), alternated round by round; the tables (markdown) name
 * QEMU's best and give the wall clock from the migrate request to the destination's
 * completion for both engines, with each engine's own total time and downtime beside
 * it (ferry / QEMU best: below 1.00× means ferry is faster).
 *
 *   deno task bench                     # everything (≈2 h): bulk, running, ab, integrity, tls, extra
 *   deno task bench --quick             # 1 run per scenario, 3 per distribution, no 4 GiB
 *   deno task bench --only bulk         # a group (bulk, running, ab, integrity, tls, extra) or a scenario name substring
 *   deno task bench --qemu-configs best # QEMU's usual best alone; or all (default), or a list: private,multifd-4
 *   deno task bench --only tls --runs 5 # 1 GiB random over loopback TLS (with the migration secret) against plaintext
 *   deno task bench --only image --runs 5   # a real guest's RAM image (bench/image_bench.ts)
 *   deno task bench --no-qemu           # ferry only
 *   deno task bench --multifd 4         # ferry with 4 multifd channels (QEMU's multifd is among its candidates)
 *   deno task bench --json out.json     # also write every run as JSON
 */
import { parseArgs } from "node:util";
import { type FerryRun, runFerry } from "./ferry_runner.ts";
import { qemuAvailable, runQemu } from "./qemu/mod.ts";
import type { MigrationRun, ScenarioSpec, Skipped } from "./qemu/types.ts";
import { runCapabilityBenchmarks } from "./capabilities.ts";
import { runTransportBenchmarks } from "./transports.ts";
import { runPipeFloor } from "./pipe_floor.ts";
import { runImageBenchmarks } from "./image_bench.ts";
import { median, percentile } from "./stats.ts";
import {
  candidatesRows,
  compareEngines,
  type Comparison,
  fmt,
  markdownTable,
  side,
  spread,
} from "./compare.ts";
import { type CandidateSummary, parseQemuConfigs } from "./qemu/configs.ts";
import { makeTestPki, SERVER_NAME } from "../testing/certs.ts";
import { tlsFloor } from "./tls_floor.ts";

const UNLIMITED = 100e9;
const MiB = 2 ** 20;
const GiB = 2 ** 30;

/** A scenario of the suite: what to run, how often, and what ferry must reach. */
interface Scenario {
  readonly name: string;
  readonly group: "bulk" | "running" | "ab" | "integrity";
  readonly spec: ScenarioSpec;
  /** The plan's target for ferry's total time, seconds (BENCHMARKS.md, Targets). */
  readonly targetS?: number;
}

function bulk(
  name: string,
  ramBytes: number,
  transport: "tcp" | "unix",
  targetS: number,
): Scenario {
  return {
    name,
    group: "bulk",
    targetS,
    spec: {
      ramBytes,
      fill: name.startsWith("idle") ? "zero" : "random",
      workload: name.startsWith("idle") ? { kind: "idle" } : { kind: "paused" },
      transport,
      maxBandwidth: UNLIMITED,
      downtimeLimitMs: 300,
      timeoutS: 120,
    },
  };
}

const BULK: Scenario[] = [
  bulk("random-1g-tcp", GiB, "tcp", 0.5),
  bulk("random-1g-unix", GiB, "unix", 0.35),
  bulk("random-4g-tcp", 4 * GiB, "tcp", 1.8),
  bulk("random-4g-unix", 4 * GiB, "unix", 1.8 * 0.35 / 0.5),
  bulk("idle-1g-tcp", GiB, "tcp", 0.05),
];

/** Running guests dirtying 10/50/200 MB/s, limits 30/300 ms, 1 GB/s link. */
const RUNNING: Scenario[] = [10, 50, 200].flatMap((mb) =>
  [30, 300].map((limit): Scenario => ({
    name: `dirty-${mb}M-${limit}ms`,
    group: "running",
    spec: {
      ramBytes: 512 * MiB,
      fill: "random",
      workload: { kind: "dirty", bytesPerSecond: mb * 1e6 },
      transport: "tcp",
      maxBandwidth: 1e9,
      downtimeLimitMs: limit,
      timeoutS: 30,
    },
  }))
);

/** QEMU's migration-test loop over 256 MiB: plain, xbzrle, auto-converge at 300 and 30 ms. */
const AB: Scenario[] = [300, 30].flatMap((limit) =>
  (["plain", "xbzrle", "auto-converge"] as const).map((mode): Scenario => ({
    name: `ab-256m-${limit}ms-${mode}`,
    group: "ab",
    spec: {
      ramBytes: 512 * MiB,
      fill: "zero",
      workload: { kind: "ab", rangeBytes: 256 * MiB },
      transport: "tcp",
      maxBandwidth: UNLIMITED,
      downtimeLimitMs: limit,
      timeoutS: 20,
      ...(mode === "xbzrle" ? { xbzrle: { cacheBytes: 512 * MiB } } : {}),
      ...(mode === "auto-converge" ? { autoConverge: true } : {}),
    },
  }))
);

/**
 * The cost of the `verify` capability: the same scenario with it on and off, in
 * alternation (ferry only; QEMU has no such check).
 */
const INTEGRITY: Scenario[] = [
  { ...bulk("random-1g-tcp", GiB, "tcp", 0.5), group: "integrity" },
  { ...RUNNING.find((s) => s.name === "dirty-50M-30ms")!, group: "integrity" },
];

const mib = (b: number) => Number.isNaN(b) ? "—" : `${Math.round(b / MiB)}`;

const { values } = parseArgs({
  args: Deno.args[0] === "--" ? Deno.args.slice(1) : Deno.args,
  options: {
    runs: { type: "string" },
    "dist-runs": { type: "string" },
    only: { type: "string" },
    quick: { type: "boolean", default: false },
    "no-qemu": { type: "boolean", default: false },
    "qemu-configs": { type: "string" },
    json: { type: "string" },
    image: { type: "string" },
    "image-bw": { type: "string" },
    multifd: { type: "string" },
  },
});
/** `spec` with `--multifd`'s channels for ferry, when given. */
function withMultifd(spec: ScenarioSpec): ScenarioSpec {
  return multifdChannels > 1 ? { ...spec, multifd: { channels: multifdChannels } } : spec;
}
/**
 * `--multifd N`: ferry runs every scenario of the main suite with N multifd channels;
 * QEMU's multifd runs among its candidates (bench/qemu/configs.ts).
 */
const multifdChannels = values.multifd === undefined ? 1 : Number(values.multifd);
if (!Number.isInteger(multifdChannels) || multifdChannels < 1 || multifdChannels > 16) {
  throw new Error(`--multifd ${values.multifd}: expected a whole number of channels from 1 to 16`);
}
const runs = Math.max(1, Number(values.runs ?? (values.quick ? 1 : 5)));
const distRuns = Math.max(1, Number(values["dist-runs"] ?? (values.quick ? 3 : 10)));
const qemuConfigs = parseQemuConfigs(values["qemu-configs"]);
const selected = (s: Scenario) =>
  (!values.only || s.group === values.only || s.name.includes(values.only)) &&
  !(values.quick && s.spec.ramBytes > GiB);

const qemu: true | Skipped = values["no-qemu"]
  ? { skipped: "--no-qemu given" }
  : await qemuAvailable();
const qemuNote = qemu === true ? "" : `QEMU column skipped: ${qemu.skipped}`;
const log: { scenario: string; engine: string; run: MigrationRun | { totalS: number } }[] = [];

/**
 * Runs `s` n times on ferry and on every QEMU candidate (and, with `floor`, the
 * bare Deno pipe of bench/pipe_floor.ts), alternated round by round.
 */
function measure(s: Scenario, n: number, floor = false): Promise<Comparison<FerryRun>> {
  return compareEngines(s.spec, n, qemuConfigs, {
    ferry: (spec) => runFerry(withMultifd(spec)),
    ...(qemu === true ? { qemu: (spec: ScenarioSpec) => runQemu(spec) } : {}),
    ...(floor
      ? {
        floor: async () =>
          (await runPipeFloor({ ramBytes: s.spec.ramBytes, transport: s.spec.transport }))
            .seconds,
      }
      : {}),
    onRun: (engine, run) => {
      const r = "apiLatenciesMs" in run ? { ...run, apiLatenciesMs: undefined } : run;
      log.push({ scenario: s.name, engine, run: r as MigrationRun });
      const wall = "wallS" in run && run.wallS !== undefined ? run.wallS : run.totalS;
      console.error(`  ${s.name} ${engine}: ${fmt.s(wall)}`);
    },
  });
}

/** What the QEMU side's vCPU does in a scenario (the table says when it competes). */
const vcpu = (s: Scenario) =>
  s.spec.workload.kind === "paused" ? "paused" : "runs (TCG): competes for the 2 cores";

/** QEMU's best candidate, by name. */
const bestName = (c: Comparison<FerryRun>) => c.candidates[0]?.config.name ?? "—";

const candidateRows: Record<string, { scenario: string; candidates: CandidateSummary[] }[]> = {};
function printCandidates(group: string): void {
  const rows = candidateRows[group];
  if (!rows?.length || qemu !== true) return;
  console.log(`\nQEMU's candidates (${group}), median wall clock; the best of each row in bold:\n`);
  console.log(markdownTable(
    ["scenario", ...qemuConfigs.map((c) => c.name)],
    candidatesRows(
      rows,
      qemuConfigs,
    ),
  ));
}

const LEGEND = "wall = the API request (ferry: POST /migrations; QEMU: QMP migrate) → the " +
  "destination reports completed (ferry: its incoming event; QEMU: its MIGRATION event); " +
  "total, downtime = the engine's own total_time and downtime; medians (min–max). " +
  "QEMU best = the candidate with the most completed runs, then the lowest median wall; " +
  "ferry/Q = ferry's median wall ÷ QEMU best's. QEMU vCPU: where it runs, QEMU's TCG vCPU " +
  "thread competes with both engines' senders for the machine's two cores.";

console.log(`ferry vs QEMU 7.2 migration benchmark (${new Date().toISOString()})`);
console.log(
  `machine: ${navigator.hardwareConcurrency} cores, ${
    (Deno.systemMemoryInfo().total / GiB).toFixed(0)
  } GiB, Deno ${Deno.version.deno}, ${Deno.build.os}; QEMU: TCG`,
);
if (qemuNote) console.log(qemuNote);
else {
  console.log(`QEMU candidates (--qemu-configs ${values["qemu-configs"] ?? "all"}):`);
  for (const c of qemuConfigs) console.log(`- ${c.name}: ${c.description}`);
}

// ---- bulk: paused random guests and an idle guest, unlimited bandwidth ----
const bulkSel = BULK.filter(selected);
if (bulkSel.length) {
  console.log(`\n# Bulk transfer, unlimited bandwidth — ${runs} runs per engine, alternated\n`);
  const rows: string[][] = [];
  candidateRows.bulk = [];
  for (const s of bulkSel) {
    const r = await measure(s, runs, s.spec.fill === "random");
    // API latency comes from one more ferry run with a poller on GET /migrations/current
    // every 2 ms; the timed runs above go without it, as the floor's do (its ~500
    // requests/s take CPU from the sender on a 2-core machine).
    const sampled = await runFerry(withMultifd(s.spec), { sampleApi: true });
    log.push({
      scenario: s.name,
      engine: "ferry (API sampled)",
      run: { ...sampled, apiLatenciesMs: undefined } as MigrationRun,
    });
    const f = side(r.ferry, s.spec.downtimeLimitMs);
    const best = r.candidates[0];
    const q = best ? side(best.runs, s.spec.downtimeLimitMs) : undefined;
    const flt = median(r.floor);
    const lat = sampled.apiLatenciesMs;
    const rss = (xs: readonly MigrationRun[]) =>
      xs.length
        ? `${mib(Math.max(...xs.map((x) => x.peakRssSrc)))} / ${
          mib(Math.max(...xs.map((x) => x.peakRssDst)))
        }`
        : "—";
    rows.push([
      s.name,
      vcpu(s),
      f.wall,
      f.total,
      f.downtime,
      spread(r.floor, fmt.s),
      fmt.ratio(f.medianS, flt),
      bestName(r),
      q?.wall ?? "—",
      q?.total ?? "—",
      q?.downtime ?? "—",
      `**${fmt.ratio(f.medianS, q?.medianS ?? NaN)}**`,
      fmt.s(s.targetS!),
      `${percentile(lat, 50).toFixed(1)} / ${percentile(lat, 99).toFixed(1)} ms`,
      rss(r.ferry),
      rss(best?.runs ?? []),
    ]);
    candidateRows.bulk.push({ scenario: s.name, candidates: r.candidates });
  }
  console.log(markdownTable([
    "scenario",
    "QEMU vCPU",
    "ferry wall",
    "ferry total",
    "ferry downtime",
    "Deno floor",
    "ferry/floor",
    "QEMU best",
    "QEMU wall",
    "QEMU total",
    "QEMU downtime",
    "ferry/Q",
    "target",
    "API p50 / p99",
    "ferry RSS s / d",
    "QEMU RSS s / d",
  ], rows));
  console.log(
    `\n${LEGEND} Deno floor = the same pages in ferry's framing between two bare Deno ` +
      "processes, no ferry (bench/pipe_floor.ts): what any Deno program pays here; " +
      "ferry/floor compares ferry's wall with it. RSS = peak resident set (VmHWM) of " +
      "source / destination in MiB; guest RAM is part of it.",
  );
  printCandidates("bulk");
}

/** The running and ab groups: downtime against the limit, passes, both engines. */
async function downtimeGroup(
  group: "running" | "ab",
  sel: Scenario[],
  n: number,
  title: string,
): Promise<void> {
  if (!sel.length) return;
  console.log(`\n# ${title} — ${n} runs per engine, alternated\n`);
  const rows: string[][] = [];
  candidateRows[group] = [];
  for (const s of sel) {
    const r = await measure(s, n);
    const limit = s.spec.downtimeLimitMs;
    const f = side(r.ferry, limit);
    const best = r.candidates[0];
    const q = best ? side(best.runs, limit) : undefined;
    rows.push([
      s.name,
      vcpu(s),
      f.done,
      f.wall,
      f.total,
      f.downtime,
      f.withinLimit,
      f.passes,
      bestName(r),
      q?.done ?? "—",
      q?.wall ?? "—",
      q?.total ?? "—",
      q?.downtime ?? "—",
      q?.withinLimit ?? "—",
      q?.passes ?? "—",
      `**${fmt.ratio(f.medianS, q?.medianS ?? NaN)}**`,
    ]);
    candidateRows[group].push({ scenario: s.name, candidates: r.candidates });
    const never = [r.ferry.find((x) => !x.completed), best?.runs.find((x) => !x.completed)];
    for (const [who, x] of [["ferry", never[0]], [`QEMU ${bestName(r)}`, never[1]]] as const) {
      if (x?.note) console.error(`  ${s.name} ${who}: ${x.note}`);
    }
  }
  console.log(markdownTable([
    "scenario",
    "QEMU vCPU",
    "ferry done",
    "ferry wall",
    "ferry total",
    "ferry downtime",
    "≤ limit",
    "passes",
    "QEMU best",
    "done",
    "QEMU wall",
    "QEMU total",
    "QEMU downtime",
    "≤ limit",
    "passes",
    "ferry/Q",
  ], rows));
  console.log(
    `\n${LEGEND} done = completed runs; ≤ limit = share of all runs that completed with ` +
      "downtime within the limit.",
  );
  printCandidates(group);
}

// ---- running guests: downtime distribution ----
await downtimeGroup(
  "running",
  RUNNING.filter(selected),
  distRuns,
  "Running guest (512 MiB, random-filled), 1 GB/s bandwidth",
);

// ---- ab: QEMU's migration-test workload ----
await downtimeGroup(
  "ab",
  AB.filter(selected),
  runs,
  "ab workload over 256 MiB (byte 0 of every page, as fast as the vCPU runs), unlimited bandwidth",
);

// ---- integrity: verify on against off ----
const intSel = values.only === "integrity" || (!values.only && !values.quick) ? INTEGRITY : [];
if (intSel.length) {
  const n = Math.max(runs, 5);
  console.log(
    `\n# The verify capability (integrity digests), on against off — ${n} runs each, alternated`,
  );
  const rows: string[][] = [];
  for (const s of intSel) {
    const on: FerryRun[] = [];
    const off: FerryRun[] = [];
    for (let i = 0; i < n; i++) {
      for (const verify of i % 2 === 0 ? [true, false] : [false, true]) {
        const r = await runFerry({ ...s.spec, verify });
        (verify ? on : off).push(r);
        log.push({
          scenario: `${s.name} verify=${verify}`,
          engine: "ferry",
          run: { ...r, apiLatenciesMs: undefined } as MigrationRun,
        });
      }
    }
    const t = (xs: FerryRun[]) => xs.filter((x) => x.completed).map((x) => x.totalS);
    const d = (xs: FerryRun[]) => xs.filter((x) => x.completed).map((x) => x.downtimeMs);
    rows.push([
      s.name,
      spread(t(on), fmt.s),
      spread(t(off), fmt.s),
      `${((median(t(on)) / median(t(off)) - 1) * 100).toFixed(1)} %`,
      spread(d(on), fmt.ms),
      spread(d(off), fmt.ms),
      fmt.ms(median(d(on)) - median(d(off))),
    ]);
  }
  console.log(markdownTable([
    "scenario",
    "total, verify on",
    "total, verify off",
    "cost",
    "downtime on",
    "downtime off",
    "added",
  ], rows));
  console.log(
    "cost = median total with verify ÷ without − 1; added = difference of the median downtimes.",
  );
}

// ---- tls: TLS with the migration secret against plaintext ----
if (values.only === "tls" || (!values.only && !values.quick)) {
  const s = BULK.find((b) => b.name === "random-1g-tcp")!;
  const n = Math.max(runs, 3);
  await using pki = await makeTestPki();
  const security = {
    destination: [
      "--tls-cert",
      pki.server.cert,
      "--tls-key",
      pki.server.key,
      "--migration-secret",
      pki.secret,
    ],
    source: { tls_ca: pki.ca, tls_hostname: SERVER_NAME, migration_secret: pki.secret },
  };
  console.log(
    `\n# TLS (AES-GCM, with the migration secret) against plaintext, loopback tcp — ${n} runs each, alternated`,
  );
  const tls: FerryRun[] = [];
  const plain: FerryRun[] = [];
  for (let i = 0; i < n; i++) {
    for (const on of i % 2 === 0 ? [true, false] : [false, true]) {
      const r = await runFerry(s.spec, on ? { security } : {});
      (on ? tls : plain).push(r);
      log.push({
        scenario: `${s.name} ${on ? "tls" : "plain"}`,
        engine: "ferry",
        run: { ...r, apiLatenciesMs: undefined } as MigrationRun,
      });
    }
  }
  const t = (xs: FerryRun[]) => xs.filter((x) => x.completed).map((x) => x.totalS);
  const d = (xs: FerryRun[]) => xs.filter((x) => x.completed).map((x) => x.downtimeMs);
  const rows: string[][] = [[
    s.name,
    spread(t(tls), fmt.s),
    spread(t(plain), fmt.s),
    fmt.ratio(median(t(tls)), median(t(plain))),
    spread(d(tls), fmt.ms),
    spread(d(plain), fmt.ms),
  ]];
  const floors = { tls: [] as number[], plain: [] as number[], calls: "" };
  for (let i = 0; i < n; i++) {
    for (const on of [true, false]) {
      const f = await tlsFloor(pki, on, s.spec.ramBytes);
      (on ? floors.tls : floors.plain).push(f.seconds);
      if (on) floors.calls = `${f.writes} writes, ${f.reads} reads`;
    }
  }
  rows.push([
    "bare Deno copy",
    spread(floors.tls, fmt.s),
    spread(floors.plain, fmt.s),
    fmt.ratio(median(floors.tls), median(floors.plain)),
    `TLS: ${floors.calls}`,
    "",
  ]);
  console.log(markdownTable([
    "scenario",
    "total, TLS",
    "total, plain",
    "TLS/plain",
    "downtime, TLS",
    "downtime, plain",
  ], rows));
  console.log(
    "TLS/plain = median total with TLS ÷ without (the issue's goal: at most 1.50x). " +
      "Certificates: P-256 (testing/certs.ts). bare Deno copy = the same bytes, client to " +
      "server in one process, no ferry code (bench/tls_floor.ts).",
  );
}

// ---- image: a real guest's RAM, compression and same-page references (only with --only image) ----
if (values.only === "image") {
  const image = values.image ?? new URL("../.cache/x86-ram/real-1g.img", import.meta.url).pathname;
  const bandwidths = (values["image-bw"] ?? `${UNLIMITED}`).split(",").map(Number);
  const opts = { image, runs, bandwidths, qemu: qemu === true, qemuConfigs };
  for (const r of await runImageBenchmarks(opts)) {
    log.push({ scenario: `image ${r.bandwidth}`, engine: r.config, run: r.run });
  }
}

if (values.json) await Deno.writeTextFile(values.json, JSON.stringify(log, null, 1));

// ---- extra: codec, auto-converge, snapshots (ferry only) ----
if (!values.only || values.only === "extra") {
  console.log("\n# Snapshots, XBZRLE codec, auto-converge (ferry only)");
  await runTransportBenchmarks(runs, undefined);
  await runCapabilityBenchmarks();
}
