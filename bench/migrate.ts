/**
 * `deno task bench`: ferry against QEMU 7.2, same scenarios, same machine, same run.
 * Every scenario runs between two real ferry processes and then between two real
 * QEMU processes (`bench/qemu/`), and prints both figures and their ratio
 * (ferry / QEMU: below 1.00x means ferry is faster or smaller).
 *
 *   deno task bench                     # everything (≈15 min): bulk, running, ab, then codec/snapshots/link
 *   deno task bench --quick             # 1 run per bulk scenario, 3 per distribution, no 4 GiB
 *   deno task bench --only bulk         # a group (bulk, running, ab, integrity, tls, extra) or a scenario name substring
 *   deno task bench --only tls --runs 5 # 1 GiB random over loopback TLS (with the migration secret) against plaintext
 *   deno task bench --only image --runs 5   # a real guest's RAM image (bench/image_bench.ts)
 *   deno task bench --no-qemu           # ferry only
 *   deno task bench --multifd 4         # both engines with 4 multifd channels (ferry's multifd_channels)
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

const fmt = {
  s: (x: number) =>
    Number.isNaN(x) ? "—" : x < 1 ? `${(x * 1000).toFixed(0)}ms` : `${x.toFixed(2)}s`,
  ms: (x: number) => Number.isNaN(x) ? "—" : `${x.toFixed(x < 10 ? 1 : 0)}ms`,
  ratio: (a: number, b: number) =>
    Number.isNaN(a) || Number.isNaN(b) || b === 0 ? "—" : `${(a / b).toFixed(2)}x`,
  gbps: (bytes: number, s: number) => !(s > 0) ? "—" : (bytes / s / 1e9).toFixed(2),
  mib: (b: number) => Number.isNaN(b) ? "—" : `${Math.round(b / MiB)}`,
};

function row(cells: string[], widths: number[]): string {
  return cells.map((c, i) => i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i])).join(" ");
}

const { values } = parseArgs({
  args: Deno.args[0] === "--" ? Deno.args.slice(1) : Deno.args,
  options: {
    runs: { type: "string" },
    "dist-runs": { type: "string" },
    only: { type: "string" },
    quick: { type: "boolean", default: false },
    "no-qemu": { type: "boolean", default: false },
    json: { type: "string" },
    image: { type: "string" },
    "image-bw": { type: "string" },
    multifd: { type: "string" },
  },
});
/** `spec` with `--multifd`'s channels, when given. */
function withMultifd(spec: ScenarioSpec): ScenarioSpec {
  return multifdChannels > 1 ? { ...spec, multifd: { channels: multifdChannels } } : spec;
}
/** `--multifd N`: every scenario of the main suite runs with N multifd channels on both engines. */
const multifdChannels = values.multifd === undefined ? 1 : Number(values.multifd);
if (!Number.isInteger(multifdChannels) || multifdChannels < 1 || multifdChannels > 16) {
  throw new Error(`--multifd ${values.multifd}: expected a whole number of channels from 1 to 16`);
}
const runs = Math.max(1, Number(values.runs ?? (values.quick ? 1 : 3)));
const distRuns = Math.max(1, Number(values["dist-runs"] ?? (values.quick ? 3 : 10)));
const selected = (s: Scenario) =>
  (!values.only || s.group === values.only || s.name.includes(values.only)) &&
  !(values.quick && s.spec.ramBytes > GiB);

const qemu: true | Skipped = values["no-qemu"]
  ? { skipped: "--no-qemu given" }
  : await qemuAvailable();
const qemuNote = qemu === true ? "" : `QEMU column skipped: ${qemu.skipped}`;
const log: { scenario: string; engine: string; run: MigrationRun | { totalS: number } }[] = [];

/**
 * Runs `s` n times on both engines — and, with `floor`, the bare Deno pipe of
 * bench/pipe_floor.ts — alternately; QEMU runs are NaN rows when QEMU is unavailable.
 */
async function measure(scenario: Scenario, n: number, sampleApi: boolean, floor = false) {
  const s = { ...scenario, spec: withMultifd(scenario.spec) };
  const ferry: FerryRun[] = [];
  const qemuRuns: MigrationRun[] = [];
  const floorS: number[] = [];
  for (let i = 0; i < n; i++) {
    // Alternate engines so a noisy minute hurts both alike.
    const f = await runFerry(s.spec, { sampleApi });
    ferry.push(f);
    log.push({
      scenario: s.name,
      engine: "ferry",
      run: { ...f, apiLatenciesMs: undefined } as MigrationRun,
    });
    if (qemu === true) {
      const q = await runQemu(s.spec);
      qemuRuns.push(q);
      log.push({ scenario: s.name, engine: "qemu", run: q });
    }
    if (floor) {
      const p = await runPipeFloor({ ramBytes: s.spec.ramBytes, transport: s.spec.transport });
      floorS.push(p.seconds);
      log.push({ scenario: s.name, engine: "floor", run: { totalS: p.seconds } });
    }
  }
  return { ferry, qemu: qemuRuns, floor: floorS };
}

console.log(`ferry vs QEMU 7.2 migration benchmark (${new Date().toISOString()})`);
console.log(
  `machine: ${navigator.hardwareConcurrency} cores, ${
    (Deno.systemMemoryInfo().total / GiB).toFixed(0)
  } GiB, Deno ${Deno.version.deno}, ${Deno.build.os}; QEMU: TCG, prefaulted destination`,
);
if (qemuNote) console.log(qemuNote);

// ---- bulk: paused random guests and an idle guest, unlimited bandwidth ----
const bulkSel = BULK.filter(selected);
if (bulkSel.length) {
  console.log(`\n# Bulk transfer, unlimited bandwidth — medians of ${runs}`);
  const w = [15, 8, 6, 8, 8, 7, 8, 6, 8, 8, 7, 7, 22, 15, 15];
  console.log(row([
    "scenario",
    "ferry",
    "GB/s",
    "downtime",
    "floor",
    "f/floor",
    "QEMU",
    "GB/s",
    "downtime",
    "ferry/Q",
    "target",
    "vs tgt",
    "API p50/p99 run",
    "ferry RSS s/d",
    "QEMU RSS s/d",
  ], w));
  for (const s of bulkSel) {
    const n = s.spec.ramBytes > GiB ? 1 : runs;
    const r = await measure(s, n, false, s.spec.fill === "random");
    // API latency comes from one more ferry run with a poller on GET /migrations/current
    // every 2 ms; the timed runs above go without it, as the floor's do (its ~500
    // requests/s take CPU from the sender on a 2-core machine).
    const sampled = await runFerry(withMultifd(s.spec), { sampleApi: true });
    log.push({
      scenario: s.name,
      engine: "ferry (API sampled)",
      run: { ...sampled, apiLatenciesMs: undefined } as MigrationRun,
    });
    const ft = median(r.ferry.map((x) => x.totalS));
    const flt = median(r.floor);
    const qt = median(r.qemu.map((x) => x.totalS));
    const lat = sampled.apiLatenciesMs;
    const rss = (xs: MigrationRun[]) =>
      `${fmt.mib(Math.max(...xs.map((x) => x.peakRssSrc)))}/${
        fmt.mib(Math.max(...xs.map((x) => x.peakRssDst)))
      }M`;
    console.log(row([
      s.name,
      fmt.s(ft),
      fmt.gbps(s.spec.ramBytes, ft),
      fmt.ms(median(r.ferry.map((x) => x.downtimeMs))),
      fmt.s(flt),
      fmt.ratio(ft, flt),
      r.qemu.length ? fmt.s(qt) : "—",
      r.qemu.length ? fmt.gbps(s.spec.ramBytes, qt) : "—",
      r.qemu.length ? fmt.ms(median(r.qemu.map((x) => x.downtimeMs))) : "—",
      fmt.ratio(ft, qt),
      fmt.s(s.targetS!),
      fmt.ratio(ft, s.targetS!),
      `${percentile(lat, 50).toFixed(1)}/${percentile(lat, 99).toFixed(1)}ms ${
        fmt.s(sampled.totalS)
      }`,
      rss(r.ferry),
      r.qemu.length ? rss(r.qemu) : "—",
    ], w));
  }
  console.log(
    "floor = the same pages in ferry's framing between two bare Deno processes, no ferry " +
      "(bench/pipe_floor.ts): what any Deno program pays here.\n" +
      "RSS = peak resident set (VmHWM) of source/destination in MiB; guest RAM is part of it.",
  );
}

// ---- running guests: downtime distribution ----
const runSel = RUNNING.filter(selected);
if (runSel.length) {
  console.log(
    `\n# Running guest (512 MiB, random-filled), 1 GB/s bandwidth — ${distRuns} runs per engine`,
  );
  const w = [17, 6, 22, 8, 7, 7, 22, 8, 7, 7, 8];
  console.log(row([
    "scenario",
    "done",
    "downtime p50/p90/max",
    "≤limit",
    "passes",
    "total",
    "QEMU downtime p50/p90/max",
    "≤limit",
    "passes",
    "total",
    "ferry/Q",
  ], w));
  for (const s of runSel) {
    const r = await measure(s, distRuns, false);
    const describe = (xs: MigrationRun[]) => {
      const done = xs.filter((x) => x.completed);
      const d = done.map((x) => x.downtimeMs);
      const within = xs.filter((x) => x.completed && x.downtimeMs <= s.spec.downtimeLimitMs).length;
      return {
        done: `${done.length}/${xs.length}`,
        dist: `${fmt.ms(percentile(d, 50))}/${fmt.ms(percentile(d, 90))}/${
          fmt.ms(d.length ? Math.max(...d) : NaN)
        }`,
        within: xs.length ? `${Math.round((100 * within) / xs.length)}%` : "—",
        passes: `${median(xs.map((x) => x.passes))}`,
        total: fmt.s(median(done.map((x) => x.totalS))),
        totalS: median(done.map((x) => x.totalS)),
      };
    };
    const f = describe(r.ferry);
    const q = r.qemu.length ? describe(r.qemu) : undefined;
    console.log(row([
      s.name,
      f.done,
      f.dist,
      f.within,
      f.passes,
      f.total,
      q ? `${q.dist} (${q.done})` : "—",
      q?.within ?? "—",
      q?.passes ?? "—",
      q?.total ?? "—",
      fmt.ratio(f.totalS, q?.totalS ?? NaN),
    ], w));
  }
  console.log(
    "done = completed runs; ≤limit = share of all runs that completed with downtime within the limit.",
  );
}

// ---- ab: QEMU's migration-test workload ----
const abSel = AB.filter(selected);
if (abSel.length) {
  console.log(
    `\n# ab workload over 256 MiB (byte 0 of every page, as fast as the vCPU runs), unlimited bandwidth — ${runs} run(s)`,
  );
  const w = [28, 18, 9, 7, 18, 9, 7, 9];
  console.log(
    row(["scenario", "ferry", "downtime", "passes", "QEMU", "downtime", "passes", "ferry/Q"], w),
  );
  for (const s of abSel) {
    const r = await measure(s, runs, false);
    const cell = (xs: MigrationRun[]) => {
      const done = xs.filter((x) => x.completed);
      if (done.length === 0) return `never (${xs[0]?.note ?? "?"})`.replace(" completed", "");
      return `${fmt.s(median(done.map((x) => x.totalS)))} ${done.length}/${xs.length}`;
    };
    const down = (xs: MigrationRun[]) =>
      fmt.ms(median(xs.filter((x) => x.completed).map((x) => x.downtimeMs)));
    const t = (xs: MigrationRun[]) => median(xs.filter((x) => x.completed).map((x) => x.totalS));
    console.log(row([
      s.name,
      cell(r.ferry),
      down(r.ferry),
      `${median(r.ferry.map((x) => x.passes))}`,
      r.qemu.length ? cell(r.qemu) : "—",
      r.qemu.length ? down(r.qemu) : "—",
      r.qemu.length ? `${median(r.qemu.map((x) => x.passes))}` : "—",
      fmt.ratio(t(r.ferry), t(r.qemu)),
    ], w));
  }
}

// ---- integrity: verify on against off ----
const intSel = values.only === "integrity" || (!values.only && !values.quick) ? INTEGRITY : [];
if (intSel.length) {
  const n = Math.max(runs, 5);
  console.log(
    `\n# The verify capability (integrity digests), on against off — ${n} runs each, alternated`,
  );
  const w = [16, 22, 22, 9, 22, 22, 12];
  console.log(row([
    "scenario",
    "total on p50 (range)",
    "total off p50 (range)",
    "cost",
    "downtime on p50 (range)",
    "downtime off p50 (range)",
    "added",
  ], w));
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
    const spread = (xs: number[], f: (x: number) => string) =>
      `${f(median(xs))} (${f(Math.min(...xs))}–${f(Math.max(...xs))})`;
    const t = (xs: FerryRun[]) => xs.filter((x) => x.completed).map((x) => x.totalS);
    const d = (xs: FerryRun[]) => xs.filter((x) => x.completed).map((x) => x.downtimeMs);
    console.log(row([
      s.name,
      spread(t(on), fmt.s),
      spread(t(off), fmt.s),
      `${((median(t(on)) / median(t(off)) - 1) * 100).toFixed(1)}%`,
      spread(d(on), fmt.ms),
      spread(d(off), fmt.ms),
      fmt.ms(median(d(on)) - median(d(off))),
    ], w));
  }
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
  const w = [16, 24, 24, 9, 22, 22];
  console.log(row([
    "scenario",
    "total TLS p50 (range)",
    "total plain p50 (range)",
    "TLS/plain",
    "downtime TLS p50 (range)",
    "downtime plain p50 (range)",
  ], w));
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
  const spread = (xs: number[], f: (x: number) => string) =>
    `${f(median(xs))} (${f(Math.min(...xs))}–${f(Math.max(...xs))})`;
  const t = (xs: FerryRun[]) => xs.filter((x) => x.completed).map((x) => x.totalS);
  const d = (xs: FerryRun[]) => xs.filter((x) => x.completed).map((x) => x.downtimeMs);
  console.log(row([
    s.name,
    spread(t(tls), fmt.s),
    spread(t(plain), fmt.s),
    fmt.ratio(median(t(tls)), median(t(plain))),
    spread(d(tls), fmt.ms),
    spread(d(plain), fmt.ms),
  ], w));
  const floors = { tls: [] as number[], plain: [] as number[], calls: "" };
  for (let i = 0; i < n; i++) {
    for (const on of [true, false]) {
      const f = await tlsFloor(pki, on, s.spec.ramBytes);
      (on ? floors.tls : floors.plain).push(f.seconds);
      if (on) floors.calls = `${f.writes} writes, ${f.reads} reads`;
    }
  }
  console.log(row([
    "bare Deno copy",
    spread(floors.tls, fmt.s),
    spread(floors.plain, fmt.s),
    fmt.ratio(median(floors.tls), median(floors.plain)),
    `TLS: ${floors.calls}`,
    "",
  ], w));
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
  for (const r of await runImageBenchmarks({ image, runs, bandwidths, qemu: qemu === true })) {
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
