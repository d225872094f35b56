import assert from "node:assert/strict";
import { describeError } from "../../engine/errors.ts";
import { StreamError } from "../../engine/format/reader.ts";

Deno.test("describeError() appends a cause that adds something, once", () => {
  const os = new Error("Connection reset by peer");
  assert.equal(
    describeError(new Error("Cannot write tcp:127.0.0.1:4444", { cause: os })),
    "Cannot write tcp:127.0.0.1:4444: Connection reset by peer",
  );
  assert.equal(
    describeError(new Error("failed: Connection reset by peer", { cause: os })),
    "failed: Connection reset by peer",
  );
  assert.equal(describeError("plain"), "plain");
});

Deno.test("describeError() does not repeat a stream error wrapped in another (each names its own offset)", () => {
  const inner = new StreamError(0x40, "stream truncated: 5 bytes missing");
  const outer = new StreamError(0x40, "the source did not commit the switchover", { cause: inner });
  const text = describeError(outer);
  assert.equal(
    text,
    "Invalid migration stream at byte 0x40: the source did not commit the switchover",
  );
  assert.equal(text.match(/Invalid migration stream/g)?.length, 1);
});
