/**
 * Resuming an interrupted pre-copy (issue 19) between two in-process engines over
 * real loopback sockets, cut by the fault proxy. Time is each engine's own
 * FakeClock, so the grace period passes only when a test says so.
 */
import assert from "node:assert/strict";
import { Engine } from "../../engine/engine.ts";
import { EngineError } from "../../engine/errors.ts";
import type { Capabilities, Parameters } from "../../engine/params.ts";
import { createTransports } from "../../transports/mod.ts";
import { channelPair } from "../../transports/memory.ts";
import { MigrationDigests } from "../../engine/integrity.ts";
import { StreamReader } from "../../engine/format/reader.ts";
import {
  answerResume,
  identityOf,
  requestResume,
  ResumeRefusedError,
} from "../../engine/resume.ts";
import { type FaultPlan, FaultProxy } from "../../testing/fault_proxy.ts";
import { ramDigest, TestGuest } from "../../testing/test_guest.ts";
import { PAGE_SIZE } from "../../vm/ram.ts";
import { FakeClock } from "../helpers/fake_clock.ts";
import { rng } from "../helpers/rng.ts";
import { waitUntil, withTimeout } from "../helpers/wait.ts";

/** Bytes a full page costs on the wire: its record header and the page. */
const PAGE_RECORD = 8 + PAGE_SIZE;
/** The rate limit of these migrations, bytes/s (a window carries a tenth). */
const BANDWIDTH = 256 << 10;
/** Bytes after a resume besides pages: the request, section framing, PINGs, device state, vmdescription. */
const FRAMING = 8 << 10;

interface Pair {
  src: TestGuest;
  dst: TestGuest;
  srcEngine: Engine;
  dstEngine: Engine;
  srcClock: FakeClock;
  dstClock: FakeClock;
  /** The destination's first incoming address. */
  incoming: string;
  close(): Promise<void>;
}

/**
 * A source with `pages` pages of seeded random data (a few left zero) and a
 * destination listening on loopback; pre-copy converges only once every page
 * arrived (downtime_limit 1 ms), so every cut before that is a cut in pre-copy.
 */
async function pair(
  pages: number,
  seed: number,
  grace = 60_000,
  opts: {
    fill?: (g: TestGuest) => void;
    caps?: Partial<Capabilities>;
    params?: Partial<Parameters>;
  } = {},
): Promise<Pair> {
  const transports = createTransports();
  const src = new TestGuest([["pc.ram", pages * PAGE_SIZE]]);
  src.fillRandom(seed);
  src.blocks[0].bytes.fill(0, 0, 3 * PAGE_SIZE);
  opts.fill?.(src);
  src.start();
  const dst = new TestGuest([["pc.ram", pages * PAGE_SIZE]]);
  const srcClock = new FakeClock();
  const dstClock = new FakeClock();
  const srcEngine = new Engine({ guest: src, transports, clock: srcClock });
  const dstEngine = new Engine({ guest: dst, transports, clock: dstClock });
  srcEngine.setParameters({
    max_bandwidth: BANDWIDTH,
    downtime_limit: 1,
    resume_grace: grace,
    ...opts.params,
  });
  dstEngine.setParameters({ resume_grace: grace, ...opts.params });
  srcEngine.setCapabilities(opts.caps ?? {});
  dstEngine.setCapabilities(opts.caps ?? {});
  const incoming = (await dstEngine.listenIncoming("tcp:127.0.0.1:0")).address!;
  return {
    src,
    dst,
    srcEngine,
    dstEngine,
    srcClock,
    dstClock,
    incoming,
    close: async () => {
      await srcEngine.close();
      await dstEngine.close();
    },
  };
}

/** Starts a migration through a proxy with `plan`; resolves once both sides are interrupted. */
async function interrupt(p: Pair, plan: FaultPlan): Promise<FaultProxy> {
  const proxy = FaultProxy.start(p.incoming, plan);
  p.srcEngine.migrate(proxy.address);
  await waitUntil(
    () =>
      p.srcEngine.current().status === "interrupted" &&
      p.dstEngine.incomingInfo().status === "interrupted",
    "both sides interrupted",
  );
  return proxy;
}

/** Resumes through a fresh counting proxy; returns it once the source is active again. */
async function resume(p: Pair): Promise<FaultProxy> {
  const listening = await p.dstEngine.resumeIncoming("tcp:127.0.0.1:0");
  const relay = FaultProxy.start(listening.address!);
  const info = await p.srcEngine.resumeMigration(relay.address);
  assert.ok(info.status === "active" || info.status === "completed", info.status);
  return relay;
}

async function finished(p: Pair): Promise<void> {
  await withTimeout(
    Promise.all([p.srcEngine.migration!.done, p.dstEngine.incoming!.done]),
    60_000,
    "the resumed migration ending",
  );
}

Deno.test("resume: 50 migrations cut at seeded points of pre-copy each resume and complete with equal RAM; the bytes after resuming are bounded", async () => {
  /** Cases where the destination held a page in an older version than last sent (its last record lost in flight). */
  let stale = 0;
  for (let seed = 1; seed <= 50; seed++) {
    const r = rng(seed * 7919);
    const pages = 96 + Math.floor(r() * 160);
    const p = await pair(pages, seed);
    try {
      // Past the stream's setup (its migration id), in the first or a later pass.
      const cutAt = 200 + Math.floor(r() * pages * 1.5 * PAGE_RECORD);
      const dirtied = new Set<number>();
      const dirty = () => {
        const page = Math.floor(r() * pages);
        dirtied.add(page);
        p.src.write(page * PAGE_SIZE + 100, crypto.getRandomValues(new Uint8Array(64)));
      };
      // The guest writes a page after every dirty-log sync, so each sync finds one:
      // pre-copy goes on (pages go twice) until the cut.
      const stopDirtying = p.srcEngine.events.subscribe((e) => {
        if (e.type === "pass") dirty();
      });
      const proxy = FaultProxy.start(p.incoming, { cutAt });
      p.srcEngine.migrate(proxy.address);
      await waitUntil(
        () =>
          p.srcEngine.current().status === "interrupted" &&
          p.dstEngine.incomingInfo().status === "interrupted",
        "both sides interrupted",
      ).catch((e) => {
        throw new Error(`seed ${seed}: ${p.srcEngine.current().status}`, { cause: e });
      });
      stopDirtying();
      await proxy.close();
      assert.ok(proxy.wasCut, `seed ${seed}: the proxy cut at byte ${cutAt}`);
      assert.equal(p.src.runState, "running", `seed ${seed}: the source guest runs on`);
      assert.equal(p.dst.runState, "inmigrate", `seed ${seed}: the destination cannot start`);
      // And while interrupted: the dirty log records it.
      for (let i = Math.floor(r() * 6); i > 0; i--) dirty();
      const held = p.dstEngine.incomingInfo().resume!.pages_held;
      // The destination kept what arrived whole: every page record before the cut but one
      // (pages that went twice count once).
      assert.ok(
        held >= Math.min(pages, Math.floor((cutAt - 200) / PAGE_RECORD)) - 1 - dirtied.size,
        `seed ${seed}: the destination held ${held} pages of the ${cutAt} bytes that arrived`,
      );
      await using relay = await resume(p);
      await finished(p);
      assert.equal(p.srcEngine.current().status, "completed", `seed ${seed}`);
      assert.equal(p.dstEngine.incomingInfo().status, "completed", `seed ${seed}`);
      assert.equal(await ramDigest(p.dst), await ramDigest(p.src), `seed ${seed}: equal RAM`);
      const bound = (pages - held + dirtied.size) * PAGE_RECORD + BANDWIDTH / 10 + FRAMING;
      assert.ok(
        relay.forwarded <= bound,
        `seed ${seed}: ${relay.forwarded} bytes after resuming, at most ${bound} ` +
          `(${pages - held} pages not received, ${dirtied.size} dirtied)`,
      );
      const info = p.srcEngine.current().resume!;
      assert.equal(info.interruptions, 1);
      assert.equal(info.resumes, 1);
      assert.ok(info.pages_held <= held, `seed ${seed}: held as last sent ≤ held`);
      if (info.pages_held < held) stale++;
      assert.equal(info.bytes_saved, info.pages_held * PAGE_SIZE);
    } finally {
      await p.close();
    }
  }
  assert.ok(stale > 0, "some cuts lost a page's newer version in flight (it went again)");
});

Deno.test("resume: with xbzrle, and with page_refs and zstd, cut migrations resume and complete with equal RAM", async () => {
  /** Pages of a few repeated patterns: references and compression find work. */
  const patterned = (g: TestGuest) => {
    const b = g.blocks[0];
    for (let page = 3; page < b.pages; page += 2) {
      b.bytes.fill(page % 5, page * PAGE_SIZE, (page + 1) * PAGE_SIZE);
    }
  };
  const variants = [
    { caps: { xbzrle: true } },
    { caps: { page_refs: true }, params: { compress_method: "zstd" as const } },
  ];
  /** Per variant: XBZRLE pages, references and compressed pages sent (they must have been used). */
  const used = [0, 0];
  for (const [v, variant] of variants.entries()) {
    for (let seed = 1; seed <= 6; seed++) {
      const r = rng(seed * 104729 + v);
      const pages = 96 + Math.floor(r() * 96);
      const p = await pair(pages, seed, 60_000, { fill: patterned, ...variant });
      const what = `${JSON.stringify(variant)} seed ${seed}`;
      try {
        // Dirtying after each sync makes later passes: XBZRLE deltas, references to sent pages.
        // 30 pages a pass: with XBZRLE's small deltas, still more than a switchover may send.
        const stopDirtying = p.srcEngine.events.subscribe((e) => {
          if (e.type !== "pass") return;
          for (let i = 0; i < 30; i++) {
            const page = 3 + Math.floor(r() * (pages - 3));
            p.src.write(page * PAGE_SIZE + 8, Uint8Array.of(seed, page & 0xff, i));
          }
        });
        await using _proxy = await interrupt(p, {
          cutAt: Math.floor((0.5 + r() * 0.8) * pages * PAGE_RECORD),
        });
        stopDirtying();
        await using _relay = await resume(p);
        await finished(p);
        assert.equal(p.srcEngine.current().status, "completed", what);
        assert.equal(p.dstEngine.incomingInfo().status, "completed", what);
        assert.equal(await ramDigest(p.dst), await ramDigest(p.src), `${what}: equal RAM`);
        const info = p.srcEngine.current();
        used[v] += v === 0
          ? info.xbzrle_cache!.pages
          : Math.min(info.page_refs!.pages, info.compression!.pages);
      } finally {
        await p.close();
      }
    }
  }
  assert.ok(used[0] > 0, "XBZRLE deltas went out");
  assert.ok(used[1] > 0, "references and compressed runs went out");
});

Deno.test("resume: the event stream tells the interruption, the resume and the bytes saved, on both sides", async () => {
  const p = await pair(128, 9);
  const seen: string[] = [];
  p.srcEngine.events.subscribe((e) => {
    if (e.type === "state") seen.push(`state ${e.from}→${e.to}`);
    if (e.type === "warning") seen.push(`warning ${e.code}: ${e.message}`);
  });
  const incoming: string[] = [];
  p.dstEngine.events.subscribe((e) => {
    if (e.type === "incoming") {
      incoming.push(`${e.from}→${e.to} ${e.info.resume?.pages_held ?? "-"}`);
    }
  });
  try {
    await using _proxy = await interrupt(p, { cutAt: 250_000 });
    await using _relay = await resume(p);
    await finished(p);
    const saved = p.srcEngine.current().resume!.bytes_saved;
    assert.ok(saved > 0);
    const lines = seen.map((l) => l.replace(/: .*/s, ""));
    assert.deepEqual(lines, [
      "state none→setup",
      "state setup→active",
      "state active→interrupted",
      "warning migration-interrupted",
      "state interrupted→active",
      "warning migration-resumed",
      "state active→completed",
    ]);
    assert.match(seen[3], /channel failed during pre-copy.*resume within 60000 ms/);
    assert.match(seen[5], new RegExp(`\\(${saved} bytes not sent again\\)`));
    const held = p.dstEngine.incomingInfo().resume!.pages_held;
    // (Armed before the test subscribed.)
    assert.deepEqual(incoming.map((l) => l.split(" ")[0]), [
      "listening→active",
      "active→interrupted",
      "interrupted→active",
      "active→completed",
    ]);
    assert.equal(incoming[1], `active→interrupted ${held}`);
  } finally {
    await p.close();
  }
});

Deno.test("resume: a migration cut again after resuming resumes again and completes", async () => {
  const p = await pair(200, 10);
  try {
    await using _first = await interrupt(p, { cutAt: 150_000 });
    const listening = await p.dstEngine.resumeIncoming("tcp:127.0.0.1:0");
    // The second link breaks too, 200 KB into the resumed stream.
    await using second = FaultProxy.start(listening.address!, { cutAt: 200_000 });
    await p.srcEngine.resumeMigration(second.address);
    await waitUntil(
      () =>
        p.srcEngine.current().resume?.interruptions === 2 &&
        p.dstEngine.incomingInfo().status === "interrupted",
      "the second interruption",
    );
    await using _relay = await resume(p);
    await finished(p);
    assert.equal(p.srcEngine.current().status, "completed");
    assert.deepEqual(
      [p.srcEngine.current().resume!.interruptions, p.srcEngine.current().resume!.resumes],
      [2, 2],
    );
    assert.equal(p.dstEngine.incomingInfo().resume!.resumes, 2);
    assert.equal(await ramDigest(p.dst), await ramDigest(p.src));
  } finally {
    await p.close();
  }
});

Deno.test("resume: a destination of another migration refuses, naming both; the source stays interrupted and then resumes to the right one", async () => {
  const p = await pair(128, 3);
  const other = await pair(128, 4);
  try {
    await using _proxy = await interrupt(p, { cutAt: 100_000 });
    await using _other = await interrupt(other, { cutAt: 50_000 });
    // The other pair's destination listens for its own source's resume.
    const wrong = await other.dstEngine.resumeIncoming("tcp:127.0.0.1:0");
    await assert.rejects(
      p.srcEngine.resumeMigration(wrong.address!),
      (e: Error) =>
        e instanceof EngineError && e.code === "resume-refused" &&
        /the destination refused: the source resumes migration [0-9a-f]{32}, this destination holds migration [0-9a-f]{32}/
          .test(e.message),
    );
    assert.equal(p.srcEngine.current().status, "interrupted");
    assert.match(other.dstEngine.incomingInfo().last_refused ?? "", /resumes migration/);
    // A fresh destination, not interrupted, refuses a resume as well.
    const fresh = new Engine({
      guest: new TestGuest([["pc.ram", 128 * PAGE_SIZE]]),
      transports: createTransports(),
    });
    try {
      const armed = await fresh.listenIncoming("tcp:127.0.0.1:0");
      await assert.rejects(
        p.srcEngine.resumeMigration(armed.address!),
        (e: Error) => e instanceof EngineError && e.code === "resume-refused",
      );
    } finally {
      await fresh.close();
    }
    assert.equal(p.srcEngine.current().status, "interrupted");
    await using _relay = await resume(p);
    await finished(p);
    assert.equal(p.dstEngine.incomingInfo().status, "completed");
    assert.equal(await ramDigest(p.dst), await ramDigest(p.src));
  } finally {
    await p.close();
    await other.close();
  }
});

Deno.test("resume: once the grace period ends both sides fail as before; a resume then is refused clearly", async () => {
  const p = await pair(128, 5, 5_000);
  try {
    await using _proxy = await interrupt(p, { cutAt: 60_000 });
    assert.equal(p.srcEngine.current().resume?.grace_left, 5_000);
    p.srcClock.advance(5_001);
    p.dstClock.advance(5_001);
    await finished(p);
    const src = p.srcEngine.current();
    assert.equal(src.status, "failed");
    assert.match(src.error_desc ?? "", /not resumed within resume_grace \(5000 ms\)/);
    assert.equal(p.src.runState, "running", "the source guest runs on");
    const dst = p.dstEngine.incomingInfo();
    assert.equal(dst.status, "failed");
    assert.match(dst.error_desc ?? "", /did not resume within resume_grace.*discarded/);
    assert.equal(p.dst.runState, "inmigrate");
    assert.ok(
      p.dst.blocks[0].bytes.every((b) => b === 0),
      "the destination discarded what it held",
    );
    await assert.rejects(
      p.srcEngine.resumeMigration("tcp:127.0.0.1:1"),
      (e: Error) =>
        e instanceof EngineError && e.code === "not-interrupted" &&
        /failed, not interrupted/.test(e.message),
    );
    await assert.rejects(
      p.dstEngine.resumeIncoming(),
      (e: Error) => e instanceof EngineError && e.code === "not-interrupted",
    );
  } finally {
    await p.close();
  }
});

Deno.test("resume: cancel and disarm work while interrupted; the source guest runs on, the destination's stays unstartable", async () => {
  const p = await pair(128, 6);
  try {
    await using _proxy = await interrupt(p, { cutAt: 80_000 });
    const { cancelled } = p.srcEngine.cancel();
    assert.equal(cancelled, true);
    assert.equal(p.dstEngine.disarmIncoming().cancelled, true);
    await finished(p);
    assert.equal(p.srcEngine.current().status, "cancelled");
    assert.equal(p.src.runState, "running");
    assert.equal(p.dstEngine.incomingInfo().status, "cancelled");
    assert.equal(p.dst.runState, "inmigrate");
  } finally {
    await p.close();
  }
});

Deno.test("resume: a cut during stop-and-copy fails the source as before, its guest running; the destination never starts its guest", async () => {
  for (
    const plan of [
      { cutOnReturn: true },
      { cutAfterReturn: 2 },
      { cutBeforeEnd: 3 * PAGE_RECORD, quietMs: 200 },
    ] as FaultPlan[]
  ) {
    const what = JSON.stringify(plan);
    const p = await pair(64, 7, 5_000);
    try {
      await using proxy = FaultProxy.start(p.incoming, plan);
      p.srcEngine.migrate(proxy.address);
      await withTimeout(p.srcEngine.migration!.done, 60_000, "the source ending");
      const src = p.srcEngine.current();
      assert.ok(src.resume === undefined, `${what}: the source was never interrupted`);
      if (plan.cutAfterReturn) {
        // The commit was cut in flight: both stopped, never both running (as before).
        assert.equal(src.status, "completed", what);
        assert.equal(p.src.runState, "postmigrate");
      } else {
        assert.equal(src.status, "failed", what);
        assert.equal(p.src.runState, "running", `${what}: the source guest runs on`);
      }
      // A destination that lost the stop-and-copy's first bytes cannot tell it from a
      // cut in pre-copy: it waits to resume, never running, until the grace ends.
      await waitUntil(
        () => p.dstEngine.incomingInfo().status !== "active",
        `${what}: the destination left active`,
      );
      assert.equal(p.dst.runState, "inmigrate", what);
      p.dstClock.advance(5_001);
      await withTimeout(p.dstEngine.incoming!.done, 60_000, "the destination ending");
      assert.equal(p.dstEngine.incomingInfo().status, "failed", what);
      assert.equal(p.dst.runState, "inmigrate", what);
    } finally {
      await p.close();
    }
  }
});

Deno.test("resume: with resume_auto the destination listens again and the source reconnects by itself", async () => {
  // Each failed reconnect sleeps on the source's clock, which moves it: a long grace.
  const p = await pair(128, 8, 86_400_000);
  p.srcEngine.setParameters({ resume_auto: true });
  p.dstEngine.setParameters({ resume_auto: true });
  try {
    // A proxy that stalls the first connection's bytes, then is cut: the source's
    // reconnects go to the same proxy address, which forwards again once resumed.
    const proxy = FaultProxy.start(p.incoming);
    p.srcEngine.migrate(proxy.address);
    await proxy.whenForwarded(40_000);
    await proxy.close();
    await waitUntil(
      () =>
        p.dstEngine.incomingInfo().status === "interrupted" &&
        p.srcEngine.current().status === "interrupted",
      "both sides interrupted",
      3000,
    ).catch((e) => {
      console.log(p.srcEngine.current(), p.dstEngine.incomingInfo());
      throw e;
    });
    // The destination listens again on its address at once; the source's own retries
    // go to the proxy's port, now closed, until a proxy listens there again.
    const port = Number(proxy.address.split(":").pop());
    await using again = FaultProxy.start(
      p.dstEngine.incomingInfo().address!,
      {},
      `tcp:127.0.0.1:${port}`,
    );
    await finished(p);
    assert.equal(p.srcEngine.current().status, "completed");
    assert.equal(p.srcEngine.current().resume?.resumes, 1);
    assert.equal(await ramDigest(p.dst), await ramDigest(p.src));
    assert.ok(again.connections >= 1);
  } finally {
    await p.close();
  }
});

Deno.test("resume handshake: digests that disagree beyond lost records, or another guest's shape, are refused with a sentence", async () => {
  const blocks = [{ name: "pc.ram", pages: 64 }];
  const mine = identityOf("ab".repeat(16), "ferry-pc", [{
    name: "pc.ram",
    length: 64 * PAGE_SIZE,
  }]);
  const src = new MigrationDigests(blocks);
  src.ram[0].table.set(1, 11);
  // The destination holds a page this source never sent.
  const dst = new MigrationDigests(blocks);
  dst.ram[0].table.set(1, 11);
  dst.ram[0].table.set(7, 77);
  {
    const [a, b] = channelPair();
    const answered = answerResume(new StreamReader(b), b, mine, dst);
    await assert.rejects(
      requestResume(a, mine, src),
      (e: Error) =>
        e instanceof ResumeRefusedError &&
        /holds 1 pages this migration never sent/.test(e.message),
    );
    await answered;
    a.close();
    b.close();
  }
  // Another RAM size: the destination refuses, naming both.
  {
    const [a, b] = channelPair();
    const other = identityOf(mine.migration, "ferry-pc", [{
      name: "pc.ram",
      length: 32 * PAGE_SIZE,
    }]);
    const answered = answerResume(new StreamReader(b), b, mine, dst).catch((e) => e);
    await assert.rejects(
      requestResume(a, other, src),
      (e: Error) =>
        e instanceof ResumeRefusedError &&
        /RAM blocks \(pc.ram:131072\) differ from this destination's \(pc.ram:262144\)/.test(
          e.message,
        ),
    );
    assert.ok((await answered) instanceof ResumeRefusedError);
    a.close();
  }
});
