import assert from "node:assert/strict";
import { StreamReader } from "../../engine/format/reader.ts";
import { StreamWriter } from "../../engine/format/writer.ts";
import { loadStream } from "../../engine/incoming.ts";
import {
  createSavers,
  type OutgoingContext,
  runPrecopy,
  vmDescription,
  writeSetup,
} from "../../engine/outgoing.ts";
import { defaultSections } from "../../engine/sections/registry.ts";
import { DEFAULT_CAPABILITIES, DEFAULT_PARAMETERS, type Parameters } from "../../engine/params.ts";
import type { WindowStats } from "../../engine/rate_limiter.ts";
import { RamSaver } from "../../engine/sections/ram.ts";
import { PAGE_SIZE } from "../../vm/ram.ts";
import { BytesChannel, CaptureChannel } from "../helpers/byte_channels.ts";
import { FakeClock } from "../helpers/fake_clock.ts";
import { ramDigest, TestGuest } from "../../testing/test_guest.ts";
import { TEST_GUEST_VMDESC } from "../../testing/stream_builder.ts";

/** Walks a savevm stream by docs/ARCHITECTURE.md "Stream format" and summarises its sections, independently of the loader. */
function sections(bytes: Uint8Array): string[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const dec = new TextDecoder();
  let pos = 0;
  const out: string[] = [];
  const str8 = () => {
    const len = bytes[pos++];
    const s = dec.decode(bytes.subarray(pos, pos + len));
    pos += len;
    return s;
  };
  const be64 = () => {
    const v = view.getBigUint64(pos);
    pos += 8;
    return v;
  };
  /** RAM records up to EOS; returns the number of pages. */
  const ram = () => {
    let pages = 0;
    for (;;) {
      const v = be64();
      const flags = Number(v & 0xfffn);
      if (flags === 0x10) return pages;
      if (flags === 0x04) {
        let left = v & ~0xfffn;
        while (left > 0n) {
          str8();
          left -= be64();
        }
        continue;
      }
      if (!(flags & 0x20)) str8();
      pos += flags & 0x02 ? 1 : PAGE_SIZE;
      pages++;
    }
  };
  const footer = (id: number) => {
    assert.equal(bytes[pos], 0x7e, `footer at ${pos}`);
    assert.equal(view.getUint32(pos + 1), id);
    pos += 5;
  };
  assert.equal(view.getUint32(0), 0x5145564d);
  assert.equal(view.getUint32(4), 3);
  pos = 8;
  for (;;) {
    const type = bytes[pos++];
    if (type === 0x07) {
      const len = view.getUint32(pos);
      out.push(`CONFIGURATION ${dec.decode(bytes.subarray(pos + 4, pos + 4 + len))}`);
      pos += 4 + len;
    } else if (type === 0x01 || type === 0x04) {
      const id = view.getUint32(pos);
      pos += 4;
      const name = str8();
      const instance = view.getUint32(pos);
      const version = view.getUint32(pos + 4);
      pos += 8;
      if (name === "ram") ram();
      else pos += 8;
      footer(id);
      out.push(`${type === 1 ? "START" : "FULL"} ${id} ${name} i${instance} v${version}`);
    } else if (type === 0x02 || type === 0x03) {
      const id = view.getUint32(pos);
      pos += 4;
      const pages = ram();
      footer(id);
      out.push(`${type === 2 ? "PART" : "END"} ${id} ${type === 2 ? "+" : "="}${pages}`);
    } else if (type === 0x00) {
      out.push("EOF");
      assert.equal(bytes[pos++], 0x06);
      const len = view.getUint32(pos);
      pos += 4;
      out.push(`VMDESCRIPTION ${dec.decode(bytes.subarray(pos, pos + len))}`);
      pos += len;
      assert.equal(pos, bytes.length, "nothing after the vmdescription");
      return out;
    } else {
      throw new Error(`unexpected section type 0x${type.toString(16)} at ${pos - 1}`);
    }
  }
}

function context(guest: TestGuest, ch: CaptureChannel, params: Partial<Parameters> = {}) {
  const clock = new FakeClock();
  const calls: string[] = [];
  const windows: WindowStats[] = [];
  const ctx: OutgoingContext = {
    guest,
    writer: new StreamWriter(ch, 1 << 20),
    savers: createSavers(defaultSections(), {
      guest,
      now: clock.now,
      params: { ...DEFAULT_PARAMETERS, ...params },
      capabilities: DEFAULT_CAPABILITIES,
    }),
    clock,
    params: () => ({ ...DEFAULT_PARAMETERS, ...params }),
    signal: new AbortController().signal,
    capabilities: DEFAULT_CAPABILITIES,
    progress: {
      active: () => calls.push("active"),
      window: (w) => windows.push(w),
      pass: (n, dirty) => calls.push(`pass ${n} ${dirty}`),
      stopped: (at) => calls.push(`stopped ${at}`),
      throttled: (percent) => calls.push(`throttled ${percent}`),
      warn: (code) => calls.push(`warn ${code}`),
    },
  };
  return { ctx, clock, calls, windows };
}

Deno.test("writeSetup() writes header, configuration and the ram START section, then flushes", async () => {
  const guest = new TestGuest([["pc.ram", 64 * PAGE_SIZE]]);
  const ch = new CaptureChannel();
  const { ctx } = context(guest, ch);
  await writeSetup(ctx);
  await ctx.writer.drain();
  const bytes = ch.bytes();
  const hex = Array.from(bytes.subarray(0, 21), (b) => b.toString(16).padStart(2, "0")).join(" ");
  assert.equal(hex, "51 45 56 4d 00 00 00 03 07 00 00 00 08 66 65 72 72 79 2d 70 63");
  // START: type, id 0, "ram", instance 0, version 4.
  assert.deepEqual([...bytes.subarray(21, 38)], [
    1,
    0,
    0,
    0,
    0,
    3,
    114,
    97,
    109,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    4,
  ]);
  assert.equal(ch.writes, 1, "one flush");
  assert.equal(
    ctx.savers.ram.stats.dirtySyncCount,
    1,
    "the guest's dirty log was cleared at setup",
  );
  assert.equal(defaultSections().get("ram")!.id, 0);
  assert.equal(defaultSections().get("vcpu")!.id, 1);
});

Deno.test("runPrecopy() writes START → PART… → END → FULL vcpu → EOF → vmdescription and leaves the guest postmigrate", async () => {
  const guest = new TestGuest([["pc.ram", 256 * PAGE_SIZE]]);
  guest.fillRandom(2);
  guest.counter = 77n;
  guest.start();
  const ch = new CaptureChannel();
  const { ctx, calls } = context(guest, ch, { max_bandwidth: Number.MAX_SAFE_INTEGER });
  await writeSetup(ctx);
  const result = await runPrecopy(ctx);
  assert.equal(result.wasRunning, true);
  assert.equal(result.downtime, 0, "virtual time stood still");
  assert.equal(guest.runState, "postmigrate");
  assert.ok(ch.finished, "the channel was finished");
  const s = sections(ch.bytes());
  assert.deepEqual(s.slice(0, 2), ["CONFIGURATION ferry-pc", "START 0 ram i0 v4"]);
  assert.deepEqual(s.slice(-4, -1), ["END 0 =0", "FULL 1 vcpu i0 v1", "EOF"]);
  const parts = s.slice(2, -4);
  assert.ok(parts.length >= 1 && parts.every((p) => p.startsWith("PART 0 +")), parts.join());
  assert.equal(parts.reduce((n, p) => n + Number(p.split("+")[1]), 0), 256);
  assert.deepEqual(JSON.parse(s.at(-1)!.slice("VMDESCRIPTION ".length)), TEST_GUEST_VMDESC);
  assert.deepEqual(vmDescription(ctx.savers), TEST_GUEST_VMDESC);
  assert.equal(calls[0], "active");
  assert.ok(calls.includes("stopped 0"));
  assert.equal(calls.at(-1), `pass ${ctx.savers.ram.stats.dirtySyncCount} 0`);
  assert.equal(guest.stops, 1);

  // The engine's own loader accepts what the engine wrote.
  const dst = new TestGuest([["pc.ram", 256 * PAGE_SIZE]]);
  await loadStream(new StreamReader(new BytesChannel(ch.bytes())), dst);
  assert.equal(await ramDigest(dst), await ramDigest(guest));
  assert.equal(dst.counter, 77n);
});

Deno.test("runPrecopy() under a small bandwidth sends several PART sections and reports windows", async () => {
  const guest = new TestGuest([["pc.ram", 1024 * PAGE_SIZE]]); // 4 MiB
  guest.fillRandom(4);
  const ch = new CaptureChannel();
  const { ctx, clock, windows } = context(guest, ch, { max_bandwidth: 10 << 20 }); // 1 MiB/window
  await writeSetup(ctx);
  const result = await runPrecopy(ctx);
  assert.equal(result.wasRunning, false);
  assert.equal(guest.runState, "postmigrate");
  const parts = sections(ch.bytes()).filter((s) => s.startsWith("PART"));
  assert.ok(parts.length >= 3, parts.join());
  assert.ok(windows.length >= 3);
  for (const w of windows) {
    assert.equal(w.ms, 100);
    assert.ok(w.bytes <= (1 << 20) + 64 * (PAGE_SIZE + 16) + 32, `${w.bytes} bytes in a window`);
    assert.equal(w.bandwidth, w.bytes / w.ms);
  }
  assert.ok(clock.now() >= 300);
});

Deno.test("runPrecopy() picks up pages dirtied between passes before switching over", async () => {
  const guest = new TestGuest([["pc.ram", 512 * PAGE_SIZE]]);
  guest.fillRandom(6);
  guest.start();
  const ch = new CaptureChannel();
  const { ctx, clock } = context(guest, ch, { max_bandwidth: 10 << 20 });
  // Dirty a page at every sleep, as a running vCPU would between windows.
  const sleep = clock.sleep;
  let n = 0;
  ctx.clock.sleep = async (ms, signal) => {
    await sleep(ms, signal);
    guest.write((n++ % 512) * PAGE_SIZE, Uint8Array.of(n & 0xff, 0x99));
  };
  await writeSetup(ctx);
  await runPrecopy(ctx);
  assert.ok(n >= 1);
  const dst = new TestGuest([["pc.ram", 512 * PAGE_SIZE]]);
  await loadStream(new StreamReader(new BytesChannel(ch.bytes())), dst);
  assert.equal(await ramDigest(dst), await ramDigest(guest));
});

Deno.test("runPrecopy() drains the pipe before it stops the guest, then sends what was dirtied meanwhile", async () => {
  const guest = new TestGuest([["pc.ram", 64 * PAGE_SIZE]]);
  guest.fillRandom(9);
  guest.start();
  const ch = new CaptureChannel();
  const { ctx, calls } = context(guest, ch, { max_bandwidth: Number.MAX_SAFE_INTEGER });
  const drains: string[] = [];
  const drain = () => {
    drains.push(guest.runState);
    calls.push("drain");
    // The guest keeps running while the destination catches up (twice it writes).
    if (drains.length <= 2) {
      guest.write(drains.length * PAGE_SIZE, Uint8Array.of(0xd0 + drains.length));
    }
    return Promise.resolve(0.5);
  };
  await writeSetup(ctx);
  await runPrecopy({ ...ctx, drain });
  assert.equal(drains.length, 3, "drained again after each round that sent pages");
  assert.ok(drains.every((state) => state === "running"), "the guest ran during every drain");
  const stopped = calls.findIndex((c) => c.startsWith("stopped"));
  assert.equal(
    calls.slice(0, stopped).filter((c) => c === "drain").length,
    3,
    JSON.stringify(calls),
  );
  assert.equal(calls.lastIndexOf("drain") < stopped, true, "every drain came before the stop");
  const dst = new TestGuest([["pc.ram", 64 * PAGE_SIZE]]);
  await loadStream(new StreamReader(new BytesChannel(ch.bytes())), dst);
  assert.equal(await ramDigest(dst), await ramDigest(guest), "pages dirtied during drains arrived");
});

Deno.test("runPrecopy() restores the run state when the final pass fails (running → running, paused → paused)", async () => {
  for (const before of ["running", "paused"] as const) {
    const guest = new TestGuest([["pc.ram", 16 * PAGE_SIZE]]);
    guest.setRunState(before);
    // Write #0 is the setup flush, #1 the PART; #2 (the final drain) fails.
    const ch = new CaptureChannel({ failAt: 2 });
    const { ctx } = context(guest, ch, { max_bandwidth: Number.MAX_SAFE_INTEGER });
    await writeSetup(ctx);
    await assert.rejects(runPrecopy(ctx), /injected failure of write #2/);
    assert.equal(guest.runState, before);
    assert.equal(ch.finished, false);
  }
});

Deno.test("runPrecopy() stops at once when its signal is aborted", async () => {
  const guest = new TestGuest([["pc.ram", 16 * PAGE_SIZE]]);
  const ch = new CaptureChannel();
  const abort = new AbortController();
  const { ctx } = context(guest, ch);
  await writeSetup(ctx);
  abort.abort(new Error("migration cancelled"));
  await assert.rejects(runPrecopy({ ...ctx, signal: abort.signal }), /migration cancelled/);
  assert.equal(guest.runState, "prelaunch", "never stopped");
});

/**
 * A guest that dirties `perSleep` pages (scaled down by its throttle) at every
 * sleep of the loop, as a running vCPU would between windows; each write is a
 * new value so every dirtied page must be sent again.
 */
function dirtyOnSleep(ctx: OutgoingContext, guest: TestGuest, pages: number, perSleep: number) {
  const sleep = ctx.clock.sleep;
  let n = 0;
  (ctx.clock as FakeClock & { sleep: typeof sleep }).sleep = async (ms, signal) => {
    await sleep(ms, signal);
    const count = Math.round(perSleep * (100 - guest.throttle) / 100);
    for (let i = 0; i < count; i++) {
      n++;
      guest.write(((n * 7919) % pages) * PAGE_SIZE, Uint8Array.of(n & 0xff, (n >> 8) & 0xff));
    }
  };
}

/**
 * A running 512-page guest whose migration stalls: 1 MiB per window against 400
 * pages dirtied per window (fewer when throttled), with `params` on top.
 */
function stallingMigration(seed: number, params: Partial<Parameters>) {
  const guest = new TestGuest([["pc.ram", 512 * PAGE_SIZE]]);
  guest.fillRandom(seed);
  guest.start();
  const ch = new CaptureChannel();
  const c = context(guest, ch, { max_bandwidth: 10 << 20, ...params });
  dirtyOnSleep(c.ctx, guest, 512, 400);
  return { guest, ch, ...c };
}

/** Loads what `ch` captured into a fresh guest and checks its RAM equals `guest`'s. */
async function assertArrivedWhole(ch: CaptureChannel, guest: TestGuest): Promise<void> {
  const dst = new TestGuest(guest.blocks.map((b) => [b.name, b.length]));
  await loadStream(new StreamReader(new BytesChannel(ch.bytes())), dst);
  assert.equal(await ramDigest(dst), await ramDigest(guest));
}

Deno.test("runPrecopy(): a round trip at or above downtime_limit warns once and switches over at the floor instead of iterating forever", async () => {
  const guest = new TestGuest([["pc.ram", 256 * PAGE_SIZE]]);
  guest.fillRandom(11);
  guest.start();
  const ch = new CaptureChannel();
  const { ctx, calls } = context(guest, ch, { max_bandwidth: 10 << 20, downtime_limit: 30 });
  let drains = 0;
  const drain = () => {
    // 40 ms round trip; the guest goes on dirtying while the pipe drains.
    if (++drains > 100) throw new Error("never switched over");
    for (let p = 0; p < 8; p++) {
      guest.write(((drains * 13 + p) % 256) * PAGE_SIZE, Uint8Array.of(drains, p));
    }
    return Promise.resolve(40);
  };
  await writeSetup(ctx);
  const result = await runPrecopy({ ...ctx, drain });
  assert.equal(guest.runState, "postmigrate");
  assert.equal(result.wasRunning, true);
  assert.deepEqual(
    calls.filter((c) => c.startsWith("warn")),
    ["warn downtime-limit-unachievable"],
    "one warning, naming why",
  );
  assert.ok(drains >= 2 && drains < 100, `${drains} drains`);
  const dst = new TestGuest([["pc.ram", 256 * PAGE_SIZE]]);
  await loadStream(new StreamReader(new BytesChannel(ch.bytes())), dst);
  assert.equal(await ramDigest(dst), await ramDigest(guest), "nothing dirtied was lost");
});

Deno.test("runPrecopy(): a dirty-log sync slower than downtime_limit counts in the downtime: a warning naming it, switchover at the floor, and where the downtime went", async () => {
  // The x86 guest's sync compares all of RAM with the guest stopped: here it takes 50 ms.
  const guest = new TestGuest([["pc.ram", 256 * PAGE_SIZE]]);
  guest.fillRandom(13);
  guest.start();
  const ch = new CaptureChannel();
  const { ctx, clock } = context(guest, ch, { max_bandwidth: 10 << 20, downtime_limit: 30 });
  guest.blocks[0].setRefresh(() => clock.advance(50));
  const warnings: string[] = [];
  const expected: number[] = [];
  const progress = {
    ...ctx.progress,
    warn: (_code: string, message: string) => warnings.push(message),
    window: (_w: WindowStats, downtime: number) => expected.push(downtime),
  };
  let drains = 0;
  const drain = () => {
    if (++drains > 100) throw new Error("never switched over");
    guest.write((drains % 256) * PAGE_SIZE, Uint8Array.of(drains));
    return Promise.resolve(1);
  };
  await writeSetup(ctx);
  await runPrecopy({ ...ctx, progress, drain });
  assert.equal(guest.runState, "postmigrate");
  assert.equal(warnings.length, 2, warnings.join("; "));
  assert.match(
    warnings[0],
    /the dirty-log sync with the guest stopped \(50 ms\) alone exceeds/i,
  );
  // Afterwards, where the downtime went: the final sync is named with its cost.
  assert.match(warnings[1], /^The downtime \(\d+ ms\) exceeded downtime_limit \(30 ms\)/);
  assert.match(warnings[1], /the final dirty-log sync 50 ms/);
  assert.ok(expected.some((ms) => ms >= 50), "the expected downtime includes the sync");
  await assertArrivedWhole(ch, guest);
});

Deno.test("runPrecopy(): a sync slower than downtime_limit from the start, with a guest that dirties a little between syncs, still switches over at the floor (never a drain on paper)", async () => {
  // The x86 guest on a loaded machine: every sync costs more than the limit, and an idle
  // guest's timer pages are dirty at each one, so nothing left never happens.
  const guest = new TestGuest([["pc.ram", 256 * PAGE_SIZE]]);
  guest.fillRandom(15);
  guest.start();
  const ch = new CaptureChannel();
  const { ctx, clock, calls } = context(guest, ch, {
    max_bandwidth: 10 << 20,
    downtime_limit: 30,
  });
  let syncs = 0;
  guest.blocks[0].setRefresh(() => {
    if (++syncs > 200) throw new Error("never switched over");
    clock.advance(50);
    guest.write((syncs % 256) * PAGE_SIZE, Uint8Array.of(syncs));
  });
  await writeSetup(ctx);
  await runPrecopy({ ...ctx, drain: () => Promise.resolve(1) });
  assert.equal(guest.runState, "postmigrate");
  assert.ok(syncs < 20, `${syncs} syncs`);
  assert.deepEqual(
    calls.filter((c) => c.startsWith("warn")).slice(0, 1),
    ["warn downtime-limit-unachievable"],
  );
  await assertArrivedWhole(ch, guest);
});

Deno.test("runPrecopy(): with auto-converge, a sync slower than the limit switches over at the floor only once the throttle stops rising", async () => {
  const guest = new TestGuest([["pc.ram", 512 * PAGE_SIZE]]);
  guest.fillRandom(16);
  guest.start();
  const ch = new CaptureChannel();
  const { ctx, clock, calls } = context(guest, ch, {
    max_bandwidth: 10 << 20,
    downtime_limit: 30,
  });
  const capabilities = { ...DEFAULT_CAPABILITIES, auto_converge: true };
  let syncs = 0;
  guest.blocks[0].setRefresh(() => {
    if (++syncs > 500) throw new Error("never switched over");
    clock.advance(50);
    // The guest dirties in proportion to the time it is allowed to run.
    const pages = Math.max(1, Math.round(200 * (100 - guest.throttle) / 100));
    for (let p = 0; p < pages; p++) {
      guest.write(((syncs * 37 + p * 7) % 512) * PAGE_SIZE, Uint8Array.of(syncs, p));
    }
  });
  await writeSetup(ctx);
  await runPrecopy({ ...ctx, capabilities, drain: () => Promise.resolve(1) });
  assert.equal(guest.runState, "postmigrate");
  const throttles = calls.filter((c) => c.startsWith("throttled")).map((c) => Number(c.slice(10)));
  assert.ok(throttles.length > 0, "auto-converge throttled");
  assert.equal(guest.throttle, Math.max(...throttles), "switched over at the throttle's peak");
  assert.ok(guest.throttle >= 90, `throttle at switchover ${guest.throttle} %`);
  await assertArrivedWhole(ch, guest);
});

Deno.test("runPrecopy(): a guest dirtying faster than the link stalls; stall_action fail ends it after stall_windows windows, the guest never stopped", async () => {
  const { guest, ctx, windows } = stallingMigration(12, { stall_windows: 20 });
  await writeSetup(ctx);
  await assert.rejects(
    runPrecopy(ctx),
    (e: Error) =>
      e.name === "StallError" && /has not dropped below .* for 20 windows/.test(e.message),
  );
  assert.equal(guest.runState, "running", "a stalled migration never stopped the guest");
  assert.equal(guest.stops, 0);
  assert.ok(windows.length >= 20 && windows.length < 200, `${windows.length} windows`);
});

Deno.test("runPrecopy(): stall_action switchover forces the stop-and-copy, warns, and the stream is complete", async () => {
  const { guest, ch, ctx, calls } = stallingMigration(13, {
    stall_windows: 20,
    stall_action: "switchover",
  });
  await writeSetup(ctx);
  await runPrecopy(ctx);
  assert.equal(guest.runState, "postmigrate");
  assert.deepEqual(calls.filter((c) => c.startsWith("warn")), [
    "warn stalled-switchover",
    "warn forced-switchover-downtime",
  ]);
  await assertArrivedWhole(ch, guest);
});

Deno.test("runPrecopy(): stall_action throttle engages auto-converge and steps the throttle up at each stall until the guest slows enough to converge", async () => {
  const { guest, ch, ctx, calls } = stallingMigration(14, {
    stall_windows: 20,
    stall_action: "throttle",
  });
  await writeSetup(ctx);
  await runPrecopy(ctx);
  assert.equal(guest.runState, "postmigrate");
  const steps = calls.filter((c) => c.startsWith("throttled")).map((c) => Number(c.split(" ")[1]));
  assert.ok(steps.length >= 1, calls.join());
  assert.equal(steps[0], DEFAULT_PARAMETERS.cpu_throttle_initial);
  assert.ok(steps.every((t, i) => i === 0 || t > steps[i - 1]), `steps rise: ${steps}`);
  // Each stall steps the throttle once; auto-converge, now engaged, may step it too.
  const stalls = calls.filter((c) => c === "warn stalled-throttle").length;
  assert.ok(stalls >= 1 && stalls <= steps.length, `${stalls} stalls, steps ${steps}`);
  await assertArrivedWhole(ch, guest);
});

Deno.test("runPrecopy(): stall_action throttle fails once the throttle is at its maximum and the migration still stalls", async () => {
  const guest = new TestGuest([["pc.ram", 512 * PAGE_SIZE]]);
  guest.fillRandom(15);
  guest.start();
  const ch = new CaptureChannel();
  const { ctx } = context(guest, ch, {
    max_bandwidth: 10 << 20,
    stall_windows: 10,
    stall_action: "throttle",
  });
  // A guest the throttle cannot slow: it dirties as much whatever the throttle.
  const sleep = ctx.clock.sleep;
  let n = 0;
  ctx.clock.sleep = async (ms, signal) => {
    await sleep(ms, signal);
    for (let i = 0; i < 400; i++, n++) {
      guest.write(((n * 7919) % 512) * PAGE_SIZE, Uint8Array.of(n & 0xff, n >> 8));
    }
  };
  await writeSetup(ctx);
  await assert.rejects(runPrecopy(ctx), /even throttled to 99 %/);
  assert.equal(guest.throttle, 99);
  assert.equal(guest.runState, "running");
});

Deno.test("runPrecopy(): an XBZRLE cache resize that fails keeps the old cache and warns; the migration goes on", async () => {
  const guest = new TestGuest([["pc.ram", 256 * PAGE_SIZE]]);
  guest.fillRandom(16);
  const ch = new CaptureChannel();
  const { ctx, calls } = context(guest, ch, { max_bandwidth: 10 << 20 });
  const ram = new RamSaver(guest.blocks, ctx.clock.now, { xbzrleCacheSize: 64 * PAGE_SIZE });
  ram.resizeCache = (bytes: number) => {
    if (bytes !== ram.cacheSize) throw new RangeError("Array buffer allocation failed");
  };
  const savers = { ...ctx.savers, ram, live: [{ id: 0, name: "ram", version: 4, saver: ram }] };
  await writeSetup({ ...ctx, savers });
  await runPrecopy({
    ...ctx,
    savers,
    params: () => ({ ...ctx.params(), xbzrle_cache_size: 1 << 20 }),
  });
  assert.equal(guest.runState, "postmigrate");
  assert.equal(calls.filter((c) => c === "warn xbzrle-cache-resize-failed").length, 1, "once");
});

Deno.test("runPrecopy() hands every window's bandwidth and the rate limit to the compression gate", async () => {
  const guest = new TestGuest([["pc.ram", 1024 * PAGE_SIZE]]);
  const line = new TextEncoder().encode("a page of text that compresses well\n");
  for (let p = 0; p < 1024; p++) {
    guest.write(
      p * PAGE_SIZE,
      new Uint8Array(PAGE_SIZE).map((_, i) => line[(i + p) % line.length]),
    );
  }
  const ch = new CaptureChannel();
  // 4 KiB per window: many windows. The fake clock never moves while compressing, so the
  // sample runs of the first (plain) window show a compressor faster than the limit: from
  // the second window on, every run is compressed.
  const { ctx, windows } = context(guest, ch, { max_bandwidth: 40 << 10, compress_method: "lz4" });
  await writeSetup(ctx);
  await runPrecopy(ctx);
  const cz = ctx.savers.ram.stats.compression!;
  assert.ok(windows.length >= 2, `${windows.length} windows`);
  assert.equal(cz.gate.skippedWindows, 1);
  assert.equal(cz.gate.compressorRate, Infinity);
  assert.equal(cz.gate.linkRate, windows[0].bandwidth);
  assert.equal(cz.gate.active, true);
  assert.ok(cz.pages > 1024 - 32 * 16, `${cz.pages} pages compressed`);
  const dst = new TestGuest([["pc.ram", 1024 * PAGE_SIZE]]);
  await loadStream(new StreamReader(new BytesChannel(ch.bytes())), dst, { compression: "lz4" });
  assert.equal(await ramDigest(dst), await ramDigest(guest));
});

/**
 * A link behind a socket buffer, on the fake clock: a write is accepted at once
 * while the buffer has room, else once the link (`rate` bytes/ms) has made room;
 * `drain` and `finish` take what is queued plus the round trips, as the return
 * path's PINGs and the switchover's SHUT do (docs/ARCHITECTURE.md, "Convergence").
 */
class LinkChannel extends CaptureChannel {
  #queued = 0;
  #at = 0;
  constructor(
    readonly now: () => number,
    readonly sleep: (ms: number) => Promise<void>,
    readonly rate: number,
    readonly buffer: number,
    readonly rttMs: number,
  ) {
    super();
  }
  #settle(): number {
    const t = this.now();
    this.#queued = Math.max(0, this.#queued - (t - this.#at) * this.rate);
    this.#at = t;
    return this.#queued;
  }
  override async write(chunk: Uint8Array): Promise<void> {
    const over = this.#settle() + chunk.length - this.buffer;
    if (over > 0) await this.sleep(over / this.rate);
    this.#settle();
    this.#queued += chunk.length;
    await super.write(chunk);
  }
  /** The return path's drain: everything loaded (one round trip after the last byte), then a bare PING. */
  async drain(): Promise<number> {
    await this.sleep(this.#settle() / this.rate + 2 * this.rttMs);
    return this.rttMs;
  }
  override async finish(): Promise<void> {
    await this.sleep(this.#settle() / this.rate + this.rttMs);
    await super.finish();
  }
}

Deno.test("runPrecopy(): over a link with a 10 ms round trip, the round trip a drain measures comes out of max_size before the switchover: the downtime stays within a 30 ms limit", async () => {
  const pages = 8192; // 32 MiB
  const guest = new TestGuest([["pc.ram", pages * PAGE_SIZE]]);
  guest.fillRandom(21);
  guest.start();
  const clock = new FakeClock();
  // The guest dirties 12 pages per ms (~50 MB/s) of whatever time passes.
  let dirtied = 0;
  const sleep = async (ms: number, signal?: AbortSignal) => {
    const from = Math.floor(clock.now() * 12);
    await clock.sleep(ms, signal);
    for (let i = from; i < Math.floor(clock.now() * 12); i++) {
      dirtied++;
      guest.write(((i * 2654435761) % pages) * PAGE_SIZE, Uint8Array.of(i & 0xff, 0x5a));
    }
  };
  // ~100 MB/s (1 Gbit/s-ish), a 2 MiB socket buffer (20 ms of the link), 10 ms round trip.
  const ch = new LinkChannel(clock.now, (ms) => sleep(ms), 100 * 1024, 2 << 20, 10);
  const { ctx, calls } = context(guest, ch, {
    max_bandwidth: Number.MAX_SAFE_INTEGER,
    downtime_limit: 30,
  });
  const run = {
    ...ctx,
    clock: { ...clock, sleep },
    writer: new StreamWriter(ch, 1 << 20),
    drain: () => ch.drain(),
  };
  await writeSetup(run);
  const result = await runPrecopy(run);
  assert.ok(dirtied > 1000, `the guest dirtied ${dirtied} pages`);
  assert.ok(
    result.downtime <= 30,
    `downtime ${result.downtime} ms over the 30 ms limit: ${
      calls.filter((c) => c.startsWith("warn"))
    }`,
  );
  const dst = new TestGuest([["pc.ram", pages * PAGE_SIZE]]);
  await loadStream(new StreamReader(new BytesChannel(ch.bytes())), dst);
  assert.equal(await ramDigest(dst), await ramDigest(guest), "nothing dirtied was lost");
});

Deno.test("runPrecopy(): a window with drains in it does not read the bytes that crossed the link during them, or the emptied socket buffer's refill, as bandwidth", async () => {
  const pages = 8192; // 32 MiB
  const guest = new TestGuest([["pc.ram", pages * PAGE_SIZE]]);
  guest.fillRandom(22);
  guest.start();
  const clock = new FakeClock();
  // 14 pages per ms (~57 MB/s): each 40 ms drain leaves a little more than the
  // 20 ms that max_size allows at the link's rate, so the loop sends and drains
  // round after round until the stall detector switches over.
  const sleep = async (ms: number, signal?: AbortSignal) => {
    const from = Math.floor(clock.now() * 14);
    await clock.sleep(ms, signal);
    for (let i = from; i < Math.floor(clock.now() * 14); i++) {
      guest.write(((i * 2654435761) % pages) * PAGE_SIZE, Uint8Array.of(i & 0xff, 0xa5));
    }
  };
  const rate = 100 * 1024;
  const ch = new LinkChannel(clock.now, (ms) => sleep(ms), rate, 2 << 20, 10);
  const { ctx, windows, calls } = context(guest, ch, {
    max_bandwidth: Number.MAX_SAFE_INTEGER,
    downtime_limit: 30,
    stall_windows: 2,
    stall_action: "switchover",
  });
  let drains = 0;
  const run = {
    ...ctx,
    clock: { ...clock, sleep },
    writer: new StreamWriter(ch, 1 << 20),
    drain: () => {
      if (++drains > 400) throw new Error(`never switched over (${windows.length} windows)`);
      return ch.drain();
    },
  };
  // Copying pages out of guest RAM takes time too (1 ms per MiB here): the time
  // between drains, which is all a window with drains in it is left with.
  const ram = run.savers.ram;
  const iterate = ram.iterate.bind(ram);
  ram.iterate = async (w, stop) => {
    const before = w.bytes;
    const result = await iterate(w, stop);
    await sleep((w.bytes - before) / (1 << 20));
    return result;
  };
  await writeSetup(run);
  await runPrecopy(run);
  assert.ok(drains >= 10, `${drains} drains`);
  assert.ok(windows.length >= 4, `${windows.length} windows`);
  // The writer's 1 MiB buffer may land in a window at once: a little over the link.
  const over = windows.filter((w) => w.bandwidth > rate * 1.25);
  assert.deepEqual(over.map((w) => Math.round(w.bandwidth)), [], "windows above the link");
  assert.ok(calls.includes("warn stalled-switchover"), calls.join());
  const dst = new TestGuest([["pc.ram", pages * PAGE_SIZE]]);
  await loadStream(new StreamReader(new BytesChannel(ch.bytes())), dst);
  assert.equal(await ramDigest(dst), await ramDigest(guest), "nothing dirtied was lost");
});
