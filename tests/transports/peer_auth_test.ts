import assert from "node:assert/strict";
import { errorMessage } from "../../engine/return_path.ts";
import { channelPair } from "../../transports/memory.ts";
import {
  AUTH_MAGIC,
  checkSecret,
  loadSecret,
  MIN_SECRET_BYTES,
  PeerAuthError,
  proveSecret,
  SecretListener,
} from "../../transports/peer_auth.ts";
import { MemoryTransports } from "../../transports/memory.ts";
import { readExactly } from "./_helpers.ts";

const dir = await Deno.makeTempDir({ prefix: "ferry-secret-" });
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));

async function secretFile(name: string, bytes: Uint8Array): Promise<string> {
  const path = `${dir}/${name}`;
  await Deno.writeFile(path, bytes, { mode: 0o600 });
  return path;
}

const A = await loadSecret(await secretFile("a", crypto.getRandomValues(new Uint8Array(32))));
const B = await loadSecret(await secretFile("b", crypto.getRandomValues(new Uint8Array(32))));

/** Runs both halves over an in-process pair; each settles to "ok" or its error. */
async function exchange(
  source: typeof A,
  destination: typeof A,
): Promise<{ source: string | PeerAuthError; destination: string | PeerAuthError }> {
  const [src, dst] = channelPair(1 << 16, ["tcp:dst:4444", "tcp:src:5555"]);
  // A side that fails closes its end, as the transports do.
  const outcome = (p: Promise<void>, mine: typeof src) =>
    p.then(() => "ok", (e) => {
      mine.close();
      return e as PeerAuthError;
    });
  const [s, d] = await Promise.all([
    outcome(proveSecret(src, source), src),
    outcome(checkSecret(dst, destination), dst),
  ]);
  src.close();
  dst.close();
  return { source: s, destination: d };
}

Deno.test("proveSecret() and checkSecret(): two ends with the same secret file both pass, and the stream follows", async () => {
  const [src, dst] = channelPair(1 << 16);
  await Promise.all([proveSecret(src, A), checkSecret(dst, A)]);
  await src.write(Uint8Array.of(0x51, 0x45, 0x56, 0x4d));
  assert.deepEqual([...await readExactly(dst, 4)], [0x51, 0x45, 0x56, 0x4d]);
  src.close();
  dst.close();
});

Deno.test("different secret files: the source refuses a destination that cannot prove it holds its secret", async () => {
  const r = await exchange(A, B);
  assert.ok(r.source instanceof PeerAuthError);
  assert.match(r.source.message, /tcp:dst:4444 does not hold this ferry's migration secret/);
  assert.ok(r.destination instanceof PeerAuthError);
  assert.match(r.destination.message, /closed the connection instead of proving/);
});

Deno.test("checkSecret() refuses a source that starts its stream without the exchange, saying so", async () => {
  const [src, dst] = channelPair(1 << 16);
  const stream = new Uint8Array(64);
  stream.set([0x51, 0x45, 0x56, 0x4d, 0, 0, 0, 3]);
  await src.write(stream);
  const err = await checkSecret(dst, A).catch((e) => e);
  assert.ok(err instanceof PeerAuthError);
  assert.match(err.message, /started a stream without proving it holds the migration secret/);
  src.close();
  dst.close();
});

Deno.test("checkSecret() refuses a wrong proof with a refusing verdict; a peer that only replays the destination's MAC fails", async () => {
  const [src, dst] = channelPair(1 << 16);
  const checking = checkSecret(dst, A).catch((e) => e);
  const hello = new Uint8Array(AUTH_MAGIC.length + 4 + 32);
  hello.set(AUTH_MAGIC);
  new DataView(hello.buffer).setUint32(AUTH_MAGIC.length, 1);
  await src.write(hello);
  const challenge = await readExactly(src, 64);
  // Reflecting the destination's own MAC as the proof: the labels differ, so it fails.
  await src.write(challenge.subarray(32));
  const err = await checking;
  assert.ok(err instanceof PeerAuthError);
  assert.match(err.message, /does not hold this destination's migration secret/);
  assert.deepEqual([...await readExactly(src, 1)], [0]);
  src.close();
  dst.close();
});

Deno.test("proveSecret() reports a destination's refusal message (a failure message on the return path) in its words", async () => {
  const [src, dst] = channelPair(1 << 16);
  const proving = proveSecret(src, A).catch((e) => e);
  await readExactly(dst, AUTH_MAGIC.length + 4 + 32);
  await dst.write(errorMessage("the destination refused this connection: it offered the secret"));
  dst.close();
  const err = await proving;
  assert.ok(err instanceof PeerAuthError);
  assert.match(err.message, /refused: the destination refused this connection: it offered/);
  src.close();
});

Deno.test("proveSecret() at a destination that closes at once suggests migration_secret is not set there", async () => {
  const [src, dst] = channelPair(1 << 16, ["tcp:dst:4444", "x"]);
  const proving = proveSecret(src, A).catch((e) => e);
  await readExactly(dst, 8);
  dst.close();
  const err = await proving;
  assert.ok(err instanceof PeerAuthError);
  assert.match(err.message, /does the destination have migration_secret set\?/);
  src.close();
});

Deno.test("loadSecret() refuses a missing file and one shorter than the minimum, saying how to make one", async () => {
  const missing = await loadSecret(`${dir}/none`).catch((e) => e);
  assert.ok(missing instanceof PeerAuthError);
  assert.match(missing.message, /Cannot read the migration secret .*none: no such file/);
  const short = await loadSecret(await secretFile("short", new Uint8Array(MIN_SECRET_BYTES - 1)))
    .catch((e) => e);
  assert.ok(short instanceof PeerAuthError);
  assert.match(short.message, /holds 15 bytes: it needs 16 .*head -c 32 \/dev\/urandom/);
});

Deno.test("SecretListener hands out channels and authenticates each with the secret", async () => {
  const t = new MemoryTransports();
  const inner = await t.listen("tcp:dst:4444");
  using listener = new SecretListener(inner, A);
  assert.equal(listener.peers, "many");
  assert.equal(listener.address, inner.address);
  const client = await t.connect("tcp:dst:4444");
  const server = await listener.accept();
  await Promise.all([proveSecret(client, A), listener.authenticate(server)]);
  client.close();
  server.close();
});
