/**
 * The mechanics of `ferryctl console`, kept apart from the API client: follow a
 * guest's serial console stream (resuming with `Last-Event-ID` after a drop) and type
 * into it — keystrokes in small batches from a raw terminal, or line by line from a
 * pipe — until the detach key, Ctrl-] (as in telnet and `virsh console`).
 * @module
 */
import { SseParser } from "./sse.ts";

/** Ctrl-] (0x1d): typed on the terminal, or found in piped input, it ends the session. */
export const DETACH_KEY = 0x1d;

/** How the detach key is written in messages. */
export const DETACH_NAME = "Ctrl-]";

/** The most characters one POST /vm/console may carry (the API's limit). */
export const MAX_INPUT_CHARS = 4096;

/** How long keystrokes gather before they are sent (a paste or a fast typist: one POST). */
export const KEYSTROKE_BATCH_MS = 5;

/** The delay before reopening a dropped stream, until the server asks for another (`retry:`). */
const RECONNECT_MS = 1000;

/** How long input typed before a detach may still take to go (a hung ferry must not hold it). */
const DETACH_DRAIN_MS = 5000;

/** Reconnections in a row that bring no output before the session gives up. */
const RECONNECT_ATTEMPTS = 3;

/** Where typed input comes from: the process's stdin, or a test's stream. */
export interface ConsoleStdin {
  readonly readable: ReadableStream<Uint8Array>;
  /** A terminal: read in raw mode, so every key (Ctrl-C too) goes to the guest. */
  readonly tty: boolean;
  /** Turns the terminal's raw mode on or off (only called when `tty`). */
  setRaw(raw: boolean): void;
}

/** The process's stdin. */
export const processStdin: ConsoleStdin = {
  get readable() {
    return Deno.stdin.readable;
  },
  get tty() {
    return Deno.stdin.isTerminal();
  },
  setRaw: (raw) => Deno.stdin.setRaw(raw),
};

/** What the session needs from the API and the terminal. */
export interface ConsoleSessionDeps {
  /**
   * Opens GET /vm/console, resuming after `lastEventId` when given; throws (with a
   * one-line message) when the API refuses.
   */
  open(lastEventId: string | undefined, signal: AbortSignal): Promise<ReadableStream<Uint8Array>>;
  /** Types `text` (POST /vm/console); a rejection ends the session with that error. */
  send(text: string): Promise<void>;
  readonly stdin: ConsoleStdin;
  /** Writes console output (stdout). */
  out(text: string): void;
  /** Writes one line about the session (stderr), without its line end. */
  note(line: string): void;
}

/** How a session ended (a failed input rejects instead). */
export type ConsoleSessionEnd =
  | { readonly kind: "detached" }
  | { readonly kind: "ended"; readonly reason: string }
  | { readonly kind: "stopped"; readonly signal: Deno.Signal };

/**
 * Sends typed text in order, one request at a time. With `merge`, text pushed
 * within `batchMs` of the first keystroke, or while a request is on its way, goes
 * out together in the next one; without it each push is its own request (a line).
 * Text longer than {@link MAX_INPUT_CHARS} is split.
 */
export class InputSender {
  readonly #send: (text: string) => Promise<void>;
  readonly #merge: boolean;
  readonly #batchMs: number;
  readonly #queue: string[] = [];
  #running: Promise<void> | null = null;
  #failure: { error: unknown } | null = null;
  #closed = false;
  readonly #failed: Promise<never>;
  #fail!: (error: unknown) => void;

  constructor(send: (text: string) => Promise<void>, opts: { merge: boolean; batchMs: number }) {
    this.#send = send;
    this.#merge = opts.merge;
    this.#batchMs = opts.batchMs;
    this.#failed = new Promise<never>((_, reject) => (this.#fail = reject));
    this.#failed.catch(() => {}); // observed through failed() or drain()
  }

  /** Rejects with the first failed request's error. */
  failed(): Promise<never> {
    return this.#failed;
  }

  /** Queues `text` to be typed (nothing, once closed or failed). */
  push(text: string): void {
    if (text === "" || this.#failure || this.#closed) return;
    const last = this.#queue.length - 1;
    if (this.#merge && last >= 0 && this.#queue[last].length + text.length <= MAX_INPUT_CHARS) {
      this.#queue[last] += text;
    } else {
      this.#queue.push(...splitInput(text));
    }
    this.#running ??= this.#run();
  }

  /** Takes no more text; what is queued still goes. */
  close(): void {
    this.#closed = true;
  }

  /** Resolves once everything pushed so far was sent; rejects with a failure. */
  async drain(): Promise<void> {
    while (this.#running) await this.#running;
    if (this.#failure) throw this.#failure.error;
  }

  async #run(): Promise<void> {
    try {
      if (this.#merge && this.#batchMs > 0) {
        await sleep(this.#batchMs);
      }
      for (let text; (text = this.#queue.shift()) !== undefined;) await this.#send(text);
    } catch (error) {
      this.#failure = { error };
      this.#queue.length = 0;
      this.#fail(error);
    } finally {
      this.#running = null;
    }
  }
}

/** Resolves after `ms`, or at once when `signal` aborts. */
function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener("abort", done);
  });
}

/** Waits for `sender` to have sent everything, at most `ms`; rejects with its failure. */
async function drainWithin(sender: InputSender, ms: number): Promise<void> {
  const done = new AbortController();
  try {
    await Promise.race([sender.drain(), sleep(ms, done.signal)]);
  } finally {
    done.abort();
  }
}

/** `text` in pieces of at most {@link MAX_INPUT_CHARS}, never splitting a surrogate pair. */
export function splitInput(text: string): string[] {
  const pieces: string[] = [];
  let at = 0;
  while (text.length - at > MAX_INPUT_CHARS) {
    let end = at + MAX_INPUT_CHARS;
    const code = text.charCodeAt(end - 1);
    if (code >= 0xd800 && code <= 0xdbff) end--;
    pieces.push(text.slice(at, end));
    at = end;
  }
  pieces.push(text.slice(at));
  return pieces;
}

/**
 * Reads input into `sender` until the detach key (what precedes it is still sent)
 * or the end of input. A terminal's keystrokes go as they come; piped input goes a
 * line at a time (its last line even without a line end).
 */
async function readInput(
  reader: ReadableStreamDefaultReader<Uint8Array>,
  sender: InputSender,
  tty: boolean,
): Promise<"detach" | "eof"> {
  const decoder = new TextDecoder();
  let line = "";
  const take = (text: string) => {
    if (tty) return sender.push(text);
    line += text;
    for (let nl; (nl = line.indexOf("\n")) >= 0;) {
      sender.push(line.slice(0, nl + 1));
      line = line.slice(nl + 1);
    }
  };
  for (;;) {
    const { done, value } = await reader.read().catch(() => ({ done: true, value: undefined }));
    if (done || value === undefined) break;
    const cut = value.indexOf(DETACH_KEY);
    take(decoder.decode(cut < 0 ? value : value.subarray(0, cut), { stream: cut < 0 }));
    if (cut >= 0) {
      sender.push(line);
      return "detach";
    }
  }
  take(decoder.decode());
  sender.push(line);
  return "eof";
}

/**
 * Writes the console's `output` events to `out` until `signal` aborts (null) or
 * the stream is gone for good (why, in a few words). A stream that drops is
 * reopened with the last event id, after the delay the server asked for
 * (`retry:`), so nothing is lost or repeated; it gives up when reopening fails,
 * or after {@link RECONNECT_ATTEMPTS} reopenings in a row that brought no output.
 */
async function followOutput(
  first: ReadableStream<Uint8Array>,
  deps: Pick<ConsoleSessionDeps, "open" | "out">,
  signal: AbortSignal,
): Promise<string | null> {
  let body = first;
  let lastEventId: string | undefined;
  let retryMs = RECONNECT_MS;
  let empty = 0;
  for (;;) {
    let why = "the ferry closed it";
    let got = false;
    const parser = new SseParser();
    try {
      for await (const chunk of body) {
        for (const item of parser.push(chunk)) {
          if (!("event" in item) || item.event !== "output") continue;
          deps.out((JSON.parse(item.data) as { text: string }).text);
          lastEventId = item.id;
          got = true;
        }
      }
    } catch (e) {
      why = (e as Error).message;
    }
    retryMs = parser.retry ?? retryMs;
    if (signal.aborted) return null;
    empty = got ? 0 : empty + 1;
    if (empty > RECONNECT_ATTEMPTS) return why;
    await sleep(retryMs, signal);
    if (signal.aborted) return null;
    try {
      body = await deps.open(lastEventId, signal);
    } catch (e) {
      return signal.aborted ? null : (e as Error).message;
    }
  }
}

/**
 * Attaches to a guest's console until the detach key ("detached"), until its
 * stream is gone ("ended", with why), or, on a raw terminal, until a SIGTERM or
 * SIGHUP ("stopped"). The stream is opened first, so a refusal
 * (no console, a bad token) throws before the terminal changes. On a terminal,
 * stdin is in raw mode for the session and restored however it ends. After piped
 * input ends, output goes on until the stream does (or the process is stopped).
 * A failed input request rejects, after the terminal is restored.
 */
export async function runConsoleSession(deps: ConsoleSessionDeps): Promise<ConsoleSessionEnd> {
  const abort = new AbortController();
  const first = await deps.open(undefined, abort.signal);
  const tty = deps.stdin.tty;
  deps.note(
    `attached to the guest's console; ${DETACH_NAME} detaches` +
      (tty ? "" : " (piped input goes a line at a time)"),
  );
  const output = followOutput(first, deps, abort.signal);
  const sender = new InputSender(deps.send, { merge: tty, batchMs: KEYSTROKE_BATCH_MS });
  let reader: ReadableStreamDefaultReader<Uint8Array> | undefined;
  let raw = false;
  // A raw terminal gets no Ctrl-C; a SIGTERM or SIGHUP ends the session and restores it.
  let stopped!: (end: ConsoleSessionEnd) => void;
  const signalled = new Promise<ConsoleSessionEnd>((resolve) => (stopped = resolve));
  const onSignal = (signal: Deno.Signal) => () => stopped({ kind: "stopped", signal });
  const handlers = (["SIGTERM", "SIGHUP"] as const).map((name) => [name, onSignal(name)] as const);
  try {
    reader = deps.stdin.readable.getReader();
    if (tty) {
      deps.stdin.setRaw(true);
      raw = true;
      for (const [name, handler] of handlers) Deno.addSignalListener(name, handler);
    }
    return await Promise.race<ConsoleSessionEnd>([
      output.then((reason) => ({ kind: "ended", reason: reason ?? "aborted" })),
      readInput(reader, sender, tty).then(async (how) => {
        await drainWithin(sender, DETACH_DRAIN_MS);
        // At the end of piped input, output goes on: only the stream's end settles the race.
        return how === "detach" ? { kind: "detached" } : new Promise<never>(() => {});
      }),
      sender.failed(),
      signalled,
    ]);
  } finally {
    sender.close();
    abort.abort();
    reader?.cancel().catch(() => {});
    if (raw) {
      deps.stdin.setRaw(false);
      for (const [name, handler] of handlers) Deno.removeSignalListener(name, handler);
    }
    await output;
    await drainWithin(sender, DETACH_DRAIN_MS).catch(() => {});
  }
}
