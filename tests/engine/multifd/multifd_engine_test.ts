/**
 * multifd through the engine with in-process transports: two engines, a guest
 * written to while it migrates, pages over 2 and 3 channels with real workers;
 * the destination's RAM equals the source's and the integrity check passes.
 */
import assert from "node:assert/strict";
import { Engine } from "../../../engine/engine.ts";
import { MemoryTransports } from "../../../transports/memory.ts";
import { ramDigest, TestGuest } from "../../../testing/test_guest.ts";

const URI = "tcp:memory:7777";

for (const channels of [2, 3]) {
  Deno.test(`Engine multifd: ${channels} channels move a guest written to meanwhile`, async () => {
    const transports = new MemoryTransports();
    const dst = new TestGuest([["pc.ram", 8 << 20], ["extra", 1 << 20]]);
    const src = new TestGuest([["pc.ram", 8 << 20], ["extra", 1 << 20]]);
    src.fillRandom(5);
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
    } finally {
      await srcEngine.close();
      await dstEngine.close();
    }
  });
}
