/**
 * multifd through the engine with in-process transports: two engines, a guest
 * written to while it migrates, pages over 2 and 3 channels with real workers;
 * the destination's RAM equals the source's and the integrity check passes.
 */
import assert from "node:assert/strict";
import { Engine } from "../../../engine/engine.ts";
import { EngineError } from "../../../engine/errors.ts";
import { MemoryTransports } from "../../../transports/memory.ts";
import { ramDigest, TestGuest } from "../../../testing/test_guest.ts";

const URI = "tcp:memory:7777";

for (const channels of [2, 3]) {
  Deno.test(`Engine multifd: ${channels} channels move a guest written to meanwhile`, async () => {
    const transports = new MemoryTransports();
    const blocks: [string, number][] = [["pc.ram", 8 << 20], ["extra", 1 << 20], [
      "empty",
      1 << 20,
    ]];
    const dst = new TestGuest(blocks);
    const src = new TestGuest(blocks);
    src.fillRandom(5);
    // A block never written: its pages go as ZERO records on the main stream.
    src.blocks[2].bytes.fill(0);
    src.blocks[2].touched.fill(0);
    dst.blocks[2].bytes.fill(0xcc);
    dst.blocks[2].touchAll();
    src.start();
    const dstEngine = new Engine({ guest: dst, transports });
    const srcEngine = new Engine({ guest: src, transports });
    try {
      dstEngine.setParameters({ multifd_channels: channels });
      srcEngine.setParameters({ multifd_channels: channels, max_bandwidth: 1 << 30 });
      await dstEngine.listenIncoming(URI);
      let n = 0;
      srcEngine.events.subscribe((e) => {
        // Each pass dirties pages again, so pages go more than once over different channels.
        if (e.type === "pass" && src.runState === "running" && n++ < 6) {
          for (let p = 0; p < 64; p++) src.write(p * 3 * 4096, Uint8Array.of(n, p, 7));
        }
      });
      srcEngine.migrate(URI);
      await srcEngine.migration!.done;
      await dstEngine.incoming!.done;
      const out = srcEngine.current();
      assert.equal(out.status, "completed", out.error_desc);
      assert.equal(out.multifd?.channels, channels);
      assert.ok(out.multifd!.sync_points >= 2);
      const incoming = dstEngine.incomingInfo();
      assert.equal(incoming.status, "completed", incoming.error_desc);
      assert.equal(incoming.pages?.multifd_packets, out.multifd!.packets);
      assert.equal(await ramDigest(dst), await ramDigest(src));
      assert.ok(incoming.pages!.zero >= 256, JSON.stringify(incoming.pages));
    } finally {
      await srcEngine.close();
      await dstEngine.close();
    }
  });
}

/** The EngineError `fn` throws. */
function engineError(fn: () => unknown): EngineError {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof EngineError, String(e));
    return e;
  }
  assert.fail("no error thrown");
}

Deno.test("Engine multifd: what cannot carry it is refused at migrate time, naming why", async () => {
  const guest = new TestGuest();
  guest.start();
  const engine = new Engine({ guest, transports: new MemoryTransports() });
  try {
    engine.setParameters({ multifd_channels: 2 });
    for (const uri of ["exec:cat > /dev/null", "fd:3", "file:/tmp/ferry-never"]) {
      const e = engineError(() => engine.migrate(uri));
      assert.equal(e.code, "capability-unsupported", uri);
      assert.match(e.message, /multifd_channels 2 needs a tcp: or unix: URI/);
      assert.deepEqual(e.details, { parameter: "multifd_channels" });
    }
    engine.setCapabilities({ xbzrle: true });
    const both = engineError(() => engine.migrate(URI));
    assert.match(both.message, /both multifd_channels 2 and xbzrle/);
    engine.setCapabilities({ xbzrle: false, page_refs: true });
    assert.match(engineError(() => engine.migrate(URI)).message, /and page_refs/);
    assert.equal(engine.current().status, "none");
    assert.equal(guest.runState, "running");
  } finally {
    await engine.close();
  }
});

Deno.test("Engine multifd: the x86 guest is refused on both ends, saying why", async () => {
  const guest = new TestGuest();
  // What tells an emulated machine's guest apart (vm/guest.ts: `machine`).
  Object.defineProperty(guest, "machine", { value: {} });
  const engine = new Engine({ guest, transports: new MemoryTransports() });
  try {
    engine.setParameters({ multifd_channels: 4 });
    const out = engineError(() => engine.migrate(URI));
    assert.match(out.message, /needs the synthetic guest: the x86 guest's RAM is v86's own/);
    guest.stop("paused");
    await assert.rejects(engine.listenIncoming(URI), /needs the synthetic guest/);
  } finally {
    await engine.close();
  }
});
