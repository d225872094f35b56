/**
 * A small QMP (QEMU Machine Protocol) client for the benchmark harness: it connects to
 * a QEMU monitor on a unix socket, reads the greeting, negotiates capabilities and runs
 * one command at a time; the asynchronous events QEMU interleaves are kept, with the
 * time they were read, for {@link QmpClient.nextEvent}.
 */

/** A QMP command answered with `{"error": …}`; the message names the command. */
export class QmpError extends Error {
  /** QMP's error class, e.g. `GenericError`, `CommandNotFound`. */
  readonly errorClass: string;
  /** QEMU's human-readable description. */
  readonly desc: string;
  constructor(readonly command: string, errorClass: string, desc: string) {
    super(`QMP ${command} failed: ${errorClass}: ${desc}`);
    this.name = "QmpError";
    this.errorClass = errorClass;
    this.desc = desc;
  }
}

/** The connection broke or QEMU answered something that is not QMP. */
export class QmpProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "QmpProtocolError";
  }
}

/** The greeting QEMU sends on connect (`{"QMP": {version, capabilities}}`). */
export interface QmpGreeting {
  readonly version?: {
    readonly qemu?: { readonly major: number; readonly minor: number; readonly micro: number };
    readonly package?: string;
  };
  readonly capabilities?: readonly string[];
}

/** An asynchronous event (`{"event": …}`) received while waiting for a reply. */
export interface QmpEvent {
  readonly event: string;
  readonly data?: unknown;
  readonly timestamp?: { readonly seconds: number; readonly microseconds: number };
}

/** An event with the time (performance.now()) this client read it. */
export interface ReceivedQmpEvent extends QmpEvent {
  readonly receivedAt: number;
}

/** Events kept for {@link QmpClient.nextEvent}; older ones are dropped. */
const KEPT_EVENTS = 256;

/** Options for {@link QmpClient.connect}. */
export interface QmpConnectOptions {
  /** Called for every event seen while a command waits for its reply. */
  readonly onEvent?: (event: QmpEvent) => void;
}

type Message = Record<string, unknown>;

/**
 * One QMP session over a unix socket. Commands are serialized: {@link execute} sends
 * one command, reads lines until that command's reply and returns its `return` value
 * (or throws a {@link QmpError}); events read on the way are handed to `onEvent`.
 */
export class QmpClient {
  readonly #conn: Deno.Conn;
  readonly #decoder = new TextDecoder();
  readonly #encoder = new TextEncoder();
  readonly #buf = new Uint8Array(64 * 1024);
  readonly #onEvent: ((event: QmpEvent) => void) | undefined;
  /** Events read and not yet taken by nextEvent, oldest first. */
  readonly #events: ReceivedQmpEvent[] = [];
  #pending = "";
  #queue: Promise<unknown> = Promise.resolve();
  #nextId = 1;
  #closed = false;
  /** The greeting's contents, available after {@link connect}. */
  greeting: QmpGreeting = {};

  private constructor(conn: Deno.Conn, onEvent: ((event: QmpEvent) => void) | undefined) {
    this.#conn = conn;
    this.#onEvent = onEvent;
  }

  /** Connects to `path`, reads the greeting and leaves capabilities negotiation mode. */
  static async connect(path: string, options: QmpConnectOptions = {}): Promise<QmpClient> {
    const conn = await Deno.connect({ transport: "unix", path });
    const client = new QmpClient(conn, options.onEvent);
    try {
      const hello = await client.#readMessage();
      if (typeof hello.QMP !== "object" || hello.QMP === null) {
        throw new QmpProtocolError(`expected a QMP greeting, got ${JSON.stringify(hello)}`);
      }
      client.greeting = hello.QMP as QmpGreeting;
      await client.execute("qmp_capabilities");
      return client;
    } catch (e) {
      client.close();
      throw e;
    }
  }

  /** Runs `command` with `args`; resolves to its `return` value, throws {@link QmpError}. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    const run = this.#queue.then(() => this.#execute<T>(command, args));
    this.#queue = run.catch(() => undefined);
    return run;
  }

  async #execute<T>(command: string, args: Record<string, unknown> | undefined): Promise<T> {
    if (this.#closed) throw new QmpProtocolError(`QMP ${command}: connection closed`);
    const id = `ferry-${this.#nextId++}`;
    const msg: Message = { execute: command, id };
    if (args !== undefined) msg.arguments = args;
    await this.#writeAll(this.#encoder.encode(JSON.stringify(msg) + "\n"));
    for (;;) {
      const reply = await this.#readMessage(command);
      if (typeof reply.event === "string") {
        this.#keep(reply);
        continue;
      }
      if (reply.id !== undefined && reply.id !== id) continue; // a stale reply: not ours
      if ("return" in reply) return reply.return as T;
      if (typeof reply.error === "object" && reply.error !== null) {
        const err = reply.error as { class?: unknown; desc?: unknown };
        throw new QmpError(command, String(err.class ?? "Error"), String(err.desc ?? ""));
      }
      throw new QmpProtocolError(`QMP ${command}: unexpected reply ${JSON.stringify(reply)}`);
    }
  }

  /**
   * The first event `match` accepts: one read earlier (while a command waited) or
   * the next to come; it is taken off the kept events. While it waits, commands
   * on this client queue behind it. Rejects when the connection ends.
   */
  nextEvent(match: (event: QmpEvent) => boolean): Promise<ReceivedQmpEvent> {
    const run = this.#queue.then(async () => {
      for (;;) {
        const i = this.#events.findIndex(match);
        if (i >= 0) return this.#events.splice(i, 1)[0];
        if (this.#closed) throw new QmpProtocolError("QMP: connection closed");
        const msg = await this.#readMessage("waiting for an event");
        // Anything but an event here is a stale reply: no command is waiting.
        if (typeof msg.event === "string") this.#keep(msg);
      }
    });
    this.#queue = run.catch(() => undefined);
    return run;
  }

  #keep(msg: Message): void {
    const event = { ...msg, receivedAt: performance.now() } as unknown as ReceivedQmpEvent;
    this.#events.push(event);
    if (this.#events.length > KEPT_EVENTS) this.#events.shift();
    this.#onEvent?.(event);
  }

  async #writeAll(bytes: Uint8Array): Promise<void> {
    let off = 0;
    while (off < bytes.length) off += await this.#conn.write(bytes.subarray(off));
  }

  /** Reads one JSON object (QMP sends one per line, `\r\n`-terminated). */
  async #readMessage(context = "greeting"): Promise<Message> {
    for (;;) {
      const nl = this.#pending.indexOf("\n");
      if (nl >= 0) {
        const line = this.#pending.slice(0, nl).trim();
        this.#pending = this.#pending.slice(nl + 1);
        if (line === "") continue;
        let parsed: unknown;
        try {
          parsed = JSON.parse(line);
        } catch {
          throw new QmpProtocolError(`QMP ${context}: not JSON: ${line.slice(0, 200)}`);
        }
        if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
          throw new QmpProtocolError(`QMP ${context}: not an object: ${line.slice(0, 200)}`);
        }
        return parsed as Message;
      }
      let n: number | null;
      try {
        n = await this.#conn.read(this.#buf);
      } catch (e) {
        throw new QmpProtocolError(`QMP ${context}: ${(e as Error).message}`);
      }
      if (n === null) throw new QmpProtocolError(`QMP ${context}: connection closed by QEMU`);
      this.#pending += this.#decoder.decode(this.#buf.subarray(0, n), { stream: true });
    }
  }

  /** Closes the socket (idempotent). QEMU keeps running. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#conn.close();
    } catch {
      // already closed
    }
  }

  /** Same as {@link close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}
