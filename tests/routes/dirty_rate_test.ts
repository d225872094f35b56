import assert from "node:assert/strict";
import { SAMPLE_MS } from "../../engine/dirty_rate.ts";
import { DirtyRateInfoSchema } from "../../engine/plan_contract.ts";
import { call, testApp } from "../helpers/app.ts";
import { FakeClock } from "../helpers/fake_clock.ts";
import { measurementSettled } from "../helpers/dirty_rate.ts";

/** An API whose guest dirties `perSample` new pages every 100 ms of the fake clock (logged at each sync). */
function dirtyingApp(perSample: number) {
  const clock = new FakeClock();
  const t = testApp({ ram: 4 << 20, clock });
  const block = t.guest.blocks[0];
  let done = 0;
  block.setRefresh(() => {
    for (; done < Math.floor(clock.now() / SAMPLE_MS); done++) {
      for (let i = 0; i < perSample; i++) block.markDirty((done * perSample + i) % block.pages);
    }
  });
  return { ...t, clock };
}

Deno.test("POST /vm/dirty-rate measures (202 measuring), GET /vm/dirty-rate answers the result", async () => {
  const { app, engine } = dirtyingApp(8);
  const none = await call(app, "GET", "/vm/dirty-rate");
  assert.equal(none.status, 200);
  assert.equal(none.body.status, "none");
  assert.equal(none.body.total_pages, 1024);
  const started = await call(app, "POST", "/vm/dirty-rate", { calc_time_ms: 1000 });
  assert.equal(started.status, 202);
  assert.equal(started.body.status, "measuring");
  const res = await measurementSettled(app);
  assert.equal(res.status, 200);
  assert.ok(DirtyRateInfoSchema.safeParse(res.body).success);
  assert.equal(res.body.status, "measured");
  assert.equal(res.body.pages_per_second, 80);
  assert.equal(res.body.distinct_pages, 80);
  assert.deepEqual(res.body.working_set.map((w: { window_ms: number }) => w.window_ms), [
    100,
    200,
    500,
    1000,
  ]);
  assert.equal(res.body.working_set[3].pages, 80);
  await engine.close();
});

Deno.test("POST /vm/dirty-rate with a bad body answers 400 naming the field", async () => {
  const { app, engine } = dirtyingApp(1);
  for (
    const [body, field] of [
      [{ calc_time_ms: 50 }, "calc_time_ms"],
      [{ calc_time_ms: "1s" }, "calc_time_ms"],
      [{ calc_time_ms: 1000, mode: "ring" }, "mode"],
    ] as const
  ) {
    const res = await call(app, "POST", "/vm/dirty-rate", body);
    assert.equal(res.status, 400, JSON.stringify(body));
    assert.equal(res.body.error.field, field);
  }
  assert.equal((await call(app, "GET", "/vm/dirty-rate")).body.status, "none");
  await engine.close();
});

Deno.test("POST /vm/dirty-rate answers 409 while a migration is active, and while one measurement runs", async () => {
  const { app, engine, transports } = dirtyingApp(1);
  await call(app, "POST", "/vm/start");
  const first = await call(app, "POST", "/vm/dirty-rate", { calc_time_ms: 300 });
  assert.equal(first.status, 202);
  const again = await call(app, "POST", "/vm/dirty-rate", { calc_time_ms: 300 });
  assert.equal(again.status, 409);
  assert.equal(again.body.error.code, "migration-active");
  assert.equal((await measurementSettled(app)).body.status, "measured");
  using _listener = await transports.listen("tcp:peer:1");
  assert.equal((await call(app, "POST", "/migrations", { uri: "tcp:peer:1" })).status, 202);
  const res = await call(app, "POST", "/vm/dirty-rate", { calc_time_ms: 300 });
  assert.equal(res.status, 409);
  assert.equal(res.body.error.code, "migration-active");
  assert.match(res.body.error.message, /a migration is active/);
  assert.equal((await call(app, "GET", "/vm/dirty-rate")).body.status, "measured", "kept");
  await call(app, "DELETE", "/migrations/current");
  await engine.close();
});
