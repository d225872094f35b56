/**
 * The x86 guest's emulator thread: one {@link X86Machine} and the hand-off of its
 * RAM to the migration (docs/ARCHITECTURE.md, "The x86 guest").
 *
 * Only this thread can read the emulator's memory, and v86 keeps no dirty log. So
 * the worker keeps the migration's copy of guest RAM (the `pc.ram` block, a shared
 * memory) in step on demand: a sync compares every page of the emulator's RAM with
 * the copy, copies each page that differs and sets its dirty bit. A page is clean
 * only if its bytes equal the copy's, which holds what was last synced; a sync with
 * the machine stopped is exact. Commands arrive as messages and run between the
 * emulator's slices; stop, run and sync are acknowledged through the control block.
 *
 * A throttle of t % runs the emulator for 10 ms, then stops it for 10·t/(100 − t)
 * ms (QEMU's CPU_THROTTLE_TIMESLICE): t % of the time it does not run.
 * @module
 */
/// <reference lib="deno.worker" />
import { type PageSync, pageSync } from "./page_sync.ts";
import { PAGE_SIZE } from "../ram.ts";
import { VmError } from "../error.ts";
import { X86Machine } from "./emulator.ts";
import {
  ACK_FAILED,
  type FromX86Worker,
  type ToX86Worker,
  X86_CTL,
  type X86Command,
} from "./protocol.ts";

/** Run slice of a throttled emulator, ms (QEMU's CPU_THROTTLE_TIMESLICE). */
const THROTTLE_TIMESLICE_MS = 10;

let machine: X86Machine | undefined;
let ctl: Int32Array | undefined;
let differ: PageSync | undefined;
let ram: { bytes: Uint8Array; dirty: Uint32Array; touched: Uint32Array; pages: number } | undefined;
/** Where guest physical address 0 sits in the emulator's memory. */
let ramOffset = 0;
let wantRunning = false;
let throttle = 0;
let throttleTimer: ReturnType<typeof setTimeout> | undefined;
let failed = false;
/** Messages run one after another: each may await the emulator. */
let queue: Promise<void> = Promise.resolve();
let consoleBytes: number[] = [];

function post(message: FromX86Worker, transfer: Transferable[] = []): void {
  self.postMessage(message, transfer);
}

function acknowledge(seq: number): void {
  if (!ctl) return;
  Atomics.store(ctl, X86_CTL.ACK, seq);
  Atomics.notify(ctl, X86_CTL.ACK);
}

/** The worker cannot go on: every waiter and every later command fails at once. */
function fail(message: string): void {
  failed = true;
  wantRunning = false;
  if (ctl) {
    Atomics.store(ctl, X86_CTL.RUNNING, 0);
    acknowledge(ACK_FAILED);
  }
  post({ type: "error", message });
}

/** Copies the emulator's changed pages into the shared RAM copy and marks them dirty. */
function syncRam(): number {
  const r = ram!;
  const dirty = r.dirty;
  return differ!.diffCopy(ramOffset, 0, r.pages, (page) => {
    Atomics.or(dirty, page >>> 5, 1 << (page & 31));
  });
}

/**
 * True while the emulator's RAM equals the RAM copy except for pages written into
 * the copy since (which a pull or the load copies over): set by {@link mirror}, and
 * cleared when the machine runs, since then the emulator writes its own RAM.
 */
let mirrored = false;

/** Copies the pages set in `pages` from the RAM copy into the emulator. */
function copyPages(pages: Uint32Array): void {
  const r = ram!;
  const target = machine!.ram();
  for (let w = 0; w < pages.length; w++) {
    let bits = pages[w];
    while (bits !== 0) {
      const bit = 31 - Math.clz32(bits);
      bits &= ~(1 << bit);
      const page = w * 32 + bit;
      if (page >= r.pages) continue;
      const at = page * PAGE_SIZE;
      target.set(r.bytes.subarray(at, at + PAGE_SIZE), at);
    }
  }
}

/**
 * Makes the emulator's RAM equal the copy: zeroes it, then copies every page of the
 * copy that may hold data (its touched map).
 */
function mirror(): void {
  machine!.ram().fill(0);
  copyPages(ram!.touched);
  mirrored = true;
}

/** Brings the emulator's RAM to the copy, given the pages written since it was mirrored. */
function pull(pages: Uint32Array | null): void {
  if (!mirrored) return mirror();
  if (pages !== null) copyPages(pages);
}

/** Runs `step` after every message and step queued before it. */
function enqueue(step: () => Promise<void> | void): void {
  queue = queue.then(step).catch((e) =>
    fail(`x86 emulator: ${e instanceof Error ? e.message : e}`)
  );
}

/**
 * After each run timeslice: stop for the throttled share, then run again. The
 * pause is a timer, not a wait in the queue, so commands are served meanwhile.
 */
function scheduleThrottle(): void {
  if (throttleTimer !== undefined || !wantRunning || throttle <= 0 || failed) return;
  throttleTimer = setTimeout(() =>
    enqueue(async () => {
      throttleTimer = undefined;
      if (!wantRunning || throttle <= 0 || failed) return;
      await machine!.stop();
      const sleepMs = THROTTLE_TIMESLICE_MS * throttle / (100 - throttle);
      throttleTimer = setTimeout(() =>
        enqueue(async () => {
          throttleTimer = undefined;
          if (!wantRunning || failed) return;
          await machine!.run();
          scheduleThrottle();
        }), sleepMs);
    }), THROTTLE_TIMESLICE_MS);
}

async function command(seq: number, name: X86Command): Promise<void> {
  if (failed) return acknowledge(ACK_FAILED);
  switch (name) {
    case "stop":
      wantRunning = false;
      if (throttleTimer !== undefined) clearTimeout(throttleTimer);
      throttleTimer = undefined;
      Atomics.store(ctl!, X86_CTL.RUNNING, 0);
      await machine!.stop();
      break;
    case "run":
      wantRunning = true;
      mirrored = false;
      if (throttleTimer !== undefined) clearTimeout(throttleTimer);
      throttleTimer = undefined;
      Atomics.store(ctl!, X86_CTL.RUNNING, 1);
      await machine!.run();
      scheduleThrottle();
      break;
    case "sync":
      Atomics.store(ctl!, X86_CTL.CHANGED, syncRam());
      break;
  }
  acknowledge(seq);
}

async function handle(message: ToX86Worker): Promise<void> {
  switch (message.type) {
    case "init": {
      ctl = new Int32Array(message.control);
      const shared = message.ram;
      ram = {
        bytes: new Uint8Array(shared.ram, 0, shared.length),
        dirty: new Uint32Array(shared.dirty),
        touched: new Uint32Array(shared.touched),
        pages: shared.length / PAGE_SIZE,
      };
      machine = await X86Machine.create({ ...message.machine, start: false });
      if (message.prefault) {
        const bytes = machine.ram();
        for (let at = 0; at < bytes.length; at += PAGE_SIZE) bytes[at] |= 0;
      }
      const memory = machine.memory();
      ramOffset = memory.offset;
      differ = pageSync(memory.memory, shared.memory);
      machine.onConsole((byte) => {
        if (consoleBytes.length === 0) {
          queueMicrotask(() => {
            const bytes = Uint8Array.from(consoleBytes);
            consoleBytes = [];
            post({ type: "console", bytes }, [bytes.buffer]);
          });
        }
        consoleBytes.push(byte);
      });
      post({ type: "ready" });
      return;
    }
    case "command":
      return await command(message.seq, message.command);
    case "throttle":
      throttle = message.percent;
      Atomics.store(ctl!, X86_CTL.THROTTLE, throttle);
      if (throttle === 0 && wantRunning && !machine!.running) {
        if (throttleTimer !== undefined) clearTimeout(throttleTimer);
        throttleTimer = undefined;
        await machine!.run();
      }
      scheduleThrottle();
      return;
    case "input":
      if (!failed) machine!.sendConsole(message.text);
      return;
    case "save":
      try {
        const devices = await machine!.saveDevices();
        post({ type: "saved", id: message.id, devices }, [devices.buffer]);
      } catch (e) {
        post({ type: "failed", id: message.id, ...describe(e) });
      }
      return;
    case "load":
      try {
        machine!.loadDevices(message.devices);
        pull(message.pages);
        post({ type: "loaded", id: message.id });
      } catch (e) {
        post({ type: "failed", id: message.id, ...describe(e) });
      }
      return;
    case "pull":
      if (!failed) pull(message.pages);
      return;
    case "exit":
      wantRunning = false;
      if (throttleTimer !== undefined) clearTimeout(throttleTimer);
      await machine?.destroy();
      post({ type: "exited" });
      self.close();
      return;
  }
}

function describe(e: unknown): { message: string; code?: string } {
  if (e instanceof VmError) return { message: e.message, code: e.code };
  return { message: e instanceof Error ? e.message : String(e) };
}

self.onmessage = (event: MessageEvent<ToX86Worker>) => {
  const message = event.data;
  enqueue(() => handle(message));
};
