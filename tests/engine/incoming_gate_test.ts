import assert from "node:assert/strict";
import { acceptStream, HEADER_DEADLINE_MS, MAX_CANDIDATES } from "../../engine/incoming_gate.ts";
import { MemoryTransports } from "../../transports/memory.ts";
import { AUTH_MAGIC, PeerAuthError } from "../../transports/peer_auth.ts";
import type { Channel, Listener } from "../../transports/transport.ts";
import { FakeClock } from "../helpers/fake_clock.ts";

const URI = "tcp:dst:4444";
const HEADER = Uint8Array.of(0x51, 0x45, 0x56, 0x4d, 0, 0, 0, 3);

async function readAll(ch: Channel, n: number): Promise<Uint8Array> {
  const out = new Uint8Array(n);
  let got = 0;
  while (got < n) {
    const k = await ch.read(out.subarray(got));
    if (k === null) break;
    got += k;
  }
  return out.subarray(0, got);
}

function gate(listener: Listener, clock = new FakeClock()) {
  const dropped: string[] = [];
  const abort = new AbortController();
  const result = acceptStream(listener, {
    clock,
    signal: abort.signal,
    onDropped: (_peer, why) => dropped.push(why),
  });
  return { result, dropped, abort, clock };
}

Deno.test("acceptStream(): a connection sending garbage is dropped; the source after it gets through, its header read again", async () => {
  const t = new MemoryTransports();
  const listener = await t.listen(URI);
  const g = gate(listener);
  const junk = await t.connect(URI);
  await junk.write(new TextEncoder().encode("GET / HTTP/1.1\r\n"));
  const src = await t.connect(URI);
  await src.write(HEADER);
  await src.write(Uint8Array.of(7, 8, 9));
  const ch = await g.result;
  listener.close();
  assert.deepEqual([...await readAll(ch, 11)], [...HEADER, 7, 8, 9]);
  assert.equal(g.dropped.length, 1);
  assert.match(g.dropped[0], /no savevm v3 header \(first bytes 47 45 54 20/);
  assert.equal(
    await junk.read(new Uint8Array(1)).catch(() => null),
    null,
    "the junk peer was closed",
  );
  ch.close();
  junk.close();
  src.close();
});

Deno.test("acceptStream(): a silent connection is dropped at the header deadline while a later source is taken at once", async () => {
  const t = new MemoryTransports();
  const listener = await t.listen(URI);
  const g = gate(listener);
  const idle = await t.connect(URI); // connects and says nothing
  const src = await t.connect(URI);
  await src.write(HEADER);
  const ch = await g.result; // no need to wait for the idle one's deadline
  assert.deepEqual(g.dropped, ["another connection started the stream first"]);
  listener.close();
  ch.close();
  idle.close();
  src.close();
});

Deno.test("acceptStream(): a connection that sends nothing for the deadline is dropped and listening goes on", async () => {
  const t = new MemoryTransports();
  const listener = await t.listen(URI);
  const clock = new FakeClock();
  const g = gate(listener, clock);
  const idle = await t.connect(URI);
  // The deadline is on the injected clock: once the gate watches it, move time past it.
  while (clock.pending === 0) await new Promise((r) => setTimeout(r, 0));
  clock.advance(HEADER_DEADLINE_MS - 1);
  await new Promise((r) => setTimeout(r, 0));
  assert.deepEqual(g.dropped, [], "not before the deadline");
  clock.advance(1);
  while (g.dropped.length === 0) await new Promise((r) => setTimeout(r, 0));
  assert.match(g.dropped[0], new RegExp(`sent no stream header within ${HEADER_DEADLINE_MS} ms`));
  const src = await t.connect(URI);
  await src.write(HEADER);
  const ch = await g.result;
  listener.close();
  ch.close();
  idle.close();
  src.close();
});

Deno.test("acceptStream(): past MAX_CANDIDATES waiting connections, new ones are dropped at once", async () => {
  const t = new MemoryTransports();
  const listener = await t.listen(URI);
  const g = gate(listener);
  const idle: Channel[] = [];
  for (let i = 0; i <= MAX_CANDIDATES; i++) idle.push(await t.connect(URI));
  while (g.dropped.length === 0) await new Promise((r) => setTimeout(r, 0));
  assert.match(g.dropped[0], /connections wait to start a stream/);
  g.abort.abort(new Error("cancelled"));
  await assert.rejects(g.result, /cancelled/);
  listener.close();
  for (const c of idle) c.close();
});

Deno.test("acceptStream(): cancelling drops every waiting connection and rejects", async () => {
  const t = new MemoryTransports();
  const listener = await t.listen(URI);
  const g = gate(listener);
  const idle = await t.connect(URI);
  while (g.clock.pending === 0) await new Promise((r) => setTimeout(r, 0));
  g.abort.abort(new Error("the incoming migration was cancelled"));
  await assert.rejects(g.result, /cancelled/);
  assert.equal(g.dropped.length, 1);
  listener.close();
  idle.close();
});

Deno.test("acceptStream(): a one-peer listener (file:, fd:, exec:) hands its channel out unchecked", async () => {
  const t = new MemoryTransports();
  const inner = await t.listen(URI);
  const one: Listener = {
    address: inner.address,
    peers: "one",
    accept: () => inner.accept(),
    close: () => inner.close(),
    [Symbol.dispose]: () => inner.close(),
  };
  const g = gate(one);
  const peer = await t.connect(URI);
  await peer.write(Uint8Array.of(1, 2, 3)); // not a header: the loader will say so
  const ch = await g.result;
  assert.deepEqual([...await readAll(ch, 3)], [1, 2, 3]);
  assert.deepEqual(g.dropped, []);
  one.close();
  ch.close();
  peer.close();
});

/**
 * A listener whose peers must send "GOOD" before their stream (a stand-in for the
 * migration secret's exchange, transports/peer_auth.ts).
 */
function authenticating(inner: Listener): Listener & { checked: number } {
  const l = {
    checked: 0,
    address: inner.address,
    peers: "many" as const,
    accept: () => inner.accept(),
    async authenticate(ch: Channel) {
      l.checked++;
      const word = new TextDecoder().decode(await readAll(ch, 4));
      if (word !== "GOOD") {
        throw new PeerAuthError(ch.peer, "does not hold this destination's migration secret");
      }
    },
    close: () => inner.close(),
    [Symbol.dispose]: () => inner.close(),
  };
  return l;
}

/** The text of the failure message `ch` received (be16 0x4601, be16 len, text). */
async function refusal(ch: Channel): Promise<string> {
  const head = await readAll(ch, 4);
  assert.deepEqual([...head.subarray(0, 2)], [0x46, 0x01]);
  return new TextDecoder().decode(await readAll(ch, (head[2] << 8) | head[3]));
}

Deno.test("acceptStream(): with an authenticating listener, a peer that fails the proof is dropped and told why before its stream is read; the real source gets through", async () => {
  const t = new MemoryTransports();
  const listener = authenticating(await t.listen(URI));
  const g = gate(listener);
  const intruder = await t.connect(URI);
  await intruder.write(new TextEncoder().encode("EVIL"));
  await intruder.write(HEADER); // its stream, never read
  assert.match(
    await refusal(intruder),
    /^the destination refused this connection: it does not hold this destination's migration secret$/,
  );
  while (g.dropped.length === 0) await new Promise((r) => setTimeout(r, 0));
  assert.match(g.dropped[0], /does not hold/);
  const src = await t.connect(URI);
  await src.write(new TextEncoder().encode("GOOD"));
  await src.write(HEADER);
  const ch = await g.result;
  assert.deepEqual([...await readAll(ch, 8)], [...HEADER]);
  assert.equal(listener.checked, 2);
  listener.close();
  ch.close();
  intruder.close();
  src.close();
});

Deno.test("acceptStream(): a peer that never finishes proving itself is dropped at the header deadline", async () => {
  const t = new MemoryTransports();
  const listener = authenticating(await t.listen(URI));
  const clock = new FakeClock();
  const g = gate(listener, clock);
  const slow = await t.connect(URI);
  await slow.write(new TextEncoder().encode("GO")); // half a proof, then nothing
  while (clock.pending === 0) await new Promise((r) => setTimeout(r, 0));
  clock.advance(HEADER_DEADLINE_MS);
  while (g.dropped.length === 0) await new Promise((r) => setTimeout(r, 0));
  assert.match(g.dropped[0], /sent no stream header within/);
  g.abort.abort(new Error("cancelled"));
  await assert.rejects(g.result, /cancelled/);
  listener.close();
  slow.close();
});

Deno.test("acceptStream(): a source offering the migration secret to a destination without one is told so", async () => {
  const t = new MemoryTransports();
  const listener = await t.listen(URI);
  const g = gate(listener);
  const src = await t.connect(URI);
  const hello = new Uint8Array(44);
  hello.set(AUTH_MAGIC);
  await src.write(hello);
  assert.match(
    await refusal(src),
    /offered the migration secret exchange, but this destination has no migration_secret set/,
  );
  g.abort.abort(new Error("cancelled"));
  await assert.rejects(g.result, /cancelled/);
  listener.close();
  src.close();
});

Deno.test("acceptStream(): with afterStream, connections after the stream started are handed over, not dropped (multifd's channels)", async () => {
  const t = new MemoryTransports();
  const listener = await t.listen(URI);
  const later: Channel[] = [];
  const dropped: string[] = [];
  const result = acceptStream(listener, {
    clock: new FakeClock(),
    signal: new AbortController().signal,
    onDropped: (_peer, why) => dropped.push(why),
    afterStream: (ch) => later.push(ch),
  });
  const src = await t.connect(URI);
  await src.write(HEADER);
  const ch = await result;
  const extra = [await t.connect(URI), await t.connect(URI)];
  await extra[0].write(Uint8Array.of(1, 2, 3));
  while (later.length < 2) await new Promise((r) => setTimeout(r, 0));
  assert.deepEqual([...await readAll(later[0], 3)], [1, 2, 3], "nothing was read from it");
  assert.deepEqual(dropped, []);
  listener.close();
  for (const c of [ch, src, ...extra, ...later]) c.close();
});
