import type { MigrationRun, ScenarioSpec } from "../../bench/qemu/types.ts";

/** A small running-guest scenario the bench's comparison tests rank runs of. */
export const SPEC: ScenarioSpec = {
  ramBytes: 64 * 2 ** 20,
  fill: "random",
  workload: { kind: "dirty", bytesPerSecond: 1e6 },
  transport: "tcp",
  maxBandwidth: 1e9,
  downtimeLimitMs: 30,
  timeoutS: 5,
  autoConverge: true,
};

/** A completed run of `wallS` seconds of wall clock, with `extra` over it. */
export function run(wallS: number, extra: Partial<MigrationRun> = {}): MigrationRun {
  return {
    completed: true,
    totalS: wallS - 0.01,
    downtimeMs: 20,
    bytes: 1,
    passes: 3,
    bandwidthBps: 1,
    peakRssSrc: 1,
    peakRssDst: 1,
    wallS,
    ...extra,
  };
}
