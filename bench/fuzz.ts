/**
 * Fuzzes the incoming side's loader (`loadStream`).
 *
 *   deno task fuzz -- --iterations 1000000 [--seed 1] [--json]
 *
 * Valid streams (hand-built ones per docs/ARCHITECTURE.md "Stream format" and one written by ferry's own
 * source) are mutated — bit flips, bytes set to extremes, truncations, length
 * and count fields set to extremes, sections repeated, reordered and spliced,
 * block names made huge — and fed in-process, over memory channels delivering
 * random chunk sizes, to `loadStream` with a small guest whose RAM starts as a
 * canary pattern. Every iteration must end with a StreamError or a successful
 * load (never another exception), within a time limit, without memory growth
 * beyond a bound proportional to guest RAM, and with every changed RAM page
 * accounted for by the stream itself: a page may change only if some RAM record
 * header in the stream addresses it, and then only to zeros, a 4 KiB window of
 * the stream (an XBZRLE record may patch its page with anything it decodes to).
 *
 * As a CLI the loop runs in a worker watched by the main thread, so a synchronous
 * hang is caught too. Exits 1 when anything was found.
 */
import { parseArgs } from "node:util";
import { Engine } from "../engine/engine.ts";
import { StreamError, StreamReader } from "../engine/format/reader.ts";
import { xbzrleEncode } from "../engine/format/xbzrle.ts";
import { loadStream } from "../engine/incoming.ts";
import { MIG_CMD_OPEN_RETURN_PATH } from "../engine/return_path.ts";
import { channelPair, MemoryTransports } from "../transports/memory.ts";
import type { Channel, Listener, Transports } from "../transports/transport.ts";
import { PAGE_SIZE } from "../vm/ram.ts";
import {
  buildValidStream,
  F,
  pageData,
  SMALL_BLOCKS,
  StreamBuilder,
  T,
  TEST_GUEST_VMDESC,
} from "../testing/stream_builder.ts";
import { TestGuest } from "../testing/test_guest.ts";

/** Options of {@link runFuzz}. */
export interface FuzzOptions {
  iterations: number;
  seed: number;
  /** One iteration may take at most this long (default 2000 ms). */
  timeoutMs?: number;
  /** Called every 1024 iterations and at the end (the CLI's heartbeat). */
  onProgress?: (done: number, mutation: string) => void;
  /** Called before each iteration with its number (the CLI records it for hang reports). */
  onIteration?: (i: number) => void;
}

/** One kind of problem the fuzzer found, with its first example. */
export interface Finding {
  kind: "exception" | "hang" | "ram" | "memory";
  message: string;
  count: number;
  iteration: number;
  mutation: string;
  /** The offending stream, base64 (first example only). */
  stream: string;
}

/** What a fuzz run found. */
export interface FuzzResult {
  iterations: number;
  /** Mutated streams the loader accepted whole. */
  accepted: number;
  /** Mutated streams rejected with a StreamError. */
  rejected: number;
  /** Iterations per mutation. */
  mutations: Record<string, number>;
  /** The valid streams mutated (those this loader accepts unmutated). */
  seeds: string[];
  findings: Finding[];
  /** Guest RAM, bytes. */
  guestRam: number;
  /**
   * Bound on retained memory growth (heap + external after a full GC every 1024
   * iterations, over the level after warm-up): 32 MiB + 64 × guest RAM.
   */
  memoryBound: number;
  /** Bound on any single sample (a transient allocation): 256 MiB + 1024 × guest RAM. */
  spikeBound: number;
  /** Largest retained growth seen, bytes. */
  peakGrowth: number;
  /** Largest single sample over the baseline, bytes. */
  peakSpike: number;
  /** True when retained memory was measured after full GCs (needs --expose-gc). */
  memoryChecked: boolean;
  durationMs: number;
}

/** Reader buffer: the loader never needs more than 64 KiB at once. */
const READER_BUFFER = 256 << 10;

/**
 * A StreamReader over one buffer reused by every iteration, so the fuzzer itself
 * allocates little and memory growth measures the loader.
 */
class ReusedReader extends StreamReader {
  constructor(channel: Channel, buffer: Uint8Array) {
    super(channel, 1);
    this.buf = buffer;
    this.view = new DataView(buffer.buffer, buffer.byteOffset, buffer.byteLength);
  }
}

// ---- seeds --------------------------------------------------------------------------

interface Seed {
  name: string;
  bytes: Uint8Array;
  /** Record and section boundaries (where structure starts), if known. */
  readonly boundaries: readonly number[];
  /** The RAM image (per block) loading the unmutated stream must produce, if known. */
  readonly expected?: readonly Uint8Array[];
}

function imageOf(pages: ReadonlyMap<string, ReadonlyMap<number, Uint8Array>>): Uint8Array[] {
  return SMALL_BLOCKS.map(([name, len]) => {
    const img = new Uint8Array(len);
    for (const [p, data] of pages.get(name) ?? []) img.set(data, p * PAGE_SIZE);
    return img;
  });
}

function withReturnPath(full: Uint8Array, at: number): Uint8Array {
  return new StreamBuilder().raw(full.subarray(0, at)).u8(T.COMMAND)
    .be16(MIG_CMD_OPEN_RETURN_PATH).be16(0).raw(full.subarray(at)).build();
}

/** A stream with an XBZRLE record patching page 1 of pc.ram (decoded against the PAGE before it). */
function xbzrleSeed(): Seed {
  const b = new StreamBuilder();
  b.header().configuration().ramStart(0, SMALL_BLOCKS);
  const old = pageData(1);
  const cur = old.slice();
  for (let i = 0; i < PAGE_SIZE; i += 97) cur[i] ^= 0x5a;
  const enc = new Uint8Array(PAGE_SIZE);
  const n = xbzrleEncode(old, cur, enc);
  b.part(0);
  b.page(PAGE_SIZE, "pc.ram", old);
  b.ramHeader(PAGE_SIZE, F.XBZRLE | F.CONTINUE).u8(1).be16(n).raw(enc.subarray(0, n)).mark();
  b.ramHeader(3 * PAGE_SIZE, F.XBZRLE, "vga.vram").u8(1).be16(n).raw(enc.subarray(0, n)).mark();
  b.eos().footer(0).end(0).eos().footer(0).vcpu(1, 5n).eof().vmdescription(TEST_GUEST_VMDESC);
  return { name: "hand-built with XBZRLE", bytes: b.build(), boundaries: [...b.boundaries] };
}

/** Transports that record what the source writes (to capture a real stream). */
class Tap implements Transports {
  readonly chunks: Uint8Array[] = [];
  constructor(readonly inner: MemoryTransports) {}
  validate(uri: string): void {
    this.inner.validate(uri);
  }
  listen(uri: string): Promise<Listener> {
    return this.inner.listen(uri);
  }
  async connect(uri: string, signal?: AbortSignal): Promise<Channel> {
    const ch = await this.inner.connect(uri, signal);
    const chunks = this.chunks;
    return {
      get closed() {
        return ch.closed;
      },
      peer: ch.peer,
      write(chunk: Uint8Array) {
        chunks.push(chunk.slice());
        return ch.write(chunk);
      },
      read: (buf) => ch.read(buf),
      finish: () => ch.finish(),
      close: () => ch.close(),
      [Symbol.dispose]: () => ch.close(),
    };
  }
}

/** The stream ferry's own source writes for a small guest (over tcp:, so with the return path). */
async function realSeed(): Promise<Seed> {
  const memory = new MemoryTransports();
  const tap = new Tap(memory);
  const src = new TestGuest(SMALL_BLOCKS.map(([n, l]) => [n, l]));
  for (const p of [0, 2, 3, 7]) src.write(p * PAGE_SIZE, pageData(p + 40));
  src.write(2 * PAGE_SIZE, pageData(9), 1);
  src.counter = 77n;
  src.start();
  const dst = new TestGuest(SMALL_BLOCKS.map(([n, l]) => [n, l]));
  const srcEngine = new Engine({ guest: src, transports: tap });
  const dstEngine = new Engine({ guest: dst, transports: memory });
  try {
    srcEngine.setParameters({ max_bandwidth: 1 << 30 });
    await dstEngine.listenIncoming("tcp:fuzz:1");
    srcEngine.migrate("tcp:fuzz:1");
    await srcEngine.migration!.done;
    await dstEngine.incoming!.done;
    if (srcEngine.current().status !== "completed") {
      throw new Error(`seed migration ${srcEngine.current().error_desc}`);
    }
  } finally {
    await srcEngine.close();
    await dstEngine.close();
  }
  const all = concat(tap.chunks);
  return {
    name: "written by ferry",
    bytes: all.subarray(0, all.length - 5),
    boundaries: [],
    expected: src.blocks.map((b) => b.bytes.slice()),
  };
}

/**
 * The seed streams this loader accepts (e.g. XBZRLE only once it decodes XBZRLE).
 * Each is first loaded unmutated into a canary-filled guest; a seed whose known
 * RAM image does not come out exactly is a finding (`problems`).
 */
async function seeds(problems: string[]): Promise<Seed[]> {
  const valid = buildValidStream();
  const afterStart = new StreamBuilder().header().configuration().ramStart(0, SMALL_BLOCKS).offset;
  const list: Seed[] = [
    {
      name: "hand-built",
      bytes: valid.bytes,
      boundaries: valid.boundaries,
      expected: imageOf(valid.pages),
    },
    {
      name: "hand-built with return path",
      bytes: withReturnPath(valid.bytes, afterStart),
      boundaries: valid.boundaries.map((b) => (b >= afterStart ? b + 5 : b)),
      expected: imageOf(valid.pages),
    },
    xbzrleSeed(),
    await realSeed(),
  ];
  const usable: Seed[] = [];
  for (const s of list) {
    const guest = new TestGuest(SMALL_BLOCKS.map(([n, l]) => [n, l]));
    for (const b of guest.blocks) {
      for (let i = 0; i < b.length; i++) b.bytes[i] = canaryByte(7, i);
      b.touchAll();
    }
    const reader = new StreamReader(bytesChannel(s.bytes, Infinity), READER_BUFFER);
    const ok = await loadStream(reader, guest).then(() => true, () => false);
    if (!ok) continue;
    usable.push(s);
    guest.blocks.forEach((b, k) => {
      const want = s.expected?.[k];
      if (!want) return;
      for (let p = 0; p < b.pages; p++) {
        const off = p * PAGE_SIZE;
        for (let i = off; i < off + PAGE_SIZE; i++) {
          if (b.bytes[i] !== want[i]) {
            problems.push(
              `valid seed "${s.name}" loads wrongly: page ${p} of "${b.name}" differs from the source at byte ${
                i - off
              }`,
            );
            return;
          }
        }
      }
    });
  }
  if (usable.length === 0) {
    throw new Error("no seed stream loads: the loader rejects valid streams");
  }
  return usable;
}

// ---- mutations ----------------------------------------------------------------------

type Rand = () => number;

function prng(seed: number): Rand {
  let x = (seed >>> 0) || 0x2545f491;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 0x100000000;
  };
}

const int = (r: Rand, n: number) => Math.floor(r() * n);
const EXTREMES = [0x00, 0xff, 0x7f, 0x80, 0x01, 0xfe];

function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

/** A position where structure starts (a boundary, a little after one), or anywhere. */
function structuralPos(r: Rand, s: Seed, len: number): number {
  if (s.boundaries.length > 0 && r() < 0.8) {
    return Math.min(len - 1, s.boundaries[int(r, s.boundaries.length)] + int(r, 14));
  }
  return int(r, len);
}

/** Offsets of the block names in `bytes` (a u8 length followed by a known name). */
function namePositions(bytes: Uint8Array): number[] {
  const out: number[] = [];
  for (const [name] of SMALL_BLOCKS) {
    const pat = new TextEncoder().encode(name);
    for (let i = 1; i + pat.length <= bytes.length; i++) {
      if (bytes[i - 1] !== pat.length || bytes[i] !== pat[0]) continue;
      let k = 1;
      while (k < pat.length && bytes[i + k] === pat[k]) k++;
      if (k === pat.length) out.push(i - 1);
    }
  }
  return out;
}

type Mutator = (r: Rand, b: Uint8Array, s: Seed, all: Seed[]) => Uint8Array;

const MUTATORS: Record<string, Mutator> = {
  "bit flips": (r, b) => {
    const out = b.slice();
    for (let n = 1 + int(r, 8); n > 0; n--) out[int(r, out.length)] ^= 1 << int(r, 8);
    return out;
  },
  "random bytes": (r, b) => {
    const out = b.slice();
    for (let n = 1 + int(r, 4); n > 0; n--) out[int(r, out.length)] = int(r, 256);
    return out;
  },
  truncation: (r, b, s) => b.slice(0, r() < 0.5 ? structuralPos(r, s, b.length) : int(r, b.length)),
  "field set to an extreme": (r, b, s) => {
    // A 1-, 2-, 4- or 8-byte field at a structural position: lengths, counts,
    // offsets, ids, versions become 0, all ones, 0x7f…, 0x80….
    const out = b.slice();
    const width = [1, 2, 4, 8][int(r, 4)];
    const at = structuralPos(r, s, out.length);
    const ext = EXTREMES[int(r, EXTREMES.length)];
    for (let i = 0; i < width && at + i < out.length; i++) {
      out[at + i] = i === 0 ? ext : (ext === 0x7f || ext === 0x80 ? (ext ^ 0x80) | 0x7f : ext);
    }
    return out;
  },
  "section repeated": (r, b, s) => {
    const bs = s.boundaries.length >= 2 ? s.boundaries : [int(r, b.length), int(r, b.length)];
    let i = int(r, bs.length);
    let j = int(r, bs.length);
    if (i > j) [i, j] = [j, i];
    const from = Math.min(bs[i], b.length);
    const to = Math.min(Math.max(bs[j], from + 1), b.length);
    return concat([b.subarray(0, to), b.subarray(from, to), b.subarray(to)]);
  },
  "sections reordered": (r, b, s) => {
    const bs = s.boundaries.length >= 3
      ? s.boundaries
      : [0, int(r, b.length), int(r, b.length), b.length].sort((x, y) => x - y);
    const i = int(r, bs.length - 2);
    const [x, y, z] = [bs[i], bs[i + 1], bs[i + 2]].map((v) => Math.min(v, b.length));
    return concat([b.subarray(0, x), b.subarray(y, z), b.subarray(x, y), b.subarray(z)]);
  },
  "huge block name": (r, b) => {
    const names = namePositions(b);
    if (names.length === 0) return b;
    const at = names[int(r, names.length)];
    const old = b[at];
    const len = r() < 0.7 ? 255 : int(r, 256);
    const name = new Uint8Array(1 + len);
    name[0] = len;
    for (let i = 1; i <= len; i++) name[i] = r() < 0.5 ? 0x41 + int(r, 26) : int(r, 256);
    return concat([b.subarray(0, at), name, b.subarray(at + 1 + old)]);
  },
  "spliced streams": (r, b, _s, all) => {
    const other = all[int(r, all.length)].bytes;
    return concat([b.subarray(0, int(r, b.length)), other.subarray(int(r, other.length))]);
  },
  "garbage appended": (r, b) => {
    const tail = new Uint8Array(1 + int(r, 64));
    for (let i = 0; i < tail.length; i++) tail[i] = int(r, 256);
    return concat([b, tail]);
  },
};
const MUTATION_NAMES = Object.keys(MUTATORS);

// ---- delivery -----------------------------------------------------------------------

/** A read-only channel serving `bytes` at most `chunk` at a time, then end of stream. */
function bytesChannel(bytes: Uint8Array, chunk: number): Channel {
  let pos = 0;
  let closed = false;
  return {
    peer: "fuzz:",
    get closed() {
      return closed;
    },
    read(buf: Uint8Array): Promise<number | null> {
      if (closed) return Promise.reject(new Error("fuzz channel closed"));
      if (pos >= bytes.length) return Promise.resolve(null);
      const n = Math.min(buf.length, chunk, bytes.length - pos);
      buf.set(bytes.subarray(pos, pos + n));
      pos += n;
      return Promise.resolve(n);
    },
    write: () => Promise.reject(new Error("read-only")),
    finish: () => Promise.resolve(),
    close() {
      closed = true;
    },
    [Symbol.dispose]() {
      closed = true;
    },
  };
}

/** Delivers `bytes` over a memory channel pair with a small buffer (real backpressure). */
function memoryChannel(bytes: Uint8Array, chunk: number): { reader: Channel; done: Promise<void> } {
  const [writer, reader] = channelPair(4096);
  const done = (async () => {
    try {
      for (let off = 0; off < bytes.length; off += chunk) {
        await writer.write(bytes.subarray(off, off + chunk));
      }
      await writer.finish();
    } catch {
      // The loader stopped reading (it rejected the stream) and closed its end.
    }
  })();
  return { reader, done };
}

/** Read sizes: mostly large, sometimes tiny (every field straddles reads; slower). */
function pickChunk(x: number): number {
  if (x < 0.03) return 1;
  if (x < 0.08) return 3;
  if (x < 0.15) return 8;
  if (x < 0.3) return 100;
  if (x < 0.5) return 4096;
  if (x < 0.7) return 65536;
  return Infinity;
}

// ---- the oracle ---------------------------------------------------------------------

function canaryByte(block: number, i: number): number {
  return (((i * 2654435761) >>> 13) ^ (block * 0x9d) ^ (i >>> 12)) & 0xff || 0xa5;
}

function fillCanary(guest: TestGuest, canary: Uint8Array[]): void {
  guest.blocks.forEach((b, k) => {
    b.bytes.set(canary[k]);
    b.touchAll();
    b.dirty.fill(0);
  });
  guest.counter = 0xcafen;
  guest.setRunState("inmigrate");
}

function indexOf(hay: Uint8Array, needle: Uint8Array, from = 0): number {
  if (needle.length === 0) return 0;
  const first = needle[0];
  const last = hay.length - needle.length;
  outer: for (
    let i = hay.indexOf(first, from);
    i !== -1 && i <= last;
    i = hay.indexOf(first, i + 1)
  ) {
    for (let k = 1; k < needle.length; k++) if (hay[i + k] !== needle[k]) continue outer;
    return i;
  }
  return -1;
}

/**
 * Pages some RAM record header in `bytes` addresses, per block: a be64 whose flag
 * bits are ZERO, PAGE or XBZRLE (with or without CONTINUE) and whose offset is a
 * page inside the block. A record naming its block must name this block; a
 * CONTINUE record may mean any block.
 */
function addressable(
  bytes: Uint8Array,
  guest: TestGuest,
): { any: Set<number>[]; xbzrle: Set<number>[] } {
  const any = guest.blocks.map(() => new Set<number>());
  const xbzrle = guest.blocks.map(() => new Set<number>());
  const names = guest.blocks.map((b) => new TextEncoder().encode(b.name));
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let p = 0; p + 8 <= bytes.length; p++) {
    const lo = v.getUint32(p + 4);
    const flags = lo & 0xfff;
    const kind = flags & ~F.CONTINUE;
    if (kind !== F.ZERO && kind !== F.PAGE && kind !== F.XBZRLE) continue;
    const hi = v.getUint32(p);
    const addr = hi * 0x100000000 + (lo - flags);
    guest.blocks.forEach((b, k) => {
      if (addr + PAGE_SIZE > b.length) return;
      if (!(flags & F.CONTINUE)) {
        const n = names[k];
        if (bytes[p + 8] !== n.length) return;
        for (let i = 0; i < n.length; i++) if (bytes[p + 9 + i] !== n[i]) return;
      }
      any[k].add(addr / PAGE_SIZE);
      if (kind === F.XBZRLE) xbzrle[k].add(addr / PAGE_SIZE);
    });
  }
  return { any, xbzrle };
}

/** Describes the first RAM page whose change the stream does not account for, or null. */
function ramViolation(
  guest: TestGuest,
  canary: Uint8Array[],
  bytes: Uint8Array,
): string | null {
  let sets: ReturnType<typeof addressable> | null = null;
  for (let k = 0; k < guest.blocks.length; k++) {
    const b = guest.blocks[k];
    if (b.bytes.length !== canary[k].length) return `block "${b.name}" changed size`;
    for (let page = 0; page < b.pages; page++) {
      const off = page * PAGE_SIZE;
      const got = b.bytes.subarray(off, off + PAGE_SIZE);
      const was = canary[k].subarray(off, off + PAGE_SIZE);
      let same = true;
      let zero = true;
      for (let i = 0; i < PAGE_SIZE; i++) {
        if (got[i] !== was[i]) same = false;
        if (got[i] !== 0) zero = false;
      }
      if (same) continue;
      sets ??= addressable(bytes, guest);
      if (!sets.any[k].has(page)) {
        return `page ${page} of "${b.name}" changed, but no record in the stream addresses it`;
      }
      if (zero || indexOf(bytes, got) !== -1) continue;
      // An XBZRLE record patches whatever the page held (maybe a page loaded just
      // before it): its content is not checked, only that the stream addressed it.
      if (sets.xbzrle[k].has(page)) continue;
      return `page ${page} of "${b.name}" holds bytes that are neither zeros nor a page of the stream`;
    }
  }
  return null;
}

// ---- the loop -----------------------------------------------------------------------

function toBase64(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

function memoryNow(): number {
  const m = Deno.memoryUsage();
  return m.heapUsed + m.external;
}

/** Runs the fuzzer in this thread (async hangs are caught; see the CLI for synchronous ones). */
export async function runFuzz(opts: FuzzOptions): Promise<FuzzResult> {
  const t0 = performance.now();
  const r = prng(opts.seed);
  const seedProblems: string[] = [];
  const all = await seeds(seedProblems);
  const guest = new TestGuest(SMALL_BLOCKS.map(([n, l]) => [n, l]));
  const guestRam = guest.blocks.reduce((n, b) => n + b.length, 0);
  // Bound: a fixed allowance for the runtime and GC slack, plus 64× guest RAM.
  const memoryBound = (32 << 20) + 64 * guestRam;
  const spikeBound = (256 << 20) + 1024 * guestRam;
  const canary = guest.blocks.map((b, k) => {
    const c = new Uint8Array(b.length);
    for (let i = 0; i < c.length; i++) c[i] = canaryByte(k, i);
    return c;
  });
  const timeoutMs = opts.timeoutMs ?? 2000;
  const findings = new Map<string, Finding>();
  const result: FuzzResult = {
    iterations: 0,
    accepted: 0,
    rejected: 0,
    mutations: {},
    seeds: all.map((s) => s.name),
    findings: [],
    guestRam,
    memoryBound,
    spikeBound,
    peakGrowth: 0,
    peakSpike: 0,
    memoryChecked: false,
    durationMs: 0,
  };
  const report = (f: Omit<Finding, "count" | "stream">, bytes: Uint8Array) => {
    const key = `${f.kind}:${f.message.replace(/0x[0-9a-f]+|\d+/g, "N")}`;
    const seen = findings.get(key);
    if (seen) seen.count++;
    else findings.set(key, { ...f, count: 1, stream: toBase64(bytes) });
  };
  for (const message of seedProblems) {
    report({ kind: "ram", message, iteration: -1, mutation: "none" }, new Uint8Array());
  }
  // Retained memory is measured after a full GC, which needs --v8-flags=--expose-gc
  // (the fuzz task passes it); without it only bursts are checked.
  const gc = (globalThis as { gc?: () => void }).gc;
  result.memoryChecked = gc !== undefined;
  let baseline = memoryNow();
  let mutation = "";
  const readerBuffer = new Uint8Array(READER_BUFFER);
  for (let i = 0; i < opts.iterations; i++) {
    opts.onIteration?.(i);
    const seed = all[int(r, all.length)];
    let bytes = seed.bytes;
    const names: string[] = [];
    for (let n = 1 + (r() < 0.3 ? int(r, 3) : 0); n > 0; n--) {
      const m = MUTATION_NAMES[int(r, MUTATION_NAMES.length)];
      names.push(m);
      bytes = MUTATORS[m](r, bytes, seed, all);
    }
    mutation = names.join(" + ");
    for (const m of names) result.mutations[m] = (result.mutations[m] ?? 0) + 1;
    fillCanary(guest, canary);
    const chunk = pickChunk(r());
    const useMemory = chunk !== Infinity && chunk >= 8 && r() < 0.25;
    const delivery = useMemory ? memoryChannel(bytes, chunk) : null;
    const channel = delivery?.reader ?? bytesChannel(bytes, chunk);
    let timer: ReturnType<typeof setTimeout> | undefined;
    let settle: (v: "hang" | "done") => void = () => {};
    const hang = new Promise<"hang" | "done">((resolve) => {
      settle = resolve;
      timer = setTimeout(() => resolve("hang"), timeoutMs);
    });
    let outcome: unknown;
    try {
      outcome = await Promise.race([
        loadStream(new ReusedReader(channel, readerBuffer), guest).then(() => "ok"),
        hang,
      ]);
    } catch (e) {
      outcome = e;
    } finally {
      clearTimeout(timer);
      settle("done"); // a settled race promise keeps nothing alive
      channel.close();
    }
    await delivery?.done;
    result.iterations++;
    if (outcome === "ok") result.accepted++;
    else if (outcome === "hang") {
      report(
        { kind: "hang", message: `no result within ${timeoutMs} ms`, iteration: i, mutation },
        bytes,
      );
    } else if (outcome instanceof StreamError) result.rejected++;
    else {
      const e = outcome as Error;
      report(
        {
          kind: "exception",
          message: `${e?.name ?? typeof e}: ${e?.message ?? e}`,
          iteration: i,
          mutation,
        },
        bytes,
      );
    }
    const violation = ramViolation(guest, canary, bytes);
    if (violation) report({ kind: "ram", message: violation, iteration: i, mutation }, bytes);
    if ((i & 15) === 15 && i > 1023) {
      // Any sample (garbage included) against the level after warm-up: a burst.
      const growth = memoryNow() - baseline;
      result.peakSpike = Math.max(result.peakSpike, growth);
      if (growth > spikeBound) {
        report({
          kind: "memory",
          message: `one allocation burst exceeded ${spikeBound} bytes`,
          iteration: i,
          mutation,
        }, bytes);
      }
    }
    if ((i & 1023) === 1023 && gc) {
      // What survives a full GC is what the loader retains.
      gc();
      const growth = memoryNow() - baseline;
      if (i === 1023) baseline = memoryNow(); // after warm-up (JIT, seeds)
      else {
        result.peakGrowth = Math.max(result.peakGrowth, growth);
        if (growth > memoryBound) {
          report({
            kind: "memory",
            message: `retained memory grew by more than ${memoryBound} bytes`,
            iteration: i,
            mutation,
          }, bytes);
        }
      }
    }
    if ((i & 1023) === 1023 || i === opts.iterations - 1) opts.onProgress?.(i + 1, mutation);
  }
  result.findings = [...findings.values()];
  result.durationMs = performance.now() - t0;
  return result;
}

// ---- CLI: the loop in a worker, watched for synchronous hangs -------------------------

interface WorkerStart {
  iterations: number;
  seed: number;
  heartbeat: SharedArrayBuffer;
}

function inWorker(): boolean {
  return typeof (globalThis as { WorkerGlobalScope?: unknown }).WorkerGlobalScope !== "undefined";
}

if (inWorker()) {
  const scope = globalThis as unknown as {
    onmessage: ((e: MessageEvent<WorkerStart>) => void) | null;
    postMessage(m: unknown): void;
  };
  scope.onmessage = async (e) => {
    const beat = new Int32Array(e.data.heartbeat);
    const result = await runFuzz({
      iterations: e.data.iterations,
      seed: e.data.seed,
      onIteration: (i) => Atomics.store(beat, 0, i),
      onProgress: (done) => Atomics.store(beat, 1, done),
    });
    scope.postMessage(result);
  };
} else if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args[0] === "--" ? Deno.args.slice(1) : Deno.args,
    options: {
      iterations: { type: "string", default: "100000" },
      seed: { type: "string", default: "1" },
      "hang-ms": { type: "string", default: "10000" },
      json: { type: "boolean", default: false },
    },
  });
  const iterations = Number(values.iterations);
  const seed = Number(values.seed);
  const hangMs = Number(values["hang-ms"]);
  console.log(`fuzz: ${iterations} iterations, seed ${seed}`);
  const heartbeat = new SharedArrayBuffer(8);
  const beat = new Int32Array(heartbeat);
  const worker = new Worker(import.meta.url, { type: "module" });
  const done = new Promise<FuzzResult>((resolve) => {
    worker.onmessage = (e: MessageEvent<FuzzResult>) => resolve(e.data);
  });
  worker.postMessage({ iterations, seed, heartbeat } satisfies WorkerStart);
  let last = -1;
  let since = performance.now();
  let nextReport = 50_000;
  let result: FuzzResult | null = null;
  while (!result) {
    result = await Promise.race([done, new Promise<null>((r) => setTimeout(() => r(null), 1000))]);
    if (result) break;
    const now = Atomics.load(beat, 0);
    if (now !== last) {
      last = now;
      since = performance.now();
    } else if (performance.now() - since > hangMs) {
      worker.terminate();
      const message = `iteration ${now} (seed ${seed}) made no progress for ${hangMs} ms`;
      console.log(`HANG: ${message}`);
      if (values.json) {
        console.log(JSON.stringify({ iterations: now, findings: [{ kind: "hang", message }] }));
      }
      Deno.exit(1);
    }
    const progressed = Atomics.load(beat, 1);
    if (progressed >= nextReport) {
      console.log(`  ${progressed} iterations`);
      nextReport = (Math.floor(progressed / 50_000) + 1) * 50_000;
    }
  }
  worker.terminate();
  const r = result;
  console.log(`
fuzz finished in ${(r.durationMs / 1000).toFixed(1)} s (seed ${seed})
  iterations         ${r.iterations}
  accepted           ${r.accepted}   (mutated streams that still loaded whole)
  rejected           ${r.rejected}   (StreamError naming the offset)
  findings           ${r.findings.length}
  memory             retained growth ${
    r.memoryChecked
      ? `≤ ${(r.peakGrowth / 2 ** 20).toFixed(1)} MiB`
      : "not measured (no --expose-gc)"
  } (bound ${(r.memoryBound / 2 ** 20).toFixed(1)} MiB), largest sample ${
    (r.peakSpike / 2 ** 20).toFixed(1)
  } MiB (bound ${(r.spikeBound / 2 ** 20).toFixed(0)} MiB); guest RAM ${r.guestRam / 1024} KiB
  seeds              ${r.seeds.join(", ")}
  mutations          ${JSON.stringify(r.mutations)}`);
  for (const f of r.findings) {
    console.log(
      `  FINDING ${f.kind} ×${f.count}: ${f.message} (first at iteration ${f.iteration}, ${f.mutation}; stream base64 ${
        f.stream.slice(0, 80)
      }…)`,
    );
  }
  if (values.json) console.log(JSON.stringify(r));
  Deno.exit(r.findings.length === 0 ? 0 : 1);
}
