import assert from "node:assert/strict";
import { SAMPLE_MS } from "../../engine/dirty_rate.ts";
import { PlanSchema } from "../../engine/plan_contract.ts";
import { call, testApp } from "../helpers/app.ts";
import { FakeClock } from "../helpers/fake_clock.ts";
import { measurementSettled } from "../helpers/dirty_rate.ts";

/** A running guest of 4 MiB that dirties `perSample` random-ish pages every 100 ms of the fake clock. */
function planApp(perSample: number) {
  const clock = new FakeClock();
  const t = testApp({ ram: 4 << 20, clock });
  t.guest.fillRandom(5);
  const block = t.guest.blocks[0];
  let done = 0;
  block.setRefresh(() => {
    for (; done < Math.floor(clock.now() / SAMPLE_MS); done++) {
      for (let i = 0; i < perSample; i++) {
        block.markDirty(((done * perSample + i) * 2654435761 >>> 0) % block.pages);
      }
    }
  });
  return t;
}

Deno.test("POST /migrations/plan of a guest that is not running: converges in one pass at max_bandwidth", async () => {
  const { app, engine } = planApp(0);
  const res = await call(app, "POST", "/migrations/plan", {
    parameters: { max_bandwidth: 8 << 20 },
  });
  assert.equal(res.status, 200);
  assert.ok(PlanSchema.safeParse(res.body).success);
  assert.equal(res.body.converges, true);
  assert.equal(res.body.bandwidth, 8 << 20);
  assert.equal(res.body.rtt_source, "none");
  assert.ok(res.body.total_time_ms > 300 && res.body.total_time_ms < 600, res.body.total_time_ms);
  assert.equal(res.body.to_converge, undefined);
  assert.match(res.body.assumptions[0], /not running/);
  // The plan changed nothing.
  assert.equal((await call(app, "GET", "/migrations/parameters")).body.max_bandwidth, 32 << 20);
  await engine.close();
});

Deno.test("POST /migrations/plan of a running guest never measured answers 409 dirty-rate-unmeasured", async () => {
  const { app, engine } = planApp(1);
  await call(app, "POST", "/vm/start");
  const res = await call(app, "POST", "/migrations/plan", {});
  assert.equal(res.status, 409);
  assert.equal(res.body.error.code, "dirty-rate-unmeasured");
  assert.match(res.body.error.message, /POST \/vm\/dirty-rate/);
  await engine.close();
});

Deno.test("POST /migrations/plan after a measurement: a link slower than the guest does not converge and says what would", async () => {
  const { app, engine } = planApp(100); // 1000 pages/s: ~3.9 MiB/s over 4 MiB
  await call(app, "POST", "/vm/start");
  await call(app, "POST", "/vm/dirty-rate", { calc_time_ms: 2000 });
  assert.equal((await measurementSettled(app)).body.status, "measured");
  const slow = await call(app, "POST", "/migrations/plan", {
    parameters: { max_bandwidth: 1 << 20, stall_windows: 100 },
  });
  assert.equal(slow.status, 200);
  assert.ok(PlanSchema.safeParse(slow.body).success);
  assert.equal(slow.body.converges, false);
  assert.equal(slow.body.outcome, "stalled-failed");
  assert.match(slow.body.explanation, /^Does not converge/);
  assert.ok(slow.body.to_converge.bandwidth > 1 << 20);
  const fast = await call(app, "POST", "/migrations/plan", {
    parameters: { max_bandwidth: slow.body.to_converge.bandwidth, stall_windows: 100 },
  });
  assert.equal(fast.body.converges, true, "the bandwidth it named converges");
  assert.equal(fast.body.dirty_rate.status, "measured");
  await engine.close();
});

Deno.test("POST /migrations/plan with a bad body answers 400 naming the field", async () => {
  const { app, engine } = planApp(0);
  for (
    const [body, field] of [
      [{ parameters: { max_bandwidth: 0 } }, "parameters.max_bandwidth"],
      [{ parameters: { downtime: 30 } }, "parameters.downtime"],
      [{ capabilities: { xbzrle: "yes" } }, "capabilities.xbzrle"],
      [{ uri: 5 }, "uri"],
      [{ uri: "" }, "uri"],
      [{ speed: 1 }, "speed"],
    ] as const
  ) {
    const res = await call(app, "POST", "/migrations/plan", body);
    assert.equal(res.status, 400, JSON.stringify(body));
    assert.equal(res.body.error.field, field, JSON.stringify(res.body));
  }
  const rdma = await call(app, "POST", "/migrations/plan", {
    capabilities: { rdma_pin_all: true },
  });
  assert.equal(rdma.status, 400);
  assert.equal(rdma.body.error.field, "rdma_pin_all");
  const bad = await call(app, "POST", "/migrations/plan", { uri: "carrier-pigeon:x" });
  assert.equal(bad.status, 400);
  assert.equal(bad.body.error.field, "uri");
  await engine.close();
});

Deno.test("POST /migrations/plan with a uri probes the destination: a connection opened and closed without a byte", async () => {
  const { app, engine, transports } = planApp(0);
  using listener = await transports.listen("tcp:peer:7");
  const res = await call(app, "POST", "/migrations/plan", { uri: "tcp:peer:7" });
  assert.equal(res.status, 200);
  assert.equal(res.body.rtt_source, "probe");
  using peer = await listener.accept();
  assert.equal(await peer.read(new Uint8Array(16)), null, "closed, nothing sent");
  const none = await call(app, "POST", "/migrations/plan", { uri: "tcp:nobody:7" });
  assert.equal(none.status, 502);
  assert.equal(none.body.error.code, "connect-failed");
  assert.equal(none.body.error.field, "uri");
  // A file: destination is not probed (connecting would create the file).
  const file = await call(app, "POST", "/migrations/plan", { uri: "file:/nonexistent/x" });
  assert.equal(file.status, 200);
  assert.equal(file.body.rtt_source, "none");
  await engine.close();
});
