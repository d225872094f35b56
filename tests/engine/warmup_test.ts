import assert from "node:assert/strict";
import { warmUp } from "../../engine/warmup.ts";
import { createTransports, MemoryTransports } from "../../transports/mod.ts";
import { openLoopTurn } from "../../transports/loop_turn.ts";

Deno.test("warmUp(): a scratch migration over loopback tcp completes with equal RAM and leaves nothing open", async () => {
  using loop = await openLoopTurn();
  assert.equal(await warmUp(createTransports(), () => loop.turn()), true);
});

Deno.test("warmUp(): over memory channels too; a URI that cannot be listened on reports false", async () => {
  assert.equal(await warmUp(new MemoryTransports(), undefined, "tcp:memory:1"), true);
  assert.equal(await warmUp(createTransports(), undefined, "tcp:192.0.2.1:1"), false);
});
