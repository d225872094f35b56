import type { Channel } from "../../transports/transport.ts";

/**
 * A read-only Channel serving fixed bytes, at most `chunk` bytes per read (1 makes
 * every field straddle a read boundary), then end of stream. Writes reject.
 */
export class BytesChannel implements Channel {
  readonly peer = "bytes:";
  #pos = 0;
  #closed = false;
  reads = 0;

  constructor(readonly bytes: Uint8Array, readonly chunk = Infinity) {}

  get closed(): boolean {
    return this.#closed;
  }

  read(buf: Uint8Array): Promise<number | null> {
    if (this.#closed) return Promise.reject(new Error("BytesChannel is closed"));
    this.reads++;
    if (this.#pos >= this.bytes.length) return Promise.resolve(null);
    const n = Math.min(buf.length, this.chunk, this.bytes.length - this.#pos);
    buf.set(this.bytes.subarray(this.#pos, this.#pos + n));
    this.#pos += n;
    return Promise.resolve(n);
  }

  write(): Promise<void> {
    return Promise.reject(new Error("BytesChannel is read-only"));
  }

  finish(): Promise<void> {
    this.#closed = true;
    return Promise.resolve();
  }

  close(): void {
    this.#closed = true;
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** Options of a {@link CaptureChannel}. */
export interface CaptureOptions {
  /** Macrotask turns each write takes before it completes (0 = completes at once). */
  delayTicks?: number;
  /** Reject the write with this index (0-based) and every later one. */
  failAt?: number;
}

/**
 * A write-only Channel that records everything written. With `delayTicks` a write
 * completes only after that many timer turns and copies its bytes *then*, so a
 * writer that reuses a buffer still in flight is caught (the copy would differ).
 * Tracks how many writes were in flight at once.
 */
export class CaptureChannel implements Channel {
  readonly peer = "capture:";
  readonly chunks: Uint8Array[] = [];
  #closed = false;
  #inFlight = 0;
  maxInFlight = 0;
  writes = 0;
  finished = false;

  constructor(readonly options: CaptureOptions = {}) {}

  get closed(): boolean {
    return this.#closed;
  }

  async write(chunk: Uint8Array): Promise<void> {
    const index = this.writes++;
    if (this.#closed) throw new Error("CaptureChannel is closed");
    if (this.options.failAt !== undefined && index >= this.options.failAt) {
      throw new Error(`injected failure of write #${index}`);
    }
    this.#inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.#inFlight);
    try {
      for (let i = 0; i < (this.options.delayTicks ?? 0); i++) {
        await new Promise((resolve) => setTimeout(resolve, 0));
      }
      this.chunks.push(chunk.slice());
    } finally {
      this.#inFlight--;
    }
  }

  read(): Promise<number | null> {
    return Promise.reject(new Error("CaptureChannel is write-only"));
  }

  finish(): Promise<void> {
    this.finished = true;
    this.#closed = true;
    return Promise.resolve();
  }

  close(): void {
    this.#closed = true;
  }

  [Symbol.dispose](): void {
    this.close();
  }

  /** Everything written so far, concatenated. */
  bytes(): Uint8Array {
    return concatBytes(this.chunks);
  }
}

/** Concatenates byte arrays. */
export function concatBytes(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

/** Hex dump "51 45 56 4d" for readable byte-exact assertions. */
export function hex(bytes: Uint8Array | readonly number[]): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join(" ");
}
