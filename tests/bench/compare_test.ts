import assert from "node:assert/strict";
import { run, SPEC } from "../helpers/bench_runs.ts";
import {
  candidatesRows,
  compareEngines,
  markdownTable,
  roundOrder,
  side,
  spread,
} from "../../bench/compare.ts";
import { parseQemuConfigs, QEMU_CONFIGS, rankCandidates } from "../../bench/qemu/configs.ts";

Deno.test("compareEngines alternates ferry and every candidate round by round, with the wall clock asked for", async () => {
  const order: string[] = [];
  const configs = parseQemuConfigs("private,shared,multifd-2");
  let t = 1;
  const r = await compareEngines(SPEC, 3, configs, {
    ferry: (spec) => {
      assert.equal(spec.wall, true);
      assert.equal(spec.multifd, undefined);
      order.push("ferry");
      return Promise.resolve(run(1));
    },
    qemu: (spec) => {
      assert.equal(spec.wall, true);
      const name = configs.find((c) =>
        c.extra.multifd?.channels === spec.multifd?.channels &&
        c.extra.qemuRam?.sourceShare === spec.qemuRam?.sourceShare
      )!.name;
      order.push(name);
      // multifd-2 is the fastest, private the slowest.
      return Promise.resolve(
        run({ private: 0.9, shared: 0.7, "multifd-2": 0.5 }[name]! + t++ / 1000),
      );
    },
    floor: () => {
      order.push("floor");
      return Promise.resolve(0.3);
    },
  });
  assert.deepEqual(order, [
    ...["ferry", "floor", "private", "shared", "multifd-2"],
    ...["ferry", "floor", "shared", "multifd-2", "private"],
    ...["ferry", "floor", "multifd-2", "private", "shared"],
  ]);
  assert.equal(r.ferry.length, 3);
  assert.deepEqual(r.floor, [0.3, 0.3, 0.3]);
  assert.deepEqual(r.candidates.map((c) => c.config.name), ["multifd-2", "shared", "private"]);
  assert.ok(r.candidates.every((c) => c.runs.length === 3));

  // Without QEMU: ferry alone, no candidates.
  const alone = await compareEngines(SPEC, 2, configs, { ferry: () => Promise.resolve(run(1)) });
  assert.equal(alone.ferry.length, 2);
  assert.deepEqual(alone.candidates, []);
  assert.deepEqual(roundOrder(4, 3), [1, 2, 0]);
});

Deno.test("side and spread: medians with ranges, completed runs only, the share within the limit of all runs", () => {
  const runs = [
    run(0.5, { downtimeMs: 25 }),
    run(0.7, { downtimeMs: 40 }),
    run(0.6, { downtimeMs: 10 }),
    run(9, { completed: false, downtimeMs: NaN }),
  ];
  const s = side(runs, 30);
  assert.equal(s.done, "3/4");
  assert.equal(s.wall, "600 ms (500 ms–700 ms)");
  assert.equal(s.downtime, "25 ms (10 ms–40 ms)");
  assert.equal(s.withinLimit, "50 %");
  assert.equal(s.medianS, 0.6);
  assert.equal(spread([], String), "—");
  assert.equal(spread([NaN, 2], String), "2");
  assert.equal(side([], 30).withinLimit, "—");
});

Deno.test("candidatesRows marks the best in bold and says when runs did not complete", () => {
  const [a, b, c] = QEMU_CONFIGS;
  const ranked = rankCandidates(
    new Map([
      [a, [run(0.5), run(0.5)]],
      [b, [run(0.4), run(1, { completed: false })]],
      [c, [run(1, { completed: false }), run(1, { completed: false })]],
    ]),
  );
  assert.deepEqual(
    candidatesRows([{ scenario: "x", candidates: ranked }], [a, b, c, QEMU_CONFIGS[3]]),
    [
      ["x", "**500 ms**", "400 ms (1/2)", "never (0/2)", "—"],
    ],
  );
});

Deno.test("markdownTable: a header, an alignment row, padded cells; rows must match the head", () => {
  const t = markdownTable(["scenario", "wall"], [["a", "1 s"], ["longer name", "10 ms"]]);
  assert.deepEqual(t.split("\n"), [
    "| scenario    |  wall |",
    "|:------------|------:|",
    "| a           |   1 s |",
    "| longer name | 10 ms |",
  ]);
  assert.throws(() => markdownTable(["a", "b"], [["x"]]), RangeError);
});
