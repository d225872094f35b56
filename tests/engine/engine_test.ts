import assert from "node:assert/strict";
import { Engine, type EngineEvent } from "../../engine/engine.ts";
import { bootEventId } from "../../engine/notifier.ts";
import { EngineError, type EngineErrorCode } from "../../engine/errors.ts";
import {
  type Capabilities,
  DEFAULT_PARAMETERS,
  UNSUPPORTED_CAPABILITIES,
} from "../../engine/params.ts";
import { MemoryTransports } from "../../transports/memory.ts";
import { TransportError } from "../../transports/transport.ts";
import { ramDigest, TestGuest } from "../../testing/test_guest.ts";
import { buildValidStream } from "../../testing/stream_builder.ts";
import { FakeClock } from "../helpers/fake_clock.ts";

const URI = "tcp:memory:6666";

function engineFor(guest = new TestGuest(), transports = new MemoryTransports()) {
  return { guest, transports, engine: new Engine({ guest, transports }) };
}

function assertEngineError(
  fn: () => unknown,
  code: EngineErrorCode,
  pattern?: RegExp,
): EngineError {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof EngineError, `expected EngineError ${code}, got ${caught}`);
  assert.equal(caught.code, code, caught.message);
  if (pattern) assert.match(caught.message, pattern);
  return caught;
}

async function assertEngineRejects(p: Promise<unknown>, code: EngineErrorCode, pattern?: RegExp) {
  const err = await p.then(() => null, (e) => e);
  assert.ok(err instanceof EngineError, `expected EngineError ${code}, got ${err}`);
  assert.equal(err.code, code, err.message);
  if (pattern) assert.match(err.message, pattern);
}

/** An outgoing migration held in `active` by a peer that never reads. */
async function stalledMigration(engine: Engine, transports: MemoryTransports) {
  const listener = await transports.listen(URI);
  const accepted = listener.accept();
  engine.setParameters({ max_bandwidth: 1 << 30 });
  engine.migrate(URI);
  return async () => {
    await engine.close();
    (await accepted).close();
    listener.close();
  };
}

// ---- parameters -------------------------------------------------------------------

Deno.test("Engine.setParameters() applies a valid patch and returns a copy; rejects a bad one unchanged", async () => {
  const { engine } = engineFor();
  try {
    assert.deepEqual(engine.parameters, DEFAULT_PARAMETERS);
    const p = engine.setParameters({ downtime_limit: 300 });
    assert.equal(p.downtime_limit, 300);
    p.downtime_limit = 1;
    assert.equal(engine.parameters.downtime_limit, 300, "returned object is a copy");
    const err = assertEngineError(
      () => engine.setParameters({ max_bandwidth: 0 }),
      "invalid-parameter",
    );
    assert.deepEqual(err.details, { field: "max_bandwidth" });
    assert.equal(engine.parameters.max_bandwidth, DEFAULT_PARAMETERS.max_bandwidth);
  } finally {
    await engine.close();
  }
});

// ---- capabilities -------------------------------------------------------------------

Deno.test("Engine.setCapabilities() refuses rdma_pin_all with capability-unsupported (no RDMA in Deno)", async () => {
  const { engine } = engineFor();
  try {
    const err = assertEngineError(
      () => engine.setCapabilities({ rdma_pin_all: true }),
      "capability-unsupported",
      /rdma_pin_all.*RDMA/,
    );
    assert.deepEqual(err.details, { capability: "rdma_pin_all" });
    assert.equal(engine.capabilities.rdma_pin_all, false);
  } finally {
    await engine.close();
  }
});

Deno.test("Engine.setCapabilities() refuses every not-yet-implemented capability with capability-unsupported", async () => {
  const { engine } = engineFor();
  try {
    // Derived from the table so a capability that gets implemented drops out of it.
    const unsupported = Object.keys(UNSUPPORTED_CAPABILITIES) as (keyof Capabilities)[];
    assert.ok(unsupported.includes("rdma_pin_all"));
    for (const cap of unsupported) {
      const err = assertEngineError(
        () => engine.setCapabilities({ [cap]: true }),
        "capability-unsupported",
        new RegExp(`"${cap}"`),
      );
      assert.deepEqual(err.details, { capability: cap });
      assert.equal(engine.capabilities[cap], false);
    }
    // Turning them off is always fine, and a refused patch changes nothing.
    const off = Object.fromEntries(unsupported.map((c) => [c, false]));
    assert.deepEqual(engine.setCapabilities(off), engine.capabilities);
    const before = engine.capabilities;
    assertEngineError(
      () => engine.setCapabilities({ ...off, rdma_pin_all: true }),
      "capability-unsupported",
    );
    assert.deepEqual(engine.capabilities, before);
  } finally {
    await engine.close();
  }
});

Deno.test("Engine.setCapabilities() while a migration is active answers migration-active", async () => {
  const { engine, guest, transports } = engineFor();
  guest.fillRandom(1);
  guest.start();
  const cleanup = await stalledMigration(engine, transports);
  try {
    assert.ok(engine.migration!.isActive);
    assertEngineError(() => engine.setCapabilities({ xbzrle: false }), "migration-active");
    assertEngineError(() => engine.migrate(URI), "migration-active");
  } finally {
    await cleanup();
  }
  assert.deepEqual(
    engine.setCapabilities({ xbzrle: false }).xbzrle,
    false,
    "allowed once it ended",
  );
});

// ---- blockers ----------------------------------------------------------------------

Deno.test("Engine: a guest's own blocker refuses migrate with its reason, and lifts with it", async () => {
  let reason: string | null = "the guest has never run";
  const guest = Object.assign(new TestGuest(), { migrationBlocker: () => reason });
  const { engine } = engineFor(guest);
  try {
    const err = assertEngineError(() => engine.migrate(URI), "migration-blocked", /never run/);
    assert.deepEqual(err.details, { reasons: ["the guest has never run"] });
    assert.equal(engine.current().status, "none");
    reason = null;
    engine.setParameters({ max_bandwidth: 1 << 30 });
    assert.equal(engine.migrate(URI).status, "setup");
    await engine.migration!.done;
  } finally {
    await engine.close();
  }
});

Deno.test("Engine blockers: add gives ids, migrate answers migration-blocked with the reasons, remove and not-found", async () => {
  const { engine } = engineFor();
  try {
    const a = engine.addBlocker("vfio device attached");
    const b = engine.addBlocker("host is in maintenance");
    assert.notEqual(a.id, b.id);
    assert.deepEqual(engine.blockers, [a, b]);
    const err = assertEngineError(
      () => engine.migrate(URI),
      "migration-blocked",
      /vfio device attached/,
    );
    assert.deepEqual(err.details, { reasons: ["vfio device attached", "host is in maintenance"] });
    assert.equal(engine.current().status, "none", "a blocked migrate starts nothing");
    assert.deepEqual(engine.removeBlocker(a.id), a);
    assert.deepEqual(engine.blockers, [b]);
    assertEngineError(
      () => engine.removeBlocker(a.id),
      "blocker-not-found",
      new RegExp(`"${a.id}"`),
    );
    assertEngineError(() => engine.removeBlocker("nope"), "blocker-not-found");
    engine.removeBlocker(b.id);
    assert.deepEqual(engine.blockers, []);
    const c = engine.addBlocker("again");
    assert.ok(![a.id, b.id].includes(c.id), "ids are not reused");
  } finally {
    await engine.close();
  }
});

// ---- migrate refusals ------------------------------------------------------------------

Deno.test("Engine.migrate() refuses blk/inc, a bad URI, and a guest waiting for an incoming stream", async () => {
  const { engine, guest } = engineFor();
  try {
    assertEngineError(
      () => engine.migrate(URI, { blk: true }),
      "capability-unsupported",
      /Block migration/,
    );
    assertEngineError(() => engine.migrate(URI, { inc: true }), "capability-unsupported");
    assert.throws(() => engine.migrate("carrier-pigeon:x"), (e) => e instanceof TransportError);
    assert.throws(
      () => engine.migrate("tcp:host"),
      (e) => e instanceof TransportError && e.code === "bad-uri",
    );
    await engine.listenIncoming(URI);
    assertEngineError(() => engine.migrate("tcp:memory:1"), "incoming-active");
    assert.equal(guest.runState, "inmigrate");
  } finally {
    await engine.close();
  }
});

// ---- guest control -------------------------------------------------------------------

Deno.test("Engine.listenIncoming() refuses a running guest with guest-running", async () => {
  const { engine, guest } = engineFor();
  try {
    guest.start();
    await assertEngineRejects(engine.listenIncoming(URI), "guest-running", /stop it first/);
    assert.equal(guest.runState, "running");
    assert.equal(engine.incomingInfo().status, "none");
  } finally {
    await engine.close();
  }
});

Deno.test("Engine.listenIncoming() twice answers incoming-active", async () => {
  const { engine } = engineFor();
  try {
    const info = await engine.listenIncoming(URI);
    assert.equal(info.status, "listening");
    assert.equal(info.address, URI);
    await assertEngineRejects(engine.listenIncoming("tcp:memory:7"), "incoming-active");
  } finally {
    await engine.close();
  }
  assert.equal(engine.incomingInfo().status, "cancelled");
});

Deno.test("Engine.startGuest() is refused in inmigrate with guest-incomplete; stop/start otherwise", async () => {
  const { engine, guest } = engineFor();
  try {
    engine.startGuest();
    assert.equal(guest.runState, "running");
    engine.startGuest(); // already running: no-op
    engine.stopGuest();
    assert.equal(guest.runState, "paused");
    await engine.listenIncoming(URI);
    assert.equal(guest.runState, "inmigrate");
    assertEngineError(() => engine.startGuest(), "guest-incomplete");
    engine.stopGuest(); // not running: no change
    assert.equal(guest.runState, "inmigrate");
  } finally {
    await engine.close();
  }
});

Deno.test("Engine emits runstate events for guest state changes until closed", async () => {
  const { engine, guest } = engineFor();
  const seen: string[] = [];
  engine.events.subscribe((e: EngineEvent) => {
    if (e.type === "runstate") seen.push(`${e.from}→${e.to}`);
  });
  engine.startGuest();
  engine.stopGuest();
  await engine.close();
  guest.start();
  assert.deepEqual(seen, ["prelaunch→running", "running→paused"]);
});

// ---- incoming: failure and re-arm ------------------------------------------------------

Deno.test("Engine: a failed incoming migration leaves the guest in inmigrate, can be re-armed, and then succeeds", async () => {
  const transports = new MemoryTransports();
  const dst = new TestGuest();
  const dstEngine = new Engine({ guest: dst, transports });
  const src = new TestGuest();
  src.fillRandom(17);
  src.counter = 1234n;
  src.start();
  const srcEngine = new Engine({ guest: src, transports });
  try {
    const events: string[] = [];
    dstEngine.events.subscribe((e) => {
      if (e.type === "incoming") events.push(`${e.from}→${e.to}`);
    });
    // 1. A peer starts a stream, then sends garbage: the load fails naming the byte.
    await dstEngine.listenIncoming(URI);
    const bad = await transports.connect(URI);
    await bad.write(Uint8Array.of(0x51, 0x45, 0x56, 0x4d, 0, 0, 0, 3));
    await bad.write(new TextEncoder().encode("GARBAGE!"));
    await bad.finish();
    await dstEngine.incoming!.done;
    const failed = dstEngine.incomingInfo();
    assert.equal(failed.status, "failed");
    assert.match(failed.error_desc!, /at byte 0x8: unknown section type 0x47/);
    assert.equal(failed.bytes_received, 16);
    assert.equal(dst.runState, "inmigrate");
    assertEngineError(() => dstEngine.startGuest(), "guest-incomplete");

    // 2. Re-armed on the same URI, a real migration completes and starts the guest.
    const info = await dstEngine.listenIncoming(URI);
    assert.equal(info.status, "listening");
    srcEngine.setParameters({ max_bandwidth: 1 << 30 });
    srcEngine.migrate(URI);
    await srcEngine.migration!.done;
    await dstEngine.incoming!.done;
    assert.equal(srcEngine.current().status, "completed");
    const done = dstEngine.incomingInfo();
    assert.equal(done.status, "completed", done.error_desc);
    assert.equal(done.error_desc, undefined, "the old error is gone");
    assert.equal(dst.runState, "running");
    assert.equal(dst.counter, 1234n);
    assert.equal(await ramDigest(dst), await ramDigest(src));
    assert.deepEqual(events, [
      "none→listening",
      "listening→active",
      "active→failed",
      "none→listening",
      "listening→active",
      "active→completed",
    ]);
  } finally {
    await srcEngine.close();
    await dstEngine.close();
  }
});

Deno.test("Engine incoming: a hand-built valid stream over a raw connection loads, autostart off leaves it paused", async () => {
  const transports = new MemoryTransports();
  const blocks: [string, number][] = [["pc.ram", 8 * 4096], ["vga.vram", 4 * 4096]];
  const dst = new TestGuest(blocks);
  const engine = new Engine({ guest: dst, transports, autostart: false });
  try {
    await engine.listenIncoming(URI);
    const enc = buildValidStream();
    const ch = await transports.connect(URI);
    await ch.write(enc.bytes);
    await ch.finish();
    await engine.incoming!.done;
    const info = engine.incomingInfo();
    assert.equal(info.status, "completed", info.error_desc);
    assert.equal(info.bytes_received, enc.bytes.length);
    assert.deepEqual(info.pages, { zero: 9, normal: 3 });
    assert.equal(dst.runState, "paused");
    assert.equal(dst.counter, enc.counter);
  } finally {
    await engine.close();
  }
});

Deno.test("Engine.close() cancels an armed incoming migration and frees its URI", async () => {
  const transports = new MemoryTransports();
  const { engine } = engineFor(new TestGuest(), transports);
  await engine.listenIncoming(URI);
  await engine.close();
  assert.equal(engine.incomingInfo().status, "cancelled");
  const again = await transports.listen(URI); // the listener was closed
  again.close();
});

Deno.test("Engine numbers events from the wall clock, so a restarted engine never reuses an id", async () => {
  const clock = new FakeClock();
  const before = bootEventId(clock.wall());
  const first = new Engine({ guest: new TestGuest(), transports: new MemoryTransports(), clock });
  first.guest.start();
  first.guest.stop("paused");
  const lastOfFirst = first.events.lastId;
  assert.equal(first.events.nextId - 2, before, "ids start at the boot id");
  await first.close();
  clock.advance(1); // the restart happens a millisecond later
  const restarted = new Engine({
    guest: new TestGuest(),
    transports: new MemoryTransports(),
    clock,
  });
  assert.ok(restarted.events.nextId > lastOfFirst, "the restarted engine starts above");
  assert.equal(restarted.events.since(lastOfFirst), null, "an old id gets a reset, not a replay");
  await restarted.close();
});

Deno.test("Engine.migrate() refuses xbzrle with compression or page_refs (capability-unsupported)", async () => {
  const { engine } = engineFor();
  try {
    engine.setCapabilities({ xbzrle: true });
    engine.setParameters({ compress_method: "lz4" });
    assertEngineError(
      () => engine.migrate(URI),
      "capability-unsupported",
      /xbzrle and compress_method lz4/,
    );
    engine.setParameters({ compress_method: "none" });
    engine.setCapabilities({ page_refs: true });
    assertEngineError(
      () => engine.migrate(URI),
      "capability-unsupported",
      /xbzrle and the page_refs/,
    );
  } finally {
    await engine.close();
  }
});

Deno.test("Engine: compress_method and page_refs on both ends migrate a guest of repeated text pages exactly", async () => {
  const transports = new MemoryTransports();
  const dst = new TestGuest([["pc.ram", 4 << 20]]);
  const src = new TestGuest([["pc.ram", 4 << 20]]);
  const line = new TextEncoder().encode("ferry engine test line\n");
  for (let p = 0; p < 1024; p++) {
    const page = new Uint8Array(4096).map((_, i) => line[(i + (p % 7)) % line.length]);
    src.write(p * 4096, page);
  }
  src.start();
  const dstEngine = new Engine({ guest: dst, transports });
  const srcEngine = new Engine({ guest: src, transports });
  try {
    dstEngine.setParameters({ compress_method: "zstd" });
    dstEngine.setCapabilities({ page_refs: true });
    await dstEngine.listenIncoming(URI);
    srcEngine.setParameters({ max_bandwidth: 1 << 30, compress_method: "zstd" });
    srcEngine.setCapabilities({ page_refs: true });
    srcEngine.migrate(URI);
    await srcEngine.migration!.done;
    await dstEngine.incoming!.done;
    const info = srcEngine.current();
    assert.equal(info.status, "completed", info.error_desc);
    assert.equal(dstEngine.incomingInfo().status, "completed");
    assert.equal(await ramDigest(dst), await ramDigest(src));
    // Seven distinct pages: the first word's 32 go with data, the rest refer to them.
    assert.equal(info.page_refs!.pages, 1024 - 32);
    assert.equal(info.compression!.method, "zstd");
    assert.equal(dstEngine.incomingInfo().pages!.refs, info.page_refs!.pages);
  } finally {
    await srcEngine.close();
    await dstEngine.close();
  }
});
