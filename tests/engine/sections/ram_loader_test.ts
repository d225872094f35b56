import assert from "node:assert/strict";
import { StreamError, StreamReader } from "../../../engine/format/reader.ts";
import { CODEC_ID, compress } from "../../../engine/format/compression.ts";
import { RamLoader, type RamLoadOptions } from "../../../engine/sections/ram.ts";
import { runCheck } from "../../../engine/sections/ram_records.ts";
import { sharedKernels } from "../../../engine/wasm/kernels.ts";
import { PAGE, pageData, StreamBuilder } from "../../../testing/stream_builder.ts";
import { TestGuest } from "../../../testing/test_guest.ts";
import { BytesChannel } from "../../helpers/byte_channels.ts";

/** 40 pages: the second 32-page group is cut short by the block's end. */
const BLOCKS: [string, number][] = [["pc.ram", 40 * PAGE]];

/** A compressible page: a short line naming `seed`, repeated. */
function textPage(seed: number): Uint8Array {
  const line = new TextEncoder().encode(`page ${seed} of a guest that ferry migrates\n`);
  const out = new Uint8Array(PAGE);
  for (let i = 0; i < PAGE; i++) out[i] = line[i % line.length];
  return out;
}

/** The run record of `pages` (by index within the group), with its true check. */
function run(method: "zstd" | "lz4", pages: Map<number, Uint8Array>) {
  const order = [...pages.keys()].sort((a, b) => a - b);
  const raw = new Uint8Array(order.length * PAGE);
  order.forEach((i, k) => raw.set(pages.get(i)!, k * PAGE));
  const digests = order.map((i) => sharedKernels().digest(pages.get(i)!, 0, PAGE));
  return {
    method: CODEC_ID[method],
    mask: order.reduce((m, i) => m | (1 << i), 0),
    check: runCheck(digests, digests.length),
    data: compress(method, raw, 1),
  };
}

/** A RAM payload builder after the START payload. */
function stream(): StreamBuilder {
  return new StreamBuilder().memSize(40 * PAGE, BLOCKS).eos();
}

async function load(b: StreamBuilder, options: RamLoadOptions, chunk = Infinity) {
  const guest = new TestGuest(BLOCKS);
  const loader = new RamLoader(guest.blocks, undefined, undefined, Infinity, options);
  const r = new StreamReader(new BytesChannel(b.build(), chunk), 1 << 18);
  await loader.load(r, "start");
  try {
    await loader.load(r, "part");
  } catch (e) {
    return { guest, loader, error: e };
  }
  return { guest, loader, error: null };
}

/** Loads `b` (whole, then a byte at a time) and expects a StreamError at `at` matching `pattern`. */
async function rejects(b: StreamBuilder, options: RamLoadOptions, at: number, pattern: RegExp) {
  let last: TestGuest | null = null;
  for (const chunk of [Infinity, 1]) {
    const { guest, error } = await load(b, options, chunk);
    assert.ok(error instanceof StreamError, `expected a StreamError, got ${error}`);
    assert.match(error.reason, pattern);
    assert.equal(error.offset, at, error.message);
    last = guest;
  }
  return last!;
}

function page(guest: TestGuest, i: number): Uint8Array {
  return guest.blocks[0].bytes.slice(i * PAGE, (i + 1) * PAGE);
}

for (const method of ["zstd", "lz4"] as const) {
  Deno.test(`RamLoader applies a ${method} run to the pages its mask names, and only those`, async () => {
    const pages = new Map([[0, textPage(0)], [5, textPage(5)], [31, pageData(31)]]);
    const b = stream().compressed(0, "pc.ram", run(method, pages)).eos();
    const { guest, loader, error } = await load(b, { compression: method });
    assert.equal(error, null);
    for (let i = 0; i < 40; i++) {
      assert.deepEqual(page(guest, i), pages.get(i) ?? new Uint8Array(PAGE), `page ${i}`);
    }
    assert.equal(loader.stats.compressedPages, 3);
    assert.equal(guest.blocks[0].isTouched(5), true);
  });
}

Deno.test("RamLoader refuses a compressed run its compress_method does not name, before any page", async () => {
  const r = run("zstd", new Map([[1, textPage(1)]]));
  const b = stream();
  const at = b.offset;
  b.compressed(0, "pc.ram", r).eos();
  await rejects(b, {}, at, /zstd-compressed pages but compress_method is none on this destination/);
  const guest = await rejects(b, { compression: "lz4" }, at, /compress_method is lz4/);
  assert.deepEqual(page(guest, 1), new Uint8Array(PAGE));
});

Deno.test("RamLoader refuses a compressed run with an unknown method, mask 0, or a misaligned group", async () => {
  const good = run("zstd", new Map([[1, textPage(1)]]));
  const cases: [number, typeof good, RegExp][] = [
    [0, { ...good, method: 9 }, /unknown method 9/],
    [0, { ...good, mask: 0 }, /carrying no page \(mask 0\)/],
    [PAGE, good, /offset 0x1000, not a multiple of 32 pages/],
  ];
  for (const [group, rec, pattern] of cases) {
    const b = stream();
    const at = b.offset;
    b.compressed(group, "pc.ram", rec).eos();
    await rejects(b, { compression: "zstd" }, at, pattern);
  }
});

Deno.test("RamLoader refuses a compressed run reaching past its block", async () => {
  // Group 1 holds pages 32-63; the block ends at page 40.
  const b = stream();
  const at = b.offset;
  b.compressed(32 * PAGE, "pc.ram", run("lz4", new Map([[8, textPage(1)]]))).eos();
  await rejects(b, { compression: "lz4" }, at, /reaches offset 0x29000, beyond block "pc.ram"/);
});

Deno.test("RamLoader bounds a compressed run's length: 1 byte up to its pages less the fields", async () => {
  const good = run("zstd", new Map([[1, textPage(1)]]));
  for (const length of [0, PAGE - 12]) {
    const b = stream();
    const at = b.offset;
    b.compressed(0, "pc.ram", { ...good, data: new Uint8Array(length) }).eos();
    await rejects(
      b,
      { compression: "zstd" },
      at,
      new RegExp(`of ${length} bytes for 1 pages \\(must be 1 to 4083\\)`),
    );
  }
});

for (const method of ["zstd", "lz4"] as const) {
  Deno.test(`RamLoader fails cleanly on ${method} data that is garbage, a bomb, or too short`, async () => {
    const one = run(method, new Map([[2, textPage(2)]]));
    const bomb = compress(method, new Uint8Array(512 << 10), 1); // 128 pages in one page's room
    const short = compress(method, textPage(2).subarray(0, 1000), 1);
    for (const data of [new Uint8Array(100).fill(0xfe), bomb, short]) {
      const b = stream().page(3 * PAGE, "pc.ram", pageData(3));
      const at = b.offset;
      b.compressed(0, null, { ...one, data }).eos();
      // LZ4 has no checksum: garbage that happens to decode is caught by the run's check.
      const pattern = new RegExp(`${method} data|the data is damaged`);
      const guest = await rejects(b, { compression: method }, at, pattern);
      assert.deepEqual(page(guest, 2), new Uint8Array(PAGE), "nothing written");
    }
  });

  Deno.test(`RamLoader fails on ${method} data that decompresses to other pages than its check says`, async () => {
    const rec = run(method, new Map([[2, textPage(2)], [3, textPage(3)]]));
    const b = stream();
    const at = b.offset;
    b.compressed(0, "pc.ram", { ...rec, check: rec.check + 1 }).eos();
    const guest = await rejects(
      b,
      { compression: method },
      at,
      /check says .*: the data is damaged/,
    );
    assert.deepEqual(page(guest, 2), new Uint8Array(PAGE), "nothing written");
  });
}

Deno.test("RamLoader applies a reference by copying the page as it holds it at that point of the stream", async () => {
  const b = stream()
    .page(4 * PAGE, "pc.ram", pageData(4))
    .ref(9 * PAGE, null, 4 * PAGE) // page 9 = page 4 as first sent
    .page(4 * PAGE, null, pageData(44)) // page 4 changes later
    .ref(10 * PAGE, null, 4 * PAGE) // page 10 = page 4 as sent the second time
    .ref(11 * PAGE, null, 9 * PAGE) // a page written by a reference may be referenced
    .eos();
  const { guest, loader, error } = await load(b, { pageRefs: true });
  assert.equal(error, null);
  assert.deepEqual(page(guest, 9), pageData(4));
  assert.deepEqual(page(guest, 10), pageData(44));
  assert.deepEqual(page(guest, 11), pageData(4));
  assert.deepEqual(page(guest, 4), pageData(44));
  assert.equal(loader.stats.refPages, 3);
});

Deno.test("RamLoader takes references to pages of a compressed run", async () => {
  const b = stream()
    .compressed(0, "pc.ram", run("zstd", new Map([[6, textPage(6)]])))
    .ref(39 * PAGE, null, 6 * PAGE)
    .eos();
  const { guest, error } = await load(b, { compression: "zstd", pageRefs: true });
  assert.equal(error, null);
  assert.deepEqual(page(guest, 39), textPage(6));
});

Deno.test("RamLoader refuses a reference without page_refs, naming the capability", async () => {
  const b = stream().page(4 * PAGE, "pc.ram", pageData(4));
  const at = b.offset;
  b.ref(9 * PAGE, null, 4 * PAGE).eos();
  await rejects(b, {}, at, /same-page reference but page_refs is off on this destination/);
});

Deno.test("RamLoader refuses references to pages this stream never wrote, or wrote as ZERO last", async () => {
  const guest0 = new TestGuest(BLOCKS);
  assert.equal(guest0.blocks[0].pages, 40);
  // Never written (the destination's stale RAM must never leak into a page).
  let b = stream();
  let at = b.offset;
  b.ref(9 * PAGE, "pc.ram", 4 * PAGE).eos();
  await rejects(
    b,
    { pageRefs: true },
    at,
    /page 0x4000, which this stream has not written data into/,
  );
  // Written, then zeroed.
  b = stream().page(4 * PAGE, "pc.ram", pageData(4)).zero(4 * PAGE, null);
  at = b.offset;
  b.ref(9 * PAGE, null, 4 * PAGE).eos();
  await rejects(b, { pageRefs: true }, at, /has not written data into/);
  // Zeroed through the fast path of buffered CONTINUE records, then referenced.
  b = stream().page(4 * PAGE, "pc.ram", pageData(4)).zero(5 * PAGE, null).zero(4 * PAGE, null);
  at = b.offset;
  b.ref(9 * PAGE, null, 4 * PAGE).eos();
  await rejects(b, { pageRefs: true }, at, /has not written data into/);
});

Deno.test("RamLoader refuses references out of the block, unaligned, or to the page itself", async () => {
  for (const [from, offset] of [[40 * PAGE, 1], [PAGE + 8, 1], [2 ** 40, 1], [PAGE, 1]]) {
    const b = stream().page(PAGE, "pc.ram", pageData(1));
    const at = b.offset;
    b.ref(offset * PAGE, null, from).eos();
    await rejects(
      b,
      { pageRefs: true },
      at,
      /not another page of block "pc.ram" \(length 0x28000\)/,
    );
  }
});
