/**
 * QEMU's candidate configurations for "QEMU at its best": every scenario of the
 * suite runs each candidate, and the tables name the best one. The candidates vary
 * how the source maps guest RAM (`memory-backend-file`/`-ram` with `share=on` or
 * `share=off`), whether the destination preallocates its RAM, and the stream:
 * plain pre-copy, multifd with 2 or 4 channels, xbzrle, and multifd with
 * `multifd-compression zstd`.
 * @module
 */
import type { MigrationRun, ScenarioSpec } from "./types.ts";
import { median } from "../stats.ts";

/** One way to run QEMU's side of a scenario. */
export interface QemuConfig {
  /** Short name, used on the command line (`--qemu-configs`) and in the tables. */
  readonly name: string;
  /** What it sets, in words, for the tables' legend. */
  readonly description: string;
  /** What it adds to the scenario (its own settings win over the scenario's). */
  readonly extra: Pick<ScenarioSpec, "qemuRam" | "multifd" | "xbzrle">;
}

const MiB = 2 ** 20;
/** The xbzrle candidate's cache (QEMU's default is 64 MiB; this holds a 512 MiB working set). */
export const XBZRLE_CACHE_BYTES = 512 * MiB;
/** The level of the zstd candidates (the level QEMU's own tests and most users pick). */
export const ZSTD_LEVEL = 1;

const shared = { sourceShare: true, destinationPrealloc: true } as const;

/** Every candidate, in the order of a round. */
export const QEMU_CONFIGS: readonly QemuConfig[] = [
  {
    name: "private",
    description: "source share=off, destination prealloc=on, plain pre-copy",
    extra: { qemuRam: { sourceShare: false, destinationPrealloc: true } },
  },
  {
    name: "shared",
    description: "source share=on, destination prealloc=on, plain pre-copy",
    extra: { qemuRam: shared },
  },
  {
    name: "private-lazy",
    description: "source share=off, destination prealloc=off, plain pre-copy",
    extra: { qemuRam: { sourceShare: false, destinationPrealloc: false } },
  },
  {
    name: "shared-lazy",
    description: "source share=on, destination prealloc=off, plain pre-copy",
    extra: { qemuRam: { sourceShare: true, destinationPrealloc: false } },
  },
  {
    name: "multifd-2",
    description: "shared, multifd with 2 channels",
    extra: { qemuRam: shared, multifd: { channels: 2 } },
  },
  {
    name: "multifd-4",
    description: "shared, multifd with 4 channels",
    extra: { qemuRam: shared, multifd: { channels: 4 } },
  },
  {
    name: "xbzrle",
    description: `shared, xbzrle with a ${XBZRLE_CACHE_BYTES / MiB} MiB cache`,
    extra: { qemuRam: shared, xbzrle: { cacheBytes: XBZRLE_CACHE_BYTES } },
  },
  {
    name: "multifd-2-zstd",
    description: `shared, multifd with 2 channels, multifd-compression zstd level ${ZSTD_LEVEL}`,
    extra: { qemuRam: shared, multifd: { channels: 2, zstdLevel: ZSTD_LEVEL } },
  },
  {
    name: "multifd-4-zstd",
    description: `shared, multifd with 4 channels, multifd-compression zstd level ${ZSTD_LEVEL}`,
    extra: { qemuRam: shared, multifd: { channels: 4, zstdLevel: ZSTD_LEVEL } },
  },
];

/**
 * The candidate `--qemu-configs best` runs alone: QEMU's fastest configuration on
 * loopback in the issue's own measurements (shared source mapping, preallocated
 * destination, plain pre-copy). A quick run; the full set is the default.
 */
export const BEST_GUESS = "shared";

/**
 * Parses `--qemu-configs`: `all` (the default), `best` ({@link BEST_GUESS}) or a
 * comma-separated list of names. An unknown or repeated name is a RangeError that
 * lists the known ones.
 */
export function parseQemuConfigs(text: string | undefined): QemuConfig[] {
  const spec = (text ?? "all").trim();
  if (spec === "all") return [...QEMU_CONFIGS];
  const names = spec === "best" ? [BEST_GUESS] : spec.split(",").map((n) => n.trim());
  const known = QEMU_CONFIGS.map((c) => c.name);
  const out: QemuConfig[] = [];
  for (const name of names) {
    const c = QEMU_CONFIGS.find((x) => x.name === name);
    if (!c) {
      throw new RangeError(
        `--qemu-configs: unknown configuration "${name}" (all, best, or a list of: ${
          known.join(", ")
        })`,
      );
    }
    if (out.includes(c)) throw new RangeError(`--qemu-configs: "${name}" given twice`);
    out.push(c);
  }
  return out;
}

/**
 * The scenario as `config` runs it: the configuration's mapping, multifd and xbzrle
 * on top of the scenario (whose auto-converge, limits and workload stay).
 */
export function withConfig(spec: ScenarioSpec, config: QemuConfig): ScenarioSpec {
  return { ...spec, ...config.extra };
}

/** How a candidate did over its runs. */
export interface CandidateSummary {
  readonly config: QemuConfig;
  readonly runs: readonly MigrationRun[];
  /** Runs that completed. */
  readonly completed: number;
  /** Median headline time of the completed runs, seconds (NaN when none completed). */
  readonly medianS: number;
}

/**
 * The headline time of a run: the wall clock to the destination's completion when
 * measured, else the engine's own total time.
 */
export function headlineS(run: MigrationRun): number {
  return run.wallS !== undefined && !Number.isNaN(run.wallS) ? run.wallS : run.totalS;
}

/**
 * Ranks the candidates: the most completed runs first, then the lowest median
 * headline time; ties keep the candidates' order. The first is "QEMU's best".
 */
export function rankCandidates(
  results: ReadonlyMap<QemuConfig, readonly MigrationRun[]>,
): CandidateSummary[] {
  const out: CandidateSummary[] = [];
  for (const [config, runs] of results) {
    const done = runs.filter((r) => r.completed);
    out.push({
      config,
      runs,
      completed: done.length,
      medianS: median(done.map(headlineS)),
    });
  }
  const key = (c: CandidateSummary) => Number.isNaN(c.medianS) ? Infinity : c.medianS;
  return out
    .map((c, i) => ({ c, i }))
    .sort((a, b) => b.c.completed - a.c.completed || key(a.c) - key(b.c) || a.i - b.i)
    .map((x) => x.c);
}
