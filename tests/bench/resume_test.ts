import assert from "node:assert/strict";
import { runOnce } from "../../bench/resume.ts";

Deno.test("bench:resume: a cut migration resumed carries fewer bytes than one started over, both with equal RAM", async () => {
  const o = { ram: "16M", link: 64_000_000, cut: 0.5, workload: "idle" };
  const resumed = await runOnce("resume", o);
  const over = await runOnce("start over", o);
  assert.ok(resumed.digestsMatch && over.digestsMatch);
  assert.ok(resumed.saved >= 6 << 20, `saved ${resumed.saved} bytes of the 8 MiB before the cut`);
  assert.equal(over.saved, 0);
  assert.ok(
    resumed.bytes < over.bytes,
    `resumed ${resumed.bytes} bytes, started over ${over.bytes}`,
  );
});
