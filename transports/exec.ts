/**
 * The `exec:COMMAND` transport (QEMU's exec: migration): the outgoing stream is
 * written to the stdin of `sh -c COMMAND`, the incoming stream is read from its
 * stdout. A command that fails — exits non-zero, is killed, or closes its pipe
 * before the stream is through — fails the channel with its exit status and the
 * last lines of its stderr. close() kills the command's whole process group and
 * reaps it. Whether exec: may be used at all (`--allow-exec`) is decided by
 * `createTransports`, not here.
 * @module
 */
import { type ShellOptions, ShellProcess } from "./shell.ts";
import { type Channel, type Listener, TransportError } from "./transport.ts";
import { parseUri } from "./uri.ts";
import { SerialWrites } from "./serial_writes.ts";

/** How long a command that broke its stdin pipe gets to exit before it is reported as still running. */
const EARLY_EXIT_WAIT_MS = 2000;

/** How long the incoming side waits, at end of stream, for the command's exit status. */
const EOF_EXIT_WAIT_MS = 2000;

/** Options for tests: how quickly a stopped command is SIGKILLed, and how it is spawned. */
export interface ExecOptions {
  /** Milliseconds between SIGTERM and SIGKILL when the channel is closed. */
  readonly killGraceMs?: number;
  /** Force how the command's session is made (see {@link ShellOptions.session}). */
  readonly session?: "setsid" | "detached";
}

function parseCommand(uri: string): string {
  const parsed = parseUri(uri);
  if (parsed.scheme !== "exec") {
    throw new TransportError("bad-uri", `Invalid migration URI "${uri}": expected exec:COMMAND`);
  }
  return parsed.command;
}

function spawn(command: string, options: ShellOptions, code: "connect-failed" | "listen-failed") {
  try {
    return new ShellProcess(command, options);
  } catch (err) {
    throw new TransportError(
      code,
      `Cannot run exec:${command}: ${err instanceof Error ? err.message : String(err)}`,
      { cause: err },
    );
  }
}

/** Waits for `promise` at most `ms`; undefined if it did not resolve in time. */
async function within<T>(promise: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<undefined>((resolve) => timer = setTimeout(() => resolve(undefined), ms)),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * What the two exec channels share: the child, the closed state, and the
 * rejecters of pending operations, which close() calls so no read, write or wait
 * outlives a close — even when the command ignores SIGTERM for a while.
 * (Not a `Promise.race` against one never-settling promise: every race would
 * leave a reaction on it, which slows a 1 GiB stream several times over.)
 */
abstract class ExecChannel implements Channel {
  readonly peer: string;
  protected readonly proc: ShellProcess;
  #closed = false;
  #failure: Error | undefined;
  readonly #pending = new Set<(err: Error) => void>();

  constructor(proc: ShellProcess) {
    this.proc = proc;
    this.peer = `exec:${proc.command}`;
  }

  /** The shell's pid (also its process group id). */
  get pid(): number {
    return this.proc.pid;
  }

  /** True once close() ran, finish() completed, or the command failed. */
  get closed(): boolean {
    return this.#closed;
  }

  abstract write(chunk: Uint8Array): Promise<void>;
  abstract read(buf: Uint8Array): Promise<number | null>;
  abstract finish(): Promise<void>;

  /**
   * Kills the command's process group (SIGTERM, then SIGKILL) and releases the
   * pipes; pending reads and writes reject at once. Idempotent.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    const err = this.closedError("use");
    for (const reject of this.#pending) reject(err);
    this.#pending.clear();
    this.releasePipe();
    this.proc.stop();
  }

  /** Resolves once the command was reaped and every pipe released (for tests and shutdown). */
  stopped(): Promise<void> {
    return this.proc.stopped();
  }

  /** Same as {@link close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }

  /** Frees ferry's end of the data pipe (abort the writer / cancel the reader). */
  protected abstract releasePipe(): void;

  /** Settles like `promise`, or rejects as soon as close() runs. */
  protected interruptible<T>(promise: Promise<T>): Promise<T> {
    if (this.#closed) {
      promise.catch(() => {});
      return Promise.reject(this.closedError("use"));
    }
    return new Promise<T>((resolve, reject) => {
      this.#pending.add(reject);
      promise.then(
        (value) => {
          this.#pending.delete(reject);
          resolve(value);
        },
        (err) => {
          this.#pending.delete(reject);
          reject(err);
        },
      );
    });
  }

  /** Throws the recorded failure, or "closed", if the channel can no longer be used. */
  protected check(what: string): void {
    if (this.#closed || this.#failure) throw this.closedError(what);
  }

  protected closedError(what: string): Error {
    return this.#failure ?? new Error(`Cannot ${what} ${this.peer}: the channel is closed`);
  }

  /** Records `error` as the channel's failure, closes, and returns it for throwing. */
  protected failWith(error: Error): Error {
    if (this.#closed && !this.#failure) return this.closedError("use");
    this.#failure ??= error;
    this.close();
    return this.#failure;
  }
}

/** The outgoing side: ferry writes the command's stdin. */
class ExecWriteChannel extends ExecChannel {
  readonly #writer: WritableStreamDefaultWriter<Uint8Array>;
  /** Queued writes, one at a time. */
  readonly #writes = new SerialWrites();

  constructor(proc: ShellProcess) {
    super(proc);
    this.#writer = proc.stdin.getWriter();
  }

  /** Writes `chunk` to the command's stdin; writes are queued, never interleaved. */
  write(chunk: Uint8Array): Promise<void> {
    return this.#writes.run(() => this.#write(chunk));
  }

  async #write(chunk: Uint8Array): Promise<void> {
    this.check("write to");
    try {
      await this.interruptible(this.#writer.write(chunk));
    } catch (err) {
      throw await this.#pipeFailed(err);
    }
  }

  /** The outgoing side has nothing to read. */
  read(_buf: Uint8Array): Promise<number | null> {
    return Promise.reject(new Error(`Cannot read from ${this.peer}: it is the outgoing side`));
  }

  /**
   * Closes the command's stdin and waits for it to exit. Resolves only on exit
   * status 0; otherwise rejects with the status and the stderr tail. Closes the
   * channel (and reaps the command) in every case.
   */
  async finish(): Promise<void> {
    this.check("finish");
    try {
      await this.#writes.idle;
      this.check("finish");
      try {
        await this.interruptible(this.#writer.close());
      } catch (err) {
        throw await this.#pipeFailed(err);
      }
      const status = await this.interruptible(this.proc.status);
      if (!status.success) {
        throw this.failWith(
          new Error(`The command ${this.peer} ${await this.proc.describeExit(status)}`),
        );
      }
    } finally {
      this.close();
    }
  }

  protected releasePipe(): void {
    this.#writer.abort().catch(() => {});
  }

  /** The stdin pipe broke: explain with the command's exit status when it exits soon. */
  async #pipeFailed(err: unknown): Promise<Error> {
    if (this.closed) return this.closedError("write to");
    const status = await within(this.proc.status, EARLY_EXIT_WAIT_MS);
    if (this.closed) return this.closedError("write to");
    const why = status
      ? await this.proc.describeExit(status, " before reading the whole stream")
      : `closed its input before reading the whole stream (${
        err instanceof Error ? err.message : String(err)
      })`;
    return this.failWith(new Error(`The command ${this.peer} ${why}`, { cause: err }));
  }
}

/** Bytes ferry asks the stdout pipe for at a time (a pipe hands out at most its capacity). */
const READ_SCRATCH_BYTES = 1 << 20;

/**
 * The incoming side: ferry reads the command's stdout. It reads with a BYOB
 * reader into one scratch buffer that is handed back and forth, instead of
 * letting the stream allocate a fresh 64 KiB buffer per read (2–3× faster on
 * the read loop, measured with a gigabyte of guest RAM mapped).
 */
class ExecReadChannel extends ExecChannel {
  readonly #reader: ReadableStreamBYOBReader;
  #scratch: Uint8Array<ArrayBuffer> = new Uint8Array(READ_SCRATCH_BYTES);
  #leftover: Uint8Array | null = null;
  #eof = false;

  constructor(proc: ShellProcess) {
    super(proc);
    this.#reader = proc.stdout.getReader({ mode: "byob" });
  }

  /** The incoming side cannot be written. */
  write(_chunk: Uint8Array): Promise<void> {
    return Promise.reject(new Error(`Cannot write to ${this.peer}: it is the incoming side`));
  }

  /**
   * Reads up to `buf.length` bytes of the command's stdout. At end of output it
   * resolves `null` if the command exited 0 (or is still running), and rejects
   * with the exit status and the stderr tail if it failed.
   */
  async read(buf: Uint8Array): Promise<number | null> {
    this.check("read from");
    if (this.#eof) return null;
    if (buf.length === 0) return 0;
    if (!this.#leftover) {
      let result: ReadableStreamReadResult<Uint8Array<ArrayBuffer>>;
      try {
        result = await this.interruptible(this.#reader.read(this.#scratch));
      } catch (err) {
        if (this.closed) throw this.closedError("read from");
        throw this.failWith(
          new Error(`Cannot read from ${this.peer}: ${(err as Error).message}`, { cause: err }),
        );
      }
      // The scratch buffer was transferred into the read and comes back in `value`.
      if (result.value) this.#scratch = new Uint8Array(result.value.buffer);
      if (result.done) return await this.#atEnd();
      this.#leftover = result.value;
    }
    const chunk = this.#leftover;
    const n = Math.min(buf.length, chunk.length);
    buf.set(n === chunk.length ? chunk : chunk.subarray(0, n));
    this.#leftover = n === chunk.length ? null : chunk.subarray(n);
    return n;
  }

  async #atEnd(): Promise<null> {
    const status = await this.interruptible(within(this.proc.status, EOF_EXIT_WAIT_MS));
    if (status && !status.success) {
      throw this.failWith(
        new Error(`The command ${this.peer} ${await this.proc.describeExit(status)}`),
      );
    }
    this.#eof = true;
    return null;
  }

  /** Nothing to flush on the incoming side: closes. */
  finish(): Promise<void> {
    this.close();
    return Promise.resolve();
  }

  protected releasePipe(): void {
    this.#reader.cancel().catch(() => {});
  }
}

/**
 * Starts `sh -c COMMAND` for an outgoing migration and returns a channel writing
 * its stdin. The command's stdout is discarded; its stderr is kept for error
 * messages. finish() resolves when the command exited 0.
 */
export function connectExec(
  uri: string,
  signal?: AbortSignal,
  options: ExecOptions = {},
): Promise<ExecChannelHandle> {
  try {
    const command = parseCommand(uri);
    signal?.throwIfAborted();
    const proc = spawn(command, {
      stdin: "piped",
      stdout: "null",
      killGraceMs: options.killGraceMs,
      session: options.session,
    }, "connect-failed");
    return Promise.resolve(new ExecWriteChannel(proc));
  } catch (err) {
    return Promise.reject(err);
  }
}

/** An exec: channel: a {@link Channel} that also tells its child's pid and when it is reaped. */
export type ExecChannelHandle = Channel & {
  /** The shell's pid (also its process group id). */
  readonly pid: number;
  /** Resolves once the command was reaped and every pipe released. */
  stopped(): Promise<void>;
};

/** A listener for `exec:COMMAND`: accept() runs the command once and reads its stdout. */
export class ExecListener implements Listener {
  /** The one channel there will be. */
  readonly peers = "one" as const;
  readonly address: string;
  readonly #command: string;
  readonly #options: ExecOptions;
  #closed = false;
  #accepted = false;

  /** Use {@link listenExec}. */
  constructor(command: string, options: ExecOptions) {
    this.#command = command;
    this.#options = options;
    this.address = `exec:${command}`;
  }

  /** Runs the command (once) and returns a channel reading its stdout. */
  accept(): Promise<ExecChannelHandle> {
    if (this.#closed) return Promise.reject(new Error(`Listener ${this.address} is closed`));
    if (this.#accepted) {
      return Promise.reject(new Error(`Listener ${this.address} already ran its command`));
    }
    this.#accepted = true;
    try {
      const proc = spawn(this.#command, {
        stdin: "null",
        stdout: "piped",
        killGraceMs: this.#options.killGraceMs,
        session: this.#options.session,
      }, "listen-failed");
      return Promise.resolve(new ExecReadChannel(proc));
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** Stops accepting; a channel already handed out stays open. Idempotent. */
  close(): void {
    this.#closed = true;
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * A listener for an incoming migration read from `exec:COMMAND`'s stdout. The
 * command runs when accept() is called (the destination does so at once), with
 * stdin from /dev/null.
 */
export function listenExec(
  uri: string,
  options: ExecOptions = {},
): Promise<ExecListener> {
  try {
    return Promise.resolve(new ExecListener(parseCommand(uri), options));
  } catch (err) {
    return Promise.reject(err);
  }
}
