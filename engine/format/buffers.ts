/**
 * Reusable stream buffers. A fresh multi-MiB buffer costs a page fault per 4 KiB
 * the first time it is written (15 µs each on the hosts ferry was measured on: tens
 * of ms per migration), so writers and readers take their buffers from here and
 * give them back; {@link warmStreamBuffers} faults a few in at process start.
 * @module
 */

/** Size of every pooled buffer: the writer's and the reader's default. */
export const STREAM_BUFFER_SIZE = 4 << 20;
/** Most buffers kept for reuse (a writer holds two, a reader one). */
const POOL_MAX = 3;

const pool: Uint8Array[] = [];

/** A zero-or-garbage buffer of `size` bytes: pooled when `size` is {@link STREAM_BUFFER_SIZE}. */
export function takeStreamBuffer(size: number): Uint8Array {
  if (size === STREAM_BUFFER_SIZE) {
    const buf = pool.pop();
    if (buf) return buf;
  }
  return new Uint8Array(size);
}

/** Hands a buffer back for reuse. Only call this once nothing (no pending I/O) uses it. */
export function returnStreamBuffer(buf: Uint8Array): void {
  if (
    buf.byteLength === STREAM_BUFFER_SIZE && buf.byteOffset === 0 &&
    buf.buffer.byteLength === STREAM_BUFFER_SIZE && pool.length < POOL_MAX && !pool.includes(buf)
  ) {
    pool.push(buf);
  }
}

/** Allocates the pool's buffers and writes every page of them once, so no migration pays the faults. */
export function warmStreamBuffers(count = POOL_MAX): void {
  while (pool.length < Math.min(count, POOL_MAX)) {
    const buf = new Uint8Array(STREAM_BUFFER_SIZE);
    for (let off = 0; off < buf.length; off += 4096) buf[off] = 1;
    buf.fill(0);
    pool.push(buf);
  }
}
