import assert from "node:assert/strict";
import type { Clock } from "../../engine/clock.ts";
import { Engine, type EngineEvent } from "../../engine/engine.ts";
import { canTransition } from "../../engine/migration.ts";
import { MIGRATION_STATES, type MigrationStatus } from "../../engine/contract.ts";
import { StreamReader } from "../../engine/format/reader.ts";
import { loadStream } from "../../engine/incoming.ts";
import { pongMessage } from "../../engine/return_path.ts";
import type { Channel, Listener, Transports } from "../../transports/transport.ts";
import { MemoryTransports } from "../../transports/memory.ts";
import { PAGE_SIZE } from "../../vm/ram.ts";
import { FakeClock } from "../helpers/fake_clock.ts";
import { ramDigest, TestGuest } from "../../testing/test_guest.ts";
import { tick, withTimeout } from "../helpers/wait.ts";

const URI = "tcp:memory:5555";

/** Resolves with the first engine event matching `pred` (then unsubscribes). */
function nextEvent(engine: Engine, pred: (e: EngineEvent) => boolean): Promise<EngineEvent> {
  return new Promise((resolve) => {
    const off = engine.events.subscribe((e) => {
      if (pred(e)) {
        off();
        resolve(e);
      }
    });
  });
}

/** Records every `state` event of an engine as "from→to". */
function recordStates(engine: Engine): string[] {
  const seen: string[] = [];
  engine.events.subscribe((e) => {
    if (e.type === "state") seen.push(`${e.from}→${e.to}`);
  });
  return seen;
}

function runningGuest(bytes: number, seed = 1): TestGuest {
  const g = new TestGuest([["pc.ram", bytes]]);
  g.fillRandom(seed);
  g.start();
  return g;
}

/** Source and destination engines on one MemoryTransports; `close` closes both. */
async function pair(
  opts: { bytes?: number; clock?: Clock; transports?: Transports; max_bandwidth?: number } = {},
) {
  const memory = new MemoryTransports();
  const src = runningGuest(opts.bytes ?? 1 << 20);
  const dst = new TestGuest([["pc.ram", opts.bytes ?? 1 << 20]]);
  const dstEngine = new Engine({ guest: dst, transports: memory });
  const srcEngine = new Engine({
    guest: src,
    transports: opts.transports ?? memory,
    ...(opts.clock ? { clock: opts.clock } : {}),
  });
  srcEngine.setParameters({ max_bandwidth: opts.max_bandwidth ?? 1 << 30 });
  await dstEngine.listenIncoming(URI);
  return {
    memory,
    src,
    dst,
    srcEngine,
    dstEngine,
    close: async () => {
      await srcEngine.close();
      await dstEngine.close();
    },
  };
}

/** A source whose destination accepted the connection but never reads (a stalled peer). */
async function stalledPeer(capacity: number, bytes: number, fill: "random" | "zero") {
  const memory = new MemoryTransports({ capacity });
  const listener = await memory.listen(URI);
  const src = new TestGuest([["pc.ram", bytes]]);
  if (fill === "random") src.fillRandom(5);
  src.start();
  const engine = new Engine({ guest: src, transports: memory });
  engine.setParameters({ max_bandwidth: 1 << 30 });
  const accepted: Promise<Channel> = listener.accept();
  return {
    src,
    engine,
    accepted,
    close: async () => {
      await engine.close();
      (await accepted).close();
      listener.close();
    },
  };
}

// ---- state machine ------------------------------------------------------------

Deno.test("canTransition() allows exactly QEMU's migration state transitions", () => {
  const allowed = new Set([
    "none→setup",
    "setup→active",
    "setup→cancelling",
    "setup→failed",
    "active→completed",
    "active→interrupted",
    "active→cancelling",
    "active→failed",
    "interrupted→active",
    "interrupted→cancelling",
    "interrupted→failed",
    "active→pre-switchover",
    "pre-switchover→device",
    "pre-switchover→cancelling",
    "pre-switchover→failed",
    "device→completed",
    "device→cancelling",
    "device→failed",
    "cancelling→cancelled",
    "cancelling→failed",
    "cancelling→completed",
  ]);
  for (const from of MIGRATION_STATES) {
    for (const to of MIGRATION_STATES) {
      assert.equal(canTransition(from, to), allowed.has(`${from}→${to}`), `${from} → ${to}`);
    }
  }
});

Deno.test("canTransition() forbids leaving a final state, skipping setup, and cancelling without cancelling", () => {
  const forbidden: [MigrationStatus, MigrationStatus][] = [
    ["none", "active"],
    ["none", "completed"],
    ["setup", "completed"],
    ["setup", "cancelled"],
    ["active", "cancelled"],
    ["active", "setup"],
    ["completed", "failed"],
    ["completed", "active"],
    ["cancelled", "setup"],
    ["failed", "setup"],
    ["active", "active"],
  ];
  for (const [from, to] of forbidden) {
    assert.equal(canTransition(from, to), false, `${from} → ${to}`);
  }
});

// ---- a whole migration ---------------------------------------------------------------

Deno.test("Migration emits state events none→setup→active→completed in order via Engine.events", async () => {
  const p = await pair();
  try {
    const states = recordStates(p.srcEngine);
    const info = p.srcEngine.migrate(URI);
    assert.equal(info.status, "setup");
    assert.equal(info.uri, URI);
    await p.srcEngine.migration!.done;
    await p.dstEngine.incoming!.done;
    assert.deepEqual(states, ["none→setup", "setup→active", "active→completed"]);
    assert.equal(await ramDigest(p.dst), await ramDigest(p.src));
  } finally {
    await p.close();
  }
});

Deno.test("Migration info has total_time, setup_time, downtime and RAM totals after completion", async () => {
  const p = await pair({ bytes: 2 << 20 });
  try {
    const ids: number[] = [];
    p.srcEngine.events.subscribe((e) => ids.push(e.id));
    p.srcEngine.migrate(URI);
    await p.srcEngine.migration!.done;
    const info = p.srcEngine.current();
    assert.equal(info.status, "completed");
    assert.equal(typeof info.total_time, "number");
    assert.equal(typeof info.setup_time, "number");
    assert.equal(typeof info.downtime, "number");
    assert.ok(info.downtime! >= 0);
    assert.ok(info.setup_time! <= info.total_time!);
    assert.equal(info.expected_downtime, undefined, "only while active");
    assert.equal(info.error_desc, undefined);
    assert.equal(info.ram!.total, 2 << 20);
    assert.equal(info.ram!.remaining, 0);
    assert.equal(info.ram!.page_size, PAGE_SIZE);
    assert.equal(info.ram!.normal, 512);
    assert.equal(info.ram!.normal_bytes, 512 * PAGE_SIZE);
    assert.ok(info.ram!.transferred >= 512 * (PAGE_SIZE + 8));
    assert.ok(info.ram!.dirty_sync_count >= 1);
    assert.deepEqual(ids, [...ids].sort((a, b) => a - b), "event ids increase");
    // Later queries answer the same frozen total_time.
    await tick(5);
    assert.equal(p.srcEngine.current().total_time, info.total_time);
    // Nothing left to cancel.
    assert.equal(p.srcEngine.migration!.cancel(), false);
    assert.deepEqual(p.srcEngine.cancel().cancelled, false);
    await p.dstEngine.incoming!.done;
  } finally {
    await p.close();
  }
});

// ---- cancel ------------------------------------------------------------------------

Deno.test("Migration.cancel() in setup ends cancelling→cancelled with the guest running", async () => {
  const p = await pair();
  try {
    const states = recordStates(p.srcEngine);
    p.srcEngine.migrate(URI);
    const res = p.srcEngine.cancel();
    assert.equal(res.cancelled, true);
    assert.equal(res.info.status, "cancelling");
    await p.srcEngine.migration!.done;
    assert.equal(p.srcEngine.current().status, "cancelled");
    assert.deepEqual(states, ["none→setup", "setup→cancelling", "cancelling→cancelled"]);
    assert.equal(p.src.runState, "running");
    assert.equal(p.src.stops, 0, "the guest was never stopped");
    // The connection ended before a stream header: the destination dropped it and
    // goes on listening for the real source.
    while (p.dstEngine.incomingInfo().refused_peers !== 1) {
      await new Promise((r) => setTimeout(r, 1));
    }
    assert.equal(p.dstEngine.incomingInfo().status, "listening");
  } finally {
    await p.close();
  }
});

Deno.test("Migration.cancel() in active ends cancelling→cancelled with the guest running", async () => {
  // 4 MiB at 1 MiB/s: the migration stays active for seconds unless cancelled.
  const p = await pair({ bytes: 4 << 20, max_bandwidth: 1 << 20 });
  try {
    const states = recordStates(p.srcEngine);
    const active = nextEvent(p.srcEngine, (e) => e.type === "state" && e.to === "active");
    p.srcEngine.migrate(URI);
    await active;
    await tick(10);
    assert.equal(p.srcEngine.current().status, "active");
    assert.equal(p.srcEngine.cancel().cancelled, true);
    await withTimeout(p.srcEngine.migration!.done, 5_000, "cancel");
    assert.deepEqual(states, [
      "none→setup",
      "setup→active",
      "active→cancelling",
      "cancelling→cancelled",
    ]);
    assert.equal(p.src.runState, "running");
    await p.dstEngine.incoming!.done;
    assert.equal(p.dstEngine.incomingInfo().status, "failed");
    assert.equal(p.dst.runState, "inmigrate", "a partial stream never starts the destination");
  } finally {
    await p.close();
  }
});

Deno.test("Migration.cancel() during switchover (guest stopped, peer stalled) restarts the guest", async () => {
  // A zero guest fits in one PART. The peer loads it and answers the source's setup
  // PING and its two drain PINGs, then stops reading: the final pass blocks while the guest is
  // stopped in finish-migrate.
  const s = await stalledPeer(1000, 1 << 20, "zero");
  try {
    const stopped = nextEvent(s.engine, (e) => e.type === "runstate" && e.to === "finish-migrate");
    s.engine.migrate(URI);
    const peer = await s.accepted;
    let pongs = 0;
    loadStream(
      new StreamReader(peer),
      new TestGuest([["pc.ram", 1 << 20]]),
      {
        onPing: async (v) => {
          await peer.write(pongMessage(v));
          if (++pongs === 3) await new Promise(() => {}); // stall: read nothing more
        },
      },
    ).catch(() => {});
    await withTimeout(stopped, 5_000, "switchover");
    await tick(5);
    assert.equal(s.src.runState, "finish-migrate");
    assert.equal(s.engine.current().status, "active");
    assert.equal(s.engine.cancel().cancelled, true);
    await withTimeout(s.engine.migration!.done, 5_000, "cancel");
    assert.equal(s.engine.current().status, "cancelled");
    assert.equal(s.src.runState, "running");
  } finally {
    await s.close();
  }
});

Deno.test("Migration.cancel() takes effect promptly when the peer stops reading", async () => {
  const s = await stalledPeer(4096, 4 << 20, "random");
  try {
    const active = nextEvent(s.engine, (e) => e.type === "state" && e.to === "active");
    s.engine.migrate(URI);
    // The peer answers the setup's PING (the source waits for it), then reads nothing more.
    const peer = await s.accepted;
    loadStream(new StreamReader(peer), new TestGuest([["pc.ram", 4 << 20]]), {
      onPing: async (v) => {
        await peer.write(pongMessage(v));
        await new Promise(() => {});
      },
    }).catch(() => {});
    await active;
    await tick(20); // now blocked on a write the peer will never read
    assert.equal(s.engine.current().status, "active");
    assert.equal(s.engine.cancel().cancelled, true);
    await withTimeout(s.engine.migration!.done, 5_000, "cancel of a stalled migration");
    const info = s.engine.current();
    assert.equal(info.status, "cancelled");
    assert.equal(info.error_desc, undefined);
    assert.equal(s.src.runState, "running");
  } finally {
    await s.close();
  }
});

Deno.test("Migration to a URI nobody listens on ends failed with the connect error as reason", async () => {
  const guest = runningGuest(1 << 20);
  const engine = new Engine({ guest, transports: new MemoryTransports() });
  try {
    const events: EngineEvent[] = [];
    engine.events.subscribe((e) => events.push(e));
    engine.migrate("tcp:nowhere:1");
    await engine.migration!.done;
    const info = engine.current();
    assert.equal(info.status, "failed");
    assert.match(info.error_desc!, /Cannot connect to tcp:nowhere:1: connection refused/);
    const last = events.filter((e) => e.type === "state").at(-1)!;
    assert.deepEqual(
      last.type === "state" ? [last.from, last.to, last.error] : [],
      ["setup", "failed", info.error_desc],
    );
    assert.equal(guest.runState, "running");
    assert.equal(guest.stops, 0);
  } finally {
    await engine.close();
  }
});

Deno.test("Migration whose peer closes the connection mid-stream ends failed with resume_grace 0 and keeps the guest running", async () => {
  const s = await stalledPeer(4096, 2 << 20, "random");
  s.engine.setParameters({ resume_grace: 0 });
  try {
    const states = recordStates(s.engine);
    const active = nextEvent(s.engine, (e) => e.type === "state" && e.to === "active");
    s.engine.migrate(URI);
    await active;
    (await s.accepted).close(); // the destination goes away
    await withTimeout(s.engine.migration!.done, 5_000, "failure");
    const info = s.engine.current();
    assert.equal(info.status, "failed");
    assert.match(info.error_desc!, /peer closed the channel/);
    assert.deepEqual(states, ["none→setup", "setup→active", "active→failed"]);
    assert.equal(s.src.runState, "running");
  } finally {
    await s.close();
  }
});

// ---- rate limiting with virtual time -----------------------------------------------

/** Wraps MemoryTransports so every channel write is logged with the virtual time it started. */
class RecordingTransports implements Transports {
  readonly log: { t: number; n: number }[] = [];
  constructor(readonly inner: MemoryTransports, readonly clock: Clock) {}
  validate(uri: string): void {
    this.inner.validate(uri);
  }
  listen(uri: string): Promise<Listener> {
    return this.inner.listen(uri);
  }
  async connect(uri: string, signal?: AbortSignal): Promise<Channel> {
    const ch = await this.inner.connect(uri, signal);
    const log = this.log;
    const clock = this.clock;
    return {
      get closed() {
        return ch.closed;
      },
      peer: ch.peer,
      write(chunk: Uint8Array) {
        log.push({ t: clock.now(), n: chunk.length });
        return ch.write(chunk);
      },
      read: (buf) => ch.read(buf),
      finish: () => ch.finish(),
      close: () => ch.close(),
      [Symbol.dispose]: () => ch.close(),
    };
  }
}

/** Bytes one iterate may overshoot the budget by: a 64-page batch plus EOS, footer, PART header. */
const ONE_ITERATE = 64 * (8 + 1 + 255 + PAGE_SIZE) + 8 + 5 + 5;
/** Setup bytes (header, configuration, START) land in the first window too. */
const SETUP_SLACK = 256;

async function throttledRun(
  opts: { bandwidth: number; change?: { afterWindows: number; to: number } },
) {
  const clock = new FakeClock();
  const memory = new MemoryTransports();
  const recording = new RecordingTransports(memory, clock);
  const bytes = 8 << 20;
  const src = runningGuest(bytes, 21);
  const dst = new TestGuest([["pc.ram", bytes]]);
  const dstEngine = new Engine({ guest: dst, transports: memory });
  const srcEngine = new Engine({ guest: src, transports: recording, clock });
  let stopAt = -1;
  let changedAt = Infinity;
  src.onRunStateChange((_, to) => {
    if (to === "finish-migrate") stopAt = clock.now();
  });
  try {
    srcEngine.setParameters({ max_bandwidth: opts.bandwidth });
    let windows = 0;
    srcEngine.events.subscribe((e) => {
      if (e.type === "progress" && opts.change && ++windows === opts.change.afterWindows) {
        srcEngine.setParameters({ max_bandwidth: opts.change.to });
        changedAt = clock.now();
      }
    });
    await dstEngine.listenIncoming(URI);
    srcEngine.migrate(URI);
    await withTimeout(srcEngine.migration!.done, 30_000, "throttled migration");
    await withTimeout(dstEngine.incoming!.done, 30_000, "destination");
    const info = srcEngine.current();
    assert.equal(info.status, "completed", info.error_desc);
    assert.equal(await ramDigest(dst), await ramDigest(src));
    assert.ok(stopAt >= 0);
    const perWindow = new Map<number, number>();
    for (const { t, n } of recording.log) {
      const k = Math.floor(t / 100);
      perWindow.set(k, (perWindow.get(k) ?? 0) + n);
    }
    return { clock, info, perWindow, stopWindow: Math.floor(stopAt / 100), changedAt };
  } finally {
    await srcEngine.close();
    await dstEngine.close();
  }
}

Deno.test("runPrecopy with a virtual clock keeps every 100 ms window within max_bandwidth/10 plus one iterate", async () => {
  const bandwidth = 20 << 20; // budget 2 MiB per window, 8 MiB of random RAM
  const budget = bandwidth / 10;
  const { clock, info, perWindow, stopWindow } = await throttledRun({ bandwidth });
  assert.ok(stopWindow >= 3, `throttled over several windows (stopped in window ${stopWindow})`);
  for (const [k, n] of perWindow) {
    if (k >= stopWindow) continue; // the final pass after the stop is unthrottled by design
    assert.ok(
      n <= budget + ONE_ITERATE + SETUP_SLACK,
      `window ${k}: ${n} bytes > budget ${budget} + overshoot`,
    );
  }
  for (let k = 0; k < stopWindow; k++) assert.ok(perWindow.has(k), `window ${k} sent nothing`);
  assert.ok(clock.sleeps.length >= 3);
  for (const ms of clock.sleeps) assert.ok(ms > 0 && ms <= 100, `slept ${ms} ms`);
  assert.equal(info.setup_time, 0, "virtual time does not move during setup");
  assert.equal(info.total_time, clock.now());
});

Deno.test("runPrecopy applies a max_bandwidth change to the running migration", async () => {
  const to = 5 << 20; // budget 512 KiB per window after the change
  const { perWindow, stopWindow, changedAt } = await throttledRun({
    bandwidth: 20 << 20,
    change: { afterWindows: 1, to },
  });
  assert.ok(Number.isFinite(changedAt));
  const firstAfter = Math.floor(changedAt / 100);
  assert.ok(
    stopWindow - firstAfter >= 4,
    `ran ${stopWindow - firstAfter} windows at the lower rate`,
  );
  for (const [k, n] of perWindow) {
    if (k < firstAfter || k >= stopWindow) continue;
    assert.ok(n <= to / 10 + ONE_ITERATE, `window ${k}: ${n} bytes over the new budget`);
  }
});
