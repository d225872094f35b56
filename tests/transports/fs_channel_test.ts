import assert from "node:assert/strict";
import { FsChannel } from "../../transports/fs_channel.ts";
import { assertRejectsMatching, pattern, readAll } from "./_helpers.ts";

function tempFile(): { path: string } & Disposable {
  const path = Deno.makeTempFileSync({ prefix: "ferry-fsch-" });
  return { path, [Symbol.dispose]: () => Deno.removeSync(path) };
}

Deno.test("FsChannel: background syncs while writing keep the bytes and their order", async () => {
  using tmp = tempFile();
  const file = await Deno.open(tmp.path, { write: true });
  const steps: string[] = [];
  const ch = new FsChannel(file, "file:test", "write", {
    syncEvery: 100_000,
    beforeClose: async (f) => {
      steps.push("sync");
      await f.sync();
    },
    committed: () => {
      steps.push("committed");
      return Promise.resolve();
    },
    abandoned: () => steps.push("abandoned"),
    released: () => steps.push("released"),
  });
  const data = pattern(3 << 20, 11);
  // Issued together, without awaiting each other: the channel queues them in order.
  const writes: Promise<void>[] = [];
  for (let off = 0; off < data.length; off += 64 << 10) {
    writes.push(ch.write(data.subarray(off, off + (64 << 10))));
  }
  writes.push(ch.write(pattern(10)));
  await Promise.all(writes);
  await ch.finish();
  assert.deepEqual(steps, ["sync", "committed", "released"]);
  const got = Deno.readFileSync(tmp.path);
  assert.deepEqual(got.subarray(0, data.length), data, "queued writes never interleave");
  assert.deepEqual(got.subarray(data.length), pattern(10));
});

Deno.test("FsChannel: close() mid-stream abandons it, even with a sync in flight", async () => {
  using tmp = tempFile();
  const file = await Deno.open(tmp.path, { write: true });
  // Remember the background syncs, to wait for the interrupted one at the end.
  const syncs: Promise<void>[] = [];
  const syncData = file.syncData.bind(file);
  file.syncData = () => {
    const sync = syncData();
    syncs.push(sync);
    return sync;
  };
  const steps: string[] = [];
  const ch = new FsChannel(file, "file:test", "write", {
    syncEvery: 1,
    abandoned: () => steps.push("abandoned"),
    released: () => steps.push("released"),
  });
  await ch.write(pattern(1 << 20));
  ch.close();
  ch.close();
  assert.deepEqual(steps, ["abandoned", "released"]);
  await assertRejectsMatching(ch.write(pattern(1)), /file:test: the channel is closed/);
  await assertRejectsMatching(ch.finish(), /closed/);
  assert.equal(syncs.length, 1, "a sync was in flight");
  await Promise.allSettled(syncs);
});

Deno.test("FsChannel: a failing finishing step fails finish() and counts as abandoned", async () => {
  using tmp = tempFile();
  const file = await Deno.open(tmp.path, { write: true });
  const steps: string[] = [];
  const ch = new FsChannel(file, "file:test", "write", {
    committed: () => Promise.reject(new Deno.errors.PermissionDenied("nope")),
    abandoned: () => steps.push("abandoned"),
  });
  await ch.write(pattern(10));
  await assertRejectsMatching(ch.finish(), /Cannot finish file:test: permission denied/);
  assert.deepEqual(steps, ["abandoned"]);
  assert.equal(ch.closed, true);
});

Deno.test("FsChannel: one direction only; reads to EOF; close() interrupts a pending read", async () => {
  using tmp = tempFile();
  Deno.writeFileSync(tmp.path, pattern(100_000));
  const reading = new FsChannel(await Deno.open(tmp.path), "file:r", "read");
  await assertRejectsMatching(reading.write(pattern(1)), /open for reading/);
  assert.deepEqual(await readAll(reading), pattern(100_000));
  assert.equal(await reading.read(new Uint8Array(4)), null);
  reading.close();
  const writing = new FsChannel(await Deno.open(tmp.path, { write: true }), "file:w", "write");
  await assertRejectsMatching(writing.read(new Uint8Array(4)), /open for writing/);
  writing.close();
});
