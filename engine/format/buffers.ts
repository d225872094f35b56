/**
 * Reusable stream buffers. A fresh multi-MiB buffer costs a page fault per 4 KiB
 * the first time it is written (tens of ms per migration on hosts where faults
 * are slow), so writers and readers take their buffers from here and give them
 * back; {@link warmStreamBuffers} faults the pool in at process start.
 *
 * Every buffer lives in the memory of a WebAssembly kernel set (the pool's share
 * one), so the integrity digests of pages read or written in place cost no copy:
 * {@link kernelsFor} names the kernels that read a buffer in place.
 * @module
 */
import { createKernels, type Kernels, sharedKernels } from "../wasm/kernels.ts";

/** Size of every pooled buffer: the writer's and the reader's default. */
export const STREAM_BUFFER_SIZE = 4 << 20;
/** Buffers in the pool (a writer holds two, a reader one). */
const POOL_MAX = 3;

let arena: Kernels | null = null;
let slices: Uint8Array[] = [];
const free: Uint8Array[] = [];
/** The kernels of buffers made outside the pool, by their memory. */
const owners = new WeakMap<ArrayBufferLike, Kernels>();

function pool(): Kernels {
  if (!arena) {
    arena = createKernels({ arenaBytes: POOL_MAX * STREAM_BUFFER_SIZE });
    slices = [];
    for (let i = 0; i < POOL_MAX; i++) {
      slices.push(arena.arena.subarray(i * STREAM_BUFFER_SIZE, (i + 1) * STREAM_BUFFER_SIZE));
    }
    free.push(...slices);
  }
  return arena;
}

/**
 * A zero-or-garbage buffer of `size` bytes: from the pool when `size` is
 * {@link STREAM_BUFFER_SIZE}, else in a kernel set's memory of its own.
 */
export function takeStreamBuffer(size: number): Uint8Array {
  if (size === STREAM_BUFFER_SIZE) {
    pool();
    const buf = free.pop();
    if (buf) return buf;
  }
  const kernels = createKernels({ arenaBytes: size });
  owners.set(kernels.arena.buffer, kernels);
  return kernels.arena;
}

/** Hands a buffer back for reuse. Only call this once nothing (no pending I/O) uses it. */
export function returnStreamBuffer(buf: Uint8Array): void {
  if (slices.includes(buf) && !free.includes(buf)) free.push(buf);
}

/** Allocates the pool and writes every page of it once, so no migration pays the faults. */
export function warmStreamBuffers(): void {
  const kernels = pool();
  const bytes = kernels.arena;
  for (let off = 0; off < bytes.length; off += 4096) bytes[off] = 1;
  bytes.fill(0);
}

/** The kernels that digest `buf` in place when it is a stream buffer (others copy it in). */
export function kernelsFor(buf: Uint8Array): Kernels {
  if (arena?.owns(buf)) return arena;
  return owners.get(buf.buffer) ?? sharedKernels();
}
