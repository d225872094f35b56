import assert from "node:assert/strict";
import {
  loadSnapshotKey,
  parseKeyFile,
  SEAL_CHUNK_BYTES,
  SEAL_HEADER_BYTES,
  SEAL_MAGIC,
  SealError,
  SealingChannel,
  type SnapshotKey,
  UnsealingChannel,
  UnsealingListener,
} from "../../transports/sealed.ts";
import type { Channel, Listener } from "../../transports/transport.ts";
import { pattern } from "./_helpers.ts";

const dir = await Deno.makeTempDir({ prefix: "ferry-sealed-" });
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));

const hex = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");

async function keyFile(name: string, text: string | Uint8Array): Promise<string> {
  const path = `${dir}/${name}`;
  if (typeof text === "string") await Deno.writeTextFile(path, text);
  else await Deno.writeFile(path, text);
  return path;
}

const KEY = await loadSnapshotKey(
  await keyFile("k", hex(crypto.getRandomValues(new Uint8Array(32))) + "\n"),
);
const OTHER = await loadSnapshotKey(
  await keyFile("o", hex(crypto.getRandomValues(new Uint8Array(32)))),
);

/** A one-way channel that keeps what is written (a file:'s outgoing half). */
class Sink implements Channel {
  readonly peer = "file:/tmp/g.ferry";
  closed = false;
  readonly parts: Uint8Array[] = [];
  write(chunk: Uint8Array): Promise<void> {
    this.parts.push(chunk.slice());
    return Promise.resolve();
  }
  read(): Promise<number | null> {
    return Promise.resolve(null);
  }
  finish(): Promise<void> {
    this.closed = true;
    return Promise.resolve();
  }
  close(): void {
    this.closed = true;
  }
  [Symbol.dispose](): void {
    this.close();
  }
  bytes(): Uint8Array {
    const out = new Uint8Array(this.parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of this.parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }
}

/** A one-way channel that reads `bytes` in reads of at most `step` (a file:'s incoming half). */
class Source implements Channel {
  readonly peer = "file:/tmp/g.ferry";
  closed = false;
  #at = 0;
  constructor(readonly bytes: Uint8Array, readonly step = 65536) {}
  read(buf: Uint8Array): Promise<number | null> {
    if (this.#at >= this.bytes.length) return Promise.resolve(null);
    const n = Math.min(buf.length, this.step, this.bytes.length - this.#at);
    buf.set(this.bytes.subarray(this.#at, this.#at + n));
    this.#at += n;
    return Promise.resolve(n);
  }
  write(): Promise<void> {
    return Promise.reject(new Error("read-only"));
  }
  finish(): Promise<void> {
    return Promise.resolve();
  }
  close(): void {
    this.closed = true;
  }
  [Symbol.dispose](): void {
    this.close();
  }
}

async function seal(
  plain: Uint8Array,
  key: SnapshotKey = KEY,
  writes = 100_003,
): Promise<Uint8Array> {
  const sink = new Sink();
  const ch = new SealingChannel(sink, key);
  for (let at = 0; at < plain.length; at += writes) {
    await ch.write(plain.subarray(at, Math.min(plain.length, at + writes)));
  }
  await ch.finish();
  assert.ok(sink.closed, "finish() finishes the inner channel");
  return sink.bytes();
}

async function unseal(sealed: Uint8Array, key: SnapshotKey = KEY): Promise<Uint8Array> {
  const ch = new UnsealingChannel(new Source(sealed), key);
  const parts: Uint8Array[] = [];
  const buf = new Uint8Array(70_000);
  for (;;) {
    const n = await ch.read(buf);
    if (n === null) break;
    parts.push(buf.slice(0, n));
  }
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

async function assertSealError(p: Promise<unknown>, re: RegExp): Promise<SealError> {
  const e = await p.then(() => null, (err) => err);
  assert.ok(e instanceof SealError, `expected a SealError, got ${e}`);
  assert.match(e.message, re);
  return e;
}

/** Start of chunk `i` in a sealed stream of full chunks. */
function chunkAt(i: number): number {
  return SEAL_HEADER_BYTES + i * (5 + SEAL_CHUNK_BYTES + 16);
}

Deno.test("a sealed stream reads back exactly, for empty, tiny, whole-chunk and multi-chunk streams", async () => {
  for (
    const size of [
      0,
      1,
      SEAL_CHUNK_BYTES - 1,
      SEAL_CHUNK_BYTES,
      SEAL_CHUNK_BYTES + 1,
      3.5 * 2 ** 20,
    ]
  ) {
    const plain = pattern(size, size + 1);
    const sealed = await seal(plain);
    assert.deepEqual([...sealed.subarray(0, 8)], [...SEAL_MAGIC], `${size}: header`);
    const chunks = Math.max(
      1,
      Math.ceil(size / SEAL_CHUNK_BYTES) + (size % SEAL_CHUNK_BYTES ? 0 : 1),
    );
    assert.equal(sealed.length, SEAL_HEADER_BYTES + size + chunks * (5 + 16), `${size}: size`);
    assert.deepEqual(await unseal(sealed), plain, `${size} bytes`);
  }
});

Deno.test("the same plaintext seals differently each time (a fresh salt per stream)", async () => {
  const plain = pattern(1000);
  const a = await seal(plain);
  const b = await seal(plain);
  assert.notDeepEqual(a.subarray(SEAL_HEADER_BYTES), b.subarray(SEAL_HEADER_BYTES));
});

Deno.test("the wrong key is named before anything is decrypted", async () => {
  const sealed = await seal(pattern(5000));
  await assertSealError(
    unseal(sealed, OTHER),
    /encrypted with another key \(id [0-9a-f]{16}; snapshot_key .* has id/,
  );
});

Deno.test("one changed byte anywhere fails: header, chunk head, ciphertext, tag", async () => {
  const sealed = await seal(pattern(2.5 * 2 ** 20, 9));
  const spots: [string, number, RegExp][] = [
    ["the salt", 30, /chunk 0 .* failed authentication/],
    ["the chunk size", 14, /failed authentication|malformed/],
    ["chunk 0's length", chunkAt(0) + 3, /chunk 0 has a malformed head/],
    [
      "chunk 0's ciphertext",
      chunkAt(0) + 5 + 12345,
      /chunk 0 \(at byte \d+\) failed authentication/,
    ],
    ["chunk 1's ciphertext", chunkAt(1) + 5 + 777, /chunk 1 .* failed authentication/],
    ["the final chunk's tag", sealed.length - 1, /chunk 2 .* failed authentication/],
    ["the final flag", chunkAt(2), /chunk 2 has a malformed head|chunk 2 .* failed/],
  ];
  for (const [what, at, re] of spots) {
    const damaged = sealed.slice();
    damaged[at] ^= 0x10;
    await assertSealError(unseal(damaged), re).catch((e) => {
      throw new Error(`${what}: ${e.message}`);
    });
  }
});

Deno.test("reordered chunks fail: chunk 1 read where chunk 0 belongs", async () => {
  const sealed = await seal(pattern(3 * 2 ** 20 + 10, 4));
  const size = 5 + SEAL_CHUNK_BYTES + 16;
  const swapped = sealed.slice();
  swapped.set(sealed.subarray(chunkAt(1), chunkAt(1) + size), chunkAt(0));
  swapped.set(sealed.subarray(chunkAt(0), chunkAt(0) + size), chunkAt(1));
  await assertSealError(
    unseal(swapped),
    /chunk 0 .* failed authentication: the snapshot was changed, reordered or truncated/,
  );
});

Deno.test("a truncated stream fails: without its final chunk, or cut inside a chunk; bytes after the end fail too", async () => {
  const sealed = await seal(pattern(2 * 2 ** 20 + 5, 2));
  await assertSealError(
    unseal(sealed.subarray(0, chunkAt(2))),
    /ends after chunk 1 without its final chunk: it was truncated/,
  );
  await assertSealError(unseal(sealed.subarray(0, chunkAt(1) + 100)), /truncated inside chunk 1/);
  await assertSealError(unseal(sealed.subarray(0, 20)), /truncated/);
  const longer = new Uint8Array(sealed.length + 1);
  longer.set(sealed);
  await assertSealError(unseal(longer), /bytes follow its final chunk/);
});

Deno.test("a plaintext snapshot or another file is refused while snapshot_key is set", async () => {
  const qevm = new Uint8Array(100);
  qevm.set([0x51, 0x45, 0x56, 0x4d, 0, 0, 0, 3]);
  await assertSealError(unseal(qevm), /it is not encrypted, and snapshot_key is set/);
  await assertSealError(unseal(pattern(100)), /does not start with an encrypted snapshot's header/);
  await assertSealError(unseal(new Uint8Array(0)), /it is empty/);
});

Deno.test("loadSnapshotKey() takes 32 raw bytes, 64 hex digits or base64, and names a bad file", async () => {
  const raw = crypto.getRandomValues(new Uint8Array(32));
  const b64 = btoa(String.fromCharCode(...raw));
  const fromRaw = await loadSnapshotKey(await keyFile("raw", raw));
  const fromHex = await loadSnapshotKey(await keyFile("hex", hex(raw) + "\n"));
  const fromB64 = await loadSnapshotKey(await keyFile("b64", b64 + "\n"));
  assert.deepEqual(fromRaw.id, fromHex.id);
  assert.deepEqual(fromRaw.id, fromB64.id);
  // A stream sealed with one form opens with another.
  const sealed = await seal(pattern(300), fromHex);
  assert.deepEqual(await unseal(sealed, fromB64), pattern(300));
  assert.equal(parseKeyFile(new TextEncoder().encode("abc")), null);
  await assertSealError(
    loadSnapshotKey(await keyFile("short", "abcd\n")),
    /is not 32 bytes, raw, in hex or in base64 \(make one with: openssl rand -hex 32/,
  );
  await assertSealError(
    loadSnapshotKey(`${dir}/none`),
    /Cannot read the snapshot key .*: no such file/,
  );
});

Deno.test("UnsealingListener hands out its one channel decrypted", async () => {
  const sealed = await seal(pattern(4000, 3));
  const inner: Listener = {
    address: "file:/tmp/g.ferry",
    peers: "one",
    accept: () => Promise.resolve(new Source(sealed, 333)),
    close() {},
    [Symbol.dispose]() {},
  };
  using listener = new UnsealingListener(inner, KEY);
  assert.equal(listener.peers, "one");
  assert.equal(listener.address, "file:/tmp/g.ferry");
  const ch = await listener.accept();
  const buf = new Uint8Array(4000);
  let got = 0;
  for (;;) {
    const n = await ch.read(buf.subarray(got));
    if (n === null) break;
    got += n;
    if (got === buf.length) {
      assert.equal(await ch.read(new Uint8Array(1)), null);
      break;
    }
  }
  assert.deepEqual(buf, pattern(4000, 3));
  ch.close();
});
