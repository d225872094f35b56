/**
 * Start-up warm-up: one small migration between two engines inside this process,
 * over a real transport, before the API serves anyone. A fresh Deno process
 * otherwise compiles every function of the migration path — setup, the send and
 * load loops, the final phase, the return-path handshake — and loads parts of the
 * runtime lazily during the first real migration; for a small or idle guest that
 * first-time cost was most of the downtime.
 * @module
 */
import type { Transports } from "../transports/transport.ts";
import type { DeviceField, Guest, RunState } from "../vm/guest.ts";
import { RamBlock } from "../vm/ram.ts";
import { PAGE_SIZE } from "./format/constants.ts";
import { settledWithin } from "./clock.ts";
import { Engine } from "./engine.ts";

/**
 * RAM of each warm-up guest: enough zero pages that the send and load loops get
 * optimized (never-written pages cost no memory and no copying).
 */
const WARMUP_RAM = 128 << 20;
/** Pages of the source's scratch RAM that hold data (the rest is never written: zero pages cost no memory). */
const DATA_PAGES = 512;
/** Give up (and move on) after this long. */
const WARMUP_TIMEOUT_MS = 5_000;

/** A guest with no vCPU: RAM, run state and an 8-byte device state. */
class ScratchGuest implements Guest {
  readonly blocks: RamBlock[];
  readonly deviceFields: readonly DeviceField[] = [{ name: "counter", type: "uint64", size: 8 }];
  #state: RunState = "paused";
  #device = new Uint8Array(8);
  readonly #listeners = new Set<(from: RunState, to: RunState) => void>();

  constructor(fill: boolean) {
    const block = new RamBlock("pc.ram", WARMUP_RAM);
    if (fill) {
      // Pages with data, pages touched but zero, and untouched (known-zero) words.
      for (let page = 0; page < DATA_PAGES; page++) {
        if (page % 3 !== 0) {
          block.bytes.fill(page & 0xff || 1, page * PAGE_SIZE, page * PAGE_SIZE + 64);
        }
        block.markTouched(page);
      }
    }
    this.blocks = [block];
  }

  get runState(): RunState {
    return this.#state;
  }
  stop(next: RunState): void {
    this.setRunState(next);
  }
  start(): void {
    this.setRunState("running");
  }
  setRunState(state: RunState): void {
    const from = this.#state;
    this.#state = state;
    if (from !== state) { for (const l of this.#listeners) l(from, state); }
  }
  setThrottle(): void {}
  saveDeviceState(): Uint8Array {
    return this.#device.slice();
  }
  loadDeviceState(bytes: Uint8Array): void {
    if (bytes.length !== 8) throw new Error("bad device state");
    this.#device = bytes.slice();
  }
  onRunStateChange(listener: (from: RunState, to: RunState) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }
}

/**
 * Migrates a 2 MiB scratch guest from one in-process engine to another over
 * `uri` (default loopback tcp, which also runs the return-path handshake), with
 * the given event-loop `turn`. Resolves true when the copy completed and matched;
 * never throws (a warm-up that cannot run only costs the first migration time).
 */
export async function warmUp(
  transports: Transports,
  turn?: () => Promise<void>,
  uri = "tcp:127.0.0.1:0",
): Promise<boolean> {
  const src = new ScratchGuest(true);
  const dst = new ScratchGuest(false);
  const common = { transports, autostart: false, ...(turn ? { turn } : {}) };
  const source = new Engine({ guest: src, ...common });
  const destination = new Engine({ guest: dst, ...common });
  try {
    // A scratch migration: a broken one fails at once rather than waiting to resume.
    source.setParameters({ max_bandwidth: 1e12, resume_grace: 0 });
    destination.setParameters({ resume_grace: 0 });
    const incoming = await destination.listenIncoming(uri);
    source.migrate(incoming.address!);
    const done = Promise.all([source.migration!.done, destination.incoming!.done]);
    await settledWithin(source.clock, done, WARMUP_TIMEOUT_MS);
    return source.current().status === "completed" &&
      destination.incomingInfo().status === "completed" &&
      sameWords(src.blocks[0].words, dst.blocks[0].words, DATA_PAGES * (PAGE_SIZE / 4));
  } catch {
    return false;
  } finally {
    await Promise.all([source.close(), destination.close()]).catch(() => {});
  }
}

/** Compares the first `n` words (reading untouched RAM would fault it in). */
function sameWords(a: Int32Array, b: Int32Array, n: number): boolean {
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return false;
  return true;
}
