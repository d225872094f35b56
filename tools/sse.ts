/**
 * ferry's one Server-Sent Events parser (ferryctl, the demo and the tests read the
 * event stream through it), following the WHATWG EventSource parsing rules so any
 * stream a browser accepts parses the same way here. The dashboard (web/app.js)
 * runs a plain-JS copy of the same rules; a test checks that both agree.
 * @module
 */

/** One dispatched event: its type ("message" when none was given), data and last event ID. */
export interface SseEvent {
  event: string;
  data: string;
  /** The stream's last event ID when the event was dispatched ("" while none was set). */
  id: string;
}

/** A comment line (`: text`), with one leading space stripped; EventSource ignores these. */
export interface SseComment {
  comment: string;
}

/** What {@link SseParser.push} returns, in stream order. */
export type SseItem = SseEvent | SseComment;

const LINE_END = /\r\n?|\n/g;

/**
 * An incremental SSE parser: feed it the stream's bytes (or its text, not both) in
 * chunks of any size; it returns the events completed by a blank line and the comments.
 * Lines end with CRLF, LF or CR (also when a CRLF straddles two chunks); one leading
 * BOM is skipped; `data:` lines join with "\n"; an `id:` containing NUL is ignored;
 * `retry:` counts only when it is all digits; a field without a colon has an empty
 * value; one space after the colon is stripped; unknown fields are ignored.
 */
export class SseParser {
  /** The reconnection time the stream asked for (`retry:`), ms; undefined until it does. */
  retry: number | undefined;
  /** The last event ID buffer: the latest valid `id:` value. */
  lastEventId = "";
  readonly #decoder = new TextDecoder("utf-8", { ignoreBOM: true });
  #started = false;
  #afterCr = false;
  #line = "";
  #type = "";
  #data = "";

  /** Parses the next chunk; returns the events it completed and the comments it held. */
  push(chunk: string | Uint8Array): SseItem[] {
    let text = typeof chunk === "string" ? chunk : this.#decoder.decode(chunk, { stream: true });
    const out: SseItem[] = [];
    if (text === "") return out;
    if (!this.#started) {
      this.#started = true;
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    }
    let start = 0;
    if (this.#afterCr && text.charCodeAt(0) === 10) start = 1; // the LF of a split CRLF
    this.#afterCr = false;
    LINE_END.lastIndex = start;
    for (let m; (m = LINE_END.exec(text));) {
      const line = this.#line + text.slice(start, m.index);
      this.#line = "";
      start = LINE_END.lastIndex;
      // A CR ending the chunk may be the first half of a CRLF.
      if (m[0] === "\r" && start === text.length) this.#afterCr = true;
      this.#processLine(line, out);
    }
    this.#line += text.slice(start);
    return out;
  }

  /** The stream ended: an event without its blank line (and any partial line) is discarded. */
  end(): void {
    this.#decoder.decode();
    this.#line = "";
    this.#type = "";
    this.#data = "";
    this.#afterCr = false;
  }

  #processLine(line: string, out: SseItem[]): void {
    if (line === "") return this.#dispatch(out);
    const colon = line.indexOf(":");
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.charCodeAt(0) === 32) value = value.slice(1);
    if (colon === 0) {
      out.push({ comment: value });
      return;
    }
    switch (colon < 0 ? line : line.slice(0, colon)) {
      case "event":
        this.#type = value;
        break;
      case "data":
        this.#data += value + "\n";
        break;
      case "id":
        if (!value.includes("\0")) this.lastEventId = value;
        break;
      case "retry":
        if (/^[0-9]+$/.test(value)) this.retry = Number(value);
        break;
    }
  }

  #dispatch(out: SseItem[]): void {
    const type = this.#type;
    const data = this.#data;
    this.#type = "";
    this.#data = "";
    if (data === "") return;
    out.push({ event: type || "message", data: data.slice(0, -1), id: this.lastEventId });
  }
}

/**
 * Reads an SSE response body and yields its events (comments skipped). Used by the
 * demo and the CLI tools to follow a migration live; leaving the loop cancels the body.
 */
export async function* readSse(body: ReadableStream<Uint8Array>): AsyncGenerator<SseEvent> {
  const parser = new SseParser();
  for await (const chunk of body) {
    for (const item of parser.push(chunk)) if ("event" in item) yield item;
  }
  parser.end();
}
