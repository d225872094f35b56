import assert from "node:assert/strict";
import { DIGEST_CHUNK, digestBlocks, overallDigest } from "../../vm/digest.ts";
import { fillRam } from "../../vm/fill.ts";
import { RamBlock } from "../../vm/ram.ts";

async function sha256Hex(data: Uint8Array): Promise<string> {
  const copy = new Uint8Array(data);
  const hash = new Uint8Array(await crypto.subtle.digest("SHA-256", copy));
  return [...hash].map((b) => b.toString(16).padStart(2, "0")).join("");
}

Deno.test("digestBlocks hashes each block across chunk boundaries like a one-shot SHA-256", async () => {
  const a = new RamBlock("pc.ram", DIGEST_CHUNK + 3 * 4096);
  const b = new RamBlock("extra", 4096);
  fillRam(a, "random", 5);
  b.bytes[10] = 1;
  const digest = await digestBlocks([a, b]);
  assert.deepEqual(digest.blocks, [
    { name: "pc.ram", length: a.length, sha256: await sha256Hex(a.bytes) },
    { name: "extra", length: 4096, sha256: await sha256Hex(b.bytes) },
  ]);
  const lines = digest.blocks.map((x) => `${x.name} ${x.length} ${x.sha256}\n`).join("");
  assert.equal(digest.sha256, await sha256Hex(new TextEncoder().encode(lines)));
  assert.equal(overallDigest(digest.blocks), digest.sha256);
});

Deno.test("digestBlocks of an all-zero page is the known SHA-256 of 4096 zero bytes", async () => {
  const digest = await digestBlocks([new RamBlock("pc.ram", 4096)]);
  assert.equal(
    digest.blocks[0].sha256,
    "ad7facb2586fc6e966c004d7d1d16b024f5805ff7cb47c7a85dabd8b48892ca7",
  );
});
