import assert from "node:assert/strict";
import { VmsdError, vmsdPayloadSize } from "../../../engine/sections/qemu_vmsd.ts";

const enc = new TextEncoder();

/** A subsection header as QEMU writes it: 0x05, u8 len, name, be32 version. */
function subHeader(name: string, version = 1): number[] {
  const n = [...enc.encode(name)];
  return [0x05, n.length, ...n, 0, 0, 0, version];
}

const DMA = {
  name: "dma",
  instance_id: 1,
  vmsd_name: "dma",
  version: 1,
  fields: [
    { name: "flip_flop", type: "uint8", size: 1, array_len: 3 },
    {
      name: "chan",
      type: "struct",
      size: 4,
      array_len: 2,
      struct: {
        vmsd_name: "dma_chan",
        version: 1,
        fields: [{ name: "x", type: "uint32", size: 4 }],
      },
    },
  ],
  subsections: [{
    vmsd_name: "dma/extra",
    version: 1,
    fields: [{ name: "z", type: "uint16", size: 2 }],
  }],
};

/** A payload DMA describes: 3 + 2·4 field bytes, then the subsection's header and 2 bytes. */
const DMA_PAYLOAD = [1, 2, 3, 0, 0, 0, 4, 0, 0, 0, 5, ...subHeader("dma/extra"), 9, 9];

Deno.test("vmsdPayloadSize() walks fields, repeated arrays, structs and subsections as the analyzer reads them", () => {
  const bytes = new Uint8Array([0xaa, ...DMA_PAYLOAD, 0x7e]);
  assert.equal(vmsdPayloadSize(DMA, bytes, 1), DMA_PAYLOAD.length);
  assert.equal(vmsdPayloadSize({ name: "empty" }, bytes, 0), 0);
});

Deno.test("vmsdPayloadSize() refuses a description the bytes do not carry", () => {
  const bytes = new Uint8Array(DMA_PAYLOAD);
  const cases: [unknown, Uint8Array, RegExp][] = [
    [DMA, bytes.subarray(0, bytes.length - 1), /runs past the end/],
    [
      { ...DMA, subsections: [{ vmsd_name: "dma/other", fields: [] }] },
      bytes,
      /"dma\/extra" found where "dma\/other"/,
    ],
    [
      DMA,
      new Uint8Array([...DMA_PAYLOAD.slice(0, 11), 0x04, ...DMA_PAYLOAD.slice(12)]),
      /not found/,
    ],
    [{ name: "x", fields: [{ name: "f", type: "uint8", size: -1 }] }, bytes, /has size -1/],
    [
      { name: "x", fields: [{ name: "f", type: "uint8", size: 1, array_len: 1.5 }] },
      bytes,
      /array_len/,
    ],
    [{ name: "x", fields: "no" }, bytes, /"fields" is not an array/],
    [[], bytes, /not an object/],
  ];
  for (const [desc, data, why] of cases) {
    assert.throws(
      () => vmsdPayloadSize(desc, data, 0),
      (e) => e instanceof VmsdError && why.test(e.message),
    );
  }
});

Deno.test("vmsdPayloadSize() stops a description nested without end", () => {
  let desc: Record<string, unknown> = { fields: [] };
  for (let i = 0; i < 40; i++) {
    desc = { name: "deep", fields: [{ name: "s", type: "struct", struct: desc }] };
  }
  assert.throws(() => vmsdPayloadSize(desc, new Uint8Array(0), 0), /nested deeper than 32/);
  const wide = {
    name: "wide",
    fields: [{ name: "f", type: "uint8", size: 0, array_len: 2 ** 40 }],
  };
  assert.throws(() => vmsdPayloadSize(wide, new Uint8Array(0), 0), /more than \d+ fields/);
});
