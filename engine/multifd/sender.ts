/**
 * The source's half of multifd (docs/ARCHITECTURE.md, "Multifd"), QEMU's
 * multifd_send_*: the RAM saver queues packets of page numbers; each goes to a
 * channel with a free slot, whose worker copies (and compresses) the pages
 * straight from guest RAM into the slot; then the slot is written to the
 * channel. `barrier()` is QEMU's multifd_send_sync_main: every queued packet is
 * on the wire, then every channel gets a SYNC packet; the RAM saver writes the
 * main stream's FLUSH record right after it.
 * @module
 */
import type { Channel } from "../../transports/transport.ts";
import type { RamBlock } from "../../vm/ram.ts";
import type { DigestTable } from "../integrity.ts";
import { encodeHello, MAX_PACKET_PAGES, SESSION_BYTES, syncPacket } from "./packet.ts";
import type { FillCompression } from "./pages.ts";
import { type PacketRunner, type RunnerFactory, workerRunner } from "./runner.ts";

/** What the RAM saver needs from multifd: queue packets, and sync points. */
export interface MultifdSink {
  /** Most pages in one packet. */
  readonly packetPages: number;
  /** Queues the pages `pages` of block `block`; resolves once a slot took them (backpressure). */
  queue(block: number, pages: Int32Array): Promise<void>;
  /** Every queued packet on the wire, then a SYNC packet on every channel (the FLUSH record follows). */
  barrier(): Promise<void>;
}

/** Counters of what went over the channels. */
export interface MultifdSendStats {
  packets: number;
  zero: number;
  normal: number;
  /** Packets whose data went compressed. */
  compressed: number;
  /** Bytes written to the channels. */
  bytes: number;
  /** Sync points sent. */
  syncs: number;
}

/** Options of a {@link MultifdSender}. */
export interface MultifdSenderOptions {
  readonly blocks: readonly RamBlock[];
  /** With `verify`: each block's digest table (the integrity record covers every channel). */
  readonly tables?: readonly (DigestTable | null)[];
  readonly compression?: FillCompression;
  /** Default: a Web Worker per channel. */
  readonly runner?: RunnerFactory;
  /** Called with bytes as they are written, so the rate limiter sees every channel. */
  readonly onBytes?: (n: number) => void;
  /** Called after each packet is written: its zero and data pages, its bytes. */
  readonly onPacket?: (zero: number, normal: number, bytes: number) => void;
  /** Called once, with the first failure of any channel or worker. */
  readonly onError?: (e: Error) => void;
}

interface SendChannel {
  readonly index: number;
  readonly channel: Channel;
  readonly runner: PacketRunner;
  readonly free: number[];
  seq: number;
  /** The channel's writes, in packet order. */
  writes: Promise<void>;
}

/** Thrown when multifd is used in a way that cannot work (no channels, a closed sender). */
export class MultifdSendError extends Error {
  override readonly name = "MultifdSendError";
}

/** The source's multifd channels for one migration. */
export class MultifdSender implements MultifdSink, Disposable {
  readonly packetPages = MAX_PACKET_PAGES;
  /** The session id the main stream announces and every hello carries. */
  readonly session: Uint8Array = crypto.getRandomValues(new Uint8Array(SESSION_BYTES));
  readonly stats: MultifdSendStats = {
    packets: 0,
    zero: 0,
    normal: 0,
    compressed: 0,
    bytes: 0,
    syncs: 0,
  };
  readonly #options: MultifdSenderOptions;
  #channels: SendChannel[] = [];
  readonly #inFlight = new Set<Promise<void>>();
  #next = 0;
  #error: Error | null = null;
  #closed = false;
  #slotFreed: (() => void) | null = null;

  constructor(readonly count: number, options: MultifdSenderOptions) {
    if (!Number.isInteger(count) || count < 1) {
      throw new RangeError(`multifd needs at least one channel, got ${count}`);
    }
    this.#options = options;
  }

  /** The first failure, if any. */
  get error(): Error | null {
    return this.#error;
  }

  /**
   * Takes the connected channels (`count` of them, in index order) and writes each
   * its hello. Until then nothing may be queued.
   */
  async start(channels: readonly Channel[]): Promise<void> {
    if (channels.length !== this.count) {
      throw new MultifdSendError(`${channels.length} channels for ${this.count} multifd channels`);
    }
    const runner = this.#options.runner ?? workerRunner;
    this.#channels = channels.map((channel, index) => ({
      index,
      channel,
      runner: runner({
        blocks: this.#options.blocks,
        channel: index,
        compression: this.#options.compression ?? null,
      }),
      free: [0, 1],
      seq: 0,
      writes: Promise.resolve(),
    }));
    if (this.#closed) this.close();
    await Promise.all(
      this.#channels.map((c) =>
        this.#write(c, encodeHello({ session: this.session, index: c.index, count: this.count }))
      ),
    );
    this.#throwIfFailed();
  }

  async queue(block: number, pages: Int32Array): Promise<void> {
    if (pages.length === 0) return;
    if (pages.length > MAX_PACKET_PAGES) {
      throw new RangeError(`a packet of ${pages.length} pages (at most ${MAX_PACKET_PAGES})`);
    }
    for (;;) {
      this.#throwIfFailed();
      if (this.#channels.length === 0) throw new MultifdSendError("multifd channels not started");
      const ch = this.#freeChannel();
      if (ch !== null) {
        this.#send(ch, block, pages);
        return;
      }
      await new Promise<void>((resolve) => (this.#slotFreed = resolve));
    }
  }

  async barrier(): Promise<void> {
    await this.settle();
    const sync = this.stats.syncs + 1;
    await Promise.all(this.#channels.map((c) => {
      const packet = syncPacket(c.seq++, sync);
      return this.#write(c, packet);
    }));
    this.#throwIfFailed();
    this.stats.syncs = sync;
  }

  /** Waits until every queued packet is on the wire; throws the first failure. */
  async settle(): Promise<void> {
    while (this.#inFlight.size > 0) await Promise.all([...this.#inFlight]);
    this.#throwIfFailed();
  }

  /** Stops the workers and closes the channels (cancel, failure or the end). Idempotent. */
  close(): void {
    this.#closed = true;
    for (const c of this.#channels) {
      c.runner[Symbol.dispose]();
      c.channel.close();
    }
    this.#wake();
  }

  [Symbol.dispose](): void {
    this.close();
  }

  /** The next channel, round robin, with a free slot; null when every slot is busy. */
  #freeChannel(): SendChannel | null {
    const n = this.#channels.length;
    for (let i = 0; i < n; i++) {
      const ch = this.#channels[(this.#next + i) % n];
      if (ch.free.length > 0) {
        this.#next = (ch.index + 1) % n;
        return ch;
      }
    }
    return null;
  }

  #send(ch: SendChannel, block: number, pages: Int32Array): void {
    const slot = ch.free.pop()!;
    const job = { block, pages: pages.slice(), seq: ch.seq++, sync: this.stats.syncs };
    const task = (async () => {
      const result = await ch.runner.fill(slot, job);
      const table = this.#options.tables?.[block] ?? null;
      if (table !== null) {
        for (let i = 0; i < job.pages.length; i++) table.set(job.pages[i], result.digests[i]);
      }
      this.stats.packets++;
      this.stats.zero += result.zero;
      this.stats.normal += result.normal;
      if (result.compressed) this.stats.compressed++;
      await this.#write(ch, ch.runner.slots[slot].subarray(0, result.length));
      this.#options.onPacket?.(result.zero, result.normal, result.length);
    })().catch((e) => this.#fail(e)).finally(() => {
      ch.free.push(slot);
      this.#inFlight.delete(task);
      this.#wake();
    });
    this.#inFlight.add(task);
  }

  /** Writes `bytes` on `ch` after its earlier writes; counts them. */
  #write(ch: SendChannel, bytes: Uint8Array): Promise<void> {
    const write = ch.writes.then(async () => {
      if (this.#error) return;
      await ch.channel.write(bytes);
      this.stats.bytes += bytes.length;
      this.#options.onBytes?.(bytes.length);
    });
    ch.writes = write.catch((e) => this.#fail(e, ch.index));
    return ch.writes;
  }

  #fail(e: unknown, channel?: number): void {
    if (this.#error) return;
    const cause = e instanceof Error ? e : new Error(String(e));
    this.#error = this.#closed ? new MultifdSendError("multifd channels closed", { cause }) : (
      channel === undefined ? cause : new MultifdSendError(
        `multifd channel ${channel} failed: ${cause.message}`,
        { cause },
      )
    );
    if (!this.#closed) this.#options.onError?.(this.#error);
    this.#wake();
  }

  #wake(): void {
    const w = this.#slotFreed;
    this.#slotFreed = null;
    w?.();
  }

  #throwIfFailed(): void {
    if (this.#error) throw this.#error;
    if (this.#closed) throw new MultifdSendError("multifd channels closed");
  }
}
