/**
 * Snapshot benchmarks for the file: and exec: transports, run by `deno task
 * bench` after the network scenarios (and standalone with `deno run -A
 * bench/transports.ts [--runs 3] [--only file]`): a 1 GiB random-filled paused
 * guest is saved to `file:` (write GB/s, fsync and rename included) and restored
 * from it by a new ferry (restore GB/s), then the same through `exec:cat > F` and
 * `exec:cat F`. Every restore's RAM digest is checked against the source's.
 */
import { parseArgs } from "node:util";
import { FerryProcess } from "../testing/ferry_process.ts";
import { median } from "./stats.ts";

const UNLIMITED = 100_000_000_000;
const GiB = 2 ** 30;

/** One save-and-restore scenario. */
interface Scenario {
  name: string;
  /** Destination URI of the save, given the snapshot path. */
  save: (path: string) => string;
  /** Incoming URI of the restore, given the snapshot path. */
  restore: (path: string) => string;
  flags: string[];
}

const SCENARIOS: Scenario[] = [
  {
    name: "file",
    save: (p) => `file:${p}`,
    restore: (p) => `file:${p}`,
    flags: [],
  },
  {
    name: "exec-cat",
    save: (p) => `exec:cat > ${p}`,
    restore: (p) => `exec:cat ${p}`,
    flags: ["--allow-exec"],
  },
];

interface Result {
  saveS: number;
  restoreS: number;
  downtimeMs: number;
  fileBytes: number;
}

async function runOnce(s: Scenario, dir: string): Promise<Result> {
  const path = `${dir}/${s.name}.ferry`;
  await using src = await FerryProcess.start([
    "--ram",
    "1G",
    "--fill",
    "random",
    "--paused",
    ...s.flags,
  ]);
  await src.api("PATCH", "/migrations/parameters", { max_bandwidth: UNLIMITED });
  const started = await src.api("POST", "/migrations", { uri: s.save(path) });
  if (started.status !== 202) throw new Error(`${s.name}: ${JSON.stringify(started.body)}`);
  const saved = await src.waitFor(
    "/migrations/current",
    (b) => ["completed", "failed", "cancelled"].includes(b.status),
    300_000,
  );
  if (saved.status !== "completed") {
    throw new Error(`${s.name} save: ${saved.status} ${saved.error_desc ?? ""}`);
  }
  const fileBytes = (await Deno.stat(path)).size;
  const want = (await src.api("GET", "/vm/ram/digest")).body.sha256;
  await src.kill("SIGKILL"); // free its 1 GiB before the restoring ferry starts

  await using dst = await FerryProcess.start([
    "--ram",
    "1G",
    "--incoming",
    s.restore(path),
    "--no-autostart",
    ...s.flags,
  ]);
  const restored = await dst.waitFor(
    "/migrations/incoming",
    (b) => b.status === "completed" || b.status === "failed",
    300_000,
  );
  if (restored.status !== "completed") {
    throw new Error(`${s.name} restore: ${restored.error_desc}`);
  }
  const got = (await dst.api("GET", "/vm/ram/digest")).body.sha256;
  if (got !== want) throw new Error(`${s.name}: restored RAM differs from the saved guest's`);
  await Deno.remove(path);
  return {
    saveS: saved.total_time / 1000,
    restoreS: restored.total_time / 1000,
    downtimeMs: saved.downtime,
    fileBytes,
  };
}

/**
 * Runs every scenario `runs` times (or only the one named `only`) and prints a
 * line each with median save and restore times and GB/s. Returns false if a
 * scenario name was asked for and none matched.
 */
export async function runTransportBenchmarks(runs: number, only?: string): Promise<boolean> {
  const picked = SCENARIOS.filter((s) => !only || s.name === only);
  if (picked.length === 0) return false;
  console.log(
    `\nsnapshot benchmark: 1 GiB random paused guest saved and restored, ${runs} run(s), medians`,
  );
  console.log(
    "transport".padEnd(11) + "save".padStart(9) + "GB/s".padStart(7) + "restore".padStart(10) +
      "GB/s".padStart(7) + "downtime".padStart(10) + "file".padStart(12),
  );
  const dir = await Deno.makeTempDir({ prefix: "ferry-bench-snap-" });
  try {
    for (const s of picked) {
      const results: Result[] = [];
      for (let i = 0; i < runs; i++) results.push(await runOnce(s, dir));
      const save = median(results.map((r) => r.saveS));
      const restore = median(results.map((r) => r.restoreS));
      console.log(
        s.name.padEnd(11) + `${save.toFixed(3)}s`.padStart(9) +
          (GiB / save / 1e9).toFixed(2).padStart(7) + `${restore.toFixed(3)}s`.padStart(10) +
          (GiB / restore / 1e9).toFixed(2).padStart(7) +
          `${median(results.map((r) => r.downtimeMs)).toFixed(1)}ms`.padStart(10) +
          `${results[0].fileBytes}`.padStart(12),
      );
    }
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
  console.log(
    "save = POST /migrations until completed (fsync and rename included); restore = the " +
      "destination's incoming total_time; GB/s = 2^30 bytes of guest RAM / time",
  );
  return true;
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args[0] === "--" ? Deno.args.slice(1) : Deno.args,
    options: { runs: { type: "string", default: "3" }, only: { type: "string" } },
  });
  await runTransportBenchmarks(Math.max(1, Number(values.runs)), values.only);
}
