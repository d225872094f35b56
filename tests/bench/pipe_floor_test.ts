import assert from "node:assert/strict";
import { runPipeFloor } from "../../bench/pipe_floor.ts";

for (const transport of ["tcp", "unix"] as const) {
  Deno.test(`runPipeFloor() over ${transport} delivers every page byte for byte`, async () => {
    const ramBytes = 8 << 20;
    const run = await runPipeFloor({ ramBytes, transport, digest: true });
    assert.equal(run.pages, ramBytes / 4096);
    assert.match(run.sentDigest, /^[0-9a-f]{64}$/);
    assert.equal(run.receivedDigest, run.sentDigest);
    assert.ok(run.seconds > 0 && run.seconds < 60, `seconds = ${run.seconds}`);
  });
}
