/**
 * The migration secret (docs/ARCHITECTURE.md, "Transport security"): on a socket,
 * before the stream, the source and the destination each prove they hold the same
 * secret file, with HMAC-SHA-256 over a nonce from each side. Deno's TLS listener
 * cannot ask for a client certificate, so this is how a destination tells its
 * source from anyone else who can reach the port; TLS underneath keeps the
 * exchange and the stream private.
 *
 * The exchange (all lengths fixed):
 *
 * 1. source → destination, HELLO: `"FERRYAUT"`, be32 version 1, 32-byte nonce Ns;
 * 2. destination → source, CHALLENGE: 32-byte nonce Nd, then
 *    HMAC(secret, "ferry migration secret v1 destination" ‖ Ns ‖ Nd);
 * 3. source → destination, PROOF: HMAC(secret, "ferry migration secret v1 source" ‖ Ns ‖ Nd);
 * 4. destination → source, VERDICT: one byte, 1 accepted or 0 refused.
 *
 * The two MACs carry different labels, so neither side's answer can be replayed
 * as the other's, and fresh nonces from both sides make every exchange new.
 * @module
 */
import type { Channel, Listener } from "./transport.ts";

/** The first bytes of HELLO: "FERRYAUT". */
export const AUTH_MAGIC = new TextEncoder().encode("FERRYAUT");
/** The exchange's version. */
const AUTH_VERSION = 1;
const NONCE_BYTES = 32;
const MAC_BYTES = 32;
const HELLO_BYTES = AUTH_MAGIC.length + 4 + NONCE_BYTES;
/** Shortest secret file accepted, bytes. */
export const MIN_SECRET_BYTES = 16;
/** Longest secret file read, bytes (a secret, not a data file). */
const MAX_SECRET_BYTES = 64 * 1024;
const ACCEPTED = 1;
const REFUSED = 0;
const DESTINATION_LABEL = new TextEncoder().encode("ferry migration secret v1 destination");
const SOURCE_LABEL = new TextEncoder().encode("ferry migration secret v1 source");
/** "QEVM": a savevm stream's first bytes, recognised only to say what a peer did. */
const QEVM_ASCII = [0x51, 0x45, 0x56, 0x4d];

/** A peer that did not prove it holds the secret, or a secret file that cannot be used. */
export class PeerAuthError extends Error {
  override readonly name = "PeerAuthError";
  /** `peer` is the other end ("tcp:127.0.0.1:4444"), or the secret file's path. */
  constructor(readonly peer: string, message: string, options?: ErrorOptions) {
    super(message, options);
  }
}

/** A loaded migration secret: an HMAC key and the file it came from. */
export interface MigrationSecret {
  readonly key: CryptoKey;
  readonly path: string;
}

/**
 * Reads the secret file at `path` (its bytes, as they are, are the secret: copy the
 * same file to both ends) into an HMAC-SHA-256 key. Throws a PeerAuthError naming
 * the file when it cannot be read or holds fewer than {@link MIN_SECRET_BYTES} bytes.
 */
export async function loadSecret(path: string): Promise<MigrationSecret> {
  let bytes: Uint8Array<ArrayBuffer>;
  try {
    bytes = await Deno.readFile(path);
  } catch (err) {
    throw new PeerAuthError(
      path,
      `Cannot read the migration secret ${path}: ${fileReadReason(err)}`,
      {
        cause: err,
      },
    );
  }
  if (bytes.length < MIN_SECRET_BYTES || bytes.length > MAX_SECRET_BYTES) {
    throw new PeerAuthError(
      path,
      `The migration secret ${path} holds ${bytes.length} bytes: it needs ${MIN_SECRET_BYTES} ` +
        `to ${MAX_SECRET_BYTES} (make one with: head -c 32 /dev/urandom > ${path})`,
    );
  }
  const key = await crypto.subtle.importKey(
    "raw",
    bytes,
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign", "verify"],
  );
  bytes.fill(0);
  return { key, path };
}

/**
 * The source's half: sends HELLO, checks that the destination's CHALLENGE proves
 * it holds the secret, sends PROOF and waits for the VERDICT. Rejects with a
 * PeerAuthError saying which side failed; aborting `signal` closes `channel` and
 * rejects with the signal's reason.
 */
export async function proveSecret(
  channel: Channel,
  secret: MigrationSecret,
  signal?: AbortSignal,
): Promise<void> {
  const onAbort = () => channel.close();
  signal?.addEventListener("abort", onAbort, { once: true });
  try {
    signal?.throwIfAborted();
    const ns = crypto.getRandomValues(new Uint8Array(NONCE_BYTES));
    const hello = new Uint8Array(HELLO_BYTES);
    hello.set(AUTH_MAGIC);
    new DataView(hello.buffer).setUint32(AUTH_MAGIC.length, AUTH_VERSION);
    hello.set(ns, AUTH_MAGIC.length + 4);
    await channel.write(hello);
    const challenge = await readUpTo(channel, NONCE_BYTES + MAC_BYTES);
    const nd = challenge.subarray(0, NONCE_BYTES);
    const theirs = challenge.subarray(NONCE_BYTES);
    if (
      challenge.length < NONCE_BYTES + MAC_BYTES ||
      !await verify(secret.key, theirs, DESTINATION_LABEL, ns, nd)
    ) {
      // Read only now: a real CHALLENGE may begin with those two bytes too.
      const refusal = await refusalIn(channel, challenge);
      if (refusal !== null) {
        throw new PeerAuthError(channel.peer, `${channel.peer} refused: ${refusal}`);
      }
      if (challenge.length < NONCE_BYTES + MAC_BYTES) {
        throw new PeerAuthError(
          channel.peer,
          `${channel.peer} closed the connection instead of answering the migration secret's ` +
            "greeting (does the destination have migration_secret set?)",
        );
      }
      throw new PeerAuthError(
        channel.peer,
        `${channel.peer} does not hold this ferry's migration secret (${secret.path}): ` +
          "the two ends have different secret files",
      );
    }
    await channel.write(await sign(secret.key, SOURCE_LABEL, ns, nd));
    const [verdict] = await readExactly(
      channel,
      1,
      `${channel.peer} closed the connection before accepting this ferry's migration secret`,
    );
    if (verdict !== ACCEPTED) {
      throw new PeerAuthError(
        channel.peer,
        `${channel.peer} refused this ferry's migration secret (${secret.path})`,
      );
    }
  } catch (err) {
    if (signal?.aborted) throw signal.reason;
    if (err instanceof PeerAuthError) throw err;
    throw new PeerAuthError(
      channel.peer,
      `The migration secret exchange with ${channel.peer} failed: ${fileReadReason(err)}`,
      { cause: err },
    );
  } finally {
    signal?.removeEventListener("abort", onAbort);
  }
}

/**
 * The destination's half: reads HELLO, answers with a CHALLENGE, and checks the
 * source's PROOF. Resolves when the peer proved it holds the secret; rejects with
 * a PeerAuthError saying why not (after sending a refusing VERDICT when the peer
 * got that far; its message says what the peer did, without naming it). Nothing of
 * the stream is read.
 */
export async function checkSecret(channel: Channel, secret: MigrationSecret): Promise<void> {
  const hello = await readExactly(
    channel,
    HELLO_BYTES,
    "closed the connection before proving it holds the migration secret",
  );
  if (!AUTH_MAGIC.every((b, i) => hello[i] === b)) {
    const stream = QEVM_ASCII.every((b, i) => hello[i] === b);
    throw new PeerAuthError(
      channel.peer,
      stream
        ? "started a stream without proving it holds the migration secret " +
          "(is migration_secret set on the source?)"
        : `sent no migration secret greeting (first bytes ${hex(hello.subarray(0, 8))})`,
    );
  }
  const version = new DataView(hello.buffer, hello.byteOffset).getUint32(AUTH_MAGIC.length);
  if (version !== AUTH_VERSION) {
    throw new PeerAuthError(
      channel.peer,
      `speaks version ${version} of the migration secret exchange; this ferry speaks ${AUTH_VERSION}`,
    );
  }
  const ns = hello.slice(AUTH_MAGIC.length + 4);
  const nd = crypto.getRandomValues(new Uint8Array(NONCE_BYTES));
  const challenge = new Uint8Array(NONCE_BYTES + MAC_BYTES);
  challenge.set(nd);
  challenge.set(await sign(secret.key, DESTINATION_LABEL, ns, nd), NONCE_BYTES);
  await channel.write(challenge);
  const proof = await readExactly(
    channel,
    MAC_BYTES,
    "closed the connection instead of proving it holds the migration secret",
  );
  if (!await verify(secret.key, proof, SOURCE_LABEL, ns, nd)) {
    await channel.write(new Uint8Array([REFUSED])).catch(() => {});
    throw new PeerAuthError(
      channel.peer,
      "does not hold this destination's migration secret (its proof did not match)",
    );
  }
  await channel.write(new Uint8Array([ACCEPTED]));
}

/** HMAC of `label ‖ ns ‖ nd`. */
async function sign(
  key: CryptoKey,
  label: Uint8Array,
  ns: Uint8Array,
  nd: Uint8Array,
): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.sign("HMAC", key, transcript(label, ns, nd)));
}

/** Checks `mac` against HMAC of `label ‖ ns ‖ nd` (Web Crypto compares in constant time). */
function verify(
  key: CryptoKey,
  mac: Uint8Array,
  label: Uint8Array,
  ns: Uint8Array,
  nd: Uint8Array,
): Promise<boolean> {
  return crypto.subtle.verify("HMAC", key, mac.slice(), transcript(label, ns, nd));
}

function transcript(label: Uint8Array, ns: Uint8Array, nd: Uint8Array): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(label.length + ns.length + nd.length);
  out.set(label);
  out.set(ns, label.length);
  out.set(nd, label.length + ns.length);
  return out;
}

/** Up to `n` bytes: fewer only when the stream ended first. */
async function readUpTo(channel: Channel, n: number): Promise<Uint8Array<ArrayBuffer>> {
  const buf = new Uint8Array(n);
  let got = 0;
  while (got < n) {
    const k = await channel.read(buf.subarray(got));
    if (k === null) break;
    got += k;
  }
  return buf.subarray(0, got);
}

/**
 * The text of a destination's failure message (`be16 0x4601, be16 len, UTF-8 text`,
 * engine/return_path.ts) that `start` begins, reading the rest of it; null when
 * `start` is not one. A destination that refuses a peer says why in one
 * (engine/incoming_gate.ts); only an answer that failed as a CHALLENGE is read so.
 */
async function refusalIn(channel: Channel, start: Uint8Array): Promise<string | null> {
  if (start.length < 4 || start[0] !== 0x46 || start[1] !== 0x01) return null;
  const len = (start[2] << 8) | start[3];
  if (len > 1024) return null;
  const text = new Uint8Array(len);
  const have = Math.min(len, start.length - 4);
  text.set(start.subarray(4, 4 + have));
  let got = have;
  try {
    while (got < len) {
      const k = await channel.read(text.subarray(got));
      if (k === null) break;
      got += k;
    }
  } catch {
    // What arrived is the message.
  }
  const decoded = new TextDecoder("utf-8", { fatal: true });
  try {
    return decoded.decode(text.subarray(0, got));
  } catch {
    return null;
  }
}

/** Reads exactly `n` bytes; an early end throws a PeerAuthError saying `whenClosed`. */
async function readExactly(
  channel: Channel,
  n: number,
  whenClosed: string,
): Promise<Uint8Array<ArrayBuffer>> {
  const buf = new Uint8Array(n);
  let got = 0;
  while (got < n) {
    const k = await channel.read(buf.subarray(got));
    if (k === null) throw new PeerAuthError(channel.peer, whenClosed);
    got += k;
  }
  return buf;
}

function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join(" ");
}

/** Why a key or certificate file could not be read, in a few words. */
export function fileReadReason(err: unknown): string {
  if (err instanceof Deno.errors.NotFound) return "no such file";
  if (err instanceof Deno.errors.PermissionDenied) return "permission denied";
  return err instanceof Error ? err.message : String(err);
}

/** Wraps a socket listener so that every peer must prove it holds `secret` ({@link checkSecret}). */
export class SecretListener implements Listener {
  readonly peers = "many" as const;
  constructor(readonly inner: Listener, readonly secret: MigrationSecret) {}

  get address(): string {
    return this.inner.address;
  }

  accept(): Promise<Channel> {
    return this.inner.accept();
  }

  /** Resolves once the peer proved it holds the secret; rejects saying why not. */
  authenticate(channel: Channel): Promise<void> {
    return checkSecret(channel, this.secret);
  }

  close(): void {
    this.inner.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
