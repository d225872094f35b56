import assert from "node:assert/strict";
import type { Channel } from "../../transports/transport.ts";
import { TransportError } from "../../transports/transport.ts";

/** The error codes a TransportError can carry. */
export type TransportErrorCode = TransportError["code"];

/** Asserts that `fn` throws (or its promise rejects with) a TransportError of `code` whose message contains every `fragment`. */
export async function assertTransportError(
  fn: () => unknown,
  code: TransportErrorCode,
  ...fragments: string[]
): Promise<TransportError> {
  let caught: unknown;
  try {
    await fn();
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof TransportError, `expected a TransportError, got ${caught}`);
  assert.equal(caught.code, code, caught.message);
  for (const f of fragments) assert.match(caught.message, new RegExp(escape(f), "i"));
  return caught;
}

/** Asserts that `promise` rejects with an Error whose message matches `pattern`. */
export async function assertRejectsMatching(
  promise: Promise<unknown>,
  pattern: RegExp,
): Promise<Error> {
  let caught: unknown;
  try {
    await promise;
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof Error, `expected a rejection, got ${caught}`);
  assert.match(caught.message, pattern);
  return caught;
}

function escape(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/** Deterministic, non-repeating-looking bytes so misordered data is caught. */
export function pattern(length: number, seed = 1): Uint8Array {
  const out = new Uint8Array(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

/** Reads `channel` until EOF and returns everything it delivered. */
export async function readAll(channel: Channel, bufSize = 64 << 10): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  let total = 0;
  const buf = new Uint8Array(bufSize);
  for (;;) {
    const n = await channel.read(buf);
    if (n === null) break;
    parts.push(buf.slice(0, n));
    total += n;
  }
  const out = new Uint8Array(total);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

/** Reads exactly `length` bytes from `channel` (fails on an early EOF). */
export async function readExactly(channel: Channel, length: number): Promise<Uint8Array> {
  const out = new Uint8Array(length);
  let off = 0;
  while (off < length) {
    const n = await channel.read(out.subarray(off, Math.min(length, off + (256 << 10))));
    if (n === null) throw new Error(`EOF after ${off} of ${length} bytes`);
    off += n;
  }
  return out;
}

/** Writes `data` in `chunk`-sized pieces (no finish). */
export async function writeAll(channel: Channel, data: Uint8Array, chunk = 256 << 10) {
  for (let off = 0; off < data.length; off += chunk) {
    await channel.write(data.subarray(off, off + chunk));
  }
}

/** Writes `data` in `chunk`-sized pieces, then finish()es the channel. */
export async function writeAllAndFinish(channel: Channel, data: Uint8Array, chunk = 256 << 10) {
  for (let off = 0; off < data.length; off += chunk) {
    await channel.write(data.subarray(off, off + chunk));
  }
  await channel.finish();
}

/** Resolves after `ms` milliseconds (lets the event loop and sockets make progress). */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Whether something settles within `ms`: true if `promise` settled first. */
export async function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let settled = false;
  promise.then(() => settled = true, () => settled = true);
  await sleep(ms);
  return settled;
}
