import { timerTurn } from "../../transports/loop_turn.ts";
import type { Channel } from "../../transports/transport.ts";
import { type Clock, systemClock } from "../clock.ts";
import { QEVM_MAGIC, QEVM_VERSION, Section } from "./constants.ts";
import { returnStreamBuffer, STREAM_BUFFER_SIZE, takeStreamBuffer } from "./buffers.ts";

/** Bytes a writer buffers before handing them to the channel. */
export const WRITE_BUFFER_SIZE = STREAM_BUFFER_SIZE;

/** Time stream code runs between event-loop turns when turns are cheap (a {@link StreamOptions.turn} was given), ms. */
export const TURN_MS = 2;
/** The same with the fallback timer turn, which idles ~2 ms per call, ms. */
export const TIMER_TURN_MS = 5;

/** Options of a StreamWriter or StreamReader. */
export interface StreamOptions {
  /**
   * Lets the event loop poll I/O once (transports/loop_turn.ts). The stream code
   * calls it every {@link TURN_MS} of its clock's time so the API stays responsive while a
   * migration runs at full speed; without it the RAM loop alone yields, through a
   * zero-delay timer every {@link TIMER_TURN_MS}, and the loader never does.
   */
  readonly turn?: () => Promise<void>;
  /** The clock that paces the turns (the engine's; default the real one). */
  readonly clock?: Clock;
}

/**
 * Paces event-loop turns for code that may run for long without one: `due()` is
 * true once the interval passed since the last turn; `turn()` takes one.
 */
export class TurnPacer {
  readonly #turn: () => Promise<void>;
  readonly #every: number;
  readonly #clock: Clock;
  #last: number;

  constructor(turn: (() => Promise<void>) | undefined, clock: Clock) {
    this.#turn = turn ?? timerTurn;
    this.#every = turn ? TURN_MS : TIMER_TURN_MS;
    this.#clock = clock;
    this.#last = clock.now();
  }

  /** True when the code has run for the interval without a turn. */
  due(): boolean {
    return this.#clock.now() - this.#last >= this.#every;
  }

  /** Takes a turn now. */
  async turn(): Promise<void> {
    await this.#turn();
    this.#last = this.#clock.now();
  }
}

/**
 * Buffered big-endian writer for a savevm stream. Records are assembled in one of
 * two large buffers; a full buffer is handed to the channel while the other one
 * fills, so page scanning and copying overlap with the kernel's transfer.
 * `bytes` counts everything written so far (the rate limiter's and statistics'
 * measure of bytes on the wire).
 */
export class StreamWriter {
  #spare: Uint8Array;
  #spareView: DataView;
  #inFlight: Promise<void> | null = null;
  #failure: unknown = null;
  #flushed = 0;
  /** Bytes the migration wrote to its other channels (multifd), counted in `bytes`. */
  #side = 0;
  /** The buffer records are written into; valid between awaits. */
  buf: Uint8Array;
  /** DataView over `buf`. */
  view: DataView;
  /** Write position in `buf`. */
  pos = 0;
  readonly #pacer: TurnPacer;
  /** True when turns are cheap: flush() takes them too (in the final phase as well). */
  readonly #cheapTurns: boolean;
  #released = false;

  /** A writer on `channel` with two buffers of `size` bytes (reused from a pool at the default size). */
  constructor(readonly channel: Channel, size = WRITE_BUFFER_SIZE, options: StreamOptions = {}) {
    this.buf = takeStreamBuffer(size);
    this.#spare = takeStreamBuffer(size);
    this.view = new DataView(this.buf.buffer, this.buf.byteOffset, this.buf.byteLength);
    this.#spareView = new DataView(
      this.#spare.buffer,
      this.#spare.byteOffset,
      this.#spare.byteLength,
    );
    this.#pacer = new TurnPacer(options.turn, options.clock ?? systemClock);
    this.#cheapTurns = options.turn !== undefined;
  }

  /**
   * Gives the event loop a turn when the sender has run for a while without one
   * (socket writes that complete at once never return to it). Call it between
   * records; it returns at once most of the time.
   */
  async breathe(): Promise<void> {
    if (this.#pacer.due()) await this.#pacer.turn();
  }

  /**
   * Gives the buffers back for reuse by the next migration, when no write is in
   * flight (after drain()); otherwise leaves them to the garbage collector. The
   * writer must not be used afterwards; `bytes` stays valid.
   */
  release(): void {
    if (this.#released) return;
    this.#released = true;
    const idle = this.#inFlight === null;
    this.#flushed += this.pos;
    this.pos = 0;
    const bufs = [this.buf, this.#spare];
    this.buf = this.#spare = new Uint8Array(0);
    this.view = this.#spareView = new DataView(this.buf.buffer);
    if (idle) { for (const b of bufs) returnStreamBuffer(b); }
  }

  /**
   * Total bytes written to the stream (buffered or sent), and to the migration's
   * other channels (multifd, see {@link addSideBytes}): what the rate limiter and
   * the bandwidth estimate measure.
   */
  get bytes(): number {
    return this.#flushed + this.pos + this.#side;
  }

  /** Of {@link bytes}, those written to other channels. */
  get sideBytes(): number {
    return this.#side;
  }

  /** Counts `n` bytes written to another channel of the same migration (multifd). */
  addSideBytes(n: number): void {
    this.#side += n;
  }

  /** Free bytes left in the current buffer. */
  get free(): number {
    return this.buf.length - this.pos;
  }

  /** Makes sure at least `n` bytes fit in the current buffer, flushing if needed. */
  async room(n: number): Promise<void> {
    if (this.buf.length - this.pos < n) await this.flush();
    if (this.buf.length - this.pos < n) {
      throw new RangeError(`record of ${n} bytes exceeds writer buffer`);
    }
  }

  /** Appends one byte. Caller guarantees room. */
  u8(v: number): void {
    this.buf[this.pos++] = v;
  }

  /** Appends a big-endian 16-bit value. Caller guarantees room. */
  be16(v: number): void {
    this.view.setUint16(this.pos, v);
    this.pos += 2;
  }

  /** Appends a big-endian 32-bit value. Caller guarantees room. */
  be32(v: number): void {
    this.view.setUint32(this.pos, v);
    this.pos += 4;
  }

  /** Appends a big-endian 64-bit value below 2^53. Caller guarantees room. */
  be64(v: number): void {
    this.view.setUint32(this.pos, Math.floor(v / 0x100000000));
    this.view.setUint32(this.pos + 4, v >>> 0);
    this.pos += 8;
  }

  /** Appends raw bytes. Caller guarantees room. */
  raw(bytes: Uint8Array): void {
    this.buf.set(bytes, this.pos);
    this.pos += bytes.length;
  }

  /** Appends a length-prefixed (u8) ASCII/UTF-8 string of at most 255 bytes. Caller guarantees room. */
  str8(s: string): void {
    const bytes = encoder.encode(s);
    if (bytes.length > 255) throw new RangeError(`string "${s}" longer than 255 bytes`);
    this.u8(bytes.length);
    this.raw(bytes);
  }

  /** Appends any amount of bytes, flushing as often as needed. */
  async write(bytes: Uint8Array): Promise<void> {
    let off = 0;
    while (off < bytes.length) {
      if (this.free === 0) await this.flush();
      const n = Math.min(this.free, bytes.length - off);
      this.buf.set(bytes.subarray(off, off + n), this.pos);
      this.pos += n;
      off += n;
    }
  }

  /**
   * Hands the current buffer to the channel and switches to the spare one. At most
   * one write is in flight: this waits for the previous one first.
   */
  async flush(): Promise<void> {
    await this.#settle();
    if (this.pos === 0) return;
    const out = this.buf.subarray(0, this.pos);
    this.#flushed += this.pos;
    this.#inFlight = this.channel.write(out).catch((e) => {
      this.#failure = e;
    });
    const next = this.#spare;
    const nextView = this.#spareView;
    this.#spare = this.buf;
    this.#spareView = this.view;
    this.buf = next;
    this.view = nextView;
    this.pos = 0;
    // The write is under way: a good moment to let the API in.
    if (this.#cheapTurns && this.#pacer.due()) await this.#pacer.turn();
  }

  /** Flushes everything and waits until the channel has taken it. */
  async drain(): Promise<void> {
    await this.flush();
    await this.#settle();
  }

  async #settle(): Promise<void> {
    if (this.#inFlight) {
      await this.#inFlight;
      this.#inFlight = null;
    }
    if (this.#failure !== null) throw this.#failure;
  }

  /** Writes the stream header: magic and version. */
  async header(): Promise<void> {
    await this.room(8);
    this.be32(QEVM_MAGIC);
    this.be32(QEVM_VERSION);
  }

  /** Writes the optional configuration section naming the machine type. */
  async configuration(machine: string): Promise<void> {
    const name = encoder.encode(machine);
    await this.room(5 + name.length);
    this.u8(Section.CONFIGURATION);
    this.be32(name.length);
    this.raw(name);
  }

  /** Writes a START or FULL section header. */
  async sectionStart(
    type: typeof Section.START | typeof Section.FULL,
    id: number,
    name: string,
    instance: number,
    version: number,
  ): Promise<void> {
    await this.room(1 + 4 + 1 + 255 + 8);
    this.u8(type);
    this.be32(id);
    this.str8(name);
    this.be32(instance);
    this.be32(version);
  }

  /** Writes a PART or END section header. */
  async sectionPart(type: typeof Section.PART | typeof Section.END, id: number): Promise<void> {
    await this.room(5);
    this.u8(type);
    this.be32(id);
  }

  /** Writes the footer that closes a section's payload. */
  async footer(id: number): Promise<void> {
    await this.room(5);
    this.u8(Section.FOOTER);
    this.be32(id);
  }

  /** Writes EOF followed by the vmdescription JSON. */
  async end(description: unknown): Promise<void> {
    const json = encoder.encode(JSON.stringify(description));
    await this.room(6);
    this.u8(Section.EOF);
    this.u8(Section.VMDESCRIPTION);
    this.be32(json.length);
    await this.write(json);
  }
}

const encoder = new TextEncoder();
