import type { Channel } from "../../transports/transport.ts";
import { systemClock } from "../clock.ts";
import { returnStreamBuffer, STREAM_BUFFER_SIZE, takeStreamBuffer } from "./buffers.ts";
import { type StreamOptions, TurnPacer } from "./writer.ts";

/** Bytes a reader asks the channel for at a time. */
export const READ_BUFFER_SIZE = STREAM_BUFFER_SIZE;

/** need() moves at most this many unread bytes just to make room for a larger read. */
const COMPACT_MAX = 64 << 10;

/** A malformed or truncated incoming stream; `offset` is where in the stream it went wrong. */
export class StreamError extends Error {
  override readonly name = "StreamError";
  constructor(readonly offset: number, readonly reason: string, options?: ErrorOptions) {
    super(`Invalid migration stream at byte 0x${offset.toString(16)}: ${reason}`, options);
  }
}

/**
 * Buffered big-endian reader over a Channel. `need(n)` is the only async step;
 * the accessors after it are synchronous, so a record parser awaits only when its
 * buffer runs low. `offset` is the absolute stream position of the next byte.
 */
export class StreamReader {
  buf: Uint8Array;
  view: DataView;
  /** Next unread byte in `buf`. */
  pos = 0;
  /** End of valid bytes in `buf`. */
  end = 0;
  #base = 0;
  #eof = false;
  #reading = false;
  #released = false;
  /** Only with a cheap turn: without one the loader never yields (as before turns existed). */
  readonly #pacer: TurnPacer | null;

  /** A reader on `channel` with a buffer of `size` bytes (reused from a pool at the default size). */
  constructor(readonly channel: Channel, size = READ_BUFFER_SIZE, options: StreamOptions = {}) {
    this.buf = takeStreamBuffer(size);
    this.view = new DataView(this.buf.buffer, this.buf.byteOffset, this.buf.byteLength);
    this.#pacer = options.turn ? new TurnPacer(options.turn, options.clock ?? systemClock) : null;
  }

  /**
   * Gives the buffer back for reuse when no read is pending; the reader must not be
   * used afterwards (`offset` and `received` stay valid).
   */
  release(): void {
    if (this.#released) return;
    this.#released = true;
    const buf = this.buf;
    this.buf = new Uint8Array(0);
    this.view = new DataView(this.buf.buffer);
    if (!this.#reading) returnStreamBuffer(buf);
  }

  /** Absolute offset of the next unread byte. */
  get offset(): number {
    return this.#base + this.pos;
  }

  /** Bytes buffered and not yet consumed. */
  get avail(): number {
    return this.end - this.pos;
  }

  /** Total bytes received from the channel so far. */
  get received(): number {
    return this.#base + this.end;
  }

  /** Ensures `n` bytes are buffered; throws a StreamError naming the offset if the stream ends first. */
  async need(n: number): Promise<void> {
    if (this.end - this.pos >= n) return;
    if (n > this.buf.length) throw new RangeError(`read of ${n} bytes exceeds reader buffer`);
    // Move the unread tail to the front when `n` would not fit, or when the space
    // left behind it is small and the tail is cheap to move: reads stay large.
    const avail = this.end - this.pos;
    const tail = this.buf.length - this.end;
    if (
      this.pos > 0 &&
      (this.buf.length - this.pos < n || (avail <= COMPACT_MAX && tail < this.buf.length >> 1))
    ) {
      this.buf.copyWithin(0, this.pos, this.end);
      this.#base += this.pos;
      this.end -= this.pos;
      this.pos = 0;
    }
    while (this.end - this.pos < n) {
      if (this.#eof) {
        throw new StreamError(
          this.offset,
          `stream truncated: needed ${n} bytes, only ${
            this.end - this.pos
          } arrived before end of stream`,
        );
      }
      // Reads of data already buffered by the OS never return to the event loop.
      if (this.#pacer?.due()) await this.#pacer.turn();
      this.#reading = true;
      let got: number | null;
      try {
        got = await this.channel.read(this.buf.subarray(this.end));
      } finally {
        this.#reading = false;
      }
      if (got === null) this.#eof = true;
      else this.end += got;
    }
  }

  /** True once the channel reported end of stream and everything buffered was consumed. */
  async atEnd(): Promise<boolean> {
    if (this.avail > 0) return false;
    if (this.#eof) return true;
    try {
      await this.need(1);
      return false;
    } catch (e) {
      if (e instanceof StreamError) return true;
      throw e;
    }
  }

  /** Reads one byte (after need). */
  u8(): number {
    return this.buf[this.pos++];
  }

  /** Reads a big-endian 16-bit value (after need). */
  be16(): number {
    const v = this.view.getUint16(this.pos);
    this.pos += 2;
    return v;
  }

  /** Reads a big-endian 32-bit value (after need). */
  be32(): number {
    const v = this.view.getUint32(this.pos);
    this.pos += 4;
    return v;
  }

  /** Reads a big-endian 64-bit value as hi/lo words (after need). */
  be64Parts(): [number, number] {
    const hi = this.view.getUint32(this.pos);
    const lo = this.view.getUint32(this.pos + 4);
    this.pos += 8;
    return [hi, lo];
  }

  /** Returns a view of the next `n` bytes and consumes them (valid until the next need). */
  take(n: number): Uint8Array {
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  /** Reads a u8-length-prefixed string (needs 1 + 255 bytes or the exact amount). */
  async str8(): Promise<string> {
    await this.need(1);
    const len = this.u8();
    await this.need(len);
    return decoder.decode(this.take(len));
  }
}

const decoder = new TextDecoder("utf-8", { fatal: false });
