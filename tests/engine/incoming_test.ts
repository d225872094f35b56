import assert from "node:assert/strict";
import { StreamError, StreamReader } from "../../engine/format/reader.ts";
import { type LoadResult, loadStream, MAX_VMDESC_BYTES } from "../../engine/incoming.ts";
import { IntegrityError } from "../../engine/integrity.ts";
import { BytesChannel } from "../helpers/byte_channels.ts";
import {
  buildValidStream,
  F,
  integrityRecordFor,
  PAGE,
  pageData,
  SMALL_BLOCKS,
  StreamBuilder,
  T,
  TEST_GUEST_VMDESC,
  vmdescWithIntegrity,
} from "../../testing/stream_builder.ts";
import { TestGuest } from "../../testing/test_guest.ts";

const TOTAL = SMALL_BLOCKS.reduce((n, [, len]) => n + len, 0);

function smallGuest(): TestGuest {
  return new TestGuest(SMALL_BLOCKS.map(([n, l]) => [n, l]));
}

/** Loads `bytes` into `guest`, delivered `chunk` bytes per read (`verify` off unless asked). */
function load(
  bytes: Uint8Array,
  guest: TestGuest,
  chunk = Infinity,
  verify = false,
): Promise<LoadResult> {
  return loadStream(new StreamReader(new BytesChannel(bytes, chunk), 64 << 10), guest, { verify });
}

/**
 * Asserts that loading fails with a StreamError at `offset` whose message matches
 * `pattern` and names the offset; also with 1-byte reads (same error).
 */
async function rejects(
  b: StreamBuilder | Uint8Array,
  offset: number,
  pattern: RegExp,
  guest: TestGuest = smallGuest(),
): Promise<StreamError> {
  const bytes = b instanceof Uint8Array ? b : b.build();
  let first: StreamError | undefined;
  for (const chunk of [Infinity, 1]) {
    const err = await load(bytes, guest, chunk).then(() => null, (e) => e);
    assert.ok(err instanceof StreamError, `expected a StreamError, got ${err}`);
    assert.match(err.reason, pattern);
    assert.equal(err.offset, offset, `offset of "${err.message}"`);
    assert.ok(
      err.message.startsWith(`Invalid migration stream at byte 0x${offset.toString(16)}: `),
      err.message,
    );
    first ??= err;
  }
  return first!;
}

/** Header, configuration and a complete START section for SMALL_BLOCKS (section id 0). */
function afterStart(): StreamBuilder {
  return new StreamBuilder().header().configuration().ramStart(0, SMALL_BLOCKS);
}

/** Everything up to and including the ram END section and the vcpu section. */
function beforeEof(): StreamBuilder {
  return afterStart().end(0).eos().footer(0).vcpu(1, 7n);
}

function assertRamEquals(guest: TestGuest, expected: readonly Uint8Array[], what: string): void {
  guest.blocks.forEach((b, i) => {
    assert.ok(
      b.bytes.every((v, k) => v === expected[i][k]),
      `${what}: RAM block "${b.name}" changed`,
    );
  });
}

// ---- valid streams ---------------------------------------------------------

Deno.test("loadStream() loads a valid hand-built stream: RAM, device state and vmdescription equal what was encoded", async () => {
  const enc = buildValidStream();
  for (const chunk of [Infinity, 1, 4095]) {
    const guest = smallGuest();
    guest.fillRandom(3); // stale destination RAM: ZERO records must clear it
    const result = await load(enc.bytes, guest, chunk, true);
    assert.equal(result.bytes, enc.bytes.length);
    assert.equal(result.normalPages, 3);
    assert.equal(result.zeroPages, TOTAL / PAGE - 3);
    assert.deepEqual(
      result.description,
      vmdescWithIntegrity(integrityRecordFor(SMALL_BLOCKS, enc.pages, enc.counter)),
    );
    assert.equal(guest.counter, enc.counter);
    for (const block of guest.blocks) {
      const pages = enc.pages.get(block.name)!;
      for (let p = 0; p < block.pages; p++) {
        const got = block.bytes.subarray(p * PAGE, (p + 1) * PAGE);
        const want = pages.get(p) ?? new Uint8Array(PAGE);
        assert.ok(got.every((v, i) => v === want[i]), `${block.name} page ${p} (chunk ${chunk})`);
      }
    }
  }
});

Deno.test("loadStream() accepts a stream without configuration section that ends right after EOF", async () => {
  const b = new StreamBuilder().header().ramStart(0, SMALL_BLOCKS).end(0).eos().footer(0)
    .vcpu(1, 99n).eof();
  const guest = smallGuest();
  const result = await load(b.build(), guest);
  assert.equal(result.description, undefined);
  assert.equal(guest.counter, 99n);
});

Deno.test("loadStream() leaves an untouched destination page alone on ZERO and marks PAGE targets touched", async () => {
  const guest = smallGuest();
  const enc = buildValidStream();
  await load(enc.bytes, guest);
  assert.equal(guest.blocks[0].isTouched(1), true);
  assert.equal(guest.blocks[0].isTouched(0), false);
});

// ---- header ------------------------------------------------------------------

Deno.test("loadStream() rejects a bad magic, naming offset 0", async () => {
  const err = await rejects(new StreamBuilder().header(0x51455600), 0, /bad magic 0x51455600/);
  assert.match(err.message, /QEVM/);
});

Deno.test("loadStream() rejects an unsupported stream version, naming offset 4", async () => {
  await rejects(
    new StreamBuilder().header(undefined, 2),
    4,
    /unsupported stream version 2, expected 3/,
  );
});

Deno.test("loadStream() rejects an unknown section type at its type byte", async () => {
  for (const type of [0x09, 0x7f, T.SUBSECTION, T.FOOTER]) {
    const b = new StreamBuilder().header().configuration();
    const at = b.offset;
    b.u8(type).be32(0);
    await rejects(b, at, new RegExp(`unknown section type 0x${type.toString(16)}\\b`));
  }
});

Deno.test("loadStream() accepts COMMAND OPEN_RETURN_PATH once and reports it; rejects other commands", async () => {
  const plain = await load(buildValidStream().bytes, smallGuest());
  assert.equal(plain.returnPath, false);
  // The valid stream with OPEN_RETURN_PATH (0x08, be16 1, be16 0) after the START section.
  const start = afterStart();
  const cut = start.offset;
  const full = buildValidStream().bytes;
  const withRp = new StreamBuilder().raw(full.subarray(0, cut)).u8(T.COMMAND).be16(1).be16(0)
    .raw(full.subarray(cut)).build();
  const loaded = await load(withRp, smallGuest());
  assert.equal(loaded.returnPath, true);
  const cmd = (code: number, len: number) => afterStart().u8(T.COMMAND).be16(code).be16(len);
  await rejects(cmd(3, 0), cut, /unknown command 0x3\b/);
  await rejects(cmd(0x4601, 0), cut, /unknown command 0x4601/);
  await rejects(cmd(1, 4), cut, /OPEN_RETURN_PATH with 4 bytes/);
  await rejects(cmd(1, 0).u8(T.COMMAND).be16(1).be16(0), cut + 5, /opened twice/);
});

Deno.test("loadStream() answers COMMAND PING through onPing once everything before it is loaded", async () => {
  const data = pageData(42);
  const b = afterStart().u8(T.COMMAND).be16(1).be16(0); // OPEN_RETURN_PATH
  b.part(0).page(3 * PAGE, "pc.ram", data).eos().footer(0);
  b.u8(T.COMMAND).be16(2).be16(4).be32(0xfeed0001); // PING
  b.end(0).eos().footer(0).vcpu(1, 7n).eof().vmdescription(TEST_GUEST_VMDESC);
  for (const chunk of [Infinity, 1]) {
    const guest = smallGuest();
    const pings: [number, boolean][] = [];
    const ram = guest.blocks.find((bl) => bl.name === "pc.ram")!;
    await loadStream(
      new StreamReader(new BytesChannel(b.build(), chunk), 64 << 10),
      guest,
      {
        onPing: (value) => {
          const page = ram.bytes.subarray(3 * PAGE, 4 * PAGE);
          pings.push([value, page.every((v, i) => v === data[i])]);
          return Promise.resolve();
        },
      },
    );
    assert.deepEqual(pings, [[0xfeed0001, true]], "one PING, after page 3 was applied");
  }
});

Deno.test("loadStream() rejects a PING without a return path, without a handler, or with a bad length", async () => {
  const at = afterStart().offset;
  await rejects(
    afterStart().u8(T.COMMAND).be16(2).be16(4).be32(1),
    at,
    /PING without an open return path/,
  );
  const rp = afterStart().u8(T.COMMAND).be16(1).be16(0);
  const pingAt = rp.offset;
  // load() passes no onPing handler: nothing could answer.
  await rejects(
    rp.u8(T.COMMAND).be16(2).be16(4).be32(1),
    pingAt,
    /PING without an open return path/,
  );
  const bad = afterStart().u8(T.COMMAND).be16(1).be16(0);
  await rejects(bad.u8(T.COMMAND).be16(2).be16(2).be16(1), pingAt, /PING with 2 bytes of data/);
});

Deno.test("loadStream() rejects a configuration naming another machine type", async () => {
  await rejects(new StreamBuilder().header().configuration("pc-q35"), 8, /machine type "pc-q35"/);
});

Deno.test("loadStream() rejects a configuration section after other sections", async () => {
  const b = afterStart();
  const at = b.offset;
  b.configuration();
  await rejects(b, at, /configuration section after other sections/);
});

Deno.test("loadStream() rejects a machine type name longer than 255 bytes", async () => {
  const b = new StreamBuilder().header();
  b.u8(T.CONFIGURATION).be32(256);
  await rejects(b, 8, /machine type name of 256 bytes/);
});

// ---- section ids, footers, names, versions ------------------------------------

Deno.test("loadStream() rejects a section id used twice", async () => {
  const b = afterStart();
  const at = b.offset;
  b.full(0).be64(1).footer(0);
  await rejects(b, at, /section id 0 used twice/);
});

Deno.test("loadStream() rejects a PART for a section id that was never started", async () => {
  const b = afterStart();
  const at = b.offset;
  b.part(7).eos().footer(7);
  await rejects(b, at, /section id 7 was never started/);
});

Deno.test("loadStream() rejects a PART after the section's END", async () => {
  const b = afterStart().end(0).eos().footer(0);
  const at = b.offset;
  b.part(0).eos().footer(0);
  await rejects(b, at, /section id 0 \("ram"\) already ended/);
});

Deno.test("loadStream() rejects a PART or END naming the (FULL, closed) vcpu section", async () => {
  const b = afterStart().vcpu(1, 1n);
  const at = b.offset;
  b.end(1).eos().footer(1);
  await rejects(b, at, /section id 1 \("vcpu"\) already ended/);
});

Deno.test("loadStream() rejects a footer with the wrong marker byte", async () => {
  const b = new StreamBuilder().header().start(0).memSize(TOTAL, SMALL_BLOCKS).eos();
  const at = b.offset;
  b.footer(0, 0x7f);
  await rejects(b, at, /expected section footer 0x7e for section 0, found 0x7f/);
});

Deno.test("loadStream() rejects a footer naming another section", async () => {
  const b = afterStart().part(0).zero(0, "pc.ram").eos();
  const at = b.offset;
  b.footer(5);
  await rejects(b, at, /section footer names section 5, expected 0/);
});

Deno.test("loadStream() rejects a footer missing after the vcpu payload", async () => {
  const b = afterStart().full(1).be64(1n);
  const at = b.offset;
  b.eof().be32(0);
  await rejects(b, at, /expected section footer 0x7e for section 1, found 0x0/);
});

Deno.test("loadStream() rejects an unknown live (START) section name", async () => {
  const b = new StreamBuilder().header().configuration();
  const at = b.offset;
  b.start(0, "dirty-bitmap", 1);
  await rejects(b, at, /unknown live section "dirty-bitmap"/);
});

Deno.test("loadStream() rejects an unknown device (FULL) section name", async () => {
  const b = afterStart();
  const at = b.offset;
  b.full(1, "apic", 1).be64(0);
  await rejects(b, at, /unknown device section "apic"/);
});

Deno.test("loadStream() rejects a wrong ram section version", async () => {
  const b = new StreamBuilder().header();
  b.start(0, "ram", 3);
  await rejects(b, 8, /section "ram" version 3, expected 4/);
});

Deno.test("loadStream() rejects a wrong vcpu section version", async () => {
  const b = afterStart();
  const at = b.offset;
  b.full(1, "vcpu", 2).be64(0);
  await rejects(b, at, /section "vcpu" version 2, expected 1/);
});

Deno.test("loadStream() rejects a section with a non-zero instance id", async () => {
  const b = new StreamBuilder().header();
  b.start(0, "ram", 4, 1);
  await rejects(b, 8, /section "ram" has instance 1, expected 0/);
});

Deno.test("loadStream() rejects a second ram START under another id", async () => {
  const b = afterStart();
  const at = b.offset;
  b.ramStart(2, SMALL_BLOCKS);
  await rejects(b, at, /section "ram" started twice/);
});

Deno.test("loadStream() rejects the vcpu section sent twice", async () => {
  const b = afterStart().vcpu(1, 1n);
  const at = b.offset;
  b.vcpu(2, 2n);
  await rejects(b, at, /section "vcpu" sent twice/);
});

Deno.test("loadStream() rejects device state the guest refuses, at the payload offset", async () => {
  class PickyGuest extends TestGuest {
    override loadDeviceState(bytes: Uint8Array): void {
      if (bytes[0] !== 0) throw new Error("counter out of range");
      super.loadDeviceState(bytes);
    }
  }
  const b = afterStart().full(1);
  const at = b.offset;
  b.be64(0xff00000000000000n).footer(1);
  const guest = new PickyGuest(SMALL_BLOCKS.map(([n, l]) => [n, l]));
  const err = await rejects(b, at, /bad vcpu device state: counter out of range/, guest);
  assert.ok(err.cause instanceof Error);
});

// ---- RAM block list (MEM_SIZE) --------------------------------------------------

Deno.test("loadStream() rejects a RAM block name unknown in MEM_SIZE, at the block entry", async () => {
  const b = new StreamBuilder().header().start(0);
  b.ramHeader(TOTAL, F.MEM_SIZE).str8("pc.ram").be64(8 * PAGE);
  const at = b.offset;
  b.str8("vga.ram").be64(4 * PAGE).eos().footer(0);
  await rejects(b, at, /unknown RAM block "vga.ram"/);
});

Deno.test("loadStream() rejects a RAM block length mismatch, at the block entry", async () => {
  const b = new StreamBuilder().header().start(0);
  b.ramHeader(TOTAL, F.MEM_SIZE);
  const at = b.offset;
  b.str8("pc.ram").be64(4 * PAGE).str8("vga.vram").be64(8 * PAGE).eos().footer(0);
  await rejects(b, at, /length mismatch for RAM block "pc.ram": stream 0x4000, local 0x8000/);
});

Deno.test("loadStream() rejects a total RAM size mismatch, at the MEM_SIZE record", async () => {
  const b = new StreamBuilder().header().start(0);
  const at = b.offset;
  b.memSize(TOTAL + PAGE, [["pc.ram", 9 * PAGE], ["vga.vram", 4 * PAGE]]).eos().footer(0);
  await rejects(b, at, /RAM size mismatch: stream has 0xd000 bytes, this guest 0xc000/);
});

Deno.test("loadStream() rejects a RAM block listed twice", async () => {
  const b = new StreamBuilder().header().start(0);
  b.ramHeader(TOTAL, F.MEM_SIZE).str8("pc.ram").be64(8 * PAGE);
  const at = b.offset;
  b.str8("pc.ram").be64(8 * PAGE).eos().footer(0);
  await rejects(b, at, /RAM block "pc.ram" listed twice/);
});

Deno.test("loadStream() rejects a MEM_SIZE record outside the START section", async () => {
  const b = afterStart().part(0);
  const at = b.offset;
  b.memSize(TOTAL, SMALL_BLOCKS).eos().footer(0);
  await rejects(b, at, /MEM_SIZE\) outside the section's START/);
});

Deno.test("loadStream() rejects a MEM_SIZE record with extra flag bits", async () => {
  const b = new StreamBuilder().header().start(0);
  const at = b.offset;
  b.ramHeader(TOTAL, F.MEM_SIZE | F.CONTINUE).eos();
  await rejects(b, at, /MEM_SIZE record with extra flags 0x24/);
});

// ---- RAM pages ----------------------------------------------------------------

Deno.test("loadStream() rejects a page at or beyond its block's length and leaves every byte of RAM unchanged", async () => {
  const cases: [offset: number | bigint, flags: number, block: string, pattern: RegExp][] = [
    [8 * PAGE, F.PAGE, "pc.ram", /offset 0x8000 beyond block "pc.ram" \(length 0x8000\)/],
    [4 * PAGE, F.PAGE, "vga.vram", /offset 0x4000 beyond block "vga.vram" \(length 0x4000\)/],
    [4 * PAGE, F.ZERO, "vga.vram", /offset 0x4000 beyond block "vga.vram"/],
    [1n << 40n, F.PAGE, "pc.ram", /offset 0x10000000000 beyond block "pc.ram"/],
    [0xfffff000n << 32n, F.ZERO, "pc.ram", /beyond block "pc.ram"/],
  ];
  for (const [offset, flags, block, pattern] of cases) {
    const guest = smallGuest();
    guest.fillRandom(0x5eed);
    const before = guest.blocks.map((b) => b.bytes.slice());
    const b = afterStart().part(0);
    const at = b.offset;
    b.ramHeader(offset, flags, block);
    if (flags === F.ZERO) b.u8(0);
    else b.raw(new Uint8Array(PAGE).fill(0xaa));
    b.eos().footer(0);
    await rejects(b, at, pattern, guest);
    assertRamEquals(guest, before, `page at ${offset} of ${block}`);
  }
});

Deno.test("loadStream() rejects a CONTINUE page at its block's length without writing the block", async () => {
  const guest = smallGuest();
  guest.fillRandom(0x77);
  const before = guest.blocks.map((b) => b.bytes.slice());
  const b = afterStart().part(0).zero(3 * PAGE, "vga.vram");
  const at = b.offset;
  b.page(4 * PAGE, null, pageData(1)).eos().footer(0);
  await rejects(b, at, /offset 0x4000 beyond block "vga.vram"/, guest);
  // Only the valid ZERO page before the bad record was applied.
  before[1].fill(0, 3 * PAGE, 4 * PAGE);
  assertRamEquals(guest, before, "CONTINUE beyond the block");
});

Deno.test("loadStream() rejects a ZERO record whose fill byte is not 0, before touching RAM", async () => {
  const guest = smallGuest();
  guest.fillRandom(0x42);
  const before = guest.blocks.map((b) => b.bytes.slice());
  const b = afterStart().part(0);
  const at = b.offset;
  b.zero(2 * PAGE, "pc.ram", 1).eos().footer(0);
  await rejects(b, at, /ZERO page record with fill byte 0x1 \(must be 0\)/, guest);
  assertRamEquals(guest, before, "bad ZERO fill");
});

Deno.test("loadStream() rejects a page before the RAM block list (MEM_SIZE)", async () => {
  const b = new StreamBuilder().header().start(0);
  const at = b.offset;
  b.page(0, "pc.ram", pageData(1)).eos().footer(0);
  await rejects(b, at, /RAM page before the RAM block list/);
});

Deno.test("loadStream() rejects pages when the START section carried no block list", async () => {
  const b = new StreamBuilder().header().start(0).eos().footer(0).part(0);
  const at = b.offset;
  b.zero(0, "pc.ram").eos().footer(0);
  await rejects(b, at, /RAM page before the RAM block list/);
});

Deno.test("loadStream() rejects CONTINUE as the first record of a section", async () => {
  const b = afterStart().part(0);
  const at = b.offset;
  b.zero(0, null).eos().footer(0);
  await rejects(b, at, /says CONTINUE but no block was named before it/);
});

Deno.test("loadStream() rejects CONTINUE as the first record of a later section even after an earlier named block", async () => {
  const b = afterStart().part(0).zero(0, "pc.ram").eos().footer(0).part(0);
  const at = b.offset;
  b.zero(PAGE, null).eos().footer(0);
  await rejects(b, at, /CONTINUE but no block was named/);
});

Deno.test("loadStream() rejects a page for an unknown RAM block", async () => {
  const b = afterStart().part(0);
  const at = b.offset;
  b.zero(0, "rom").eos().footer(0);
  await rejects(b, at, /RAM page for unknown block "rom"/);
});

Deno.test("loadStream() rejects unknown RAM record flags", async () => {
  for (const flags of [0x01, 0x80, 0x100, 0x300, F.ZERO | F.PAGE, F.EOS | F.ZERO]) {
    const b = afterStart().part(0);
    const at = b.offset;
    b.ramHeader(0, flags, "pc.ram").u8(0).eos().footer(0);
    await rejects(b, at, new RegExp(`unknown RAM record flags 0x${flags.toString(16)}\\b`));
  }
});

Deno.test("loadStream() refuses a multifd FLUSH record (0x200) when this destination has no multifd", async () => {
  const b = afterStart().part(0);
  const at = b.offset;
  b.ramHeader(0, 0x200).eos().footer(0);
  await rejects(b, at, /a multifd FLUSH record, but this destination has no multifd/);
});

Deno.test("loadStream() applies an XBZRLE record onto the page it names", async () => {
  const b = afterStart().part(0).page(PAGE, "pc.ram", new Uint8Array(PAGE).fill(7));
  // bytes 10-12 change: unchanged run 10, changed run 3 (QEMU's encoding).
  b.ramHeader(PAGE, F.XBZRLE | F.CONTINUE).u8(1).be16(5).u8(10).u8(3).u8(0xaa).u8(0xbb).u8(0xcc);
  b.eos().footer(0).end(0).eos().footer(0).vcpu(1, 1n).eof();
  const guest = smallGuest();
  await load(b.build(), guest);
  const want = new Uint8Array(PAGE).fill(7);
  want.set([0xaa, 0xbb, 0xcc], 10);
  assert.deepEqual(guest.blocks[0].bytes.slice(PAGE, 2 * PAGE), want);
});

for (
  const [what, tail, pattern] of [
    ["an unknown encoding flag", [2, 0, 2, 0, 1], /encoding flag 0x2/],
    ["a zero length", [1, 0, 0], /XBZRLE record of 0 bytes/],
    ["a length above 4096", [1, 0x10, 0x01], /XBZRLE record of 4097 bytes/],
    ["an encoding that ends inside a run pair", [1, 0, 2, 1, 0xff], /Cannot decode XBZRLE page/],
    ["an empty changed run", [1, 0, 3, 5, 0, 9], /empty changed run/],
  ] as [string, number[], RegExp][]
) {
  Deno.test(`loadStream() rejects an XBZRLE record with ${what}, leaving RAM as it was`, async () => {
    for (const flags of [F.XBZRLE, F.XBZRLE | F.CONTINUE]) {
      const b = afterStart().part(0).zero(0, "pc.ram");
      const at = b.offset;
      b.ramHeader(PAGE, flags, flags & F.CONTINUE ? undefined : "pc.ram");
      for (const byte of tail) b.u8(byte);
      const guest = smallGuest();
      guest.fillRandom(5);
      const before = guest.blocks[0].bytes.slice(PAGE, 2 * PAGE);
      await rejects(b, at, pattern, guest);
      assert.deepEqual(guest.blocks[0].bytes.slice(PAGE, 2 * PAGE), before);
    }
  });
}

// ---- end of stream ----------------------------------------------------------------

Deno.test("loadStream() rejects EOF while a section is still open", async () => {
  const b = afterStart().part(0).zero(0, "pc.ram").eos().footer(0).vcpu(1, 1n);
  const at = b.offset;
  b.eof();
  await rejects(b, at, /stream ended while section 0 \("ram"\) was still open/);
});

Deno.test("loadStream() rejects EOF without the vcpu device section", async () => {
  const b = afterStart().end(0).eos().footer(0);
  const at = b.offset;
  b.eof();
  await rejects(b, at, /stream ended without the "vcpu" device section/);
});

Deno.test("loadStream() rejects EOF without a ram section", async () => {
  const b = new StreamBuilder().header().vcpu(1, 1n);
  const at = b.offset;
  b.eof();
  await rejects(b, at, /stream ended without a "ram" section/);
});

Deno.test("loadStream() rejects a byte after EOF that is not a vmdescription", async () => {
  const b = beforeEof().eof();
  const at = b.offset;
  b.u8(T.CONFIGURATION).be32(0);
  await rejects(b, at, /expected vmdescription \(0x06\) after EOF, found 0x7/);
});

Deno.test("loadStream() rejects bytes after the vmdescription of a one-way stream", async () => {
  const b = beforeEof().eof().vmdescription(TEST_GUEST_VMDESC);
  const at = b.offset;
  b.u8(0x41);
  await rejects(b, at, /unexpected bytes after the vmdescription/);
});

Deno.test("loadStream() cuts a stream that carries more page records than its budget without completing", async () => {
  const b = afterStart().part(0);
  for (let i = 0; i < 100; i++) b.zero(0, i === 0 ? "pc.ram" : null); // the same page, forever
  const bytes = b.eos().footer(0).build();
  for (const chunk of [Infinity, 1]) {
    const err = await loadStream(
      new StreamReader(new BytesChannel(bytes, chunk), 64 << 10),
      smallGuest(),
      { maxRecords: 24 },
    ).then(() => null, (e) => e);
    assert.ok(err instanceof StreamError, `${err}`);
    assert.match(err.reason, /carried 25 page records for 12 guest pages without completing/);
  }
});

// ---- integrity (the verify capability) ---------------------------------------

/** Loads with verify on; resolves the error it fails with. */
async function verifyFails(bytes: Uint8Array): Promise<IntegrityError> {
  for (const chunk of [Infinity, 4095]) {
    const err = await load(bytes, smallGuest(), chunk, true).then(() => null, (e) => e);
    if (!(err instanceof IntegrityError)) throw new Error(`expected an IntegrityError, got ${err}`);
    if (chunk !== Infinity) return err;
  }
  throw new Error("unreachable");
}

Deno.test("loadStream() with verify: a damaged byte in page content fails, naming the block and page", async () => {
  const enc = buildValidStream();
  for (const [block, page, seed] of [["pc.ram", 5, 5], ["vga.vram", 2, 102]] as const) {
    // The byte 100 of that page's data in the stream, flipped.
    const data = pageData(seed);
    const bytes = enc.bytes.slice();
    const at = indexOfBytes(bytes, data) + 100;
    bytes[at] ^= 0x10;
    const e = await verifyFails(bytes);
    assert.equal(e.area, "ram");
    assert.equal(e.where, block);
    assert.equal(e.unit, page);
    assert.match(e.message, new RegExp(`RAM block "${block.replace(".", "\\.")}" page 0x${page} `));
  }
});

Deno.test("loadStream() with verify: a page whose record went astray keeps stale content and fails, naming it", async () => {
  // The ZERO record of pc.ram page 3 carries page 2's offset (a damaged header):
  // page 3 never arrives, and the destination still holds what was there before.
  const pages = new Map([["pc.ram", new Map<number, Uint8Array>()], ["vga.vram", new Map()]]);
  const b = afterStart().part(0);
  for (let p = 0; p < 8; p++) b.zero((p === 3 ? 2 : p) * PAGE, p === 0 ? "pc.ram" : null);
  for (let p = 0; p < 4; p++) b.zero(p * PAGE, p === 0 ? "vga.vram" : null);
  b.eos().footer(0).end(0).eos().footer(0).vcpu(1, 5n).eof();
  b.vmdescription(vmdescWithIntegrity(integrityRecordFor(SMALL_BLOCKS, pages, 5n)));
  const guest = smallGuest();
  guest.fillRandom(21); // stale content everywhere
  const err = await load(b.build(), guest, Infinity, true).then(() => null, (e) => e);
  assert.ok(err instanceof IntegrityError, `${err}`);
  assert.equal(err.where, "pc.ram");
  assert.equal(err.unit, 3);
});

Deno.test("loadStream() with verify: a changed device state or integrity record fails; without a record it fails unless verify is off", async () => {
  const enc = buildValidStream();
  const counter = new Uint8Array(8);
  new DataView(counter.buffer).setBigUint64(0, enc.counter);
  let bytes = enc.bytes.slice();
  bytes[indexOfBytes(bytes, counter) + 7] ^= 1;
  assert.equal((await verifyFails(bytes)).area, "device");

  bytes = enc.bytes.slice();
  const weighted = new TextEncoder().encode(',"weighted":');
  bytes[indexOfBytes(bytes, weighted) - 1] ^= 1; // the last digit of the first sum
  const e = await verifyFails(bytes);
  assert.equal(e.area, "ram", e.message);

  const bare = buildValidStream({ integrity: false }).bytes;
  assert.match((await verifyFails(bare)).message, /carries no integrity record/);
  await load(bare, smallGuest(), Infinity, false); // verify off: accepted as QEMU would
});

/** Index of the first occurrence of `needle` in `hay`. */
function indexOfBytes(hay: Uint8Array, needle: Uint8Array): number {
  outer: for (let i = 0; i + needle.length <= hay.length; i++) {
    for (let j = 0; j < needle.length; j++) if (hay[i + j] !== needle[j]) continue outer;
    return i;
  }
  throw new Error("needle not found");
}

Deno.test("loadStream() rejects a vmdescription that is not JSON", async () => {
  const b = beforeEof().eof();
  const at = b.offset;
  b.vmdescription("{page_size: 4096");
  const err = await rejects(b, at, /vmdescription is not valid JSON/);
  assert.ok(err.cause instanceof SyntaxError);
});

Deno.test("loadStream() rejects an oversize vmdescription before reading it", async () => {
  const b = beforeEof().eof();
  const at = b.offset;
  b.vmdescription(new Uint8Array(0), MAX_VMDESC_BYTES + 1);
  await rejects(b, at, new RegExp(`vmdescription of ${MAX_VMDESC_BYTES + 1} bytes is too large`));
});

Deno.test("loadStream() rejects a vmdescription that does not describe 4096-byte pages", async () => {
  for (const json of [{ page_size: 8192 }, [4096], "null", { devices: [] }]) {
    const b = beforeEof().eof();
    const at = b.offset;
    b.vmdescription(json);
    await rejects(b, at, /does not describe 4096-byte pages/);
  }
});

// ---- truncation ------------------------------------------------------------------

/** Offset right after the EOF byte: a stream may legitimately end there. */
function eofEnd(bytes: Uint8Array): number {
  return bytes.length - 5 - JSON.stringify(TEST_GUEST_VMDESC).length;
}

async function assertTruncationFails(
  bytes: Uint8Array,
  cut: number,
  guest: TestGuest,
  chunk: number,
) {
  const err = await load(bytes.subarray(0, cut), guest, chunk).then(() => null, (e) => e);
  assert.ok(err instanceof StreamError, `prefix of ${cut} bytes: expected StreamError, got ${err}`);
  assert.match(err.reason, /truncated/, `prefix of ${cut} bytes`);
  assert.ok(
    err.offset <= cut,
    `prefix of ${cut} bytes: error offset ${err.offset} beyond the data`,
  );
  return err;
}

Deno.test("loadStream() fails with a StreamError for a stream truncated at every record boundary", async () => {
  const enc = buildValidStream({ integrity: false });
  const guest = smallGuest();
  const end = eofEnd(enc.bytes);
  assert.ok(enc.boundaries.includes(end));
  const cuts = [0, ...enc.boundaries].filter((c) => c < enc.bytes.length && c !== end);
  assert.ok(cuts.length > 25, `${cuts.length} boundaries`);
  for (const cut of cuts) {
    for (const chunk of [Infinity, 1]) {
      const err = await assertTruncationFails(enc.bytes, cut, guest, chunk);
      // A cut at a boundary is reported exactly there: the next record is what is missing.
      assert.equal(err.offset, cut, `prefix of ${cut} bytes (chunk ${chunk}): ${err.message}`);
    }
  }
});

Deno.test("loadStream() fails with a StreamError (never anything else, never hangs) for EVERY proper prefix of a small stream", async () => {
  const enc = buildValidStream({ dataPages: 1, integrity: false });
  const guest = smallGuest();
  const end = eofEnd(enc.bytes);
  const bounds = [0, ...enc.boundaries];
  for (let cut = 0; cut < enc.bytes.length; cut++) {
    if (cut === end) continue;
    const err = await assertTruncationFails(enc.bytes, cut, guest, Infinity);
    // The error points inside the record the cut fell in, never before it.
    const recordStart = bounds.filter((b) => b <= cut).at(-1)!;
    assert.ok(
      err.offset >= recordStart,
      `prefix of ${cut}: offset ${err.offset} < record start ${recordStart}`,
    );
  }
  // The one prefix that is a complete stream: everything up to EOF, without vmdescription.
  const result = await load(enc.bytes.subarray(0, end), guest);
  assert.equal(result.description, undefined);
  assert.equal(result.bytes, end);
});
