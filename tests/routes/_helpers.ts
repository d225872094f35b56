import assert from "node:assert/strict";
import type { MemoryTransports } from "../../transports/memory.ts";
import { call, testApp } from "../helpers/app.ts";

/** Resolves after `ms` milliseconds (the timer is always cleared by firing). */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `check` until it is true; fails after `tries` polls of `ms` each. */
export async function waitFor(check: () => boolean, what: string, tries = 200, ms = 10) {
  for (let i = 0; i < tries; i++) {
    if (check()) return;
    await sleep(ms);
  }
  assert.fail(`timed out waiting for ${what}`);
}

/** A second ferry sharing `transports`, its guest filled with random bytes and a counter set. */
export async function sourceApp(transports: MemoryTransports, ram = 1 << 20) {
  const src = testApp({ transports, ram });
  src.guest.fillRandom(11);
  src.guest.blocks[0].bytes.fill(0, 0, ram / 4);
  src.guest.counter = 77n;
  const patch = await call(src.app, "PATCH", "/migrations/parameters", {
    max_bandwidth: 1 << 30,
  });
  assert.equal(patch.status, 200);
  return src;
}

/** One SSE frame: its id, event name and data (joined), or a comment. */
export interface SseFrame {
  id?: string;
  event?: string;
  data?: string;
  comment?: string;
}

/** Reads SSE frames incrementally from a response body. */
export class SseReader {
  readonly reader: ReadableStreamDefaultReader<Uint8Array>;
  readonly #decoder = new TextDecoder();
  #text = "";
  #frames: SseFrame[] = [];

  constructor(body: ReadableStream<Uint8Array>) {
    this.reader = body.getReader();
  }

  /** The next frame; null at end of stream. */
  async next(): Promise<SseFrame | null> {
    for (;;) {
      const ready = this.#frames.shift();
      if (ready) return ready;
      const sep = this.#text.indexOf("\n\n");
      if (sep >= 0) {
        const block = this.#text.slice(0, sep);
        this.#text = this.#text.slice(sep + 2);
        this.#frames.push(parseFrame(block));
        continue;
      }
      const { done, value } = await this.reader.read();
      if (done) return null;
      this.#text += this.#decoder.decode(value, { stream: true });
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
    return this.reader.cancel();
  }
}

function parseFrame(block: string): SseFrame {
  const frame: SseFrame = {};
  const data: string[] = [];
  const comments: string[] = [];
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) {
      comments.push(line.slice(1).trim());
      continue;
    }
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "id") frame.id = value;
    else if (field === "event") frame.event = value;
    else if (field === "data") data.push(value);
  }
  if (data.length) frame.data = data.join("\n");
  if (comments.length) frame.comment = comments.join("\n");
  return frame;
}
