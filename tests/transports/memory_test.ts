import assert from "node:assert/strict";
import { channelPair, MemoryTransports } from "../../transports/memory.ts";
import {
  assertRejectsMatching,
  assertTransportError,
  pattern,
  readAll,
  readExactly,
  settlesWithin,
  writeAllAndFinish,
} from "./_helpers.ts";

Deno.test("channelPair() carries bytes both ways in order", async () => {
  const [a, b] = channelPair(64 << 10);
  using _b = b;
  const up = pattern(1 << 20, 1);
  const down = pattern(300_000, 2);
  const [gotUp, gotDown] = await Promise.all([
    readExactly(b, up.length),
    readExactly(a, down.length),
    writeAllAndFinish(a, up, 10_000).then(() => undefined),
    b.write(down),
  ]);
  assert.deepEqual(gotUp, up);
  assert.deepEqual(gotDown, down);
  assert.equal(a.peer, "memory:b");
  assert.equal(b.peer, "memory:a");
});

Deno.test("channelPair() write() copies the chunk, so the caller may reuse its buffer", async () => {
  const [a, b] = channelPair();
  const buf = new Uint8Array([1, 2, 3]);
  await a.write(buf);
  buf.fill(9);
  await a.finish();
  assert.deepEqual(await readAll(b), new Uint8Array([1, 2, 3]));
  b.close();
});

Deno.test("channelPair() write() of more than capacity does not resolve until the peer reads", async () => {
  const capacity = 1000;
  const [a, b] = channelPair(capacity);
  using _a = a;
  using _b = b;
  await a.write(new Uint8Array(capacity)); // exactly capacity unread: no wait
  assert.equal(a.buffered, capacity);
  const blocked = a.write(new Uint8Array(1));
  assert.equal(await settlesWithin(blocked, 20), false, "write must wait while > capacity unread");
  assert.equal(await b.read(new Uint8Array(1)), 1);
  await blocked;
  assert.equal(a.buffered, capacity);
});

Deno.test("channelPair() a single write larger than capacity waits until read", async () => {
  const [a, b] = channelPair(4096);
  using _a = a;
  using _b = b;
  const data = pattern(10_000);
  const big = a.write(data);
  assert.equal(await settlesWithin(big, 20), false);
  const got = await readExactly(b, 10_000 - 4096);
  assert.deepEqual(got, data.subarray(0, 10_000 - 4096));
  await big;
  assert.equal(a.buffered, 4096);
});

Deno.test("channelPair() finish() gives the peer every byte, then EOF", async () => {
  const [a, b] = channelPair(100);
  using _b = b;
  const data = pattern(1000);
  const [got] = await Promise.all([readAll(b, 7), writeAllAndFinish(a, data, 33)]);
  assert.deepEqual(got, data);
  assert.equal(a.closed, true);
  assert.equal(b.closed, false);
  assert.equal(await b.read(new Uint8Array(1)), null, "EOF stays EOF");
});

Deno.test("channelPair() close() still lets the peer read what was buffered, then EOF", async () => {
  const [a, b] = channelPair();
  using _b = b;
  await a.write(new Uint8Array([4, 5]));
  a.close();
  assert.deepEqual(await readAll(b), new Uint8Array([4, 5]));
  await assertRejectsMatching(
    b.write(new Uint8Array(1)),
    /Cannot write to memory:a: the peer closed/,
  );
});

Deno.test("channelPair() close() rejects this end's pending read and write", async () => {
  const [a, b] = channelPair(10);
  using _b = b;
  const read = a.read(new Uint8Array(4));
  const write = a.write(new Uint8Array(100));
  assert.equal(await settlesWithin(write, 5), false);
  a.close();
  await assertRejectsMatching(read, /Cannot read from memory:b: the channel is closed/);
  await assertRejectsMatching(write, /Cannot write to memory:b: the channel is closed/);
  await assertRejectsMatching(a.finish(), /the channel is closed/);
  assert.equal(a.closed, true);
  a.close(); // idempotent
});

Deno.test("channelPair() close() of the reader rejects a writer blocked on backpressure", async () => {
  const [a, b] = channelPair(10);
  using _a = a;
  const write = a.write(new Uint8Array(100));
  b.close();
  await assertRejectsMatching(write, /the peer closed the channel/);
  await assertRejectsMatching(a.finish(), /the peer closed the channel/);
});

Deno.test("MemoryChannel.fail() rejects pending and later operations on both ends", async () => {
  const [a, b] = channelPair(10);
  const read = b.read(new Uint8Array(4));
  const write = a.write(new Uint8Array(100));
  const boom = new Error("link down");
  b.fail(boom);
  await assert.rejects(read, (e) => e === boom);
  await assert.rejects(write, (e) => e === boom);
  await assert.rejects(a.read(new Uint8Array(1)), (e) => e === boom);
  await assert.rejects(b.finish(), (e) => e === boom);
  assert.equal(a.closed, true);
  assert.equal(b.closed, true);
});

Deno.test("channelPair() refuses a negative or fractional capacity", () => {
  assert.throws(() => channelPair(-1), RangeError);
  assert.throws(() => channelPair(1.5), RangeError);
});

Deno.test("MemoryTransports.connect() pairs with an earlier listen() on the same URI", async () => {
  const transports = new MemoryTransports({ capacity: 1024 });
  using listener = await transports.listen("tcp:mem:1");
  assert.equal(listener.address, "tcp:mem:1");
  const client = await transports.connect("tcp:mem:1");
  const server = await listener.accept();
  using _s = server;
  assert.equal(client.peer, "tcp:mem:1");
  assert.match(server.peer, /^memory:client-\d+$/);
  const data = pattern(10_000);
  const [got] = await Promise.all([readAll(server), writeAllAndFinish(client, data)]);
  assert.deepEqual(got, data);
});

Deno.test("MemoryTransports.connect() without a listener fails with connect-failed", async () => {
  const transports = new MemoryTransports();
  await assertTransportError(() => transports.connect("tcp:mem:2"), "connect-failed", "refused");
  const listener = await transports.listen("tcp:mem:2");
  listener.close();
  await assertTransportError(() => transports.connect("tcp:mem:2"), "connect-failed");
});

Deno.test("MemoryTransports.listen() twice on one URI fails with listen-failed", async () => {
  const transports = new MemoryTransports();
  using _first = await transports.listen("unix:/mem");
  await assertTransportError(() => transports.listen("unix:/mem"), "listen-failed", "in use");
});

Deno.test("MemoryTransports validates URIs like the real transports", async () => {
  const transports = new MemoryTransports();
  await assertTransportError(() => transports.connect("tcp:nope"), "bad-uri");
  await assertTransportError(() => transports.listen("rdma:x"), "unknown-protocol");
  await assertTransportError(() => transports.validate("file:rel"), "bad-uri");
  transports.validate("tcp:mem:1");
});

Deno.test("MemoryTransports.connect() rejects with the reason of an aborted signal", async () => {
  const transports = new MemoryTransports();
  using _l = await transports.listen("tcp:mem:3");
  const reason = new Error("cancelled");
  await assert.rejects(
    transports.connect("tcp:mem:3", AbortSignal.abort(reason)),
    (e) => e === reason,
  );
});

Deno.test("MemoryListener.close() rejects pending accepts and closes unaccepted connections", async () => {
  const transports = new MemoryTransports();
  const listener = await transports.listen("tcp:mem:4");
  const client = await transports.connect("tcp:mem:4");
  listener.close();
  assert.equal(await client.read(new Uint8Array(1)), null);
  await assertRejectsMatching(client.write(new Uint8Array(1)), /peer closed/);
  await assertRejectsMatching(listener.accept(), /Listener tcp:mem:4 is closed/);
  const again = await transports.listen("tcp:mem:4");
  const pending = again.accept();
  again.close();
  await assertRejectsMatching(pending, /is closed/);
  client.close();
});
