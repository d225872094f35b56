/**
 * Encrypted snapshots (docs/ARCHITECTURE.md, "Transport security"): a one-way
 * stream (`file:`, `exec:`, `fd:`) sealed with AES-256-GCM from Web Crypto, in
 * chunks of 1 MiB, under a key derived from a key file.
 *
 * Layout, all integers big-endian:
 *
 * - a 56-byte header: `"FERRYENC"`, u8 version 1, u8 algorithm 1 (AES-256-GCM
 *   with an HKDF-SHA-256 key), be16 0, be32 chunk size, 8-byte key id, 32-byte salt;
 * - chunks: u8 flags (1 = final), be32 plaintext length, then the ciphertext and
 *   its 16-byte tag. Every chunk but the last holds exactly the chunk size; the
 *   last one, flagged final, holds the rest (possibly nothing).
 *
 * Each stream's AES key is HKDF(key file, salt, "ferry snapshot v1 AES-256-GCM"),
 * with a fresh random salt, so no key ever encrypts two streams. Chunk i's nonce
 * is `be32 flags ‖ be64 i` and its associated data the header, `be64 i` and the
 * flags: a changed byte anywhere, chunks swapped, dropped or repeated, a final
 * flag moved, or chunks cut off the end all fail authentication (or the missing
 * final chunk is noticed). The key id (HKDF of the key file alone, 8 bytes) lets a
 * wrong key be named as such before anything is decrypted.
 * @module
 */
import { fileReadReason } from "./peer_auth.ts";
import type { Channel, Listener } from "./transport.ts";
import { SerialWrites } from "./serial_writes.ts";

/** Plaintext bytes per chunk. */
export const SEAL_CHUNK_BYTES = 1 << 20;
/** The header's first bytes: "FERRYENC". */
export const SEAL_MAGIC = new TextEncoder().encode("FERRYENC");
/** Header length, bytes. */
export const SEAL_HEADER_BYTES = 56;
const VERSION = 1;
const ALGORITHM_AES256_GCM_HKDF = 1;
const KEY_ID_BYTES = 8;
const SALT_BYTES = 32;
const TAG_BYTES = 16;
/** Per-chunk head: flags and plaintext length. */
const CHUNK_HEAD_BYTES = 5;
const FINAL = 1;
/** Largest chunk size a reader accepts (its own writer uses {@link SEAL_CHUNK_BYTES}). */
const MAX_CHUNK_BYTES = 16 << 20;
const STREAM_INFO = new TextEncoder().encode("ferry snapshot v1 AES-256-GCM");
const KEY_ID_INFO = new TextEncoder().encode("ferry snapshot key id v1");
/** "QEVM": an unencrypted savevm stream's first bytes. */
const QEVM_ASCII = [0x51, 0x45, 0x56, 0x4d];

/** An encrypted snapshot that cannot be read, or a key file that cannot be used. */
export class SealError extends Error {
  override readonly name = "SealError";
  /**
   * `where` names the stream or key file; `offset` is the byte of the sealed stream
   * where the problem starts (-1 for a key file), `chunk` the chunk's index if any.
   */
  constructor(
    readonly where: string,
    message: string,
    readonly offset = -1,
    readonly chunk?: number,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

/** A loaded snapshot key: the HKDF key of the key file, its id, and the file. */
export interface SnapshotKey {
  readonly base: CryptoKey;
  readonly id: Uint8Array;
  readonly path: string;
}

/**
 * Reads the key file at `path`: 32 bytes, as raw bytes (`head -c 32
 * /dev/urandom`), 64 hex digits (`openssl rand -hex 32`) or base64
 * (`openssl rand -base64 32`), a trailing newline allowed for the text forms.
 * Throws a SealError naming the file when it cannot be read or is none of these.
 */
export async function loadSnapshotKey(path: string): Promise<SnapshotKey> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (err) {
    const why = fileReadReason(err);
    throw new SealError(path, `Cannot read the snapshot key ${path}: ${why}`, -1, undefined, {
      cause: err,
    });
  }
  const raw = parseKeyFile(bytes);
  bytes.fill(0);
  if (!raw) {
    throw new SealError(
      path,
      `The snapshot key ${path} is not 32 bytes, raw, in hex or in base64 ` +
        `(make one with: openssl rand -hex 32 > ${path})`,
    );
  }
  const base = await crypto.subtle.importKey("raw", raw, "HKDF", false, [
    "deriveKey",
    "deriveBits",
  ]);
  raw.fill(0);
  const id = new Uint8Array(
    await crypto.subtle.deriveBits(
      { name: "HKDF", hash: "SHA-256", salt: new Uint8Array(0), info: KEY_ID_INFO },
      base,
      KEY_ID_BYTES * 8,
    ),
  );
  return { base, id, path };
}

/** The 32 key bytes of a key file, or null when it is not one of the three forms. */
export function parseKeyFile(bytes: Uint8Array): Uint8Array<ArrayBuffer> | null {
  if (bytes.length === 32) return bytes.slice();
  if (bytes.length > 128) return null;
  const text = new TextDecoder().decode(bytes).trim();
  if (/^[0-9a-fA-F]{64}$/.test(text)) {
    return Uint8Array.from(text.match(/../g)!, (h) => parseInt(h, 16));
  }
  if (/^[A-Za-z0-9+/]{43}=$/.test(text)) {
    const decoded = Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
    return decoded.length === 32 ? decoded : null;
  }
  return null;
}

/** The key id in hex, as errors show it. */
function keyIdHex(id: Uint8Array): string {
  return Array.from(id, (b) => b.toString(16).padStart(2, "0")).join("");
}

function streamKey(key: SnapshotKey, salt: Uint8Array<ArrayBuffer>, use: "encrypt" | "decrypt") {
  return crypto.subtle.deriveKey(
    { name: "HKDF", hash: "SHA-256", salt, info: STREAM_INFO },
    key.base,
    { name: "AES-GCM", length: 256 },
    false,
    [use],
  );
}

function nonce(index: number, flags: number): Uint8Array<ArrayBuffer> {
  const n = new Uint8Array(12);
  const v = new DataView(n.buffer);
  v.setUint32(0, flags);
  v.setBigUint64(4, BigInt(index));
  return n;
}

function associatedData(header: Uint8Array, index: number, flags: number): Uint8Array<ArrayBuffer> {
  const ad = new Uint8Array(header.length + 9);
  ad.set(header);
  const v = new DataView(ad.buffer);
  v.setBigUint64(header.length, BigInt(index));
  v.setUint8(header.length + 8, flags);
  return ad;
}

/**
 * The outgoing half: a Channel that encrypts everything written to it in chunks
 * and writes them to `inner`. finish() seals the last chunk, flagged final, then
 * finishes `inner`: a stream cut short never has a final chunk.
 */
export class SealingChannel implements Channel {
  readonly #inner: Channel;
  readonly #key: SnapshotKey;
  readonly #chunk = new Uint8Array(SEAL_CHUNK_BYTES);
  #fill = 0;
  #index = 0;
  #header: Uint8Array | null = null;
  #aes: CryptoKey | null = null;
  readonly #writes = new SerialWrites();

  constructor(inner: Channel, key: SnapshotKey) {
    this.#inner = inner;
    this.#key = key;
  }

  get peer(): string {
    return this.#inner.peer;
  }

  get closed(): boolean {
    return this.#inner.closed;
  }

  /** Buffers `chunk`; every full chunk is encrypted and written to the inner channel. */
  write(chunk: Uint8Array): Promise<void> {
    return this.#writes.run(async () => {
      let off = 0;
      while (off < chunk.length) {
        const n = Math.min(chunk.length - off, SEAL_CHUNK_BYTES - this.#fill);
        this.#chunk.set(chunk.subarray(off, off + n), this.#fill);
        this.#fill += n;
        off += n;
        if (this.#fill === SEAL_CHUNK_BYTES) await this.#seal(0);
      }
    });
  }

  /** A one-way stream has nothing to read; the inner channel says so. */
  read(buf: Uint8Array): Promise<number | null> {
    return this.#inner.read(buf);
  }

  /** Seals what is buffered as the final chunk, then finishes the inner channel. */
  async finish(): Promise<void> {
    try {
      await this.#writes.run(() => this.#seal(FINAL));
    } catch (err) {
      this.#inner.close();
      throw err;
    }
    await this.#inner.finish();
  }

  close(): void {
    this.#inner.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }

  async #seal(flags: number): Promise<void> {
    let prefix: Uint8Array | null = null;
    if (!this.#header) {
      const salt = crypto.getRandomValues(new Uint8Array(SALT_BYTES));
      prefix = sealHeader(this.#key.id, salt, SEAL_CHUNK_BYTES);
      this.#header = prefix;
      this.#aes = await streamKey(this.#key, salt, "encrypt");
    }
    const header = this.#header;
    const index = this.#index++;
    const length = this.#fill;
    const sealed = new Uint8Array(
      await crypto.subtle.encrypt(
        {
          name: "AES-GCM",
          iv: nonce(index, flags),
          additionalData: associatedData(header, index, flags),
        },
        this.#aes!,
        this.#chunk.subarray(0, length),
      ),
    );
    this.#fill = 0;
    const out = new Uint8Array((prefix?.length ?? 0) + CHUNK_HEAD_BYTES + sealed.length);
    let at = 0;
    if (prefix) {
      out.set(prefix);
      at = prefix.length;
    }
    out[at] = flags;
    new DataView(out.buffer).setUint32(at + 1, length);
    out.set(sealed, at + CHUNK_HEAD_BYTES);
    await this.#inner.write(out);
  }
}

/** The 56-byte header for a stream with this key id, salt and chunk size. */
export function sealHeader(keyId: Uint8Array, salt: Uint8Array, chunkBytes: number): Uint8Array {
  const h = new Uint8Array(SEAL_HEADER_BYTES);
  const v = new DataView(h.buffer);
  h.set(SEAL_MAGIC);
  v.setUint8(8, VERSION);
  v.setUint8(9, ALGORITHM_AES256_GCM_HKDF);
  v.setUint16(10, 0);
  v.setUint32(12, chunkBytes);
  h.set(keyId, 16);
  h.set(salt, 16 + KEY_ID_BYTES);
  return h;
}

/**
 * The incoming half: a Channel that reads a sealed stream from `inner` and
 * returns its plaintext, a chunk at a time, each only after its tag checked out.
 * Fails with a SealError for a plaintext stream, a wrong key, a damaged, reordered
 * or missing chunk, a stream without its final chunk, or bytes after it.
 */
export class UnsealingChannel implements Channel {
  readonly #inner: Channel;
  readonly #key: SnapshotKey;
  #header: Uint8Array<ArrayBuffer> | null = null;
  #aes: CryptoKey | null = null;
  #chunkBytes = 0;
  #index = 0;
  /** Bytes of the sealed stream consumed so far. */
  #offset = 0;
  #plain: Uint8Array = new Uint8Array(0);
  #final = false;
  #ended = false;
  #failure: SealError | null = null;

  constructor(inner: Channel, key: SnapshotKey) {
    this.#inner = inner;
    this.#key = key;
  }

  get peer(): string {
    return this.#inner.peer;
  }

  get closed(): boolean {
    return this.#inner.closed;
  }

  /** Plaintext into `buf`; `null` after the final chunk, once the inner stream ended too. */
  async read(buf: Uint8Array): Promise<number | null> {
    if (this.#failure) throw this.#failure;
    try {
      while (this.#plain.length === 0) {
        if (this.#ended) return null;
        if (this.#final) {
          await this.#expectEnd();
          return null;
        }
        if (!this.#header) await this.#readHeader();
        await this.#readChunk();
      }
    } catch (err) {
      if (err instanceof SealError) this.#failure = err;
      throw err;
    }
    const n = Math.min(buf.length, this.#plain.length);
    buf.set(this.#plain.subarray(0, n));
    this.#plain = this.#plain.subarray(n);
    return n;
  }

  /** An incoming stream writes nothing. */
  write(chunk: Uint8Array): Promise<void> {
    return this.#inner.write(chunk);
  }

  finish(): Promise<void> {
    return this.#inner.finish();
  }

  close(): void {
    this.#inner.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }

  #error(message: string, chunk?: number): SealError {
    return new SealError(this.peer, `Cannot decrypt ${this.peer}: ${message}`, this.#offset, chunk);
  }

  async #readHeader(): Promise<void> {
    const h = await this.#readExactly(SEAL_HEADER_BYTES, true);
    if (h === null) throw this.#error("it is empty, not an encrypted snapshot");
    if (!SEAL_MAGIC.every((b, i) => h[i] === b)) {
      throw this.#error(
        QEVM_ASCII.every((b, i) => h[i] === b)
          ? `it is not encrypted, and snapshot_key is set (${this.#key.path}): refusing a ` +
            "plaintext snapshot (unset snapshot_key to restore it)"
          : "it does not start with an encrypted snapshot's header",
      );
    }
    const v = new DataView(h.buffer);
    if (v.getUint8(8) !== VERSION || v.getUint8(9) !== ALGORITHM_AES256_GCM_HKDF) {
      throw this.#error(
        `format version ${v.getUint8(8)}, algorithm ${v.getUint8(9)}: this ferry reads ` +
          `version ${VERSION}, algorithm ${ALGORITHM_AES256_GCM_HKDF}`,
      );
    }
    const chunkBytes = v.getUint32(12);
    if (v.getUint16(10) !== 0 || chunkBytes === 0 || chunkBytes > MAX_CHUNK_BYTES) {
      throw this.#error(`its header is malformed (chunk size ${chunkBytes})`);
    }
    const id = h.subarray(16, 16 + KEY_ID_BYTES);
    if (!id.every((b, i) => b === this.#key.id[i])) {
      throw this.#error(
        `it was encrypted with another key (id ${keyIdHex(id)}; snapshot_key ` +
          `${this.#key.path} has id ${keyIdHex(this.#key.id)})`,
      );
    }
    this.#aes = await streamKey(this.#key, h.slice(16 + KEY_ID_BYTES), "decrypt");
    this.#chunkBytes = chunkBytes;
    this.#header = h;
    this.#offset = SEAL_HEADER_BYTES;
  }

  async #readChunk(): Promise<void> {
    const index = this.#index;
    const head = await this.#readExactly(CHUNK_HEAD_BYTES, true);
    if (head === null) {
      const after = index === 0 ? "its header" : `chunk ${index - 1}`;
      throw this.#error(`it ends after ${after} without its final chunk: it was truncated`, index);
    }
    const flags = head[0];
    const length = new DataView(head.buffer).getUint32(1);
    if (
      (flags !== 0 && flags !== FINAL) || length > this.#chunkBytes ||
      (flags !== FINAL && length !== this.#chunkBytes)
    ) {
      throw this.#error(
        `chunk ${index} has a malformed head (flags ${flags}, length ${length}): ` +
          "the snapshot was changed",
        index,
      );
    }
    const sealed = await this.#readExactly(length + TAG_BYTES, false);
    let plain: ArrayBuffer;
    try {
      plain = await crypto.subtle.decrypt(
        {
          name: "AES-GCM",
          iv: nonce(index, flags),
          additionalData: associatedData(this.#header!, index, flags),
        },
        this.#aes!,
        sealed!,
      );
    } catch (err) {
      throw new SealError(
        this.peer,
        `Cannot decrypt ${this.peer}: chunk ${index} (at byte ${this.#offset}) failed ` +
          "authentication: the snapshot was changed, reordered or truncated",
        this.#offset,
        index,
        { cause: err },
      );
    }
    this.#offset += CHUNK_HEAD_BYTES + length + TAG_BYTES;
    this.#index++;
    this.#plain = new Uint8Array(plain);
    if (flags === FINAL) this.#final = true;
  }

  /** After the final chunk the inner stream must end. */
  async #expectEnd(): Promise<void> {
    const extra = await this.#inner.read(new Uint8Array(1));
    if (extra !== null && extra > 0) {
      throw this.#error(`bytes follow its final chunk (chunk ${this.#index - 1})`);
    }
    this.#ended = true;
  }

  /**
   * Exactly `n` bytes of the inner stream. At its end: null when nothing was read
   * and `orNull`, else a SealError saying the stream was truncated.
   */
  async #readExactly(n: number, orNull: boolean): Promise<Uint8Array<ArrayBuffer> | null> {
    const buf = new Uint8Array(n);
    let got = 0;
    while (got < n) {
      const k = await this.#inner.read(buf.subarray(got));
      if (k === null) {
        if (got === 0 && orNull) return null;
        throw this.#error(
          `it was truncated inside chunk ${this.#index} (${got} of ${n} bytes at byte ${this.#offset})`,
          this.#index,
        );
      }
      got += k;
    }
    return buf;
  }
}

/** Wraps a one-way listener so that its one channel is decrypted with `key`. */
export class UnsealingListener implements Listener {
  readonly peers = "one" as const;
  constructor(readonly inner: Listener, readonly key: SnapshotKey) {}

  get address(): string {
    return this.inner.address;
  }

  async accept(): Promise<Channel> {
    return new UnsealingChannel(await this.inner.accept(), this.key);
  }

  close(): void {
    this.inner.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
