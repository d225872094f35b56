/**
 * Micro-benchmarks of the migration hot path (`deno bench bench/hotpath_bench.ts`):
 * RamSaver into a channel that only drops bytes, RamLoader from a pre-built stream
 * held in memory, and the zero-page scan. 256 MiB guests; every bench reports time
 * per whole guest, so "GB/s" = 0.268 / time in s.
 */
import { RamLoader, RamSaver } from "../engine/sections/ram.ts";
import { StreamWriter } from "../engine/format/writer.ts";
import { StreamReader } from "../engine/format/reader.ts";
import type { Channel } from "../transports/transport.ts";
import { isZeroPage, PAGE_SIZE, RamBlock } from "../vm/ram.ts";
import { createKernels, KernelKind } from "../engine/wasm/kernels.ts";
import { MigrationDigests } from "../engine/integrity.ts";

const SIZE = 256 << 20;

/** A channel that accepts every write at once and keeps nothing. */
class NullChannel implements Channel {
  readonly closed = false;
  readonly peer = "null:";
  written = 0;
  write(chunk: Uint8Array): Promise<void> {
    this.written += chunk.length;
    return Promise.resolve();
  }
  read(_buf: Uint8Array): Promise<number | null> {
    return Promise.resolve(null);
  }
  finish(): Promise<void> {
    return Promise.resolve();
  }
  close(): void {}
  [Symbol.dispose](): void {}
}

/** A channel that keeps a copy of everything written. */
class CollectChannel extends NullChannel {
  readonly chunks: Uint8Array[] = [];
  override write(chunk: Uint8Array): Promise<void> {
    this.chunks.push(chunk.slice());
    return super.write(chunk);
  }
  bytes(): Uint8Array {
    const out = new Uint8Array(this.written);
    let off = 0;
    for (const c of this.chunks) {
      out.set(c, off);
      off += c.length;
    }
    return out;
  }
}

/** A channel that serves a fixed byte string in reads of at most `chunk` bytes (like a socket). */
class ReplayChannel extends NullChannel {
  #off = 0;
  constructor(readonly data: Uint8Array, readonly chunk = 1 << 20) {
    super();
  }
  rewind(): void {
    this.#off = 0;
  }
  override read(buf: Uint8Array): Promise<number | null> {
    if (this.#off >= this.data.length) return Promise.resolve(null);
    const n = Math.min(buf.length, this.chunk, this.data.length - this.#off);
    buf.set(this.data.subarray(this.#off, this.#off + n));
    this.#off += n;
    return Promise.resolve(n);
  }
}

/** Fills a block with xorshift32 noise (fast, deterministic, never a zero page). */
function fillRandom(block: RamBlock): void {
  const w = block.words;
  let x = 0x9e3779b9 | 0;
  for (let i = 0; i < w.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    w[i] = x;
  }
  block.touchAll();
}

const randomBlock = new RamBlock("pc.ram", SIZE);
fillRandom(randomBlock);
const idleBlock = new RamBlock("pc.ram", SIZE);
/** Touched but all zero: every page has to be scanned. */
const scannedZeroBlock = new RamBlock("pc.ram", SIZE);
scannedZeroBlock.touchAll();

/** One writer for every run (as one migration has one): no 8 MiB allocation per run. */
const nullWriter = new StreamWriter(new NullChannel());

async function save(block: RamBlock, w: StreamWriter, verify = false): Promise<void> {
  const saver = new RamSaver(
    [block],
    () => 0,
    verify ? { digests: new MigrationDigests([block]) } : {},
  );
  await saver.setup(w);
  await saver.complete(w);
  await w.drain();
}

async function buildStream(block: RamBlock): Promise<Uint8Array> {
  const ch = new CollectChannel();
  await save(block, new StreamWriter(ch));
  return ch.bytes();
}

const randomStream = await buildStream(randomBlock);
const idleStream = await buildStream(idleBlock);
const dest = new RamBlock("pc.ram", SIZE);
dest.prefault();

/** One reader per stream, rewound before every run. */
const readers = new Map<Uint8Array, StreamReader>();

async function load(stream: Uint8Array, verify = false): Promise<void> {
  let r = readers.get(stream);
  if (!r) readers.set(stream, r = new StreamReader(new ReplayChannel(stream)));
  (r.channel as ReplayChannel).rewind();
  const loader = new RamLoader(
    [dest],
    undefined,
    verify ? new MigrationDigests([dest]) : undefined,
  );
  await loader.load(r, "start");
  await loader.load(r, "part");
}

Deno.bench("save 256 MiB random → null channel", { group: "save", n: 30, warmup: 3 }, async () => {
  await save(randomBlock, nullWriter);
});

Deno.bench(
  "save 256 MiB random → null channel, verify (digests)",
  { group: "save", n: 30, warmup: 3 },
  async () => {
    await save(randomBlock, nullWriter, true);
  },
);

Deno.bench(
  "save 256 MiB idle (untouched) → null channel",
  { group: "save", n: 40, warmup: 3 },
  async () => {
    await save(idleBlock, nullWriter);
  },
);

Deno.bench(
  "save 256 MiB touched zero (scan) → null",
  { group: "save", n: 20, warmup: 2 },
  async () => {
    await save(scannedZeroBlock, nullWriter);
  },
);

Deno.bench(
  "load 256 MiB random stream from memory",
  { group: "load", n: 30, warmup: 3 },
  async () => {
    await load(randomStream);
  },
);

Deno.bench(
  "load 256 MiB random stream from memory, verify (digests)",
  { group: "load", n: 30, warmup: 3 },
  async () => {
    await load(randomStream, true);
  },
);

Deno.bench(
  "load 256 MiB idle stream from memory",
  { group: "load", n: 40, warmup: 3 },
  async () => {
    dest.touched.fill(0);
    await load(idleStream);
  },
);

Deno.bench("isZeroPage over 256 MiB of zero pages", { group: "zero", n: 20, warmup: 2 }, () => {
  const words = scannedZeroBlock.words;
  let zero = 0;
  for (let p = 0; p < SIZE / PAGE_SIZE; p++) if (isZeroPage(words, p * 1024)) zero++;
  if (zero !== SIZE / PAGE_SIZE) throw new Error("isZeroPage wrong");
});

// --- WebAssembly SIMD kernels vs pure TS (engine/wasm/kernels.ts) ---

const wasmKernels = createKernels({ kind: KernelKind.WASM, arenaBytes: SIZE });
const tsKernels = createKernels({ kind: KernelKind.TS });
// Zero pages backed by real memory (a never-written page maps the kernel's one zero
// page, which stays in cache and would flatter whoever reads it).
for (let off = 0; off < SIZE; off += PAGE_SIZE) wasmKernels.arena[off] |= 0;
const faultedZeroBlock = new RamBlock("pc.ram", SIZE);
faultedZeroBlock.prefault();
faultedZeroBlock.touchAll();

Deno.bench(
  "isZeroPage (vm/ram.ts) per page over 256 MiB, prefaulted",
  { group: "zero", n: 20, warmup: 2 },
  () => {
    const words = faultedZeroBlock.words;
    for (let p = 0; p < SIZE / PAGE_SIZE; p++) {
      if (!isZeroPage(words, p * 1024)) throw new Error("isZeroPage wrong");
    }
  },
);

Deno.bench(
  "TS kernels isZero per page over 256 MiB, prefaulted",
  { group: "zero", n: 20, warmup: 2 },
  () => {
    const bytes = faultedZeroBlock.bytes;
    for (let off = 0; off < SIZE; off += PAGE_SIZE) {
      if (!tsKernels.isZero(bytes.subarray(off, off + PAGE_SIZE))) throw new Error("wrong");
    }
  },
);

Deno.bench(
  "wasm firstNonZeroPage over 256 MiB of guest RAM, prefaulted (copied in)",
  { group: "zero", n: 20, warmup: 2 },
  () => {
    if (wasmKernels.firstNonZeroPage(faultedZeroBlock.bytes) !== SIZE / PAGE_SIZE) {
      throw new Error("wrong");
    }
  },
);

Deno.bench(
  "wasm firstNonZeroPage over 256 MiB in wasm memory, prefaulted (no copy)",
  { group: "zero", n: 20, warmup: 2 },
  () => {
    if (wasmKernels.firstNonZeroPage(wasmKernels.arena) !== SIZE / PAGE_SIZE) {
      throw new Error("wrong");
    }
  },
);

/** 64 MiB guest whose every page changes 1 % of its bytes between XBZRLE passes. */
const XB_SIZE = 64 << 20;
const xbPositions = (() => {
  const pos = new Int32Array((XB_SIZE / PAGE_SIZE) * 41);
  let x = 0x2545f491;
  for (let i = 0; i < pos.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    pos[i] = Math.floor(i / 41) * PAGE_SIZE + ((x >>> 0) % PAGE_SIZE);
  }
  return pos;
})();

/** A saver past its bulk stage with the whole guest cached, for `kind` kernels. */
async function xbzrleSaver(kind: KernelKind) {
  const block = new RamBlock("pc.ram", XB_SIZE);
  fillRandom(block);
  const saver = new RamSaver([block], () => 0, { xbzrleCacheSize: XB_SIZE, kernels: kind });
  await saver.setup(nullWriter);
  await saver.complete(nullWriter);
  await nullWriter.drain();
  return { block, saver };
}

for (const kind of [KernelKind.TS, KernelKind.WASM]) {
  const state = await xbzrleSaver(kind);
  Deno.bench(
    `xbzrle pass, 64 MiB, 1 % bytes changed per page (${kind} kernels)`,
    { group: "xbzrle", n: 20, warmup: 3 },
    async () => {
      const { block, saver } = state;
      const bytes = block.bytes;
      for (let i = 0; i < xbPositions.length; i++) bytes[xbPositions[i]] ^= 0x5a;
      block.dirty.fill(0xffffffff);
      await saver.complete(nullWriter);
      await nullWriter.drain();
    },
  );
}
