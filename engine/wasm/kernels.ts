/**
 * The byte-crunching kernels of the RAM hot path — XBZRLE encode/decode,
 * zero-page scans and content digests — behind one interface with two implementations: WebAssembly
 * SIMD (engine/wasm/kernels.wat) and pure TypeScript (the reference codec of
 * engine/format/xbzrle.ts). Both give byte-identical results; the tests compare them.
 *
 * WebAssembly only reaches its own linear memory, so every kernel set owns a
 * region of it (`arena`, plus a scratch page `scratch`): buffers placed there are
 * used in place, anything else is copied in and out. The XBZRLE page cache keeps
 * its pages in the arena and its snapshot in `scratch`, so encoding a page copies
 * nothing but the encoding itself out.
 */
import { PAGE_SIZE } from "../format/constants.ts";
import { xbzrleDecode, xbzrleEncode, XbzrleError } from "../format/xbzrle.ts";
import { KERNELS_WASM_BASE64 } from "./kernels_wasm.ts";

/** Which implementation a kernel set uses. */
export const KernelKind = { WASM: "wasm", TS: "ts" } as const;
/** Which implementation a kernel set uses. */
export type KernelKind = (typeof KernelKind)[keyof typeof KernelKind];

/** The hot-path kernels; every method behaves identically in both implementations. */
export interface Kernels {
  /** The implementation. */
  readonly kind: KernelKind;
  /** Memory for the caller (e.g. the page cache's pages) that the kernels use in place. */
  readonly arena: Uint8Array;
  /** One page of working memory (e.g. a page snapshot) that the kernels use in place. */
  readonly scratch: Uint8Array;
  /** xbzrleEncode() of engine/format/xbzrle.ts: same result, same `dst.length` limit. */
  xbzrleEncode(old: Uint8Array, cur: Uint8Array, dst: Uint8Array, len?: number): number;
  /** xbzrleDecode() of engine/format/xbzrle.ts: same result, same XbzrleError. */
  xbzrleDecode(src: Uint8Array, page: Uint8Array, len?: number): number;
  /** True when every byte of `bytes` is zero. */
  isZero(bytes: Uint8Array): boolean;
  /** Index of the first 4 KiB page of `bytes` holding a non-zero byte, or the page count. */
  firstNonZeroPage(bytes: Uint8Array): number;
  /**
   * The content digest of `buf[pos, pos + len)` (see {@link digestTs}); fastest
   * when `buf` lies in this set's memory (`arena`, `scratch`) and `len` is a
   * multiple of 64.
   */
  digest(buf: Uint8Array, pos: number, len: number): number;
  /** True when `buf` lies in this set's memory, so digest() reads it in place. */
  owns(buf: Uint8Array): boolean;
  /**
   * Moves pages between this set's memory and `ram`, a block of guest RAM held in a
   * shared WebAssembly memory, digesting them on the way; null for the TS kernels
   * or a block without such a memory (then copy and digest apart).
   */
  moverFor(ram: WebAssembly.Memory | null): PageMover | null;
}

/** Copies a page between a kernel set's memory and guest RAM and digests it, in one pass. */
export interface PageMover {
  /** Copies `len` bytes (a multiple of 64) from guest RAM at `ramAt` to the set's memory at `memAt`; their digest. */
  copyDigest(ramAt: number, memAt: number, len: number): number;
  /** Copies `len` bytes (a multiple of 64) from the set's memory at `memAt` to guest RAM at `ramAt`; their digest. */
  digestCopy(memAt: number, ramAt: number, len: number): number;
}

/** Options of createKernels(). */
export interface KernelOptions {
  /** The implementation; default: the one selectedKernelKind() picks. */
  readonly kind?: KernelKind;
  /** Bytes of `arena` (default 0). */
  readonly arenaBytes?: number;
}

/** The bytes of the SIMD kernels module. */
export const KERNELS_WASM: Uint8Array<ArrayBuffer> = (() => {
  const bin = atob(KERNELS_WASM_BASE64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return bytes;
})();

/** True when this engine runs the SIMD module (WebAssembly with the SIMD proposal). */
export const WASM_SIMD_SUPPORTED: boolean = typeof WebAssembly === "object" &&
  WebAssembly.validate(KERNELS_WASM);

let compiled: WebAssembly.Module | null = null;

/**
 * The implementation new kernel sets use: TS when FERRY_KERNELS=ts (readable env
 * only — no permission prompt) or the engine lacks WebAssembly SIMD, else wasm.
 */
export function selectedKernelKind(): KernelKind {
  if (!WASM_SIMD_SUPPORTED) return KernelKind.TS;
  try {
    const env = Deno.permissions.querySync({ name: "env", variable: "FERRY_KERNELS" });
    if (env.state === "granted" && Deno.env.get("FERRY_KERNELS")?.toLowerCase() === "ts") {
      return KernelKind.TS;
    }
  } catch {
    // No Deno.permissions (another runtime): the default stands.
  }
  return KernelKind.WASM;
}

/**
 * A new kernel set with its own `arena` of `arenaBytes`. A wasm set whose arena
 * cannot fit a 32-bit linear memory falls back to TS.
 */
export function createKernels(options: KernelOptions = {}): Kernels {
  const kind = options.kind ?? selectedKernelKind();
  const arenaBytes = options.arenaBytes ?? 0;
  if (kind === KernelKind.WASM) {
    if (!WASM_SIMD_SUPPORTED) throw new Error("This engine cannot run WebAssembly SIMD kernels");
    if (arenaBytes + ARENA + SLACK <= MAX_MEMORY) return new WasmKernels(arenaBytes);
  }
  return new TsKernels(arenaBytes);
}

let shared: Kernels | null = null;

/** A kernel set without arena for one-off calls (the RAM loader's decode), made on first use. */
export function sharedKernels(): Kernels {
  return shared ??= createKernels();
}

const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/** The pure-TypeScript kernels: the reference codec, and 32-bit-word zero scans. */
class TsKernels implements Kernels {
  readonly kind = KernelKind.TS;
  readonly arena: Uint8Array;
  readonly scratch = new Uint8Array(PAGE_SIZE);

  constructor(arenaBytes: number) {
    this.arena = new Uint8Array(arenaBytes);
  }

  xbzrleEncode(old: Uint8Array, cur: Uint8Array, dst: Uint8Array, len = PAGE_SIZE): number {
    return xbzrleEncode(old, cur, dst, len);
  }

  xbzrleDecode(src: Uint8Array, page: Uint8Array, len = PAGE_SIZE): number {
    return xbzrleDecode(src, page, len);
  }

  isZero(bytes: Uint8Array): boolean {
    const n = bytes.length;
    let i = 0;
    if (LITTLE_ENDIAN && (bytes.byteOffset & 3) === 0 && n >= 32) {
      const words = new Int32Array(bytes.buffer, bytes.byteOffset, n >> 2);
      const nw = words.length & ~7;
      for (let w = 0; w < nw; w += 8) {
        if (
          (words[w] | words[w + 1] | words[w + 2] | words[w + 3] | words[w + 4] | words[w + 5] |
            words[w + 6] | words[w + 7]) !== 0
        ) return false;
      }
      i = nw << 2;
    }
    for (; i < n; i++) if (bytes[i] !== 0) return false;
    return true;
  }

  firstNonZeroPage(bytes: Uint8Array): number {
    const pages = Math.floor(bytes.length / PAGE_SIZE);
    for (let p = 0; p < pages; p++) {
      if (!this.isZero(bytes.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE))) return p;
    }
    return pages;
  }

  digest(buf: Uint8Array, pos: number, len: number): number {
    return digestTs(buf, pos, len);
  }

  owns(buf: Uint8Array): boolean {
    return buf.buffer === this.arena.buffer || buf.buffer === this.scratch.buffer;
  }

  moverFor(): PageMover | null {
    return null;
  }
}

/** Each sum's mixer constants: [shift, multiplier, shift, multiplier, shift]. */
const MIXERS: readonly (readonly [number, number, number, number, number])[] = [
  [16, 0x85ebca6b, 13, 0xc2b2ae35, 16], // a0
  [16, 0x7feb352d, 15, 0x846ca68b, 16], // b0
  [17, 0xed5ad4bb, 11, 0xac4c1b51, 15], // a1
  [15, 0x2c1b3c6d, 12, 0x297a2d39, 15], // b1
  [16, 0x21f0aaad, 15, 0x735a2d97, 15], // a2
  [15, 0xd168aaad, 15, 0xaf723597, 15], // b2
  [16, 0x45d9f3b, 16, 0x45d9f3b, 16], // a3
  [16, 0x9e3779b1, 15, 0x85ebca77, 16], // b3
];

/**
 * ferry's content digest of `buf[pos, pos + len)`, zero-padded to a multiple of
 * 64 bytes: in every 64-byte step, each 16-byte slot k (0-3) adds its four 32-bit
 * little-endian lanes to its own Fletcher pair (`a_k += v; b_k += a_k`); each of
 * the eight sums goes through its own non-linear mixer, so that no change of one
 * sum can cancel a change of another; the mixed sums are xored, the four lanes
 * folded with rotations and finished with murmur3's fmix32. All-zero input
 * digests to 0, and every one-byte change changes the digest. It detects
 * accidental damage as a CRC-32 does; it is not a cryptographic hash. The
 * reference for the SIMD kernel `digest` of kernels.wat.
 */
export function digestTs(buf: Uint8Array, pos: number, len: number): number {
  // sums[2k] = a_k, sums[2k + 1] = b_k, four lanes each.
  const sums = Array.from({ length: 8 }, () => [0, 0, 0, 0]);
  const end = pos + len;
  const lane = (at: number): number =>
    at + 4 <= end
      ? (buf[at] | buf[at + 1] << 8 | buf[at + 2] << 16 | buf[at + 3] << 24)
      : (at < end ? buf[at] : 0) | (at + 1 < end ? buf[at + 1] << 8 : 0) |
        (at + 2 < end ? buf[at + 2] << 16 : 0);
  for (let p = pos; p < end; p += 64) {
    for (let k = 0; k < 4; k++) {
      const a = sums[2 * k], b = sums[2 * k + 1];
      for (let i = 0; i < 4; i++) {
        a[i] = (a[i] + lane(p + 16 * k + 4 * i)) | 0;
        b[i] = (b[i] + a[i]) | 0;
      }
    }
  }
  const x = [0, 1, 2, 3].map((i) => sums.reduce((acc, s, j) => acc ^ mix(s[i], ...MIXERS[j]), 0));
  const rotl = (v: number, r: number) => (v << r) | (v >>> (32 - r));
  const h = x[0] ^ rotl(x[1], 8) ^ rotl(x[2], 16) ^ rotl(x[3], 24);
  return mix(h, 16, 0x85ebca6b, 13, 0xc2b2ae35, 16) >>> 0;
}

/** A 32-bit mixer: a bijection mapping 0 to 0 (the lanes' mixer of kernels.wat). */
function mix(v: number, s1: number, m1: number, s2: number, m2: number, s3: number): number {
  v ^= v >>> s1;
  v = Math.imul(v, m1);
  v ^= v >>> s2;
  v = Math.imul(v, m2);
  return v ^ (v >>> s3);
}

// The wasm memory: a fixed scratch area in the first 64 KiB, then the arena.
/** Copy of `old` when the caller's is not in wasm memory. */
const OLD = 0;
/** `scratch`, and the copy of `cur` when the caller's is elsewhere. */
const CUR = 4096;
/** Copy of the page being decoded. */
const PAGE = 8192;
/** Copy of the encoding being decoded. */
const SRC = 12288;
const SRC_CAP = 8192;
/** Encoder output; 16 bytes of slack follow (the encoder writes whole vectors). */
const OUT = 20480;
/**
 * Room given to the encoder. An encoding of PAGE_SIZE bytes never exceeds 1.5 x
 * PAGE_SIZE + 4, so a caller's `dst` of OUT_CAP bytes or more is never the limit.
 */
const OUT_CAP = 8192;
/** Zero scans of buffers outside wasm memory copy them in through here. */
const SCAN = 32768;
const SCAN_CAP = 32768;
/** Start of the arena. */
const ARENA = 65536;
/** Readable bytes past the arena (vector reads may run 15 bytes past a buffer). */
const SLACK = 64;
const WASM_PAGE = 65536;
const MAX_MEMORY = 65536 * WASM_PAGE;

/** Messages of the decoder's error codes (xbzrle_decode returns -code). */
const DECODE_ERRORS = [
  "",
  "encoding ends inside a run pair",
  "run length cut off",
  "run length longer than two bytes",
  "empty unchanged run",
  "", // output past len: built with len
  "encoding ends before a changed run",
  "empty changed run",
  "changed run past the end of the encoding",
] as const;

interface KernelExports {
  readonly err_pos: WebAssembly.Global;
  copy_digest(src: number, dst: number, len: number): number;
  digest_copy(src: number, dst: number, len: number): number;
  xbzrle_encode(old: number, cur: number, dst: number, dlen: number, len: number): number;
  xbzrle_decode(src: number, slen: number, page: number, len: number, apply: number): number;
  is_zero(p: number, len: number): number;
  first_nonzero_page(p: number, npages: number): number;
  digest(p: number, len: number): number;
}

/** The guest RAM an instance bound to no block imports: one shared page. */
let standIn: WebAssembly.Memory | null = null;

function instantiate(memory: WebAssembly.Memory, ram: WebAssembly.Memory): KernelExports {
  compiled ??= new WebAssembly.Module(KERNELS_WASM);
  const instance = new WebAssembly.Instance(compiled, { env: { memory, ram } });
  return instance.exports as unknown as KernelExports;
}

/** The SIMD kernels: one instance with its own memory (scratch area + arena). */
class WasmKernels implements Kernels {
  readonly kind = KernelKind.WASM;
  readonly arena: Uint8Array;
  readonly scratch: Uint8Array;
  readonly #memory: WebAssembly.Memory;
  readonly #mem: Uint8Array;
  readonly #buffer: ArrayBufferLike;
  readonly #x: KernelExports;
  /** One instance per block of guest RAM it moves pages to and from. */
  readonly #movers = new WeakMap<WebAssembly.Memory, PageMover>();

  constructor(arenaBytes: number) {
    const memory = new WebAssembly.Memory({
      initial: Math.ceil((ARENA + arenaBytes + SLACK) / WASM_PAGE),
    });
    standIn ??= new WebAssembly.Memory({ initial: 1, maximum: 1, shared: true });
    this.#memory = memory;
    this.#x = instantiate(memory, standIn);
    // The memory never grows, so these views stay valid for the instance's life.
    this.#buffer = memory.buffer;
    this.#mem = new Uint8Array(this.#buffer);
    this.arena = this.#mem.subarray(ARENA, ARENA + arenaBytes);
    this.scratch = this.#mem.subarray(CUR, CUR + PAGE_SIZE);
  }

  xbzrleEncode(old: Uint8Array, cur: Uint8Array, dst: Uint8Array, len = PAGE_SIZE): number {
    if (len > PAGE_SIZE || old.length < len || cur.length < len) {
      return xbzrleEncode(old, cur, dst, len);
    }
    const mem = this.#mem;
    let o = old.byteOffset;
    if (old.buffer !== this.#buffer) {
      mem.set(old.subarray(0, len), OLD);
      o = OLD;
    }
    let c = cur.byteOffset;
    if (cur.buffer !== this.#buffer) {
      mem.set(cur.subarray(0, len), CUR);
      c = CUR;
    }
    const n = this.#x.xbzrle_encode(o, c, OUT, Math.min(dst.length, OUT_CAP), len);
    if (n > 0) dst.set(mem.subarray(OUT, OUT + n));
    return n;
  }

  xbzrleDecode(src: Uint8Array, page: Uint8Array, len = PAGE_SIZE): number {
    const slen = src.length;
    if (len > PAGE_SIZE || slen > SRC_CAP || page.length < len) {
      return xbzrleDecode(src, page, len);
    }
    const mem = this.#mem;
    let s = src.byteOffset;
    if (src.buffer !== this.#buffer) {
      mem.set(src, SRC);
      s = SRC;
    }
    const x = this.#x;
    if (page.buffer === this.#buffer) {
      // In place: validate first so that a bad encoding leaves the page untouched.
      const ok = x.xbzrle_decode(s, slen, page.byteOffset, len, 0);
      if (ok < 0) throw this.#decodeError(ok, len);
      return x.xbzrle_decode(s, slen, page.byteOffset, len, 1);
    }
    // On a copy: one pass; only a good result is copied back.
    mem.set(page.subarray(0, len), PAGE);
    const n = x.xbzrle_decode(s, slen, PAGE, len, 1);
    if (n < 0) throw this.#decodeError(n, len);
    page.set(mem.subarray(PAGE, PAGE + n));
    return n;
  }

  isZero(bytes: Uint8Array): boolean {
    if (bytes.buffer === this.#buffer) return this.#x.is_zero(bytes.byteOffset, bytes.length) === 1;
    for (let off = 0; off < bytes.length; off += SCAN_CAP) {
      const part = bytes.subarray(off, off + SCAN_CAP);
      this.#mem.set(part, SCAN);
      if (this.#x.is_zero(SCAN, part.length) === 0) return false;
    }
    return true;
  }

  firstNonZeroPage(bytes: Uint8Array): number {
    const pages = Math.floor(bytes.length / PAGE_SIZE);
    if (bytes.buffer === this.#buffer) return this.#x.first_nonzero_page(bytes.byteOffset, pages);
    const step = SCAN_CAP / PAGE_SIZE;
    for (let p = 0; p < pages; p += step) {
      const n = Math.min(step, pages - p);
      this.#mem.set(bytes.subarray(p * PAGE_SIZE, (p + n) * PAGE_SIZE), SCAN);
      const found = this.#x.first_nonzero_page(SCAN, n);
      if (found < n) return p + found;
    }
    return pages;
  }

  digest(buf: Uint8Array, pos: number, len: number): number {
    if (buf.buffer === this.#buffer && (len & 63) === 0) {
      return this.#x.digest(buf.byteOffset + pos, len) >>> 0;
    }
    if (len > SCAN_CAP) return digestTs(buf, pos, len);
    // Copied in, zero-padded to the next 64 bytes.
    const padded = (len + 63) & ~63;
    this.#mem.set(buf.subarray(pos, pos + len), SCAN);
    this.#mem.fill(0, SCAN + len, SCAN + padded);
    return this.#x.digest(SCAN, padded) >>> 0;
  }

  owns(buf: Uint8Array): boolean {
    return buf.buffer === this.#buffer;
  }

  moverFor(ram: WebAssembly.Memory | null): PageMover | null {
    if (ram === null) return null;
    let mover = this.#movers.get(ram);
    if (!mover) {
      const x = instantiate(this.#memory, ram);
      mover = {
        copyDigest: (ramAt, memAt, len) => x.copy_digest(ramAt, memAt, len) >>> 0,
        digestCopy: (memAt, ramAt, len) => x.digest_copy(memAt, ramAt, len) >>> 0,
      };
      this.#movers.set(ram, mover);
    }
    return mover;
  }

  #decodeError(code: number, len: number): XbzrleError {
    const at = this.#x.err_pos.value as number;
    return new XbzrleError(at, code === -5 ? `output past ${len} bytes` : DECODE_ERRORS[-code]);
  }
}
