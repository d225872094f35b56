import assert from "node:assert/strict";
import { DelayRelay } from "../../bench/delay_relay.ts";
import { waitUntil } from "../helpers/wait.ts";
import { settlesWithin } from "../transports/_helpers.ts";

/** A loopback TCP server on port 0 that hands each accepted connection to `handle`. */
function server(handle: (conn: Deno.TcpConn) => Promise<void>) {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const tasks: Promise<void>[] = [];
  const accepting = (async () => {
    for (;;) {
      let conn: Deno.TcpConn;
      try {
        conn = await listener.accept();
      } catch {
        return;
      }
      tasks.push(handle(conn));
    }
  })();
  return {
    port: listener.addr.port,
    async [Symbol.asyncDispose]() {
      listener.close();
      await accepting;
      await Promise.all(tasks);
    },
  };
}

/** Reads until EOF (without closing `conn`, unlike `conn.readable`). */
async function readAll(conn: Deno.Conn): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  const buf = new Uint8Array(64 * 1024);
  let size = 0;
  for (;;) {
    const n = await conn.read(buf);
    if (n === null) break;
    parts.push(buf.slice(0, n));
    size += n;
  }
  const out = new Uint8Array(size);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let off = 0; off < bytes.length;) off += await conn.write(bytes.subarray(off));
}

function pattern(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

Deno.test("delay relay: bytes arrive intact and in order both ways, EOF travels", async () => {
  const up = pattern(8 * 1024 * 1024 + 123, 1);
  const down = pattern(3 * 1024 * 1024 + 7, 2);
  let received: Uint8Array | undefined;
  // The target reads everything the client sends (until EOF), then answers with
  // `down` and closes: so the client's half-close must reach it through the relay.
  await using target = server(async (conn) => {
    received = await readAll(conn).catch(() => new Uint8Array());
    await writeAll(conn, down);
    conn.close();
  });
  await using relay = DelayRelay.start({
    target: { hostname: "127.0.0.1", port: target.port },
    delayMs: 5,
    maxInFlight: 256 * 1024,
    readSize: 64 * 1024,
  });
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: relay.addr.port });
  const reading = readAll(conn);
  await writeAll(conn, up);
  await conn.closeWrite();
  const answer = await reading;
  conn.close();
  assert.deepEqual(answer.length, down.length);
  assert(answer.every((b, i) => b === down[i]), "answer differs");
  assert.deepEqual(received?.length, up.length);
  assert(received!.every((b, i) => b === up[i]), "upstream bytes differ");
  const stats = relay.stats();
  assert.deepEqual(stats.connections, 1);
  assert.deepEqual(stats.bytesUp, up.length);
  assert.deepEqual(stats.bytesDown, down.length);
  assert(stats.peakInFlight <= 256 * 1024, `peak ${stats.peakInFlight}`);
});

Deno.test("delay relay: the first byte arrives no earlier than the delay, each way", async () => {
  const delayMs = 60;
  let arrivedAt = 0;
  await using target = server(async (conn) => {
    const buf = new Uint8Array(16);
    const n = await conn.read(buf);
    arrivedAt = performance.now();
    if (n !== null) await writeAll(conn, buf.subarray(0, n)); // echo
    await readAll(conn).catch(() => {});
    conn.close();
  });
  await using relay = DelayRelay.start({
    target: { hostname: "127.0.0.1", port: target.port },
    delayMs,
    maxInFlight: 4096,
  });
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: relay.addr.port });
  const sentAt = performance.now();
  await writeAll(conn, new Uint8Array([1, 2, 3]));
  const buf = new Uint8Array(16);
  const n = await conn.read(buf);
  const backAt = performance.now();
  assert.deepEqual(n, 3);
  assert.deepEqual([...buf.subarray(0, 3)], [1, 2, 3]);
  assert(arrivedAt - sentAt >= delayMs - 1, `one way took ${arrivedAt - sentAt} ms`);
  assert(backAt - sentAt >= 2 * delayMs - 1, `round trip took ${backAt - sentAt} ms`);
  conn.close();
});

Deno.test("delay relay: stops reading at maxInFlight, then delivers everything", async () => {
  const delayMs = 50;
  const maxInFlight = 64 * 1024;
  const data = pattern(256 * 1024 + 5, 3);
  let received: Uint8Array | undefined;
  await using target = server(async (conn) => {
    received = await readAll(conn).catch(() => new Uint8Array());
    conn.close();
  });
  // The relay's clock stands still until the bound is checked, then runs.
  let frozen: number | null = 0;
  await using relay = DelayRelay.start({
    target: { hostname: "127.0.0.1", port: target.port },
    delayMs,
    maxInFlight,
    readSize: 16 * 1024,
    now: () => frozen ?? performance.now(),
  });
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: relay.addr.port });
  const writing = writeAll(conn, data).then(() => conn.closeWrite());
  // Nothing is due while the clock stands still, so the relay can only read its
  // bound: it must pause instead of buffering everything sent.
  await waitUntil(() => relay.stats().pauses >= 1, "the relay pausing its reads");
  const early = relay.stats();
  assert.deepEqual(early.readUp, maxInFlight);
  assert.deepEqual(early.bytesUp, 0);
  frozen = null;
  await writing;
  const echo = await readAll(conn);
  conn.close();
  assert.deepEqual(echo.length, 0);
  assert.deepEqual(received?.length, data.length);
  assert(received!.every((b, i) => b === data[i]), "bytes differ");
  const stats = relay.stats();
  assert.deepEqual(stats.readUp, data.length);
  assert.deepEqual(stats.bytesUp, data.length);
  assert(stats.peakInFlight <= maxInFlight, `peak ${stats.peakInFlight} > ${maxInFlight}`);
});

Deno.test("delay relay: a closing target closes the client, closing the relay drops connections", async () => {
  let targetConn: Deno.TcpConn | undefined;
  const accepted = Promise.withResolvers<void>();
  await using target = server(async (conn) => {
    targetConn = conn;
    accepted.resolve();
    await readAll(conn).catch(() => {});
    conn.close();
  });
  // The relay's clock: it stands still until the test moves it; each look is counted.
  let now = 0;
  let looks = 0;
  const relay = DelayRelay.start({
    target: { hostname: "127.0.0.1", port: target.port },
    delayMs: 10,
    maxInFlight: 4096,
    now: () => (looks++, now),
  });
  try {
    // 1. The target ends its side: the client reads EOF, only once the delay passed.
    const a = await Deno.connect({ hostname: "127.0.0.1", port: relay.addr.port });
    await accepted.promise;
    await targetConn!.closeWrite();
    const eof = a.read(new Uint8Array(8));
    // Nothing else moves on this connection: the relay looks at its clock once it
    // has read the EOF, to stamp it.
    await waitUntil(() => looks > 0, "the relay reading the EOF");
    now = 9;
    assert.equal(await settlesWithin(eof, 20), false, "EOF was not delayed");
    now = 10;
    assert.deepEqual(await eof, null);
    a.close();

    // 2. A connection still open when the relay closes is dropped: the client sees
    //    EOF or a reset, and close() waits until everything is released.
    const b = await Deno.connect({ hostname: "127.0.0.1", port: relay.addr.port });
    await writeAll(b, new Uint8Array([9]));
    await sleep(20);
    await relay.close();
    const got = await b.read(new Uint8Array(8)).catch(() => null);
    assert.deepEqual(got, null);
    b.close();
  } finally {
    await relay.close();
  }
});

Deno.test("delay relay: an unreachable target closes the client's connection", async () => {
  const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const deadPort = probe.addr.port;
  probe.close();
  await using relay = DelayRelay.start({
    target: { hostname: "127.0.0.1", port: deadPort },
    delayMs: 5,
    maxInFlight: 4096,
  });
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: relay.addr.port });
  const got = await conn.read(new Uint8Array(8)).catch(() => null);
  assert.deepEqual(got, null);
  conn.close();
});
