import assert from "node:assert/strict";
import type { RunState } from "../../vm/guest.ts";
import { abExpectedByte, abInvariantViolation } from "../../vm/ab_check.ts";
import { VCPU_DEVICE_FIELDS, VCPU_DEVICE_STATE_SIZE } from "../../vm/device_state.ts";
import { PAGE_SIZE, popcount32 } from "../../vm/ram.ts";
import { Vm, VmError } from "../../vm/vm.ts";
import { WorkloadError } from "../../vm/workload.ts";
import { waitUntil } from "../helpers/wait.ts";

const MiB = 1 << 20;
const delay = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Moves the dirty log into a fresh bitmap and returns it. */
function collectDirty(vm: Vm): Uint32Array {
  const block = vm.blocks[0];
  const map = new Uint32Array(block.dirty.length);
  block.syncDirty(map);
  return map;
}

function countBits(map: Uint32Array, from = 0, to = map.length * 32): number {
  let n = 0;
  for (let p = from; p < to; p++) if ((map[p >>> 5] & (1 << (p & 31))) !== 0) n++;
  return n;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

Deno.test("Vm.create starts in prelaunch with one pc.ram block and the vCPU stopped", async () => {
  await using vm = await Vm.create({ ramSize: "1M", workload: "ab", fill: "zero" });
  assert.equal(vm.runState, "prelaunch");
  assert.deepEqual(vm.blocks.map((b) => [b.name, b.length]), [["pc.ram", MiB]]);
  await delay(30);
  assert.equal(vm.opsCount, 0);
  assert.deepEqual(vm.info(), {
    guest: "synthetic",
    run_state: "prelaunch",
    ram_size: MiB,
    page_size: 4096,
    workload: "ab",
    throttle: 0,
    ops: 0,
  });
  assert.deepEqual(JSON.parse(JSON.stringify(vm.info())), vm.info());
});

Deno.test("Vm.create rejects an ab range beyond RAM, a bad size, fill or seed", async () => {
  await assert.rejects(() => Vm.create({ ramSize: MiB, workload: "ab:range=2M" }), WorkloadError);
  await assert.rejects(() => Vm.create({ ramSize: 1000, workload: "idle" }), /multiple of 4096/);
  await assert.rejects(
    () => Vm.create({ ramSize: MiB, fill: "ones" as "zero" }),
    (e: unknown) => e instanceof VmError && e.code === "invalid-argument",
  );
  await assert.rejects(() => Vm.create({ ramSize: MiB, seed: 0.5 }), /Invalid seed/);
});

Deno.test("Vm.create with prefault and fill prepares RAM before start", async () => {
  await using vm = await Vm.create({ ramSize: MiB, fill: "pattern", prefault: true });
  assert.notEqual(vm.blocks[0].words[0], 0);
  assert.equal(vm.blocks[0].isTouched(255), true);
});

Deno.test("Vm.start() runs the vCPU: the op counter increases and dirty bits appear", async () => {
  await using vm = await Vm.create({ ramSize: "4M", workload: "random:rate=0", fill: "zero" });
  vm.start();
  assert.equal(vm.runState, "running");
  await waitUntil(() => vm.opsCount > 0, "the first ops");
  const first = vm.opsCount;
  await waitUntil(() => vm.opsCount > first, "more ops");
  assert.ok(countBits(collectDirty(vm)) > 0, "dirty bits");
  vm.stop("paused");
});

Deno.test("Vm.stop() halts the vCPU: no op counts, RAM writes or dirty bits after it returns", async () => {
  await using vm = await Vm.create({ ramSize: "4M", workload: "random:rate=0", fill: "zero" });
  vm.start();
  await waitUntil(() => vm.opsCount > 0, "the first ops");
  vm.stop("paused");
  assert.equal(vm.runState, "paused");
  const ops = vm.opsCount;
  collectDirty(vm);
  const before = (await vm.digest()).sha256;
  await delay(50);
  assert.equal(vm.opsCount, ops);
  assert.equal(countBits(collectDirty(vm)), 0);
  assert.equal((await vm.digest()).sha256, before);
});

Deno.test("Vm.stop() returns promptly while a rate-limited workload sleeps between ops", async () => {
  // 40 KiB/s = one op every 100 ms: after each op the worker sleeps 100 ms in
  // Atomics.wait (its longest sleep). The stop comes right as that sleep starts,
  // so one that ignored the stop would take ~100 ms; a woken one takes µs.
  await using vm = await Vm.create({ ramSize: MiB, workload: "ab:rate=40K" });
  const cycles = 7;
  const took: number[] = [];
  for (let i = 0; i < cycles; i++) {
    const ops = vm.opsCount;
    vm.start();
    await waitUntil(() => vm.opsCount > ops, `op ${i + 1}`);
    const t0 = performance.now();
    vm.stop("paused");
    took.push(performance.now() - t0);
  }
  assert.ok(median(took) < 50, `median stop took ${median(took)} ms`);
  // Pacing survives stop and start: no burst of ops owed for the time stopped.
  assert.ok(vm.opsCount <= 2 * cycles, `ops ${vm.opsCount} in ${cycles} short runs at 10 op/s`);
});

Deno.test("Vm ab workload keeps the two-adjacent-values invariant and the exact per-page counts", async () => {
  await using vm = await Vm.create({ ramSize: "1M", workload: "ab", fill: "zero" });
  vm.start();
  await waitUntil(() => vm.opsCount > 256, "one full pass");
  vm.stop("paused");
  const bytes = vm.blocks[0].bytes;
  assert.equal(abInvariantViolation(bytes, 256), null);
  for (let p = 0; p < 256; p++) {
    assert.equal(bytes[p * PAGE_SIZE], abExpectedByte(vm.opsCount, p, 256), `page ${p}`);
  }
});

Deno.test("Vm ab workload with a range only touches pages inside the range", async () => {
  await using vm = await Vm.create({ ramSize: "1M", workload: "ab:range=64K" });
  vm.start();
  await waitUntil(() => vm.opsCount >= 16, "one pass over the range");
  vm.stop("paused");
  const dirty = collectDirty(vm);
  assert.equal(countBits(dirty, 0, 16), 16);
  assert.equal(countBits(dirty, 16, 256), 0);
  assert.equal(abInvariantViolation(vm.blocks[0].bytes, 16), null);
});

Deno.test("Vm random workload with hot=10%:90% lands most dirty pages in the hot region", async () => {
  // 16384 pages, hot region = first 1638; ~1024 ops/s so the hot region does not saturate.
  await using vm = await Vm.create({ ramSize: "64M", workload: "random:rate=4M,hot=10%:90%" });
  vm.start();
  await waitUntil(() => vm.opsCount >= 300, "300 ops");
  vm.stop("paused");
  const dirty = collectDirty(vm);
  const hotPages = Math.floor(16384 * 0.1);
  const hot = countBits(dirty, 0, hotPages);
  const cold = countBits(dirty, hotPages, 16384);
  assert.ok(hot + cold >= 50, `enough ops: ${hot + cold}`);
  assert.ok(hot > 3 * cold, `hot ${hot} vs cold ${cold}`);
});

Deno.test("Vm random workload writes `bytes` bytes per op inside one page", async () => {
  await using vm = await Vm.create({ ramSize: "4M", workload: "random:rate=40K,bytes=4096" });
  vm.start();
  await waitUntil(() => vm.opsCount >= 2, "two ops");
  vm.stop("paused");
  const block = vm.blocks[0];
  const dirty = collectDirty(vm);
  let written = 0;
  for (let p = 0; p < block.pages; p++) {
    const zero = block.bytes.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE).every((b) => b === 0);
    const isDirty = (dirty[p >>> 5] & (1 << (p & 31))) !== 0;
    assert.equal(!zero, isDirty, `page ${p}: written iff dirty`);
    if (isDirty) written++;
  }
  assert.ok(written > 0);
});

/** The guest's op rate (ops/ms) measured over `ms` of real time. */
async function opRate(vm: Vm, ms: number): Promise<number> {
  const ops0 = vm.opsCount;
  const t0 = performance.now();
  await delay(ms);
  return (vm.opsCount - ops0) / (performance.now() - t0);
}

Deno.test("Vm.setThrottle() reduces the op rate", async () => {
  await using vm = await Vm.create({ ramSize: "1M", workload: "ab" });
  const rate = (ms: number) => opRate(vm, ms);
  vm.start();
  await delay(20);
  const full = await rate(150);
  vm.setThrottle(80);
  assert.equal(vm.throttle, 80);
  await delay(20);
  const throttled = await rate(150);
  vm.setThrottle(0);
  vm.stop("paused");
  // Nominally 20 %; loose bound for a busy machine.
  assert.ok(throttled < full * 0.6, `throttled ${throttled} vs full ${full} ops/ms`);
  assert.ok(throttled > 0, "still runs");
});

Deno.test("Vm.setThrottle() rejects values outside integer 0-99", async () => {
  await using vm = await Vm.create({ ramSize: MiB });
  for (const bad of [-1, 100, 2.5]) {
    assert.throws(
      () => vm.setThrottle(bad),
      (e: unknown) => e instanceof VmError && e.code === "invalid-argument",
    );
  }
});

Deno.test("Vm.saveDeviceState() → loadDeviceState() on a second Vm continues the ab program", async () => {
  await using source = await Vm.create({ ramSize: "1M", workload: "ab:range=512K" });
  await using dest = await Vm.create({ ramSize: "1M", workload: "idle" });
  source.start();
  await waitUntil(() => source.opsCount > 128, "a pass over the range");
  source.stop("finish-migrate");
  const state = source.saveDeviceState();
  assert.equal(state.length, VCPU_DEVICE_STATE_SIZE);
  dest.blocks[0].bytes.set(source.blocks[0].bytes);
  dest.setRunState("inmigrate");
  dest.loadDeviceState(state);
  assert.deepEqual(dest.workload, source.workload);
  assert.equal(dest.opsCount, source.opsCount);
  assert.deepEqual(dest.saveDeviceState(), state);
  dest.start();
  await waitUntil(() => dest.opsCount > source.opsCount, "the destination running on");
  dest.stop("paused");
  const bytes = dest.blocks[0].bytes;
  assert.equal(abInvariantViolation(bytes, 128), null);
  // Cursor and counter continued together: every page has exactly the expected count.
  for (let p = 0; p < 128; p++) {
    assert.equal(bytes[p * PAGE_SIZE], abExpectedByte(dest.opsCount, p, 128), `page ${p}`);
  }
  assert.equal(bytes[128 * PAGE_SIZE], 0, "outside the range");
});

Deno.test("Vm.loadDeviceState() carries a random program's PRNG and replaces the workload", async () => {
  await using source = await Vm.create({ ramSize: "1M", workload: "random:rate=0,hot=50%:50%" });
  await using dest = await Vm.create({ ramSize: "1M", workload: "ab", seed: 99 });
  source.start();
  await waitUntil(() => source.opsCount > 0, "the first ops");
  source.stop("postmigrate");
  dest.loadDeviceState(source.saveDeviceState());
  assert.equal(dest.info().workload, "random:rate=0,hot=50%:50%");
  assert.deepEqual(dest.saveDeviceState(), source.saveDeviceState());
});

Deno.test("Vm.loadDeviceState() rejects bad lengths, kinds and oversized ranges with VmError", async () => {
  await using vm = await Vm.create({ ramSize: "1M", workload: "ab" });
  const good = vm.saveDeviceState();
  const kind = good.slice();
  kind[0] = 9;
  const range = good.slice();
  new DataView(range.buffer).setBigUint64(1 + 8, 2n * BigInt(MiB));
  const cases: [Uint8Array, RegExp][] = [
    [good.subarray(1), /expected 49 bytes, got 48/],
    [new Uint8Array(0), /expected 49 bytes, got 0/],
    [kind, /unknown workload kind code 9/],
    [range, /ab range 2097152 is beyond the RAM block/],
  ];
  for (const [bytes, message] of cases) {
    assert.throws(
      () => vm.loadDeviceState(bytes),
      (e: unknown) =>
        e instanceof VmError && e.code === "invalid-device-state" && message.test(e.message),
    );
  }
  assert.equal(vm.info().workload, "ab", "a rejected state changes nothing");
});

Deno.test("Vm.loadDeviceState() refuses to load while the guest is running", async () => {
  await using vm = await Vm.create({ ramSize: "1M", workload: "idle" });
  const state = vm.saveDeviceState();
  vm.start();
  assert.throws(
    () => vm.loadDeviceState(state),
    (e: unknown) => e instanceof VmError && e.code === "invalid-run-state",
  );
  vm.stop("paused");
  vm.loadDeviceState(state);
});

Deno.test("Vm.deviceFields lists the vcpu section's fields", async () => {
  await using vm = await Vm.create({ ramSize: MiB });
  assert.equal(vm.deviceFields, VCPU_DEVICE_FIELDS);
  assert.equal(vm.deviceFields.reduce((n, f) => n + f.size, 0), vm.saveDeviceState().length);
});

Deno.test("Vm.digest() is equal for equal RAM and changes when one byte changes", async () => {
  await using a = await Vm.create({ ramSize: "2M", fill: "random", seed: 7 });
  await using b = await Vm.create({ ramSize: "2M", fill: "random", seed: 7 });
  const da = await a.digest();
  assert.deepEqual(await b.digest(), da);
  assert.equal(da.blocks.length, 1);
  assert.equal(da.blocks[0].name, "pc.ram");
  assert.equal(da.blocks[0].length, 2 * MiB);
  assert.match(da.sha256, /^[0-9a-f]{64}$/);
  b.blocks[0].bytes[MiB + 17] ^= 1;
  const db = await b.digest();
  assert.notEqual(db.blocks[0].sha256, da.blocks[0].sha256);
  assert.notEqual(db.sha256, da.sha256);
});

Deno.test("Vm.onRunStateChange() reports each change once until unsubscribed", async () => {
  await using vm = await Vm.create({ ramSize: MiB });
  const seen: [RunState, RunState][] = [];
  const off = vm.onRunStateChange((from, to) => seen.push([from, to]));
  vm.start();
  vm.start();
  vm.stop("paused");
  vm.stop("paused");
  vm.setRunState("postmigrate");
  off();
  vm.setRunState("paused");
  assert.deepEqual(seen, [
    ["prelaunch", "running"],
    ["running", "paused"],
    ["paused", "postmigrate"],
  ]);
});

Deno.test("Vm.onRunStateChange() keeps notifying others when one listener throws", async () => {
  await using vm = await Vm.create({ ramSize: MiB });
  const seen: RunState[] = [];
  const originalError = console.error;
  console.error = () => {};
  try {
    vm.onRunStateChange(() => {
      throw new Error("boom");
    });
    vm.onRunStateChange((_from, to) => seen.push(to));
    vm.setRunState("inmigrate");
  } finally {
    console.error = originalError;
  }
  assert.deepEqual(seen, ["inmigrate"]);
  assert.equal(vm.runState, "inmigrate");
});

Deno.test("Vm.setRunState() and stop() refuse to enter running without start()", async () => {
  await using vm = await Vm.create({ ramSize: MiB });
  const invalid = (e: unknown) => e instanceof VmError && e.code === "invalid-run-state";
  assert.throws(() => vm.setRunState("running"), invalid);
  assert.throws(() => vm.stop("running"), invalid);
  assert.throws(() => vm.setRunState("bogus" as RunState), VmError);
  assert.equal(vm.runState, "prelaunch");
});

Deno.test("Vm.close() is idempotent; start() afterwards throws a closed VmError", async () => {
  const vm = await Vm.create({ ramSize: MiB, workload: "ab" });
  vm.start();
  vm.close();
  vm.close();
  assert.equal(vm.closed, true);
  assert.throws(() => vm.start(), (e: unknown) => e instanceof VmError && e.code === "closed");
  vm.stop("postmigrate");
  assert.equal(vm.runState, "postmigrate");
});

Deno.test("Vm vCPU writes pages before marking them dirty: a dirty-log copy loop converges to RAM", async () => {
  // What a live migration does: copy everything, then repeatedly sync the dirty log and
  // re-copy the dirty pages; after the final stop+sync the copy must equal RAM exactly.
  await using vm = await Vm.create({ ramSize: "4M", workload: "random:rate=0,bytes=64" });
  const block = vm.blocks[0];
  const copy = new Uint8Array(block.length);
  const copyDirty = (map: Uint32Array) => {
    for (let w = 0; w < map.length; w++) {
      for (let bits = map[w]; bits !== 0; bits &= bits - 1) {
        const page = w * 32 + (31 - Math.clz32(bits & -bits));
        copy.set(block.bytes.subarray(page * PAGE_SIZE, (page + 1) * PAGE_SIZE), page * PAGE_SIZE);
      }
      map[w] = 0;
    }
  };
  vm.start();
  copy.set(block.bytes);
  let resent = 0;
  for (let pass = 0; pass < 30; pass++) {
    const ops = vm.opsCount;
    await waitUntil(() => vm.opsCount > ops, `ops in pass ${pass}`);
    const map = new Uint32Array(block.dirty.length);
    block.syncDirty(map);
    resent += map.reduce((n, w) => n + popcount32(w), 0);
    copyDirty(map);
  }
  vm.stop("finish-migrate");
  const map = new Uint32Array(block.dirty.length);
  block.syncDirty(map);
  copyDirty(map);
  assert.ok(resent >= 30, `${resent} pages re-sent`);
  assert.ok(copy.every((b, i) => b === block.bytes[i]), "copy equals RAM");
});

Deno.test("Vm.setThrottle() slows a paced workload to its share of the rate", async () => {
  await using vm = await Vm.create({ ramSize: "4M", workload: "random:rate=16M" });
  const rate = (ms: number) => opRate(vm, ms);
  vm.start();
  await delay(50);
  const full = await rate(300);
  vm.setThrottle(75);
  await delay(50);
  const throttled = await rate(300);
  vm.setThrottle(0);
  vm.stop("paused");
  // 16M/s = 4096 ops/s nominal; throttled nominally 25 % of it.
  assert.ok(throttled < full * 0.5, `throttled ${throttled} vs full ${full} ops/ms`);
  assert.ok(throttled > 0, "still runs");
});
