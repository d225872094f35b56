/**
 * A one-direction {@link Channel} over an open `Deno.FsFile` — a regular file, a
 * FIFO or a pipe. Shared by the `file:` and `fd:` transports, which plug in what
 * a successful finish means (fsync and rename, or just close) and what to undo
 * when the stream is abandoned.
 * @module
 */
import { describeNetError } from "./channel.ts";
import type { Channel } from "./transport.ts";
import { SerialWrites } from "./serial_writes.ts";

/** Bytes written between background fdatasyncs of a file that is fsynced at the end. */
export const SYNC_EVERY_BYTES = 64 << 20;

/** What a transport adds around the file's lifetime. */
export interface FsChannelHooks {
  /**
   * Runs in finish() after the last write, while the file is still open (e.g.
   * fsync); then the file is closed and {@link committed} runs.
   */
  beforeClose?(file: Deno.FsFile): Promise<void>;
  /** Runs after a successful finish() closed the file (e.g. rename into place). */
  committed?(): Promise<void>;
  /** Runs once when the channel closes without a successful finish (e.g. remove a temp file). */
  abandoned?(): void;
  /** Runs once after the file is closed, whatever happened. */
  released?(): void;
  /**
   * For a regular file that finish() fsyncs: start an fdatasync in the
   * background after every this many bytes written, so the data reaches the disk
   * while the stream runs and the fsync in finish() — inside the guest's
   * downtime — only has the tail left to flush. At most one is in flight.
   */
  syncEvery?: number;
}

/**
 * Reads or writes one open file. Writes loop over short writes and are queued;
 * close() interrupts a pending read or write (Deno cancels the op); every error
 * names `peer`.
 */
export class FsChannel implements Channel {
  readonly #file: Deno.FsFile;
  readonly #direction: "read" | "write";
  readonly #hooks: FsChannelHooks;
  #closed = false;
  #committed = false;
  #failure: Error | undefined;
  /** Queued writes, one at a time. */
  readonly #writes = new SerialWrites();
  #eof = false;
  #fileClosed = false;
  #unsynced = 0;
  #syncing: Promise<void> | null = null;
  #syncError: unknown = null;

  /** Wraps `file`, open for `direction`; `peer` names it in errors ("file:/var/tmp/g1.ferry"). */
  constructor(
    file: Deno.FsFile,
    readonly peer: string,
    direction: "read" | "write",
    hooks: FsChannelHooks = {},
  ) {
    this.#file = file;
    this.#direction = direction;
    this.#hooks = hooks;
  }

  /** True once close() ran, finish() completed, or an I/O error failed the channel. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Writes every byte of `chunk`; concurrent calls are queued, never interleaved. */
  write(chunk: Uint8Array): Promise<void> {
    return this.#writes.run(() => this.#writeAll(chunk));
  }

  async #writeAll(chunk: Uint8Array): Promise<void> {
    if (this.#direction !== "write") {
      throw new Error(`Cannot write to ${this.peer}: it is open for reading`);
    }
    if (this.#syncError) throw this.#fail("write to", this.#syncError);
    let off = 0;
    while (off < chunk.length) {
      if (this.#closed) throw this.#closedError("write to");
      try {
        off += await this.#file.write(off === 0 ? chunk : chunk.subarray(off));
      } catch (err) {
        throw this.#fail("write to", err);
      }
    }
    this.#unsynced += chunk.length;
    const every = this.#hooks.syncEvery;
    if (every && this.#unsynced >= every && !this.#syncing) {
      this.#unsynced = 0;
      this.#syncing = this.#file.syncData().catch((err) => {
        if (!this.#closed) this.#syncError = err;
      }).finally(() => this.#syncing = null);
    }
  }

  /** Reads up to `buf.length` bytes; `null` at end of file (and ever after). */
  async read(buf: Uint8Array): Promise<number | null> {
    if (this.#direction !== "read") {
      throw new Error(`Cannot read from ${this.peer}: it is open for writing`);
    }
    if (this.#closed) throw this.#closedError("read from");
    if (this.#eof) return null;
    try {
      const n = await this.#file.read(buf);
      if (n === null) this.#eof = true;
      return n;
    } catch (err) {
      throw this.#fail("read from", err);
    }
  }

  /**
   * Waits for queued writes, runs the transport's finishing steps (fsync,
   * rename…) and closes. Rejects if a write or a step failed; the channel is
   * closed in every case, and a failed finish counts as abandoned.
   */
  async finish(): Promise<void> {
    if (this.#closed) throw this.#closedError("finish");
    try {
      await this.#writes.idle;
      await this.#syncing;
      if (this.#closed) throw this.#closedError("finish");
      try {
        if (this.#syncError) throw this.#syncError;
        await this.#hooks.beforeClose?.(this.#file);
      } catch (err) {
        throw this.#fail("finish", err);
      }
      this.#closeFile();
      try {
        await this.#hooks.committed?.();
      } catch (err) {
        throw this.#fail("finish", err);
      }
      this.#committed = true;
    } finally {
      this.close();
    }
  }

  /** Closes the file (interrupting pending I/O); an unfinished stream is abandoned. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#closeFile();
    if (!this.#committed) this.#run(this.#hooks.abandoned);
    this.#run(this.#hooks.released);
  }

  /** Same as {@link close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }

  #closeFile(): void {
    if (this.#fileClosed) return;
    this.#fileClosed = true;
    try {
      this.#file.close();
    } catch {
      // Already released.
    }
  }

  #run(hook: (() => void) | undefined): void {
    try {
      hook?.();
    } catch {
      // Cleanup is best effort; the error that matters was already reported.
    }
  }

  #closedError(what: string, cause?: unknown): Error {
    return this.#failure ??
      new Error(`Cannot ${what} ${this.peer}: the channel is closed`, { cause });
  }

  #fail(what: string, err: unknown): Error {
    if (this.#closed) return this.#closedError(what, err);
    this.#failure = new Error(`Cannot ${what} ${this.peer}: ${describeNetError(err)}`, {
      cause: err,
    });
    this.close();
    return this.#failure;
  }
}
