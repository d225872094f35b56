import assert from "node:assert/strict";
import {
  COMPRESSED_FIELDS,
  putCompressedFields,
  putHeader,
  putRefField,
  REF_FIELDS,
  runCheck,
} from "../../../engine/sections/ram_records.ts";
import { RamFlag } from "../../../engine/format/constants.ts";

Deno.test("ferry's record flags sit in the page-offset bits QEMU's x86 records leave free", () => {
  assert.equal(RamFlag.COMPRESSED, 0x400);
  assert.equal(RamFlag.REF, 0x800);
  const qemu = RamFlag.ZERO | RamFlag.MEM_SIZE | RamFlag.PAGE | RamFlag.EOS | RamFlag.CONTINUE |
    RamFlag.XBZRLE | 0x80 | 0x100 | 0x200; // HOOK, COMPRESS_PAGE, MULTIFD_FLUSH
  assert.equal(qemu & (RamFlag.COMPRESSED | RamFlag.REF), 0);
});

Deno.test("putCompressedFields() writes u8 method, be32 mask, be32 check, be32 length", () => {
  const buf = new Uint8Array(32);
  const pos = putHeader(buf, 0, 0x20000, RamFlag.COMPRESSED);
  const end = putCompressedFields(buf, pos, 2, 0x80000001, 0xdeadbeef, 0x1234);
  assert.equal(end, 8 + COMPRESSED_FIELDS);
  assert.deepEqual(
    [...buf.subarray(0, end)],
    [0, 0, 0, 0, 0, 2, 4, 0, 2, 0x80, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef, 0, 0, 0x12, 0x34],
  );
});

Deno.test("putRefField() writes the target's offset as be64, above 4 GiB too", () => {
  const buf = new Uint8Array(16);
  assert.equal(putRefField(buf, 0, 0x1_2345_6000), REF_FIELDS);
  assert.deepEqual([...buf.subarray(0, 8)], [0, 0, 0, 1, 0x23, 0x45, 0x60, 0]);
  putRefField(buf, 8, 0x7000);
  assert.deepEqual([...buf.subarray(8)], [0, 0, 0, 0, 0, 0, 0x70, 0]);
});

Deno.test("runCheck() sums the first n digests modulo 2^32", () => {
  assert.equal(runCheck([0xffffffff, 2, 100], 2), 1);
  assert.equal(runCheck(Uint32Array.of(5, 6, 7), 3), 18);
  assert.equal(runCheck([], 0), 0);
});
