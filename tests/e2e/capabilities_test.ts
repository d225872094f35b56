import assert from "node:assert/strict";
import { FerryProcess } from "../../testing/ferry_process.ts";

const FINAL = ["completed", "failed", "cancelled"];

async function pair(ram: string, srcArgs: string[]): Promise<[FerryProcess, FerryProcess]> {
  const dst = await FerryProcess.destination(ram);
  const src = await FerryProcess.start(["--ram", ram, ...srcArgs]);
  return [src, dst];
}

async function sameRam(src: FerryProcess, dst: FerryProcess): Promise<void> {
  await dst.waitFor("/migrations/incoming", (b) => b.status === "completed");
  const a = (await src.api("GET", "/vm/ram/digest")).body;
  const b = (await dst.api("GET", "/vm/ram/digest")).body;
  assert.equal(b.sha256, a.sha256, "destination RAM equals source RAM");
}

/** Runs one migration of a guest rewriting 8 bytes at a time in a hot 10 % of its pages. */
// deno-lint-ignore no-explicit-any
async function hotMigration(xbzrle: boolean): Promise<any> {
  const [src, dst] = await pair("64M", [
    "--fill",
    "random",
    "--workload",
    "random:rate=8M,hot=10%:100%,bytes=8",
  ]);
  await using _s = src;
  await using _d = dst;
  assert.equal((await src.api("PUT", "/migrations/capabilities", { xbzrle })).status, 200);
  await src.api("PATCH", "/migrations/parameters", {
    max_bandwidth: 32 << 20,
    downtime_limit: 100,
  });
  assert.equal((await src.api("POST", "/migrations", { uri: dst.incoming })).status, 202);
  const info = await src.waitFor("/migrations/current", (b) => FINAL.includes(b.status), 60_000);
  assert.equal(info.status, "completed", JSON.stringify(info));
  await sameRam(src, dst);
  return info;
}

Deno.test("e2e xbzrle: hot pages with a few changed bytes go as deltas, ≥ 5x fewer bytes after the bulk copy", async () => {
  const plain = await hotMigration(false);
  const delta = await hotMigration(true);
  // Bytes beyond one full copy of RAM (4104 bytes per page on the wire).
  const extra = (info: { ram: { transferred: number; total: number } }) =>
    info.ram.transferred - (info.ram.total / 4096) * 4104;
  assert.equal(plain.xbzrle_cache, undefined);
  assert.ok(delta.xbzrle_cache.pages > 0, JSON.stringify(delta.xbzrle_cache));
  assert.equal(delta.xbzrle_cache.cache_size, 64 << 20);
  assert.ok(extra(plain) > 0);
  assert.ok(
    extra(delta) * 5 <= extra(plain),
    `xbzrle sent ${extra(delta)} extra bytes, plain ${extra(plain)}`,
  );
});

Deno.test("e2e xbzrle: the cache size can change during a migration and GET reports it", async () => {
  const [src, dst] = await pair("32M", [
    "--fill",
    "random",
    "--workload",
    "random:rate=4M,hot=10%:100%",
  ]);
  await using _s = src;
  await using _d = dst;
  await src.api("PUT", "/migrations/capabilities", { xbzrle: true });
  await src.api("PATCH", "/migrations/parameters", {
    max_bandwidth: 8 << 20,
    xbzrle_cache_size: 8 << 20,
  });
  await src.api("POST", "/migrations", { uri: dst.incoming });
  await src.waitFor("/migrations/current", (b) => b.xbzrle_cache?.cache_size === 8 << 20);
  const patched = await src.api("PATCH", "/migrations/parameters", { xbzrle_cache_size: 2 << 20 });
  assert.equal(patched.body.xbzrle_cache_size, 2 << 20);
  await src.waitFor(
    "/migrations/current",
    (b) => b.xbzrle_cache?.cache_size === 2 << 20 || FINAL.includes(b.status),
  );
  await src.api("PATCH", "/migrations/parameters", { max_bandwidth: 1 << 30 });
  const info = await src.waitFor("/migrations/current", (b) => FINAL.includes(b.status), 60_000);
  assert.equal(info.status, "completed");
  await sameRam(src, dst);
});

const FAST_DIRTY = ["--workload", "random:rate=64M,bytes=8"];

Deno.test("e2e auto-converge: without it a guest dirtying 8x the bandwidth never converges; cancel works", async () => {
  const [src, dst] = await pair("8M", FAST_DIRTY);
  await using _s = src;
  await using _d = dst;
  await src.api("PATCH", "/migrations/parameters", { max_bandwidth: 8 << 20, downtime_limit: 30 });
  await src.api("POST", "/migrations", { uri: dst.incoming });
  const info = await src.waitFor(
    "/migrations/current",
    (b) => b.status !== "active" && b.status !== "setup" || b.ram?.dirty_sync_count >= 4,
  );
  assert.equal(info.status, "active", "still iterating after four passes");
  assert.equal((await src.api("DELETE", "/migrations/current")).status, 202);
  const done = await src.waitFor("/migrations/current", (b) => FINAL.includes(b.status));
  assert.equal(done.status, "cancelled");
  const vm = (await src.api("GET", "/vm")).body;
  assert.equal(vm.run_state, "running");
  assert.equal(vm.throttle, 0);
});

Deno.test("e2e auto-converge: the same guest completes with it, throttled, and the throttle is lifted after", async () => {
  const [src, dst] = await pair("8M", FAST_DIRTY);
  await using _s = src;
  await using _d = dst;
  await src.api("PUT", "/migrations/capabilities", { auto_converge: true });
  await src.api("PATCH", "/migrations/parameters", {
    max_bandwidth: 8 << 20,
    downtime_limit: 30,
    cpu_throttle_initial: 50,
    cpu_throttle_increment: 25,
  });
  await src.api("POST", "/migrations", { uri: dst.incoming });
  let maxThrottle = 0;
  const info = await src.waitFor("/migrations/current", (b) => {
    maxThrottle = Math.max(maxThrottle, b.cpu_throttle_percentage ?? 0);
    return FINAL.includes(b.status);
  }, 90_000);
  assert.equal(info.status, "completed", JSON.stringify(info));
  assert.ok(maxThrottle >= 50, `throttle reached ${maxThrottle}`);
  assert.equal(info.cpu_throttle_percentage, undefined, "not reported once completed");
  assert.equal((await src.api("GET", "/vm")).body.throttle, 0);
  await sameRam(src, dst);
});
