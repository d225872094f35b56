/**
 * A pull-style reader of an SSE response body for tests: next frame, frames until
 * one matches, cancel. It parses with ferryctl's parser (tools/sse.ts) and keeps the
 * comments, so tests can see keep-alives.
 * @module
 */
import assert from "node:assert/strict";
import { SseParser } from "../tools/sse.ts";

/** One SSE frame: an event (its type, data and last event ID) or a comment. */
export interface SseFrame {
  id?: string;
  event?: string;
  data?: string;
  comment?: string;
}

/** Reads SSE frames incrementally from a response body. */
export class SseReader {
  readonly #reader: ReadableStreamDefaultReader<Uint8Array>;
  readonly #parser = new SseParser();
  #frames: SseFrame[] = [];

  constructor(body: ReadableStream<Uint8Array>) {
    this.#reader = body.getReader();
  }

  /** The next frame; null at end of stream (an unfinished event is dropped). */
  async next(): Promise<SseFrame | null> {
    for (;;) {
      const ready = this.#frames.shift();
      if (ready) return ready;
      const { done, value } = await this.#reader.read();
      if (done) {
        this.#parser.end();
        return null;
      }
      this.#frames.push(...this.#parser.push(value));
    }
  }

  /** Reads frames until one satisfies `match`; returns every frame read, that one last. */
  async until(match: (f: SseFrame) => boolean): Promise<SseFrame[]> {
    const seen: SseFrame[] = [];
    for (;;) {
      const frame = await this.next();
      assert.ok(frame, "event stream ended early");
      seen.push(frame);
      if (match(frame)) return seen;
    }
  }

  /** Cancels the body (the client goes away). */
  cancel(): Promise<void> {
    return this.#reader.cancel();
  }
}
