// The dashboard's terminal pane: the guest's serial console (GET /vm/console, an SSE
// stream read with fetch so the bearer token goes in a header) shown in xterm.js, and
// what is typed there sent with POST /vm/console. web/app.js imports it; the page
// builder inlines it there, so it imports nothing itself. The pure helpers at the
// top are exported for tests (tests/web/console_pane_test.ts).

/** History asked for on the first connection: all the console keeps (64 KiB). */
export const REPLAY_BYTES = 64 * 1024;
/** Largest input in one POST /vm/console (the API's limit, in UTF-16 code units). */
export const MAX_INPUT_CHARS = 4096;
/** No byte at all for this long (keep-alives come every 15 s): the stream is dead. */
const CONSOLE_STALL_MS = 40_000;

/**
 * Where a console chunk goes, given `reached`, the console offset the terminal has
 * shown up to (null before the first chunk), and whether the chunk is the first of
 * its connection (the history the server replays). `chunk` is `{offset, end, text}`,
 * `end` being the offset after it (the event id). Returns one of
 * - `{action: "write", text}`: show text (the part past `reached` of an overlap);
 * - `{action: "skip"}`: already shown;
 * - `{action: "resume"}`: output between `reached` and the chunk is missing (the
 *   console jumped ahead under this connection): reconnect from `reached`;
 * - `{action: "reset", text}`: the console starts before `reached` (another console,
 *   e.g. a restarted ferry): clear the terminal, then show text.
 * A first chunk past `reached` is written as is: the server no longer keeps the gap.
 */
export function placeChunk(reached, chunk, first) {
  if (reached === null || chunk.offset === reached) return { action: "write", text: chunk.text };
  if (chunk.offset > reached) {
    return first ? { action: "write", text: chunk.text } : { action: "resume" };
  }
  if (first) return { action: "reset", text: chunk.text };
  if (chunk.end <= reached) return { action: "skip" };
  return { action: "write", text: afterBytes(chunk.text, reached - chunk.offset) };
}

/** `text` without its first `bytes` UTF-8 bytes. */
export function afterBytes(text, bytes) {
  return new TextDecoder().decode(new TextEncoder().encode(text).subarray(bytes));
}

/**
 * A report the terminal itself sends back (cursor position `ESC [ row ; col R`,
 * device attributes `ESC [ ? … c`, status `ESC [ 0 n`), as opposed to a keystroke.
 * Queries inside replayed history must not be answered: the shell asked long ago.
 */
export function isTerminalReport(data) {
  return data.startsWith("\x1b[") && /^[?>]?[0-9;]*[Rcn]$/.test(data.slice(2));
}

/**
 * The note shown over the terminal for a guest run state: why typing does nothing
 * now, or "" while the guest runs.
 */
export function consoleNote(runState) {
  switch (runState) {
    case undefined:
    case null:
    case "running":
      return "";
    case "postmigrate":
      return "The guest migrated away: its console carries on at the destination. " +
        "Typing here is not sent.";
    case "inmigrate":
      return "Waiting for an incoming migration: the console shows the guest once it arrives. " +
        "Typing here is not sent.";
    default:
      return `The guest is ${runState}: the console takes input only while the guest runs. ` +
        "Typing here is not sent.";
  }
}

/**
 * Sends what is typed in batches: one POST at a time; keystrokes typed while one is
 * on its way go together in the next (at most {@link MAX_INPUT_CHARS} each). When a
 * send fails, what was typed meanwhile is dropped: it was meant for the state the
 * failure says is gone.
 */
export class InputBatcher {
  #pending = "";
  #busy = false;
  #send;

  /** `send(text)` resolves true once the text was typed into the guest, false if not. */
  constructor(send) {
    this.#send = send;
  }

  /** Characters waiting for the next POST. */
  get pending() {
    return this.#pending.length;
  }

  /** Adds typed text; sends it now unless a POST is on its way. */
  push(data) {
    this.#pending += data;
    if (!this.#busy) this.#pump();
  }

  async #pump() {
    this.#busy = true;
    try {
      while (this.#pending !== "") {
        let n = Math.min(this.#pending.length, MAX_INPUT_CHARS);
        // Never split a surrogate pair between two POSTs.
        if (n < this.#pending.length && /[\ud800-\udbff]/.test(this.#pending[n - 1])) n--;
        const text = this.#pending.slice(0, n);
        this.#pending = this.#pending.slice(n);
        let ok = false;
        try {
          ok = await this.#send(text);
        } catch {
          ok = false;
        }
        if (!ok) this.#pending = "";
      }
    } finally {
      this.#busy = false;
    }
  }
}

/** The text of an xterm.js buffer: one string per line, wrapped rows joined, trailing blanks cut. */
export function bufferText(buffer) {
  const lines = [];
  for (let i = 0; i < buffer.length; i++) {
    const line = buffer.getLine(i);
    if (!line) continue;
    const text = line.translateToString(true);
    if (line.isWrapped && lines.length > 0) lines[lines.length - 1] += text;
    else lines.push(text);
  }
  while (lines.length > 0 && lines[lines.length - 1] === "") lines.pop();
  return lines.join("\n");
}

/**
 * The terminal pane: shown for a guest with a console (GET /vm says `guest: "x86"`),
 * hidden otherwise. It follows GET /vm/console for good, reconnecting with
 * Last-Event-ID after a blip, and starts over when a migration brought the guest
 * (the console's history was replaced by the source's). `io` gives what it needs
 * from the page: `headers(extra)` (with the token), `parser()` (an SSE parser),
 * `unauthorized()` (the token was refused) and `send(text)` (POST /vm/console,
 * resolving null once typed, else why not).
 */
export class ConsolePane {
  #doc;
  #io;
  #term = null;
  #input;
  #reached = null;
  #quiet = 0;
  #stopped = true;
  #run = 0;
  #again = false;
  #controller = null;
  #runState = undefined;
  #guest = undefined;
  #sendError = "";
  #unavailable = "";

  constructor(doc, io) {
    this.#doc = doc;
    this.#io = io;
    this.#input = new InputBatcher(async (text) => {
      const why = await io.send(text);
      this.#sendError = why ?? "";
      this.#renderNote();
      return why === null;
    });
  }

  #$(id) {
    return this.#doc.getElementById(id);
  }

  /** Follows the guest as GET /vm and the events report it (`vm` may be null). */
  update(vm) {
    const guest = vm?.guest;
    if (guest !== this.#guest) {
      this.#guest = guest;
      this.#$("console-card").hidden = guest !== "x86";
      if (guest === "x86") this.#open();
      else this.stop();
    }
    const runState = vm?.run_state;
    if (runState !== this.#runState) {
      const arrived = this.#runState === "inmigrate" && runState !== undefined;
      this.#runState = runState;
      if (runState === "running") this.#sendError = "";
      // A migration brought the guest: its console now starts with the source's history.
      if (arrived && this.#term) this.#restart();
      this.#renderNote();
    }
    if (guest === "x86" && this.#stopped) this.#follow();
  }

  /** Stops following (the token was refused, or the guest has no console). */
  stop() {
    this.#stopped = true;
    this.#run++;
    this.#controller?.abort();
  }

  /** What the terminal shows, scrollback included, as text. */
  text() {
    return this.#term ? bufferText(this.#term.buffer.active) : "";
  }

  #open() {
    if (this.#term) return;
    const Terminal = globalThis.Terminal;
    if (typeof Terminal !== "function") {
      this.#unavailable = "xterm.js is not loaded: the console cannot be shown here.";
      this.#renderNote();
      return;
    }
    this.#term = new Terminal({
      cols: 80,
      rows: 24,
      scrollback: 5000,
      cursorBlink: true,
      fontFamily: 'ui-monospace, "DejaVu Sans Mono", monospace',
      fontSize: 13,
      theme: { background: "#0b1220", foreground: "#e5e7eb", cursor: "#a7f3d0" },
    });
    this.#term.open(this.#$("terminal"));
    this.#term.onData((data) => {
      if (this.#quiet > 0 && isTerminalReport(data)) return;
      this.#input.push(data);
    });
  }

  /** Starts over: a clear terminal, and the whole history asked for again at once. */
  #restart() {
    this.#reached = null;
    this.#clear();
    this.#again = true;
    this.#controller?.abort();
  }

  /**
   * Clears the terminal, scrollback included, after what was written before: a full
   * reset (RIS) goes through xterm's write queue, where `reset()` would overtake it.
   */
  #clear() {
    this.#term?.write("\x1bc");
  }

  #write(text, quiet) {
    if (!this.#term || text === "") return;
    if (!quiet) {
      this.#term.write(text);
      return;
    }
    this.#quiet++;
    this.#term.write(text, () => this.#quiet--);
  }

  #setConnection(state) {
    const el = this.#$("console-conn");
    el.className = `conn conn-${state}`;
    el.dataset.state = state;
    el.textContent = state === "live"
      ? "live"
      : state === "connecting"
      ? "connecting…"
      : state === "offline"
      ? "offline"
      : "reconnecting…";
  }

  #renderNote() {
    const el = this.#$("console-note");
    const text = this.#unavailable || this.#sendError || consoleNote(this.#runState);
    el.hidden = text === "";
    if (el.textContent !== text) el.textContent = text;
  }

  /** Follows GET /vm/console until stopped (one loop at a time: a new one ends the last). */
  async #follow() {
    const run = ++this.#run;
    this.#stopped = false;
    const live = () => run === this.#run && !this.#stopped;
    let delay = 500;
    while (live()) {
      const controller = new AbortController();
      this.#controller = controller;
      this.#again = false;
      let watchdog;
      try {
        this.#setConnection(this.#reached === null ? "connecting" : "reconnecting");
        const headers = this.#io.headers({ accept: "text/event-stream" });
        if (this.#reached !== null) headers["last-event-id"] = String(this.#reached);
        const res = await fetch(`vm/console?replay=${REPLAY_BYTES}`, {
          headers,
          cache: "no-store",
          signal: controller.signal,
        });
        if (res.status === 401 || res.status === 429) {
          await res.body?.cancel();
          if (!live()) return;
          this.stop();
          this.#setConnection("offline");
          this.#io.unauthorized();
          return;
        }
        // 409: no console (yet): a ferry restarted with another guest; try again later.
        if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
        this.#setConnection("live");
        delay = 500;
        const parser = this.#io.parser();
        const reader = res.body.getReader();
        const arm = () => {
          clearTimeout(watchdog);
          watchdog = setTimeout(() => controller.abort(), CONSOLE_STALL_MS);
        };
        arm();
        let first = true;
        while (!this.#again) {
          const { done, value } = await reader.read();
          if (done) break;
          arm();
          for (const frame of parser.push(value)) {
            if (frame.event !== "output") continue;
            if (!this.#take(frame, first)) {
              this.#again = true;
              controller.abort();
              break;
            }
            first = false;
          }
        }
      } catch (_) {
        // A network blip, a restarted ferry, the watchdog or a restart: try again below.
      } finally {
        clearTimeout(watchdog);
      }
      if (!live()) return;
      if (this.#again) continue;
      this.#setConnection("reconnecting");
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(5000, delay * 2);
    }
  }

  /** Shows one `output` frame; false when output before it is missing (reconnect). */
  #take(frame, first) {
    let data;
    try {
      data = JSON.parse(frame.data);
    } catch {
      return true;
    }
    const end = Number(frame.id);
    const chunk = {
      offset: data.offset,
      end: Number.isSafeInteger(end)
        ? end
        : data.offset + new TextEncoder().encode(data.text).length,
      text: data.text,
    };
    const placed = placeChunk(this.#reached, chunk, first);
    if (placed.action === "resume") return false;
    if (placed.action === "reset") this.#clear();
    if (placed.action !== "skip") this.#write(placed.text, first);
    this.#reached = Math.max(placed.action === "reset" ? 0 : this.#reached ?? 0, chunk.end);
    return true;
  }
}
