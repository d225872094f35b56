/**
 * The `vcpu` device state as bytes: fixed-size big-endian fields carrying the
 * workload and its live state, so a guest resumed on another machine continues the
 * same program. The field list doubles as the vmdescription JSON's `fields`.
 */
import type { DeviceField } from "./guest.ts";
import { VmError } from "./error.ts";
import { isValidPrngState } from "./prng.ts";
import type { VcpuState } from "./vcpu.ts";
import { PAGE_SIZE } from "./ram.ts";
import {
  type HotSet,
  WORKLOAD_KIND_CODES,
  WORKLOAD_KINDS,
  type WorkloadKind,
  type WorkloadSpec,
} from "./workload.ts";

/** The `vcpu` section's fields, in stream order. */
export const VCPU_DEVICE_FIELDS: readonly DeviceField[] = [
  { name: "kind", type: "uint8", size: 1 },
  { name: "rate", type: "uint64", size: 8 },
  { name: "range", type: "uint64", size: 8 },
  { name: "hot_pages_percent", type: "uint8", size: 1 },
  { name: "hot_ops_percent", type: "uint8", size: 1 },
  { name: "bytes", type: "uint16", size: 2 },
  { name: "ab_cursor", type: "uint32", size: 4 },
  { name: "ops", type: "uint64", size: 8 },
  { name: "prng", type: "buffer", size: 16 },
];

/** Total size of the `vcpu` device state in bytes. */
export const VCPU_DEVICE_STATE_SIZE = VCPU_DEVICE_FIELDS.reduce((sum, f) => sum + f.size, 0);

/** Version of this layout, for the section header's version_id. */
export const VCPU_DEVICE_VERSION = 1;

const OFFSET: Record<string, number> = {};
{
  let at = 0;
  for (const field of VCPU_DEVICE_FIELDS) {
    OFFSET[field.name] = at;
    at += field.size;
  }
}

/** Serializes a vCPU state as the `vcpu` section payload (see {@link VCPU_DEVICE_FIELDS}). */
export function encodeVcpuState(state: VcpuState): Uint8Array {
  const out = new Uint8Array(VCPU_DEVICE_STATE_SIZE);
  const view = new DataView(out.buffer);
  const w = state.workload;
  view.setUint8(OFFSET.kind, WORKLOAD_KIND_CODES[w.kind]);
  view.setBigUint64(OFFSET.rate, BigInt(w.kind === "idle" ? 0 : w.rate));
  view.setBigUint64(OFFSET.range, BigInt(w.kind === "ab" ? w.range ?? 0 : 0));
  view.setUint8(OFFSET.hot_pages_percent, w.kind === "random" ? w.hot?.pagesPercent ?? 0 : 0);
  view.setUint8(OFFSET.hot_ops_percent, w.kind === "random" ? w.hot?.opsPercent ?? 0 : 0);
  view.setUint16(OFFSET.bytes, w.kind === "random" ? w.bytes : 0);
  view.setUint32(OFFSET.ab_cursor, w.kind === "ab" ? state.abCursor : 0);
  view.setBigUint64(OFFSET.ops, BigInt(state.ops));
  for (let i = 0; i < 4; i++) view.setUint32(OFFSET.prng + 4 * i, state.prng[i]);
  return out;
}

/**
 * Parses and validates a `vcpu` section payload for a guest whose first RAM block is
 * `blockLength` bytes long. Throws {@link VmError} (`invalid-device-state`) naming the
 * field at fault: wrong length, unknown kind, a parameter the kind does not take, an
 * `ab` range beyond RAM or a cursor beyond the range, bytes outside 1..4096, a bad
 * hot set, counters beyond 2^53, an all-zero PRNG state.
 */
export function decodeVcpuState(bytes: Uint8Array, blockLength: number): VcpuState {
  const fail = (reason: string): never => {
    throw new VmError("invalid-device-state", `Invalid vcpu device state: ${reason}`);
  };
  if (bytes.length !== VCPU_DEVICE_STATE_SIZE) {
    fail(`expected ${VCPU_DEVICE_STATE_SIZE} bytes, got ${bytes.length}`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const safe = (name: string): number => {
    const value = view.getBigUint64(OFFSET[name]);
    if (value > BigInt(Number.MAX_SAFE_INTEGER)) fail(`${name} ${value} is too large`);
    return Number(value);
  };
  const code = view.getUint8(OFFSET.kind);
  const kind: WorkloadKind | undefined = WORKLOAD_KINDS.find((k) =>
    WORKLOAD_KIND_CODES[k] === code
  );
  if (kind === undefined) return fail(`unknown workload kind code ${code}`);
  const fields = {
    rate: safe("rate"),
    range: safe("range"),
    hot_pages_percent: view.getUint8(OFFSET.hot_pages_percent),
    hot_ops_percent: view.getUint8(OFFSET.hot_ops_percent),
    bytes: view.getUint16(OFFSET.bytes),
    ab_cursor: view.getUint32(OFFSET.ab_cursor),
  };
  const mustBeZero = (...names: (keyof typeof fields)[]): void => {
    for (const name of names) {
      if (fields[name] !== 0) fail(`${name} must be 0 for workload ${kind}, got ${fields[name]}`);
    }
  };
  let workload: WorkloadSpec;
  switch (kind) {
    case "idle":
      mustBeZero("rate", "range", "hot_pages_percent", "hot_ops_percent", "bytes", "ab_cursor");
      workload = { kind };
      break;
    case "ab": {
      mustBeZero("hot_pages_percent", "hot_ops_percent", "bytes");
      const range = fields.range;
      if (range % PAGE_SIZE !== 0) fail(`ab range ${range} is not a multiple of ${PAGE_SIZE}`);
      if (range > blockLength) {
        fail(`ab range ${range} is beyond the RAM block of ${blockLength} bytes`);
      }
      const pages = (range === 0 ? blockLength : range) / PAGE_SIZE;
      if (fields.ab_cursor >= pages) {
        fail(`ab_cursor ${fields.ab_cursor} is beyond the range of ${pages} pages`);
      }
      workload = { kind, rate: fields.rate, range: range === 0 ? null : range };
      break;
    }
    case "random": {
      mustBeZero("range", "ab_cursor");
      if (fields.bytes < 1 || fields.bytes > PAGE_SIZE) {
        fail(`bytes ${fields.bytes} is outside 1..${PAGE_SIZE}`);
      }
      const p = fields.hot_pages_percent;
      const q = fields.hot_ops_percent;
      if (p > 100) fail(`hot_pages_percent ${p} is above 100`);
      if (q > 100) fail(`hot_ops_percent ${q} is above 100`);
      if (p === 0 && q !== 0) fail(`hot_ops_percent ${q} without a hot set (hot_pages_percent 0)`);
      const hot: HotSet | null = p === 0 ? null : { pagesPercent: p, opsPercent: q };
      workload = { kind, rate: fields.rate, hot, bytes: fields.bytes };
      break;
    }
  }
  const prng = [0, 1, 2, 3].map((i) => view.getUint32(OFFSET.prng + 4 * i));
  if (!isValidPrngState(prng)) fail("prng state is all zero");
  return {
    workload,
    abCursor: fields.ab_cursor,
    ops: safe("ops"),
    prng: [prng[0], prng[1], prng[2], prng[3]],
  };
}
