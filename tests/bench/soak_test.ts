import assert from "node:assert/strict";
import { runSoak } from "../../bench/soak.ts";

Deno.test("soak (CI subset): 20 seeded fault-injected migrations — nothing lost, no hang, every guest intact", async () => {
  const lines: string[] = [];
  const r = await runSoak({ runs: 20, seed: 6, ram: "16M", log: (l) => lines.push(l) });
  const report = `${lines.join("\n")}\n${JSON.stringify(r, null, 1)}`;
  assert.deepEqual(r.problems, [], report);
  assert.equal(r.bytesLost, 0, report);
  assert.equal(r.hangs, 0, report);
  assert.equal(r.completed + r.failedAsExpected, 20, report);
  assert.equal(r.guestsIntact, r.guestsChecked, report);
  assert.ok(r.failedAsExpected >= 5, `faults reached the stream: ${report}`);
  assert.ok(Object.keys(r.faults).length >= 5, `several kinds of fault: ${report}`);
});
