import assert from "node:assert/strict";
import { openLoopTurn } from "../../transports/loop_turn.ts";

Deno.test("openLoopTurn(): a turn lets pending I/O (an HTTP request) through while JS keeps running", async () => {
  using loop = await openLoopTurn();
  await using server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    () => new Response("ok"),
  );
  let answered = false;
  const request = fetch(`http://127.0.0.1:${server.addr.port}/`).then(async (res) => {
    await res.text();
    answered = true;
  });
  // A busy loop that only ever awaits turns: the request must still complete.
  const deadline = performance.now() + 5_000;
  while (!answered && performance.now() < deadline) {
    const until = performance.now() + 1;
    while (performance.now() < until) { /* work */ }
    await loop.turn();
  }
  await request;
  assert.ok(answered);
});

Deno.test("openLoopTurn(): concurrent turns share one; after close() turns still resolve (timer)", async () => {
  const loop = await openLoopTurn();
  assert.equal(loop.cheap, true);
  const a = loop.turn();
  const b = loop.turn();
  assert.equal(a, b);
  await Promise.all([a, b]);
  loop.close();
  loop.close();
  assert.equal(loop.cheap, false);
  await loop.turn();
});
