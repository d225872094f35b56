import assert from "node:assert/strict";
import {
  MIG_CMD_FERRY_MULTIFD,
  multifdRefusal,
  sendMultifdCommand,
  sendMultifdFlush,
} from "../../../engine/multifd/setup.ts";
import { StreamWriter } from "../../../engine/format/writer.ts";
import { channelPair } from "../../../transports/memory.ts";
import { TestGuest } from "../../../testing/test_guest.ts";

Deno.test("multifdRefusal(): one channel always goes; more need ferry, a socket and the synthetic guest", () => {
  const guest = new TestGuest();
  assert.equal(multifdRefusal(1, "file:/tmp/x", guest), null);
  assert.equal(multifdRefusal(4, "tcp:127.0.0.1:4444", guest), null);
  assert.equal(multifdRefusal(2, "unix:/run/ferry.sock", guest), null);
  assert.match(multifdRefusal(2, "exec:cat", guest)!, /needs a tcp: or unix: URI: a exec: stream/);
  assert.match(multifdRefusal(3, "fd:4", guest)!, /multifd_channels 3 needs a tcp: or unix: URI/);
  assert.match(
    multifdRefusal(2, "tcp:127.0.0.1:4444", guest, "qemu")!,
    /ferry's own framing, which a qemu peer \(--peer qemu\) does not speak/,
  );
  const x86 = new TestGuest();
  Object.defineProperty(x86, "machine", { value: {} });
  assert.match(multifdRefusal(2, "tcp:127.0.0.1:4444", x86)!, /needs the synthetic guest/);
});

Deno.test("sendMultifdCommand() and sendMultifdFlush(): ferry's COMMANDs 0x4604 and 0x4605", async () => {
  const [a, b] = channelPair();
  const w = new StreamWriter(a, 4096);
  const session = Uint8Array.from({ length: 16 }, (_, i) => 0xf0 + i);
  await sendMultifdCommand(w, 4, session);
  await sendMultifdFlush(w);
  await w.drain();
  const got = new Uint8Array(28);
  let n = 0;
  while (n < got.length) n += (await b.read(got.subarray(n)))!;
  assert.equal(MIG_CMD_FERRY_MULTIFD, 0x4604);
  assert.deepEqual([...got], [0x08, 0x46, 0x04, 0, 18, 0, 4, ...session, 0x08, 0x46, 0x05, 0, 0]);
  w.release();
  a.close();
  b.close();
});
