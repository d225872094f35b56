/**
 * The `image` group of `deno task bench` (`--only image`): a real guest's RAM
 * image (`deno task bench:image`, .cache/x86-ram/real-1g.img) migrated paused
 * over loopback tcp by ferry — plain, with `compress_method` zstd and lz4, with
 * `page_refs`, and zstd with `page_refs` — and by QEMU 7.2 on the same bytes
 * (`memory-backend-file`) in each of its candidate configurations
 * (bench/qemu/configs.ts: mapping, prealloc, multifd, xbzrle, zstd); the table
 * names QEMU's best. The headline is the wall clock from the migrate request to
 * the destination reporting completed; each engine's own total time and downtime
 * go beside it. Every configuration runs `runs` times, alternated round by round;
 * the table gives the median and the range.
 * @module
 */
import { type FerryRun, runFerry } from "./ferry_runner.ts";
import { markdownTable, spread } from "./compare.ts";
import { runQemu } from "./qemu/mod.ts";
import type { MigrationRun, ScenarioSpec } from "./qemu/types.ts";
import { median } from "./stats.ts";
import { headlineS, QEMU_CONFIGS, type QemuConfig, withConfig } from "./qemu/configs.ts";

const UNLIMITED = 100e9;

/** One configuration of the group. */
export interface ImageConfig {
  readonly name: string;
  readonly engine: "ferry" | "qemu";
  /** What this configuration adds to the base scenario. */
  readonly extra: Partial<ScenarioSpec>;
}

/** ferry's configurations, in the order of a round (QEMU's candidates follow). */
export const FERRY_IMAGE_CONFIGS: readonly ImageConfig[] = [
  { name: "ferry plain", engine: "ferry", extra: {} },
  { name: "ferry zstd-1", engine: "ferry", extra: { compress: { method: "zstd", level: 1 } } },
  { name: "ferry lz4", engine: "ferry", extra: { compress: { method: "lz4", level: 1 } } },
  { name: "ferry page_refs", engine: "ferry", extra: { pageRefs: true } },
  {
    name: "ferry zstd-1+refs",
    engine: "ferry",
    extra: { compress: { method: "zstd", level: 1 }, pageRefs: true },
  },
];

/** A QEMU candidate as a configuration of this group ("QEMU <name>"). */
export function qemuImageConfig(c: QemuConfig): ImageConfig {
  return { name: `QEMU ${c.name}`, engine: "qemu", extra: withConfig({} as ScenarioSpec, c) };
}

/** One run of one configuration. */
export interface ImageRecord {
  readonly config: string;
  readonly bandwidth: number;
  readonly run: MigrationRun;
}

/** Options of {@link runImageBenchmarks}. */
export interface ImageBenchOptions {
  /** The RAM image (its size is the guest's RAM). */
  readonly image: string;
  /** Runs per configuration (at least 1). */
  readonly runs: number;
  /** max_bandwidth / max-bandwidth values to run at, bytes per second (UNLIMITED: loopback). */
  readonly bandwidths: readonly number[];
  /** False: ferry only (QEMU unavailable or --no-qemu). */
  readonly qemu: boolean;
  /** QEMU's candidates (default: all of them). */
  readonly qemuConfigs?: readonly QemuConfig[];
}

const finite = (x: number) => Number.isNaN(x) ? Infinity : x;
const s = (x: number) => Number.isNaN(x) ? "—" : `${x.toFixed(3)} s`;

/** Runs the group and prints its table; returns every run. */
export async function runImageBenchmarks(o: ImageBenchOptions): Promise<ImageRecord[]> {
  const ramBytes = (await Deno.stat(o.image)).size;
  await printMakeUp(o.image);
  const records: ImageRecord[] = [];
  const configs = [
    ...FERRY_IMAGE_CONFIGS,
    ...(o.qemu ? (o.qemuConfigs ?? QEMU_CONFIGS).map(qemuImageConfig) : []),
  ];
  for (const bandwidth of o.bandwidths) {
    const link = bandwidth >= UNLIMITED ? "unlimited" : `${(bandwidth / 1e6).toFixed(0)} MB/s`;
    console.log(
      `\n# Real RAM image ${o.image} (${ramBytes / 2 ** 20} MiB), paused guest, tcp loopback, ` +
        `bandwidth ${link} — ${o.runs} runs per configuration, alternated`,
    );
    const base: ScenarioSpec = {
      ramBytes,
      fill: "zero",
      image: o.image,
      workload: { kind: "paused" },
      transport: "tcp",
      maxBandwidth: bandwidth,
      downtimeLimitMs: 300,
      timeoutS: 300,
      wall: true,
    };
    const byConfig = new Map<string, MigrationRun[]>(configs.map((c) => [c.name, []]));
    for (let i = 0; i < o.runs; i++) {
      // Each round in another order, so a noisy stretch does not always hit the same one.
      const round = configs.map((_, k) => configs[(k + i) % configs.length]);
      for (const c of round) {
        const spec = { ...base, ...c.extra };
        const run: MigrationRun = c.engine === "ferry"
          ? stripApi(await runFerry(spec))
          : await runQemu(spec);
        byConfig.get(c.name)!.push(run);
        records.push({ config: c.name, bandwidth, run });
        console.error(
          `  ${c.name} run ${i + 1}: wall ${s(run.wallS ?? NaN)} total ${s(run.totalS)}` +
            `${run.note ? ` (${run.note})` : ""}`,
        );
      }
    }
    // QEMU's best: the candidate with the most completed runs, then the lowest median wall.
    const qemuBest = configs.filter((c) => c.engine === "qemu").map((c) => {
      const done = byConfig.get(c.name)!.filter((r) => r.completed);
      return { name: c.name, done: done.length, wall: median(done.map(headlineS)) };
    }).sort((a, b) => b.done - a.done || finite(a.wall) - finite(b.wall))[0];
    const rows = configs.map((c) => {
      const all = byConfig.get(c.name)!;
      const runs = all.filter((r) => r.completed);
      const wall = runs.map(headlineS);
      return [
        c.name === qemuBest?.name ? `**${c.name}** (QEMU best)` : c.name,
        `${runs.length}/${all.length}`,
        spread(wall, s),
        spread(runs.map((r) => r.totalS), s),
        `${median(runs.map((r) => r.downtimeMs)).toFixed(1)} ms`,
        `${Math.round(median(runs.map((r) => r.bytes)) / 2 ** 20)}`,
        qemuBest === undefined || Number.isNaN(qemuBest.wall)
          ? "—"
          : `${(median(wall) / qemuBest.wall).toFixed(2)}×`,
      ];
    });
    console.log("");
    console.log(markdownTable([
      "configuration",
      "done",
      "wall",
      "own total",
      "downtime p50",
      "MiB sent",
      "vs QEMU best",
    ], rows));
    const notes = configs.flatMap((c) => {
      const n = byConfig.get(c.name)!.map((r) => r.note).filter((x) => x);
      return n.length ? [`${c.name}: ${n[n.length - 1]}`] : [];
    });
    if (notes.length) console.log(`last run's notes: ${notes.join(" | ")}`);
    console.log(
      "wall = POST /migrations (QEMU: migrate) → the destination reports completed " +
        "(ferry: its incoming event; QEMU: its MIGRATION event), median (min–max); " +
        "own total = the engine's total_time / total-time; vs QEMU best = wall ÷ the wall of " +
        "QEMU's best candidate (most completed runs, then lowest median wall). " +
        "MiB sent = RAM bytes on the wire as the engine counts them.",
    );
  }
  return records;
}

/** The image's make-up, from its manifest (bench/ram_image.ts wrote it). */
async function printMakeUp(image: string): Promise<void> {
  try {
    const m = JSON.parse(await Deno.readTextFile(`${image}.json`));
    const u = m.make_up;
    if (!u) return;
    const pct = (n: number) => `${((n * 100) / u.pages).toFixed(1)} %`;
    console.log(
      `\nimage make-up: ${u.pages} pages, zero ${u.zero} (${pct(u.zero)}), duplicate ` +
        `${u.duplicate} (${pct(u.duplicate)}), distinct ${u.distinct}; compression of the ` +
        `non-zero pages: ${
          // deno-lint-ignore no-explicit-any
          u.compression.map((c: any) =>
            `${c.codec} per ${c.unit_bytes / 1024} KiB ${c.ratio}x (${c.mb_per_s} MB/s)`
          ).join(", ")}`,
    );
  } catch {
    // no manifest: nothing to print
  }
}

function stripApi(r: FerryRun): MigrationRun {
  const { apiLatenciesMs: _, ...run } = r;
  return run;
}
