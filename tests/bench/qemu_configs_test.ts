import assert from "node:assert/strict";
import { run, SPEC } from "../helpers/bench_runs.ts";
import {
  BEST_GUESS,
  headlineS,
  parseQemuConfigs,
  QEMU_CONFIGS,
  rankCandidates,
  withConfig,
} from "../../bench/qemu/configs.ts";

const byName = (name: string) => QEMU_CONFIGS.find((c) => c.name === name)!;

Deno.test("--qemu-configs: all by default, best alone, a list in its order; unknown and repeated names refused", () => {
  assert.deepEqual(parseQemuConfigs(undefined), [...QEMU_CONFIGS]);
  assert.deepEqual(parseQemuConfigs("all").length, 9);
  assert.deepEqual(parseQemuConfigs("best").map((c) => c.name), [BEST_GUESS]);
  assert.deepEqual(parseQemuConfigs("multifd-4, private").map((c) => c.name), [
    "multifd-4",
    "private",
  ]);
  assert.throws(
    () => parseQemuConfigs("private,turbo"),
    (e: Error) =>
      e instanceof RangeError && /unknown configuration "turbo"/.test(e.message) &&
      /multifd-2-zstd/.test(e.message),
  );
  assert.throws(() => parseQemuConfigs("shared,shared"), /given twice/);
  // Every name is distinct, and the candidates are all there.
  const names = QEMU_CONFIGS.map((c) => c.name);
  assert.equal(new Set(names).size, names.length);
  const all = QEMU_CONFIGS.map((c) => c.extra);
  assert.ok(all.some((e) => e.qemuRam?.sourceShare === true));
  assert.ok(all.some((e) => e.qemuRam?.sourceShare === false));
  assert.ok(all.some((e) => e.qemuRam?.destinationPrealloc === false));
  assert.ok(all.some((e) => e.multifd?.channels === 2 && e.multifd.zstdLevel === undefined));
  assert.ok(all.some((e) => e.multifd?.channels === 4 && e.multifd.zstdLevel === undefined));
  assert.ok(all.some((e) => e.multifd?.zstdLevel !== undefined));
  assert.ok(all.some((e) => e.xbzrle !== undefined));
});

Deno.test("withConfig lays the candidate over the scenario and keeps the scenario's own settings", () => {
  const s = withConfig(SPEC, byName("multifd-4-zstd"));
  assert.deepEqual(s.multifd, { channels: 4, zstdLevel: 1 });
  assert.deepEqual(s.qemuRam, { sourceShare: true, destinationPrealloc: true });
  assert.equal(s.autoConverge, true);
  assert.equal(s.downtimeLimitMs, 30);
  assert.equal(withConfig(SPEC, byName("private-lazy")).qemuRam?.destinationPrealloc, false);
  assert.equal(SPEC.multifd, undefined, "the scenario itself is untouched");
});

Deno.test("rankCandidates: most completed runs first, then the lowest median wall; ties keep the order", () => {
  const [a, b, c, d] = QEMU_CONFIGS;
  const ranked = rankCandidates(
    new Map([
      [a, [run(0.5), run(0.6), run(0.7)]],
      // Fastest, but one run never completed.
      [b, [run(0.1), run(0.2), run(9, { completed: false })]],
      [c, [run(0.4), run(0.45), run(0.9)]],
      [d, [run(0.45), run(0.4), run(0.9)]],
    ]),
  );
  assert.deepEqual(ranked.map((x) => x.config.name), [c.name, d.name, a.name, b.name]);
  assert.equal(ranked[0].medianS, 0.45);
  assert.equal(ranked[3].completed, 2);
  // Without a wall clock the engine's own total is the headline.
  assert.equal(headlineS(run(1, { wallS: undefined })), 0.99);
  assert.deepEqual(rankCandidates(new Map()), []);
});
