/**
 * GET /metrics end to end: two ferries on real sockets (API and migration on
 * port 0), the source on an injected clock. Scraped and parsed while a migration
 * runs (the guest outruns the link, and nothing ends it), after it is cancelled,
 * and after one completes; without the token it answers 401.
 */
import assert from "node:assert/strict";
import { TestGuest } from "../../testing/test_guest.ts";
import { PAGE_SIZE } from "../../vm/ram.ts";
import { dirtyingClock, LiveFerry } from "../helpers/live_ferry.ts";
import { parsePrometheus } from "../helpers/prometheus.ts";

async function scrape(f: LiveFerry) {
  const res = await f.fetch("/metrics");
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
  return parsePrometheus(await res.text());
}

Deno.test("GET /metrics: KubeVirt's migration gauges during a migration, counters by outcome and histograms of downtime and total time after, the token required", async () => {
  const guest = new TestGuest([["pc.ram", 512 * PAGE_SIZE]]);
  guest.fillRandom(5);
  guest.start();
  const clock = dirtyingClock(guest, 400);
  await using src = LiveFerry.start({ guest, clock });
  await using dst = LiveFerry.start();
  const anonymous = await fetch(`${src.url}/metrics`);
  await anonymous.body?.cancel();
  assert.equal(anonymous.status, 401);

  const idle = await scrape(src);
  assert.equal(idle.types.get("kubevirt_vmi_migration_data_processed_bytes"), "gauge");
  assert.equal(idle.types.get("ferry_migrations_total"), "counter");
  assert.equal(idle.types.get("ferry_migration_downtime_seconds"), "histogram");
  assert.equal(idle.value("kubevirt_vmi_migrations_in_running_phase"), 0);
  assert.equal(
    idle.value("ferry_migrations_total", { direction: "outgoing", outcome: "completed" }),
    0,
  );

  await src.api("PATCH", "/migrations/parameters", {
    max_bandwidth: 10 << 20,
    downtime_limit: 30,
    stall_windows: 0,
  });
  // Scrape once twenty windows went by: the migration cannot end by itself.
  let windows = 0;
  const running = new Promise<void>((resolve) => {
    const off = src.engine.events.subscribe((e) => {
      if (e.type === "progress" && ++windows === 20) {
        off();
        resolve();
      }
    });
  });
  // A cancelled source looks like a cut to its destination, which would wait resume_grace
  // for a resume (docs/ARCHITECTURE.md, "Resuming an interrupted pre-copy"): fail at once.
  await dst.api("PATCH", "/migrations/parameters", { resume_grace: 0 });
  assert.equal((await src.api("POST", "/migrations", { uri: await dst.listen() })).status, 202);
  await running;
  const during = await scrape(src);
  assert.equal(during.value("kubevirt_vmi_migrations_in_running_phase"), 1);
  assert.ok(during.value("kubevirt_vmi_migration_data_processed_bytes") >= 512 * PAGE_SIZE);
  const remaining = during.value("kubevirt_vmi_migration_data_remaining_bytes");
  assert.ok(remaining > 0 && remaining <= 512 * PAGE_SIZE, `${remaining}`);
  assert.equal(during.value("kubevirt_vmi_migration_data_total_bytes"), 512 * PAGE_SIZE);
  assert.ok(during.value("kubevirt_vmi_migration_dirty_memory_rate_bytes") > 0);
  const rate = during.value("kubevirt_vmi_migration_memory_transfer_rate_bytes");
  assert.ok(Math.abs(rate - (10 << 20)) < (10 << 20) / 50, `${rate} B/s`);
  assert.ok(during.value("ferry_migration_dirty_sync_count") >= 1);
  const incoming = await scrape(dst);
  assert.ok(incoming.value("ferry_incoming_bytes_received") > 0);

  assert.equal((await src.api("DELETE", "/migrations/current")).status, 202);
  await src.outgoingFinal();
  await dst.incomingFinal();
  const after = await scrape(src);
  assert.equal(after.value("kubevirt_vmi_migrations_in_running_phase"), 0);
  assert.equal(after.value("kubevirt_vmi_migration_data_processed_bytes"), 0);
  assert.equal(
    after.value("ferry_migrations_total", { direction: "outgoing", outcome: "cancelled" }),
    1,
  );
  assert.equal(
    after.value("ferry_migration_total_time_seconds_count", { direction: "outgoing" }),
    1,
  );
  assert.equal(after.value("ferry_migration_downtime_seconds_count"), 0);
  assert.equal(
    (await scrape(dst)).value("ferry_migrations_total", {
      direction: "incoming",
      outcome: "failed",
    }),
    1,
  );

  // A migration that completes: the downtime histogram and the success counters.
  clock.perSleep = 20;
  await src.api("PATCH", "/migrations/parameters", { downtime_limit: 300 });
  assert.equal((await src.api("POST", "/migrations", { uri: await dst.listen() })).status, 202);
  assert.equal(await src.outgoingFinal(), "completed");
  const info = (await src.api("GET", "/migrations/current")).body;
  const done = await scrape(src);
  assert.equal(
    done.value("ferry_migrations_total", { direction: "outgoing", outcome: "completed" }),
    1,
  );
  assert.equal(done.value("kubevirt_vmi_migration_succeeded"), 1);
  assert.equal(done.value("kubevirt_vmi_migration_failed"), 0);
  assert.equal(done.value("ferry_migration_downtime_seconds_count"), 1);
  assert.equal(done.value("ferry_migration_downtime_seconds_sum"), info.downtime / 1000);
  assert.equal(done.value("ferry_migration_downtime_seconds_bucket", { le: "+Inf" }), 1);
  assert.equal(
    done.value("ferry_migration_total_time_seconds_count", { direction: "outgoing" }),
    2,
  );
});
