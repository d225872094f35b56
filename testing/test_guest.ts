/**
 * An in-process Guest without a vCPU worker, for engine tests and the loader fuzzer.
 * @module
 */
import type { DeviceField, Guest, RunState } from "../vm/guest.ts";
import { PAGE_SIZE, RamBlock } from "../vm/ram.ts";

/**
 * A Guest without a vCPU worker, for engine tests: RAM blocks in shared memory,
 * run states, and an 8-byte device state (a counter). `write()` dirties a page the
 * way the vCPU does (bytes first, then the dirty bit).
 */
export class TestGuest implements Guest {
  readonly blocks: RamBlock[];
  #state: RunState = "prelaunch";
  #listeners = new Set<(from: RunState, to: RunState) => void>();
  counter = 0n;
  throttle = 0;
  stops = 0;
  readonly deviceFields: readonly DeviceField[] = [{ name: "counter", type: "uint64", size: 8 }];

  constructor(blocks: [string, number][] = [["pc.ram", 1 << 20]]) {
    this.blocks = blocks.map(([name, size]) => new RamBlock(name, size));
  }

  get runState(): RunState {
    return this.#state;
  }

  stop(next: RunState): void {
    this.stops++;
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

  setThrottle(percent: number): void {
    this.throttle = percent;
  }

  saveDeviceState(): Uint8Array {
    const out = new Uint8Array(8);
    new DataView(out.buffer).setBigUint64(0, this.counter);
    return out;
  }

  loadDeviceState(bytes: Uint8Array): void {
    if (bytes.length !== 8) throw new Error(`device state must be 8 bytes, got ${bytes.length}`);
    this.counter = new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0);
  }

  onRunStateChange(listener: (from: RunState, to: RunState) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Writes `data` at `offset` of block `index`, then marks the touched pages dirty. */
  write(offset: number, data: Uint8Array, index = 0): void {
    const block = this.blocks[index];
    block.bytes.set(data, offset);
    const first = Math.floor(offset / PAGE_SIZE);
    const last = Math.floor((offset + data.length - 1) / PAGE_SIZE);
    for (let p = first; p <= last; p++) block.markDirty(p);
  }

  /** Fills every block with deterministic pseudo-random bytes and marks them touched. */
  fillRandom(seed = 1): void {
    let x = seed >>> 0 || 1;
    for (const b of this.blocks) {
      const words = new Uint32Array(b.bytes.buffer, 0, b.length / 4);
      for (let i = 0; i < words.length; i++) {
        x ^= x << 13;
        x ^= x >>> 17;
        x ^= x << 5;
        words[i] = x >>> 0;
      }
      b.touchAll();
    }
  }
}

/** SHA-256 (hex) over every block's bytes, for comparing two guests in tests. */
export async function ramDigest(guest: Guest): Promise<string> {
  const parts: string[] = [];
  for (const b of guest.blocks) {
    const copy = b.bytes.slice();
    const hash = new Uint8Array(await crypto.subtle.digest("SHA-256", copy));
    parts.push(`${b.name}:${Array.from(hash, (v) => v.toString(16).padStart(2, "0")).join("")}`);
  }
  return parts.join(",");
}
