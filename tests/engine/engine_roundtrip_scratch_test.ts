import assert from "node:assert/strict";
import { Engine } from "../../engine/engine.ts";
import { MemoryTransports } from "../../transports/memory.ts";
import { ramDigest, TestGuest } from "../helpers/test_guest.ts";

Deno.test("scratch: memory migration round trip", async () => {
  const transports = new MemoryTransports();
  const src = new TestGuest([["pc.ram", 4 << 20]]);
  src.fillRandom(7);
  src.blocks[0].bytes.fill(0, 0, 1 << 20);
  src.counter = 42n;
  src.start();
  const dst = new TestGuest([["pc.ram", 4 << 20]]);
  const dstEngine = new Engine({ guest: dst, transports, autostart: false });
  const srcEngine = new Engine({ guest: src, transports });
  srcEngine.setParameters({ max_bandwidth: 1 << 30 });
  await dstEngine.listenIncoming("tcp:mem:1");
  srcEngine.migrate("tcp:mem:1");
  await srcEngine.migration!.done;
  await dstEngine.incoming!.done;
  console.log(srcEngine.current(), dstEngine.incomingInfo());
  assert.equal(srcEngine.current().status, "completed");
  assert.equal(dstEngine.incomingInfo().status, "completed");
  assert.equal(await ramDigest(dst), await ramDigest(src));
  assert.equal(dst.counter, 42n);
  assert.equal(dst.runState, "paused");
  assert.equal(src.runState, "postmigrate");
});
