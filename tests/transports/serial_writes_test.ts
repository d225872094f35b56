import assert from "node:assert/strict";
import { SerialWrites } from "../../transports/serial_writes.ts";

Deno.test("SerialWrites runs writes one after the other, in order, even when one fails", async () => {
  const q = new SerialWrites();
  const log: string[] = [];
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const a = q.run(async () => {
    log.push("a start");
    await gate;
    log.push("a end");
  });
  const b = q.run(() => {
    log.push("b");
    return Promise.reject(new Error("b failed"));
  });
  const c = q.run(() => {
    log.push("c");
    return Promise.resolve(3);
  });
  await Promise.resolve();
  assert.deepEqual(log, ["a start"], "b waits for a");
  release();
  await a;
  await assert.rejects(b, /b failed/);
  assert.equal(await c, 3);
  await q.idle;
  assert.deepEqual(log, ["a start", "a end", "b", "c"]);
});
