import assert from "node:assert/strict";
import {
  decodeVcpuState,
  encodeVcpuState,
  VCPU_DEVICE_FIELDS,
  VCPU_DEVICE_STATE_SIZE,
} from "../../vm/device_state.ts";
import { VmError } from "../../vm/error.ts";
import type { VcpuState } from "../../vm/vcpu.ts";
import { parseWorkload } from "../../vm/workload.ts";

const RAM = 1 << 20;
const PRNG = [1, 2, 3, 0xffffffff] as const;

function state(workload: string, abCursor = 0, ops = 0): VcpuState {
  return { workload: parseWorkload(workload), abCursor, ops, prng: PRNG };
}

/** Offset of a field in the encoding. */
function offset(name: string): number {
  let at = 0;
  for (const f of VCPU_DEVICE_FIELDS) {
    if (f.name === name) return at;
    at += f.size;
  }
  throw new Error(`no field ${name}`);
}

function patched(base: VcpuState, edit: (view: DataView) => void): Uint8Array {
  const bytes = encodeVcpuState(base);
  edit(new DataView(bytes.buffer));
  return bytes;
}

Deno.test("VCPU_DEVICE_FIELDS describes fixed-size fields adding up to the encoding size", () => {
  assert.deepEqual(VCPU_DEVICE_FIELDS.map((f) => f.name), [
    "kind",
    "rate",
    "range",
    "hot_pages_percent",
    "hot_ops_percent",
    "bytes",
    "ab_cursor",
    "ops",
    "prng",
  ]);
  const sizes = { uint8: 1, uint16: 2, uint32: 4, uint64: 8 } as const;
  for (const f of VCPU_DEVICE_FIELDS) {
    if (f.type !== "buffer") assert.equal(f.size, sizes[f.type], f.name);
  }
  assert.equal(VCPU_DEVICE_STATE_SIZE, 49);
  assert.equal(encodeVcpuState(state("idle")).length, 49);
});

Deno.test("encodeVcpuState writes big-endian fields", () => {
  const bytes = encodeVcpuState(state("ab:rate=4K,range=64K", 3, 2 ** 40 + 5));
  const view = new DataView(bytes.buffer);
  assert.equal(view.getUint8(offset("kind")), 1);
  assert.equal(view.getBigUint64(offset("rate")), 4096n);
  assert.equal(view.getBigUint64(offset("range")), 65536n);
  assert.equal(view.getUint32(offset("ab_cursor")), 3);
  assert.equal(view.getBigUint64(offset("ops")), 2n ** 40n + 5n);
  assert.deepEqual([...bytes.subarray(offset("prng"), offset("prng") + 4)], [0, 0, 0, 1]);
  assert.deepEqual([...bytes.subarray(offset("prng") + 12)], [255, 255, 255, 255]);
});

Deno.test("decodeVcpuState(encodeVcpuState(s)) returns s for every kind", () => {
  for (
    const s of [
      state("idle", 0, 12),
      state("ab", 255, 1000),
      state("ab:rate=1M,range=64K", 15, 7),
      state("random"),
      state("random:rate=0,hot=10%:90%,bytes=4096", 0, 2 ** 53 - 1),
    ]
  ) {
    assert.deepEqual(decodeVcpuState(encodeVcpuState(s), RAM), s);
  }
});

Deno.test("decodeVcpuState accepts a view into a larger buffer", () => {
  const bytes = encodeVcpuState(state("ab", 9));
  const outer = new Uint8Array(bytes.length + 10);
  outer.set(bytes, 5);
  assert.equal(decodeVcpuState(outer.subarray(5, 5 + bytes.length), RAM).abCursor, 9);
});

Deno.test("decodeVcpuState rejects each invalid value with a VmError naming it", () => {
  const ab = state("ab", 3);
  const random = state("random");
  const cases: [string, Uint8Array, RegExp][] = [
    ["short", encodeVcpuState(ab).subarray(0, 48), /expected 49 bytes, got 48/],
    ["long", new Uint8Array(50), /expected 49 bytes, got 50/],
    ["kind", patched(ab, (v) => v.setUint8(offset("kind"), 7)), /unknown workload kind code 7/],
    [
      "range beyond RAM",
      patched(ab, (v) => v.setBigUint64(offset("range"), BigInt(2 * RAM))),
      /ab range 2097152 is beyond the RAM block of 1048576 bytes/,
    ],
    [
      "range unaligned",
      patched(ab, (v) => v.setBigUint64(offset("range"), 5000n)),
      /ab range 5000 is not a multiple of 4096/,
    ],
    [
      "cursor",
      patched(ab, (v) => v.setUint32(offset("ab_cursor"), 256)),
      /ab_cursor 256 is beyond the range of 256 pages/,
    ],
    [
      "ab bytes",
      patched(ab, (v) => v.setUint16(offset("bytes"), 8)),
      /bytes must be 0 for workload ab/,
    ],
    [
      "bytes 0",
      patched(random, (v) => v.setUint16(offset("bytes"), 0)),
      /bytes 0 is outside 1..4096/,
    ],
    [
      "bytes 4097",
      patched(random, (v) => v.setUint16(offset("bytes"), 4097)),
      /bytes 4097 is outside 1..4096/,
    ],
    [
      "hot pages",
      patched(random, (v) => v.setUint8(offset("hot_pages_percent"), 101)),
      /hot_pages_percent 101 is above 100/,
    ],
    [
      "hot ops",
      patched(random, (v) => {
        v.setUint8(offset("hot_pages_percent"), 10);
        v.setUint8(offset("hot_ops_percent"), 200);
      }),
      /hot_ops_percent 200 is above 100/,
    ],
    [
      "hot ops without set",
      patched(random, (v) => v.setUint8(offset("hot_ops_percent"), 50)),
      /hot_ops_percent 50 without a hot set/,
    ],
    [
      "random cursor",
      patched(random, (v) => v.setUint32(offset("ab_cursor"), 1)),
      /ab_cursor must be 0 for workload random/,
    ],
    [
      "idle rate",
      patched(state("idle"), (v) => v.setBigUint64(offset("rate"), 5n)),
      /rate must be 0 for workload idle, got 5/,
    ],
    [
      "rate huge",
      patched(random, (v) => v.setBigUint64(offset("rate"), 2n ** 60n)),
      /rate 1152921504606846976 is too large/,
    ],
    [
      "ops huge",
      patched(random, (v) => v.setBigUint64(offset("ops"), 2n ** 64n - 1n)),
      /ops 18446744073709551615 is too large/,
    ],
    [
      "prng zero",
      patched(random, (v) => {
        for (let i = 0; i < 4; i++) v.setUint32(offset("prng") + 4 * i, 0);
      }),
      /prng state is all zero/,
    ],
  ];
  for (const [what, bytes, message] of cases) {
    assert.throws(
      () => decodeVcpuState(bytes, RAM),
      (error: unknown) => {
        assert.ok(error instanceof VmError, `${what}: ${error}`);
        assert.equal(error.code, "invalid-device-state");
        assert.match(error.message, /^Invalid vcpu device state: /);
        assert.match(error.message, message, what);
        return true;
      },
    );
  }
});
