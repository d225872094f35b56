/**
 * `deno task bench`: end-to-end migration benchmarks between two real ferries on
 * loopback. Prints one line per scenario with the figure, the DESIGN §6 target,
 * QEMU 7.2's figure measured on this machine class, and the ratios.
 *
 *   deno task bench [-- --runs 3] [-- --only random-tcp]
 *
 * Then the snapshot scenarios of `bench/transports.ts` (`--only file`, `--only exec-cat`).
 */
import { parseArgs } from "node:util";
import { FerryProcess } from "./ferry_process.ts";
import { runCapabilityBenchmarks } from "./capabilities.ts";
import { runTransportBenchmarks } from "./transports.ts";

const UNLIMITED = 100_000_000_000;
const GiB = 2 ** 30;

interface Scenario {
  name: string;
  ram: string;
  args: string[];
  transport: "tcp" | "unix";
  /** Target seconds and QEMU's seconds (DESIGN §6; QEMU prefaulted where given). */
  targetS: number;
  qemuS: number;
}

const SCENARIOS: Scenario[] = [
  {
    name: "random-tcp",
    ram: "1G",
    args: ["--fill", "random", "--paused"],
    transport: "tcp",
    targetS: 0.5,
    qemuS: 0.57,
  },
  {
    name: "random-unix",
    ram: "1G",
    args: ["--fill", "random", "--paused"],
    transport: "unix",
    targetS: 0.35,
    qemuS: 0.39,
  },
  {
    name: "idle-tcp",
    ram: "1G",
    args: ["--paused"],
    transport: "tcp",
    targetS: 0.05,
    qemuS: 0.055,
  },
];

interface Result {
  totalS: number;
  downtimeMs: number;
  bytes: number;
  /** GET /migrations/current latencies (ms) sampled while the migration ran. */
  latencies: number[];
}

/** Polls GET /migrations/current back to back until the migration ends; returns latencies. */
async function sampleLatency(src: FerryProcess, ended: () => boolean): Promise<number[]> {
  const out: number[] = [];
  while (!ended()) {
    const t = performance.now();
    const res = await fetch(`${src.url}/migrations/current`);
    await res.arrayBuffer();
    out.push(performance.now() - t);
    await new Promise((r) => setTimeout(r, 2));
  }
  return out;
}

function percentile(xs: number[], p: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
}

async function runOnce(s: Scenario): Promise<Result> {
  let dir: string | undefined;
  let uri = "tcp:127.0.0.1:0";
  if (s.transport === "unix") {
    dir = await Deno.makeTempDir({ prefix: "ferry-bench-" });
    uri = `unix:${dir}/m.sock`;
  }
  try {
    await using dst = await FerryProcess.destination(s.ram, uri);
    await using src = await FerryProcess.start(["--ram", s.ram, ...s.args]);
    await src.api("PATCH", "/migrations/parameters", { max_bandwidth: UNLIMITED });
    await src.api("POST", "/migrations", { uri: dst.incoming });
    let ended = false;
    const sampler = sampleLatency(src, () => ended);
    const info = await src.waitFor(
      "/migrations/current",
      (b) => ["completed", "failed", "cancelled"].includes(b.status),
      300_000,
    );
    ended = true;
    const latencies = await sampler;
    if (info.status !== "completed") {
      throw new Error(`${s.name}: ${info.status} ${info.error_desc ?? ""}`);
    }
    const a = (await src.api("GET", "/vm/ram/digest")).body.sha256;
    await dst.waitFor("/migrations/incoming", (b) => b.status === "completed");
    const b = (await dst.api("GET", "/vm/ram/digest")).body.sha256;
    if (a !== b) throw new Error(`${s.name}: RAM digests differ`);
    return {
      totalS: info.total_time / 1000,
      downtimeMs: info.downtime,
      bytes: info.ram.transferred,
      latencies,
    };
  } finally {
    if (dir) await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

const { values } = parseArgs({
  args: Deno.args[0] === "--" ? Deno.args.slice(1) : Deno.args,
  options: { runs: { type: "string", default: "3" }, only: { type: "string" } },
});
const runs = Math.max(1, Number(values.runs));
console.log(
  `ferry migration benchmark: ${runs} run(s) per scenario, medians; max_bandwidth unlimited`,
);
console.log(
  `machine: ${navigator.hardwareConcurrency} cores, Deno ${Deno.version.deno}, ${Deno.build.os}`,
);
console.log(
  "scenario".padEnd(13) + "total".padStart(9) + "GB/s".padStart(7) + "downtime".padStart(10) +
    "target".padStart(9) + "vs target".padStart(11) + "QEMU 7.2".padStart(10) +
    "vs QEMU".padStart(9),
);
for (const s of SCENARIOS) {
  if (values.only && s.name !== values.only) continue;
  const results: Result[] = [];
  for (let i = 0; i < runs; i++) results.push(await runOnce(s));
  const total = median(results.map((r) => r.totalS));
  const down = median(results.map((r) => r.downtimeMs));
  const lat = results.flatMap((r) => r.latencies);
  const gbps = (s.ram === "1G" ? GiB : 4 * GiB) / total / 1e9;
  console.log(
    s.name.padEnd(13) + `${total.toFixed(3)}s`.padStart(9) + gbps.toFixed(2).padStart(7) +
      `${down.toFixed(1)}ms`.padStart(10) + `${s.targetS}s`.padStart(9) +
      `${(total / s.targetS).toFixed(2)}x`.padStart(11) + `${s.qemuS}s`.padStart(10) +
      `${(total / s.qemuS).toFixed(2)}x`.padStart(9) +
      `  ${percentile(lat, 50).toFixed(1)}/${percentile(lat, 99).toFixed(1)}ms (${lat.length})`,
  );
}
console.log("ratios: ferry time / target and ferry time / QEMU time (below 1.00x = faster)");

// Snapshot save/restore over file: and exec: (bench/transports.ts).
await runTransportBenchmarks(runs, values.only);

// XBZRLE codec and auto-converge (bench/capabilities.ts); block migration runs as `deno task bench:block`.
if (!values.only) await runCapabilityBenchmarks();
