/**
 * `deno task bench:resume`: what resuming an interrupted pre-copy saves (issue 19).
 * A guest migrates between two ferries over a rate-limited link (the fault proxy's
 * throttle, 1 Gbit/s by default); the link is cut once `--cut` of the RAM went
 * through. Then either
 *
 * - **resume**: both sides wait in `interrupted`; the bench resumes them through the
 *   API at once (POST /migrations/incoming/resume, POST /migrations/current/resume)
 *   over a new link of the same rate, or
 * - **start over**: resume_grace is 0, both sides fail as before; the bench arms the
 *   destination again and migrates from the start over a new link.
 *
 * Each run reports the time from the first migrate to completion and the bytes the
 * links carried, source to destination (both links together), and checks that both
 * guests' RAM digests match. The cases alternate, `--runs` times each; the table
 * ends with their medians. Figures belong to a quiet machine (BENCHMARKS.md).
 *
 *   deno task bench:resume [--ram 1G] [--link 125000000] [--cut 0.5] [--runs 3]
 *                          [--workload idle|random:rate=10M] [--json]
 * @module
 */
import { parseArgs } from "node:util";
import { FerryProcess } from "../testing/ferry_process.ts";
import { FaultProxy } from "../testing/fault_proxy.ts";
import { median } from "./stats.ts";

/** One migration cut and carried to completion. */
export interface ResumeRun {
  readonly mode: "resume" | "start over";
  /** First migrate → completed, ms. */
  readonly ms: number;
  /** Bytes the links carried from source to destination. */
  readonly bytes: number;
  /** The resume's `bytes_saved` (0 when starting over). */
  readonly saved: number;
  readonly digestsMatch: boolean;
}

interface Options {
  ram: string;
  link: number;
  cut: number;
  workload: string;
}

const FINAL = ["completed", "failed", "cancelled"];

function ramBytes(text: string): number {
  const m = /^(\d+)([KMG]?)$/i.exec(text);
  if (!m) throw new Error(`--ram ${text}: expected a size like 1G or 256M`);
  const unit = { "": 1, K: 1 << 10, M: 1 << 20, G: 1 << 30 }[m[2].toUpperCase()]!;
  return Number(m[1]) * unit;
}

/** Runs one migration of `mode`; the ferries are started and stopped here. */
export async function runOnce(mode: ResumeRun["mode"], o: Options): Promise<ResumeRun> {
  const grace = mode === "resume" ? 600_000 : 0;
  await using src = await FerryProcess.start([
    "--ram",
    o.ram,
    "--fill",
    "random",
    "--workload",
    o.workload,
  ]);
  await using dst = await FerryProcess.destination(o.ram);
  await src.api("PATCH", "/migrations/parameters", {
    max_bandwidth: 100_000_000_000,
    downtime_limit: 300,
    resume_grace: grace,
  });
  await dst.api("PATCH", "/migrations/parameters", { resume_grace: grace });
  const cutAt = Math.floor(ramBytes(o.ram) * o.cut);
  const first = FaultProxy.start(dst.incoming, { throttle: o.link, cutAt });
  const t0 = performance.now();
  let second: FaultProxy | null = null;
  try {
    await must(src.api("POST", "/migrations", { uri: first.address }), 202);
    const broken = await src.waitFor(
      "/migrations/current",
      (b) => b.status === "interrupted" || FINAL.includes(b.status),
      600_000,
    );
    if (mode === "resume") {
      if (broken.status !== "interrupted") throw new Error(`not interrupted: ${broken.status}`);
      await dst.waitFor("/migrations/incoming", (b) => b.status !== "active", 60_000);
      const listening = await must(
        dst.api("POST", "/migrations/incoming/resume", { uri: "tcp:127.0.0.1:0" }),
        202,
      );
      second = FaultProxy.start(listening.address, { throttle: o.link });
      await must(src.api("POST", "/migrations/current/resume", { uri: second.address }), 202);
    } else {
      if (broken.status !== "failed") throw new Error(`expected failed: ${broken.status}`);
      await dst.waitFor("/migrations/incoming", (b) => FINAL.includes(b.status), 60_000);
      const armed = await must(
        dst.api("POST", "/migrations/incoming", { uri: "tcp:127.0.0.1:0" }),
        202,
      );
      second = FaultProxy.start(armed.address, { throttle: o.link });
      await must(src.api("POST", "/migrations", { uri: second.address }), 202);
    }
    const done = await src.waitFor(
      "/migrations/current",
      (b) => FINAL.includes(b.status),
      3_600_000,
    );
    const ms = performance.now() - t0;
    if (done.status !== "completed") throw new Error(`${mode}: ${JSON.stringify(done)}`);
    await dst.waitFor("/migrations/incoming", (b) => FINAL.includes(b.status), 60_000);
    const a = (await src.api("GET", "/vm/ram/digest")).body;
    const b = (await dst.api("GET", "/vm/ram/digest")).body;
    return {
      mode,
      ms,
      bytes: first.forwarded + second.forwarded,
      saved: done.resume?.bytes_saved ?? 0,
      digestsMatch: a.sha256 === b.sha256,
    };
  } finally {
    await first.close();
    await second?.close();
  }
}

async function must(
  call: Promise<{ status: number; body: unknown }>,
  status: number,
  // deno-lint-ignore no-explicit-any
): Promise<any> {
  const res = await call;
  if (res.status !== status) throw new Error(`HTTP ${res.status}: ${JSON.stringify(res.body)}`);
  return res.body;
}

const mib = (n: number) => (n / (1 << 20)).toFixed(1);

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args.filter((a, i) => !(a === "--" && i === 0)),
    options: {
      ram: { type: "string", default: "1G" },
      link: { type: "string", default: "125000000" },
      cut: { type: "string", default: "0.5" },
      runs: { type: "string", default: "3" },
      workload: { type: "string", default: "idle" },
      json: { type: "boolean", default: false },
    },
  });
  const o: Options = {
    ram: values.ram,
    link: Number(values.link),
    cut: Number(values.cut),
    workload: values.workload,
  };
  if (!(o.link > 0) || !(o.cut > 0 && o.cut < 1)) {
    throw new Error("--link must be bytes/s above 0, --cut a fraction between 0 and 1");
  }
  const runs: ResumeRun[] = [];
  console.log(
    `bench:resume: ${o.ram} (--fill random, --workload ${o.workload}), link ${
      (o.link * 8 / 1e6).toFixed(0)
    } Mbit/s, cut at ${o.cut * 100} %`,
  );
  console.log("mode        time (s)  bytes (MiB)  saved (MiB)  RAM equal");
  for (let i = 0; i < Number(values.runs); i++) {
    for (const mode of ["resume", "start over"] as const) {
      const r = await runOnce(mode, o);
      runs.push(r);
      console.log(
        `${mode.padEnd(10)}  ${(r.ms / 1000).toFixed(2).padStart(8)}  ${
          mib(r.bytes).padStart(11)
        }  ${mib(r.saved).padStart(11)}  ${r.digestsMatch ? "yes" : "NO"}`,
      );
    }
  }
  for (const mode of ["resume", "start over"] as const) {
    const of = runs.filter((r) => r.mode === mode);
    console.log(
      `median ${mode}: ${(median(of.map((r) => r.ms)) / 1000).toFixed(2)} s, ${
        mib(median(of.map((r) => r.bytes)))
      } MiB`,
    );
  }
  if (values.json) console.log(JSON.stringify(runs));
  if (runs.some((r) => !r.digestsMatch)) Deno.exit(1);
}
