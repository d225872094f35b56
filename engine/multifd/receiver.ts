/**
 * The destination's half of multifd (docs/ARCHITECTURE.md, "Multifd"), QEMU's
 * multifd_recv_*: takes the page channels that connect after the main stream,
 * reads their packets into slots and hands each to the channel's worker, which
 * checks it and writes its pages into guest RAM.
 *
 * Ordering: a page is sent at most once between two dirty-log syncs, and the
 * source puts a sync point between them. A channel that reads its k-th SYNC
 * packet waits for its packets before it to be applied, then stops until the
 * main stream's k-th FLUSH record has seen every channel reach k (`flush`). So a
 * later version of a page, on any channel, is never applied before an earlier one.
 * @module
 */
import type { Channel } from "../../transports/transport.ts";
import type { RamBlock } from "../../vm/ram.ts";
import type { Clock } from "../clock.ts";
import { StreamError } from "../format/reader.ts";
import type { Codec } from "../format/compression.ts";
import type { MigrationDigests } from "../integrity.ts";
import {
  decodeFixed,
  decodeHello,
  HELLO_BYTES,
  MultifdError,
  PACKET_FIXED,
  PacketFlag,
  SESSION_BYTES,
} from "./packet.ts";
import { type PacketRunner, type RunnerFactory, workerRunner } from "./runner.ts";
import { X86_WHY } from "./setup.ts";

/** What the main stream's loader asks of multifd. */
export interface MultifdLoad {
  /** The main stream's multifd command: the source's channel count and session. */
  open(count: number, session: Uint8Array, digests: MigrationDigests | undefined, at: number): void;
  /** The main stream's FLUSH record at byte `at`: waits until every channel reached this sync point. */
  flush(at: number): Promise<void>;
}

/** Counters of what the channels applied. */
export interface MultifdRecvStats {
  packets: number;
  zero: number;
  normal: number;
  compressed: number;
  bytes: number;
}

/** Options of a {@link MultifdReceiver}. */
export interface MultifdReceiverOptions {
  /** This destination's `multifd_channels`: the source must use as many. */
  readonly count: number;
  readonly blocks: readonly RamBlock[];
  /** The `compress_method` compressed packets must use (null: none). */
  readonly codec: Codec | null;
  readonly clock: Clock;
  /** ms a channel has to prove itself and send its hello. */
  readonly deadlineMs: number;
  /** The listener's proof of the migration secret, when it asks for one. */
  readonly authenticate?: (ch: Channel) => Promise<void>;
  readonly runner?: RunnerFactory;
  /** Called once, with the first failure of a channel. */
  readonly onError?: (e: Error) => void;
  /** A connection that was dropped, and why. */
  readonly onDropped?: (peer: string, why: string) => void;
  /** Every channel connected (the listener may close). */
  readonly onAllConnected?: () => void;
  /**
   * Most pages the channels may carry together (`incoming_page_budget` times the
   * guest's pages): a source that never completes is cut. Default: no limit.
   */
  readonly maxPages?: number;
  /** Bytes arrived on a channel (the destination's progress watchdog counts them too). */
  readonly onProgress?: () => void;
}

interface RecvChannel {
  readonly index: number;
  readonly channel: Channel;
  readonly runner: PacketRunner;
  /** Sync points this channel reached (its packets before them applied). */
  reached: number;
  /** Closed at a packet boundary. */
  ended: boolean;
}

/** The destination's multifd channels for one incoming migration. */
export class MultifdReceiver implements MultifdLoad, Disposable {
  readonly stats: MultifdRecvStats = { packets: 0, zero: 0, normal: 0, compressed: 0, bytes: 0 };
  readonly #options: MultifdReceiverOptions;
  readonly #channels: (RecvChannel | null)[];
  #session: Uint8Array | null = null;
  #sessionKnown: () => void = () => {};
  readonly #sessionPromise: Promise<void>;
  #digests: MigrationDigests | undefined;
  /** FLUSH records the main stream passed. */
  #passed = 0;
  #error: Error | null = null;
  #closed = false;
  /** Pages of the packets read so far, on every channel. */
  #pagesRead = 0;
  /** Woken whenever a channel connects, reaches a sync point, ends, or something fails. */
  #changed: (() => void)[] = [];
  readonly #pendingPeers = new Set<Channel>();

  constructor(options: MultifdReceiverOptions) {
    this.#options = options;
    this.#channels = Array.from({ length: options.count }, () => null);
    this.#sessionPromise = new Promise((resolve) => (this.#sessionKnown = resolve));
  }

  /** The first failure, if any. */
  get error(): Error | null {
    return this.#error;
  }

  open(count: number, session: Uint8Array, digests: MigrationDigests | undefined, at: number) {
    if (this.#session !== null) throw new StreamError(at, "multifd announced twice");
    if (count !== this.#options.count) {
      throw new StreamError(
        at,
        `the source sends pages over ${count} multifd channels, this destination's ` +
          `multifd_channels is ${this.#options.count}: set the same on both ends`,
      );
    }
    if (this.#options.blocks.some((b) => b.written !== null)) {
      throw new StreamError(
        at,
        `the source sends pages over multifd channels, which this guest cannot take: ${X86_WHY}`,
      );
    }
    this.#session = session.slice();
    this.#digests = digests;
    this.#sessionKnown();
  }

  /**
   * A connection that came after the main stream started: it must prove the
   * secret (when asked), then send a hello with this migration's session and a
   * free channel index, within the deadline; else it is dropped.
   */
  offer(ch: Channel): void {
    if (this.#closed || this.#channels.every((c) => c !== null)) {
      this.#drop(ch, "every multifd channel is connected already");
      return;
    }
    this.#pendingPeers.add(ch);
    this.#admit(ch).catch((e) => this.#drop(ch, (e as Error).message));
  }

  async flush(at: number): Promise<void> {
    if (this.#session === null) {
      throw new StreamError(at, "a multifd FLUSH record, but the stream announced no multifd");
    }
    const k = this.#passed + 1;
    for (;;) {
      if (this.#error) throw this.#error;
      if (this.#closed) throw new Error("multifd channels closed");
      const late = this.#channels.find((c) => c !== null && c.ended && c.reached < k);
      if (late) {
        throw new MultifdError(late.index, 0, `the channel ended before sync point ${k}`);
      }
      if (this.#channels.every((c) => c !== null && c.reached >= k)) break;
      await this.#wait();
    }
    this.#passed = k;
    this.#notify();
  }

  /** Closes every channel and stops the workers. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const ch of this.#pendingPeers) ch.close();
    for (const c of this.#channels) {
      if (c === null) continue;
      c.runner[Symbol.dispose]();
      c.channel.close();
    }
    this.#sessionKnown();
    this.#notify();
  }

  [Symbol.dispose](): void {
    this.close();
  }

  async #admit(ch: Channel): Promise<void> {
    const { clock, deadlineMs } = this.#options;
    const timer = new AbortController();
    const late = clock.until(clock.now() + deadlineMs, timer.signal).then(
      () => `sent no multifd hello within ${deadlineMs} ms`,
      () => "stopped",
    );
    let hello;
    try {
      if (this.#options.authenticate) {
        const failed = await Promise.race([
          this.#options.authenticate(ch).then(() => null, (e: Error) => e.message),
          late,
        ]);
        if (failed !== null) return this.#drop(ch, failed);
      }
      const bytes = new Uint8Array(HELLO_BYTES);
      const got = await Promise.race([readFull(ch, bytes), late]);
      if (typeof got === "string") return this.#drop(ch, got);
      if (got < HELLO_BYTES) return this.#drop(ch, `closed after ${got} bytes, before a hello`);
      hello = decodeHello(bytes);
      if (typeof hello === "string") return this.#drop(ch, hello);
      const known = await Promise.race([this.#sessionPromise.then(() => null), late]);
      if (known !== null) return this.#drop(ch, known);
    } finally {
      timer.abort();
    }
    if (this.#closed) return this.#drop(ch, "the incoming migration ended");
    if (!sameBytes(hello.session, this.#session!) || hello.count !== this.#options.count) {
      return this.#drop(ch, "sent a hello for another migration");
    }
    if (this.#channels[hello.index] !== null) {
      return this.#drop(ch, `channel ${hello.index} is connected already`);
    }
    this.#pendingPeers.delete(ch);
    const runner = (this.#options.runner ?? workerRunner)({
      blocks: this.#options.blocks,
      channel: hello.index,
      codec: this.#options.codec,
    });
    const rc: RecvChannel = { index: hello.index, channel: ch, runner, reached: 0, ended: false };
    this.#channels[hello.index] = rc;
    if (this.#channels.every((c) => c !== null)) this.#options.onAllConnected?.();
    this.#notify();
    this.#read(rc).catch((e) => this.#fail(e, rc.index));
  }

  /** One channel's loop: packets into slots, to the worker; sync points in order. */
  async #read(rc: RecvChannel): Promise<void> {
    const { runner, index } = rc;
    const free = [0, 1];
    const inFlight = new Set<Promise<void>>();
    let slotFreed: (() => void) | null = null;
    let at = HELLO_BYTES;
    let seq = 0;
    for (;;) {
      while (free.length === 0) await new Promise<void>((r) => (slotFreed = r));
      if (this.#closed || this.#error) return;
      const slot = free.pop()!;
      const buf = runner.slots[slot];
      const got = await readFull(rc.channel, buf.subarray(0, PACKET_FIXED));
      this.#options.onProgress?.();
      if (got === 0) {
        free.push(slot);
        await Promise.all([...inFlight]);
        rc.ended = true;
        this.#notify();
        return;
      }
      if (got < PACKET_FIXED) {
        throw new MultifdError(index, at, `the channel ended ${got} bytes into a packet header`);
      }
      const { header, total } = decodeFixed(buf, index, at);
      if (header.seq !== seq) {
        throw new MultifdError(index, at, `packet number ${header.seq}, expected ${seq}`);
      }
      seq++;
      if (header.flags & PacketFlag.SYNC) {
        free.push(slot);
        if (header.sync !== rc.reached + 1) {
          throw new MultifdError(
            index,
            at,
            `sync point ${header.sync}, expected ${rc.reached + 1}`,
          );
        }
        await Promise.all([...inFlight]);
        rc.reached = header.sync;
        this.#notify();
        // Nothing after this sync point is applied before the main stream passed it.
        while (this.#passed < rc.reached) {
          if (this.#closed || this.#error) return;
          await this.#wait();
        }
        at += total;
        continue;
      }
      this.#pagesRead += header.count;
      const max = this.#options.maxPages ?? Infinity;
      if (this.#pagesRead > max) {
        throw new MultifdError(
          index,
          at,
          `the channels carried ${this.#pagesRead} pages without the migration completing ` +
            `(at most ${max}, incoming_page_budget)`,
        );
      }
      if (header.sync !== rc.reached) {
        throw new MultifdError(
          index,
          at,
          `a packet of sync period ${header.sync} after sync point ${rc.reached}`,
        );
      }
      const body = await readFull(rc.channel, buf.subarray(PACKET_FIXED, total));
      this.#options.onProgress?.();
      if (body < total - PACKET_FIXED) {
        throw new MultifdError(
          index,
          at,
          `the channel ended ${PACKET_FIXED + body} bytes into a packet of ${total}`,
        );
      }
      const packetAt = at;
      at += total;
      const task = runner.apply(slot, total, packetAt).then((r) => {
        const table = this.#digests?.ram[r.block].table;
        if (table) { for (let i = 0; i < r.pages.length; i++) table.set(r.pages[i], r.digests[i]); }
        this.stats.packets++;
        this.stats.zero += r.zero;
        this.stats.normal += r.normal;
        this.stats.bytes += total;
        if (r.compressed) this.stats.compressed++;
      }).finally(() => {
        free.push(slot);
        inFlight.delete(task);
        const w = slotFreed;
        slotFreed = null;
        w?.();
      });
      task.catch((e) => this.#fail(e, index));
      inFlight.add(task);
    }
  }

  #drop(ch: Channel, why: string): void {
    this.#pendingPeers.delete(ch);
    ch.close();
    this.#options.onDropped?.(ch.peer, why);
  }

  #fail(e: unknown, channel: number): void {
    if (this.#error || this.#closed) return;
    const cause = e instanceof Error ? e : new Error(String(e));
    this.#error = cause instanceof MultifdError
      ? cause
      : new MultifdError(channel, 0, cause.message, { cause });
    this.#options.onError?.(this.#error);
    this.#notify();
  }

  #wait(): Promise<void> {
    return new Promise((resolve) => this.#changed.push(resolve));
  }

  #notify(): void {
    const waiting = this.#changed;
    this.#changed = [];
    for (const w of waiting) w();
  }
}

/** Reads until `buf` is full or the channel ends; the bytes read. */
async function readFull(ch: Channel, buf: Uint8Array): Promise<number> {
  let got = 0;
  while (got < buf.length) {
    const n = await ch.read(buf.subarray(got));
    if (n === null) break;
    got += n;
  }
  return got;
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === SESSION_BYTES && b.length === SESSION_BYTES && a.every((x, i) => x === b[i]);
}
