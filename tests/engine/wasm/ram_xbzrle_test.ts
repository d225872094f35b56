/**
 * The RAM section with XBZRLE on both kernel sets: the saver must put the same
 * bytes on the wire with the wasm kernels (page cache in wasm memory) as with the
 * TS ones, and either loader must rebuild the guest from either stream.
 */
import assert from "node:assert/strict";
import { StreamReader } from "../../../engine/format/reader.ts";
import { StreamWriter } from "../../../engine/format/writer.ts";
import { PageCache } from "../../../engine/sections/page_cache.ts";
import { RamLoader, RamSaver } from "../../../engine/sections/ram.ts";
import { createKernels, KernelKind } from "../../../engine/wasm/kernels.ts";
import { PAGE_SIZE, RamBlock } from "../../../vm/ram.ts";
import { BytesChannel, CaptureChannel } from "../../helpers/byte_channels.ts";
import { rng } from "../../helpers/rng.ts";

const PAGES = 256;

/** A guest-like block, dirtied over several passes with a mix of small and large edits. */
async function migrate(kind: KernelKind): Promise<{ stream: Uint8Array; ram: Uint8Array }> {
  const next = rng(2024);
  const block = new RamBlock("pc.ram", PAGES * PAGE_SIZE);
  for (let i = 0; i < block.length; i++) block.bytes[i] = (next() * 256) | 0;
  for (let p = 0; p < PAGES; p += 9) block.bytes.fill(0, p * PAGE_SIZE, (p + 1) * PAGE_SIZE);
  block.touchAll();
  const ch = new CaptureChannel();
  const w = new StreamWriter(ch);
  // A cache of a quarter of the guest: misses and slot conflicts happen too.
  const saver = new RamSaver([block], () => 0, {
    xbzrleCacheSize: (PAGES / 4) * PAGE_SIZE,
    kernels: kind,
  });
  await saver.setup(w);
  await saver.iterate(w, () => false);
  for (let pass = 0; pass < 6; pass++) {
    for (let k = 0; k < 80; k++) {
      const page = (next() * PAGES) | 0;
      const base = page * PAGE_SIZE;
      const edits = [1, 3, 40, 400, 2500, 0][k % 6];
      for (let e = 0; e < edits; e++) {
        block.bytes[base + ((next() * PAGE_SIZE) | 0)] ^= 1 + (k & 127);
      }
      if (k % 17 === 0) block.bytes.fill(0, base, base + PAGE_SIZE);
      block.markDirty(page);
    }
    saver.sync();
    await saver.iterate(w, () => false);
    if (pass === 3) saver.resizeCache((PAGES / 2) * PAGE_SIZE);
  }
  await saver.complete(w);
  await w.drain();
  assert.ok(saver.stats.xbzrle!.pages > 50, `${saver.stats.xbzrle!.pages} XBZRLE pages`);
  assert.ok(saver.stats.xbzrle!.overflow > 0, "some pages overflowed");
  return { stream: ch.bytes(), ram: block.bytes.slice() };
}

async function load(stream: Uint8Array, kind: KernelKind): Promise<Uint8Array> {
  const dest = new RamBlock("pc.ram", PAGES * PAGE_SIZE);
  const loader = new RamLoader([dest], createKernels({ kind }));
  const r = new StreamReader(new BytesChannel(stream, 3000));
  await loader.load(r, "start");
  while (r.avail > 0 || (await r.need(1).then(() => true, () => false))) {
    await loader.load(r, "part");
  }
  assert.ok(loader.stats.xbzrlePages > 50);
  return dest.bytes.slice();
}

Deno.test("RamSaver with XBZRLE writes the same stream with wasm and TS kernels; both loaders rebuild the guest", async () => {
  const viaWasm = await migrate(KernelKind.WASM);
  const viaTs = await migrate(KernelKind.TS);
  assert.deepEqual(viaWasm.ram, viaTs.ram);
  assert.equal(viaWasm.stream.length, viaTs.stream.length);
  assert.ok(viaWasm.stream.every((v, i) => v === viaTs.stream[i]), "streams differ");
  for (const kind of [KernelKind.WASM, KernelKind.TS]) {
    const ram = await load(viaWasm.stream, kind);
    assert.ok(ram.every((v, i) => v === viaWasm.ram[i]), `${kind} loader`);
  }
});

Deno.test("PageCache keeps its pages in its kernels' arena, for either kind, across resizes", () => {
  for (const kind of [KernelKind.WASM, KernelKind.TS]) {
    const cache = new PageCache(8 * PAGE_SIZE, kind);
    assert.equal(cache.kernels.kind, kind);
    assert.ok(cache.insert(3, new Uint8Array(PAGE_SIZE).fill(7), 0));
    const page = cache.lookup(3)!;
    assert.ok(page.buffer === cache.kernels.arena.buffer, "cached page in the arena");
    if (kind === KernelKind.WASM) {
      assert.ok(cache.scratch.buffer === cache.kernels.arena.buffer, "snapshot in wasm memory");
    }
    const bigger = cache.resized(16 * PAGE_SIZE);
    assert.equal(bigger.kernels.kind, kind);
    assert.deepEqual(bigger.lookup(3), new Uint8Array(PAGE_SIZE).fill(7));
  }
});
