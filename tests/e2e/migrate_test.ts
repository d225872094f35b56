import assert from "node:assert/strict";
import { FerryProcess } from "../../testing/ferry_process.ts";

/** Unlimited in practice: 100 GB/s, as the QEMU comparison runs use. */
const UNLIMITED = 100_000_000_000;

type Transport = "tcp" | "unix";

async function listenUri(kind: Transport): Promise<string> {
  if (kind === "tcp") return "tcp:127.0.0.1:0";
  const dir = await Deno.makeTempDir({ prefix: "ferry-e2e-" });
  return `unix:${dir}/migrate.sock`;
}

async function cleanupUri(uri: string): Promise<void> {
  if (uri.startsWith("unix:")) {
    const dir = uri.slice(5).replace(/\/[^/]+$/, "");
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/** Starts a destination (--no-autostart) waiting on a fresh URI of the given kind. */
async function destination(
  kind: Transport,
  ram: string,
): Promise<{ dst: FerryProcess; uri: string }> {
  const uri = await listenUri(kind);
  const dst = await FerryProcess.destination(ram, uri);
  return { dst, uri };
}

async function migrate(
  src: FerryProcess,
  dst: FerryProcess,
  params: Record<string, number> = { max_bandwidth: UNLIMITED },
  // deno-lint-ignore no-explicit-any
): Promise<any> {
  assert.equal((await src.api("PATCH", "/migrations/parameters", params)).status, 200);
  const started = await src.api("POST", "/migrations", { uri: dst.incoming });
  assert.equal(started.status, 202, JSON.stringify(started.body));
  const info = await src.waitFor(
    "/migrations/current",
    (b) => ["completed", "failed", "cancelled"].includes(b.status),
    120_000,
  );
  assert.equal(info.status, "completed", JSON.stringify(info));
  await dst.waitFor(
    "/migrations/incoming",
    (b) => b.status === "completed" || b.status === "failed",
  );
  return info;
}

async function assertSameRam(src: FerryProcess, dst: FerryProcess): Promise<void> {
  const a = await src.api("GET", "/vm/ram/digest");
  const b = await dst.api("GET", "/vm/ram/digest");
  assert.equal(a.body.run_state, "postmigrate");
  assert.equal(b.body.run_state, "paused");
  assert.equal(b.body.sha256, a.body.sha256, "destination RAM equals source RAM");
}

/** Reads byte 0 of every page in [0, range) of the guest's RAM through GET /vm/ram. */
async function firstBytes(ferry: FerryProcess, range: number): Promise<Uint8Array> {
  const out = new Uint8Array(range / 4096);
  const chunk = 16 << 20;
  for (let off = 0; off < range; off += chunk) {
    const res = await ferry.fetch(
      `/vm/ram?offset=${off}&length=${Math.min(chunk, range - off)}`,
    );
    assert.equal(res.status, 200);
    const bytes = new Uint8Array(await res.arrayBuffer());
    for (let p = 0; p < bytes.length; p += 4096) out[(off + p) / 4096] = bytes[p];
  }
  return out;
}

/** The ab guest's invariant: byte 0 of the pages holds at most two adjacent values (mod 256). */
function assertAbInvariant(bytes: Uint8Array): void {
  const values = [...new Set(bytes)].sort((x, y) => x - y);
  assert.ok(values.length <= 2, `at most two values, got ${values.join(",")}`);
  if (values.length === 2) {
    const [lo, hi] = values;
    assert.ok(hi - lo === 1 || (lo === 0 && hi === 255), `adjacent values, got ${lo},${hi}`);
  }
}

for (const kind of ["tcp", "unix"] as const) {
  Deno.test(`e2e ${kind}: an idle guest migrates and the RAM digests match`, async () => {
    const { dst, uri } = await destination(kind, "64M");
    await using _dst = dst;
    await using src = await FerryProcess.start(["--ram", "64M"]);
    const info = await migrate(src, dst);
    assert.equal(info.ram.total, 64 << 20);
    assert.equal(info.ram.duplicate, (64 << 20) / 4096, "every page went as a zero page");
    assert.ok(typeof info.downtime === "number");
    await assertSameRam(src, dst);
    await cleanupUri(uri);
  });

  Deno.test(`e2e ${kind}: a 256 MiB random-filled paused guest migrates byte for byte`, async () => {
    const { dst, uri } = await destination(kind, "256M");
    await using _dst = dst;
    await using src = await FerryProcess.start(["--ram", "256M", "--fill", "random", "--paused"]);
    const info = await migrate(src, dst);
    assert.equal(info.ram.normal, (256 << 20) / 4096);
    assert.ok(info.ram.transferred >= 256 << 20);
    await assertSameRam(src, dst);
    await cleanupUri(uri);
  });

  Deno.test(`e2e ${kind}: a running ab guest migrates, keeps its invariant and runs on`, async () => {
    const range = 16 << 20;
    const { dst, uri } = await destination(kind, "64M");
    await using _dst = dst;
    await using src = await FerryProcess.start([
      "--ram",
      "64M",
      "--workload",
      `ab:rate=64M,range=16M`,
    ]);
    await src.waitFor("/vm", (b) => b.ops >= range / 4096); // let it dirty its range first
    const info = await migrate(src, dst, { max_bandwidth: UNLIMITED, downtime_limit: 300 });
    assert.ok(info.ram.dirty_sync_count >= 2);
    await assertSameRam(src, dst);
    const before = await firstBytes(dst, range);
    assertAbInvariant(before);
    const vmBefore = (await dst.api("GET", "/vm")).body;
    assert.equal(vmBefore.workload.split(":")[0], "ab", "the workload travelled with the guest");
    assert.equal((await dst.api("POST", "/vm/start")).status, 200);
    await dst.waitFor("/vm", (b) => b.ops > vmBefore.ops);
    assert.equal((await dst.api("POST", "/vm/stop")).status, 200);
    const after = await firstBytes(dst, range);
    assertAbInvariant(after);
    assert.notDeepEqual(after, before, "the guest kept running on the destination");
    await cleanupUri(uri);
  });

  Deno.test(`e2e ${kind}: a guest dirtying 20 MB/s migrates at 200 MB/s`, async () => {
    const { dst, uri } = await destination(kind, "128M");
    await using _dst = dst;
    await using src = await FerryProcess.start([
      "--ram",
      "128M",
      "--fill",
      "pattern",
      "--workload",
      "random:rate=20M",
    ]);
    const info = await migrate(src, dst, { max_bandwidth: 200_000_000 });
    assert.ok(info.ram.dirty_sync_count >= 2, "at least one more pass after the bulk one");
    await assertSameRam(src, dst);
    await cleanupUri(uri);
  });
}

Deno.test("e2e: cancel mid-migration leaves the source running and the destination reusable", async () => {
  const { dst, uri } = await destination("tcp", "128M");
  await using _dst = dst;
  await using src = await FerryProcess.start([
    "--ram",
    "128M",
    "--fill",
    "random",
    "--workload",
    "random:rate=5M",
  ]);
  await src.api("PATCH", "/migrations/parameters", { max_bandwidth: 20_000_000 });
  // A cancelled source looks like a cut to its destination: without resuming it fails.
  await dst.api("PATCH", "/migrations/parameters", { resume_grace: 0 });
  assert.equal((await src.api("POST", "/migrations", { uri: dst.incoming })).status, 202);
  await src.waitFor(
    "/migrations/current",
    (b) => b.status === "active" && b.ram.transferred > 1_000_000,
  );
  const second = await src.api("POST", "/migrations", { uri: dst.incoming });
  assert.equal(second.status, 409);
  assert.equal(second.body.error.code, "migration-active");
  assert.equal((await src.api("DELETE", "/migrations/current")).status, 202);
  const cancelled = await src.waitFor("/migrations/current", (b) => b.status !== "cancelling");
  assert.equal(cancelled.status, "cancelled");
  assert.equal((await src.api("GET", "/vm")).body.run_state, "running");
  const failed = await dst.waitFor("/migrations/incoming", (b) => b.status === "failed");
  assert.match(failed.error_desc, /truncated|closed|reset/i);
  assert.equal((await dst.api("POST", "/vm/start")).status, 409, "a partial guest cannot start");
  // Arm the same destination again; the second migration succeeds.
  const again = await dst.api("POST", "/migrations/incoming", { uri: "tcp:127.0.0.1:0" });
  assert.equal(again.status, 202);
  dst.incoming = again.body.address;
  await src.api("POST", "/vm/stop");
  await migrate(src, dst);
  await assertSameRam(src, dst);
  await cleanupUri(uri);
});

Deno.test("e2e: migrating to a closed port fails with the reason and the guest keeps running", async () => {
  await using src = await FerryProcess.start(["--ram", "16M", "--workload", "random:rate=1M"]);
  const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = probe.addr.port;
  probe.close();
  assert.equal(
    (await src.api("POST", "/migrations", { uri: `tcp:127.0.0.1:${port}` })).status,
    202,
  );
  const info = await src.waitFor("/migrations/current", (b) => b.status === "failed");
  assert.match(info.error_desc, /refused/i);
  const vm = (await src.api("GET", "/vm")).body;
  assert.equal(vm.run_state, "running");
  await src.waitFor("/vm", (b) => b.ops > vm.ops);
});
