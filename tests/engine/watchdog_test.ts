import assert from "node:assert/strict";
import { Engine } from "../../engine/engine.ts";
import { StreamReader } from "../../engine/format/reader.ts";
import { loadStream } from "../../engine/incoming.ts";
import { pongMessage } from "../../engine/return_path.ts";
import {
  commitCommand,
  MIG_CMD_OPEN_RETURN_PATH,
  shutMessage,
  usesReturnPath,
} from "../../engine/return_path.ts";
import { ProgressTimeoutError, ProgressWatchdog, WatchedChannel } from "../../engine/watchdog.ts";
import { channelPair, MemoryTransports } from "../../transports/memory.ts";
import type { Channel, Listener, Transports } from "../../transports/transport.ts";
import { buildValidStream, SMALL_BLOCKS, StreamBuilder, T } from "../../testing/stream_builder.ts";
import { ramDigest, TestGuest } from "../../testing/test_guest.ts";
import { FakeClock } from "../helpers/fake_clock.ts";
import { tick, withTimeout } from "../helpers/wait.ts";

const URI = "tcp:memory:7777";
const SMALL_TIMEOUT = 200;

function runningGuest(bytes: number, seed = 3): TestGuest {
  const g = new TestGuest([["pc.ram", bytes]]);
  g.fillRandom(seed);
  g.start();
  return g;
}

// ---- ProgressWatchdog ---------------------------------------------------------------

Deno.test("ProgressWatchdog fires once, with a ProgressTimeoutError, exactly when progress stopped for the timeout", async () => {
  const clock = new FakeClock();
  const fired: ProgressTimeoutError[] = [];
  const dog = new ProgressWatchdog(() => 30, (e) => fired.push(e), "nothing moved", clock)
    .start();
  try {
    // Progress every 20 ms keeps it quiet for far longer than the timeout.
    for (let i = 0; i < 10; i++) {
      clock.advance(20);
      await tick();
      dog.progress();
    }
    assert.equal(fired.length, 0);
    clock.advance(29);
    await tick();
    assert.equal(fired.length, 0, "29 ms without progress: not yet");
    clock.advance(1);
    await tick();
    assert.equal(fired.length, 1, "30 ms without progress: fired");
    assert.ok(fired[0] instanceof ProgressTimeoutError);
    assert.match(
      fired[0].message,
      /No progress for 30 ms \(progress_timeout is 30 ms\): nothing moved/,
    );
    assert.equal(dog.error, fired[0]);
    assert.equal(clock.pending, 0, "nothing left to watch");
    clock.advance(1_000);
    await tick();
    assert.equal(fired.length, 1, "fires once");
  } finally {
    dog.stop();
  }
});

Deno.test("ProgressWatchdog reads the timeout live: raising it postpones the failure, lowering it applies within a second", async () => {
  const clock = new FakeClock();
  let limit = 30;
  let fired = 0;
  const dog = new ProgressWatchdog(() => limit, () => fired++, "x", clock).start();
  try {
    limit = 1_000_000;
    clock.advance(100);
    await tick();
    for (let i = 0; i < 5; i++) {
      clock.advance(1_000);
      await tick();
    }
    assert.equal(fired, 0, "5100 ms without progress under a raised timeout");
    limit = 2_000;
    clock.advance(1_000);
    await tick();
    assert.equal(fired, 1, "the lowered timeout applied at the next look");
  } finally {
    dog.stop();
  }
});

Deno.test("ProgressWatchdog.stop() drops its deadline: it never fires afterwards", async () => {
  const clock = new FakeClock();
  let fired = 0;
  const dog = new ProgressWatchdog(() => 30, () => fired++, "x", clock).start();
  assert.equal(clock.pending, 1);
  dog.stop();
  assert.equal(clock.pending, 0);
  clock.advance(1_000);
  await tick();
  assert.equal(fired, 0);
});

// ---- WatchedChannel ---------------------------------------------------------------

/** A channel whose reads and writes never settle, even after close (a misbehaving transport). */
class StuckChannel implements Channel {
  readonly peer = "stuck:";
  closed = false;
  write(): Promise<void> {
    return new Promise(() => {});
  }
  read(): Promise<number | null> {
    return new Promise(() => {});
  }
  finish(): Promise<void> {
    return new Promise(() => {});
  }
  close(): void {
    this.closed = true;
  }
  [Symbol.dispose](): void {
    this.close();
  }
}

Deno.test("WatchedChannel.close() rejects pending reads and writes even when the transport never would", async () => {
  const inner = new StuckChannel();
  const ch = new WatchedChannel(inner, null);
  const w = ch.write(new Uint8Array(10));
  const r = ch.read(new Uint8Array(10));
  ch.close();
  await assert.rejects(withTimeout(w, 5_000, "write"), /closed/);
  await assert.rejects(withTimeout(r, 5_000, "read"), /closed/);
  assert.equal(inner.closed, true);
  assert.equal(ch.closed, true);
  await assert.rejects(ch.write(new Uint8Array(1)), /closed/);
});

Deno.test("WatchedChannel reports the watchdog's timeout as the failure of a stuck write", async () => {
  const inner = new StuckChannel();
  let ch: WatchedChannel | null = null;
  const clock = new FakeClock();
  const dog = new ProgressWatchdog(() => 20, () => ch!.close(), "the peer is stuck", clock);
  ch = new WatchedChannel(inner, dog.start());
  try {
    const write = ch.write(new Uint8Array(3 << 20)).then(() => null, (e) => e);
    await tick();
    clock.advance(20);
    const err = await withTimeout(write, 5_000, "timeout");
    assert.ok(err instanceof ProgressTimeoutError, String(err));
    assert.match(err.message, /the peer is stuck/);
  } finally {
    dog.stop();
  }
});

Deno.test("usesReturnPath() is on for tcp: and unix:, off for one-way transports", () => {
  assert.equal(usesReturnPath("tcp:127.0.0.1:1"), true);
  assert.equal(usesReturnPath("unix:/tmp/x.sock"), true);
  assert.equal(usesReturnPath("exec:cat > /dev/null"), false);
  assert.equal(usesReturnPath("file:/tmp/x"), false);
  assert.equal(usesReturnPath("fd:3"), false);
});

// ---- progress_timeout on the source -----------------------------------------------------

Deno.test("source: a peer that stops reading fails the migration after progress_timeout; the guest runs on", async () => {
  const transports = new MemoryTransports({ capacity: 4096 });
  const listener = await transports.listen(URI);
  const accepted = listener.accept();
  const guest = runningGuest(4 << 20);
  const engine = new Engine({ guest, transports });
  try {
    engine.setParameters({ max_bandwidth: 1 << 30, progress_timeout: SMALL_TIMEOUT });
    engine.migrate(URI);
    await withTimeout(engine.migration!.done, 10_000, "the progress timeout");
    const info = engine.current();
    assert.equal(info.status, "failed");
    assert.match(info.error_desc!, /No progress for \d+ ms \(progress_timeout is 200 ms\)/);
    assert.match(info.error_desc!, /destination accepted no data/);
    assert.equal(guest.runState, "running");
  } finally {
    await engine.close();
    (await accepted).close();
    listener.close();
  }
});

/** Transports whose connect never completes until aborted (a SYN nobody answers). */
class HangingConnect implements Transports {
  connects = 0;
  validate(): void {}
  connect(_uri: string, signal?: AbortSignal): Promise<Channel> {
    this.connects++;
    return new Promise((_, reject) => {
      signal?.addEventListener("abort", () => reject(signal.reason), { once: true });
    });
  }
  listen(): Promise<Listener> {
    return Promise.reject(new Error("not here"));
  }
}

Deno.test("source: a connect that never completes fails after progress_timeout (state setup → failed)", async () => {
  const guest = runningGuest(1 << 20);
  const engine = new Engine({ guest, transports: new HangingConnect() });
  const states: string[] = [];
  engine.events.subscribe((e) => e.type === "state" && states.push(`${e.from}→${e.to}`));
  try {
    engine.setParameters({ progress_timeout: SMALL_TIMEOUT });
    engine.migrate(URI);
    await withTimeout(engine.migration!.done, 10_000, "the timeout");
    assert.equal(engine.current().status, "failed");
    assert.match(engine.current().error_desc!, /progress_timeout/);
    assert.deepEqual(states, ["none→setup", "setup→failed"]);
    assert.equal(guest.runState, "running");
  } finally {
    await engine.close();
  }
});

Deno.test("cancel in setup (connect pending) → 202-style cancelled; a second cancel while cancelling still reports it; then no-op", async () => {
  const guest = runningGuest(1 << 20);
  const engine = new Engine({ guest, transports: new HangingConnect() });
  try {
    engine.migrate(URI);
    assert.equal(engine.current().status, "setup");
    const first = engine.cancel();
    assert.equal(first.cancelled, true);
    assert.equal(first.info.status, "cancelling");
    const second = engine.cancel(); // same tick: still cancelling
    assert.equal(second.cancelled, true);
    assert.equal(second.info.status, "cancelling");
    await withTimeout(engine.migration!.done, 5_000, "cancel");
    assert.equal(engine.current().status, "cancelled");
    const third = engine.cancel();
    assert.equal(third.cancelled, false);
    assert.equal(third.info.status, "cancelled");
    assert.equal(guest.runState, "running");
  } finally {
    await engine.close();
  }
});

// ---- progress_timeout on the destination -----------------------------------------------

Deno.test("destination: a peer that sends a header and then nothing is timed out; the guest stays inmigrate; re-armable", async () => {
  const transports = new MemoryTransports();
  const guest = new TestGuest([["pc.ram", 1 << 20]]);
  const engine = new Engine({ guest, transports });
  try {
    engine.setParameters({ progress_timeout: SMALL_TIMEOUT });
    await engine.listenIncoming(URI);
    const silent = await transports.connect(URI);
    await silent.write(Uint8Array.of(0x51, 0x45, 0x56, 0x4d, 0, 0, 0, 3));
    await withTimeout(engine.incoming!.done, 10_000, "the destination timeout");
    const info = engine.incomingInfo();
    assert.equal(info.status, "failed");
    assert.match(info.error_desc!, /progress_timeout is 200 ms\): no data arrived from the source/);
    assert.equal(guest.runState, "inmigrate");
    silent.close();
    assert.equal((await engine.listenIncoming(URI)).status, "listening");
  } finally {
    await engine.close();
  }
});

Deno.test("destination: a source that stalls mid-stream is timed out", async () => {
  const transports = new MemoryTransports();
  const guest = new TestGuest(SMALL_BLOCKS.map(([n, l]) => [n, l]));
  const engine = new Engine({ guest, transports });
  try {
    engine.setParameters({ progress_timeout: SMALL_TIMEOUT });
    await engine.listenIncoming(URI);
    const peer = await transports.connect(URI);
    const bytes = buildValidStream().bytes;
    await peer.write(bytes.subarray(0, bytes.length >> 1));
    await withTimeout(engine.incoming!.done, 10_000, "the destination timeout");
    assert.equal(engine.incomingInfo().status, "failed");
    assert.match(engine.incomingInfo().error_desc!, /progress_timeout/);
    assert.equal(engine.incomingInfo().bytes_received, bytes.length >> 1);
    assert.equal(guest.runState, "inmigrate");
    peer.close();
  } finally {
    await engine.close();
  }
});

// ---- the return path ------------------------------------------------------------------

Deno.test("return path: the destination starts its guest only once the source guest is stopped for good; both complete with equal RAM", async () => {
  const transports = new MemoryTransports();
  const src = runningGuest(2 << 20, 9);
  const dst = new TestGuest([["pc.ram", 2 << 20]]);
  const srcEngine = new Engine({ guest: src, transports });
  const dstEngine = new Engine({ guest: dst, transports });
  let srcStateWhenDstStarted = "";
  dst.onRunStateChange((_, to) => {
    if (to === "running") srcStateWhenDstStarted = src.runState;
  });
  try {
    srcEngine.setParameters({ max_bandwidth: 1 << 30 });
    await dstEngine.listenIncoming(URI);
    srcEngine.migrate(URI);
    await withTimeout(srcEngine.migration!.done, 10_000, "migration");
    await withTimeout(dstEngine.incoming!.done, 10_000, "incoming");
    assert.equal(srcEngine.current().status, "completed", srcEngine.current().error_desc);
    assert.equal(dstEngine.incomingInfo().status, "completed");
    assert.equal(await ramDigest(dst), await ramDigest(src));
    assert.equal(dst.runState, "running");
    assert.equal(src.runState, "postmigrate");
    assert.equal(srcStateWhenDstStarted, "finish-migrate", "never two running guests");
  } finally {
    await srcEngine.close();
    await dstEngine.close();
  }
});

Deno.test("return path: a destination that reads everything but never confirms fails the source, whose guest runs on", async () => {
  const memory = new MemoryTransports();
  const listener = await memory.listen(URI);
  const guest = runningGuest(1 << 20);
  const engine = new Engine({ guest, transports: memory });
  try {
    engine.setParameters({ max_bandwidth: 1 << 30 });
    engine.migrate(URI);
    const server = await listener.accept();
    // Load the whole stream with the real loader (the source then waits for SHUT), then hang up.
    const result = await loadStream(
      new StreamReader(server),
      new TestGuest([["pc.ram", 1 << 20]]),
      { onPing: (value) => server.write(pongMessage(value)) },
    );
    assert.equal(result.returnPath, true, "a tcp: source opens the return path");
    server.close();
    await withTimeout(engine.migration!.done, 10_000, "failure");
    const info = engine.current();
    assert.equal(info.status, "failed");
    assert.match(info.error_desc!, /without confirming|closed/);
    assert.equal(guest.runState, "running");
  } finally {
    await engine.close();
    listener.close();
  }
});

Deno.test("return path: a destination whose source vanishes before the commit fails and keeps the guest inmigrate", async () => {
  const transports = new MemoryTransports();
  const guest = new TestGuest(SMALL_BLOCKS.map(([n, l]) => [n, l]));
  const engine = new Engine({ guest, transports });
  try {
    await engine.listenIncoming(URI);
    const peer = await transports.connect(URI);
    const full = buildValidStream().bytes;
    const cut = new StreamBuilder().header().configuration().ramStart(0, SMALL_BLOCKS).offset;
    const withRp = new StreamBuilder().raw(full.subarray(0, cut))
      .u8(T.COMMAND).be16(MIG_CMD_OPEN_RETURN_PATH).be16(0).raw(full.subarray(cut)).build();
    await peer.write(withRp);
    const shut = new Uint8Array(8);
    let got = 0;
    while (got < 8) got += (await peer.read(shut.subarray(got)))!;
    assert.deepEqual(shut, shutMessage(0));
    assert.equal(engine.incomingInfo().status, "active", "waits for the commit");
    assert.equal(guest.runState, "inmigrate");
    peer.close(); // the commit never comes
    await withTimeout(engine.incoming!.done, 10_000, "failure");
    assert.equal(engine.incomingInfo().status, "failed");
    assert.match(engine.incomingInfo().error_desc!, /did not commit the switchover/);
    assert.equal(guest.runState, "inmigrate");
    assert.throws(() => engine.startGuest(), /guest-incomplete|Cannot start/);
  } finally {
    await engine.close();
  }
});

Deno.test("return path: with the commit the hand-built stream completes and the guest starts", async () => {
  const transports = new MemoryTransports();
  const guest = new TestGuest(SMALL_BLOCKS.map(([n, l]) => [n, l]));
  const engine = new Engine({ guest, transports });
  try {
    await engine.listenIncoming(URI);
    const peer = await transports.connect(URI);
    const full = buildValidStream().bytes;
    const cut = new StreamBuilder().header().configuration().ramStart(0, SMALL_BLOCKS).offset;
    await peer.write(
      new StreamBuilder().raw(full.subarray(0, cut)).u8(T.COMMAND).be16(1).be16(0)
        .raw(full.subarray(cut)).build(),
    );
    const shut = new Uint8Array(8);
    let got = 0;
    while (got < 8) got += (await peer.read(shut.subarray(got)))!;
    await peer.write(commitCommand());
    await peer.finish();
    await withTimeout(engine.incoming!.done, 10_000, "completion");
    assert.equal(engine.incomingInfo().status, "completed");
    assert.equal(guest.runState, "running");
  } finally {
    await engine.close();
  }
});

Deno.test("WatchedChannel.finish(): once the handshake is done, a failing transport finish cannot fail it (no second running guest)", async () => {
  const [a, b] = channelPair();
  let shook = false;
  const failing: Channel = {
    peer: a.peer,
    get closed() {
      return a.closed;
    },
    write: (c) => a.write(c),
    read: (buf) => a.read(buf),
    finish: () => Promise.reject(new Error("connection reset by peer")),
    close: () => a.close(),
    [Symbol.dispose]: () => a.close(),
  };
  const ch = new WatchedChannel(failing, null, {
    beforeFinish: () => {
      shook = true;
      return Promise.resolve();
    },
  });
  await ch.finish();
  assert.equal(shook, true);
  assert.equal(ch.closed, true);
  // Without a handshake the same failure is reported.
  const plain = new WatchedChannel(failing, null);
  await assert.rejects(plain.finish(), /reset/);
  b.close();
});
