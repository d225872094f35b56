/**
 * The contract between the benchmark suite (`bench/migrate.ts`) and the QEMU side
 * (`bench/qemu/mod.ts`): one scenario description both engines run, and what a run
 * measured. ferry's runner fills the same {@link MigrationRun} so the two can be
 * printed side by side with ratios.
 */

/** What the guest does while it migrates. */
export type GuestWorkload =
  /** Never runs: QEMU started with `-S`, ferry with `--paused`. */
  | { readonly kind: "paused" }
  /** Runs but writes nothing after boot. */
  | { readonly kind: "idle" }
  /** Dirties `bytesPerSecond` worth of distinct pages per second, spread over all of RAM. */
  | { readonly kind: "dirty"; readonly bytesPerSecond: number }
  /** QEMU's migration-test loop: increments byte 0 of every page of the first `rangeBytes`, forever. */
  | { readonly kind: "ab"; readonly rangeBytes: number };

/** One migration scenario, engine-neutral. */
export interface ScenarioSpec {
  /** Guest RAM in bytes (multiple of 1 MiB). */
  readonly ramBytes: number;
  /** Initial RAM contents: random bytes everywhere, or all zero. */
  readonly fill: "random" | "zero";
  readonly workload: GuestWorkload;
  readonly transport: "tcp" | "unix";
  /** Bytes per second; use 100e9 for "unlimited". */
  readonly maxBandwidth: number;
  /** Downtime limit in ms. */
  readonly downtimeLimitMs: number;
  readonly xbzrle?: { readonly cacheBytes: number };
  readonly autoConverge?: boolean;
  /** ferry's `verify` capability on both ends (default true; QEMU has none). */
  readonly verify?: boolean;
  /** Give up after this many seconds and report `completed: false` ("never completes"). */
  readonly timeoutS: number;
  /**
   * A RAM image both engines start from instead of `fill` (bench/ram_image.ts):
   * ferry loads it with `--fill image:PATH`, QEMU maps a /dev/shm copy with
   * `memory-backend-file`. Its size must be `ramBytes`.
   */
  readonly image?: string;
  /** ferry's `compress_method` and `compress_level`, on both ends. */
  readonly compress?: { readonly method: "zstd" | "lz4"; readonly level: number };
  /** ferry's `page_refs` capability, on both ends. */
  readonly pageRefs?: boolean;
  /**
   * How QEMU maps guest RAM: the source with `share=on` (MAP_SHARED) or `share=off`
   * (a private, copy-on-write mapping), the destination preallocated (`prealloc=on`)
   * or faulted in as pages arrive. Default: share=off, prealloc=on.
   */
  readonly qemuRam?: { readonly sourceShare: boolean; readonly destinationPrealloc: boolean };
  /** QEMU's multifd on both ends: channels, and `multifd-compression` zstd at a level. */
  readonly multifd?: { readonly channels: number; readonly zstdLevel?: number };
  /**
   * Also measure the wall clock from the migrate request to the destination
   * reporting completed (`MigrationRun.wallS`).
   */
  readonly wall?: boolean;
}

/** What one run measured. Times in seconds/ms as named; bytes as counted by the engine. */
export interface MigrationRun {
  readonly completed: boolean;
  /** Engine's own total time (QEMU `total-time`, ferry `total_time`), seconds. */
  readonly totalS: number;
  /** Engine's own downtime, ms (NaN when not completed). */
  readonly downtimeMs: number;
  /** RAM bytes on the wire. */
  readonly bytes: number;
  /** Dirty-log syncs (QEMU `dirty-sync-count`, ferry `ram.dirty_sync_count`). */
  readonly passes: number;
  /** Last bandwidth estimate the engine reported, bytes/s (NaN if none). */
  readonly bandwidthBps: number;
  /** Peak resident set (VmHWM) of the source and destination processes, bytes. */
  readonly peakRssSrc: number;
  readonly peakRssDst: number;
  /** Free text: why it did not complete, the throttle reached, … */
  readonly note?: string;
  /**
   * With `ScenarioSpec.wall`: seconds from the migrate request to the destination
   * reporting completed (ferry: its `incoming` event; QEMU: its MIGRATION event).
   */
  readonly wallS?: number;
}

/** The QEMU column cannot be produced on this machine; `reason` says why. */
export interface Skipped {
  readonly skipped: string;
}
