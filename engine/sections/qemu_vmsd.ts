/**
 * The length of a QEMU device section's payload, learnt from its entry in the
 * stream's vmdescription JSON (docs/ARCHITECTURE.md, "QEMU peers"). QEMU's device
 * sections carry no length: only the description, written after EOF, says how
 * many bytes each field took, which subsections were sent and what a struct
 * holds. The walk reads them as QEMU's analyze-migration.py does: fields in
 * order (an `array_len` repeats one), a `struct` field by its own description,
 * then each listed subsection, whose header (0x05, name, be32 version) is in the
 * data.
 * @module
 */
import { Section } from "../format/constants.ts";

/** A description that does not fit the bytes it describes. */
export class VmsdError extends Error {
  override readonly name = "VmsdError";
  constructor(readonly device: string, readonly reason: string, options?: ErrorOptions) {
    super(`QEMU device section "${device}": ${reason}`, options);
  }
}

/** Deepest nesting of structs and subsections followed. */
const MAX_DEPTH = 32;
/** Most fields (array elements counted) one section's walk visits. */
const MAX_STEPS = 1 << 20;

interface Walk {
  readonly device: string;
  readonly bytes: Uint8Array;
  pos: number;
  steps: number;
}

/**
 * The payload size of the device section that starts at `start` of `bytes`, as
 * its vmdescription entry `desc` describes it. Throws a VmsdError when the entry
 * is malformed or the bytes end (or a subsection header is missing) first.
 */
export function vmsdPayloadSize(desc: unknown, bytes: Uint8Array, start: number): number {
  const name = isRecord(desc) && typeof desc.name === "string" ? desc.name : "?";
  const walk: Walk = { device: name, bytes, pos: start, steps: 0 };
  structOf(walk, desc, 0);
  return walk.pos - start;
}

function structOf(w: Walk, desc: unknown, depth: number): void {
  if (depth > MAX_DEPTH) throw new VmsdError(w.device, `nested deeper than ${MAX_DEPTH}`);
  if (!isRecord(desc)) throw new VmsdError(w.device, "a description is not an object");
  const fields = desc.fields ?? [];
  if (!Array.isArray(fields)) throw new VmsdError(w.device, `"fields" is not an array`);
  for (const field of fields) {
    if (!isRecord(field)) throw new VmsdError(w.device, "a field is not an object");
    const count = field.array_len ?? 1;
    if (!Number.isSafeInteger(count) || (count as number) < 0) {
      throw new VmsdError(w.device, `field "${field.name}" has array_len ${count}`);
    }
    for (let i = 0; i < (count as number); i++) {
      if (++w.steps > MAX_STEPS) throw new VmsdError(w.device, `more than ${MAX_STEPS} fields`);
      if (field.type === "struct") {
        structOf(w, field.struct, depth + 1);
        continue;
      }
      const size = field.size;
      if (!Number.isSafeInteger(size) || (size as number) < 0) {
        throw new VmsdError(w.device, `field "${field.name}" has size ${size}`);
      }
      advance(w, size as number, `field "${field.name}"`);
    }
  }
  const subsections = desc.subsections ?? [];
  if (!Array.isArray(subsections)) throw new VmsdError(w.device, `"subsections" is not an array`);
  for (const sub of subsections) {
    const at = w.pos;
    const want = isRecord(sub) && typeof sub.vmsd_name === "string" ? sub.vmsd_name : undefined;
    advance(w, 2, "a subsection header");
    if (w.bytes[at] !== Section.SUBSECTION) {
      throw new VmsdError(w.device, `subsection ${want ?? "?"} not found at its place`);
    }
    const len = w.bytes[at + 1];
    advance(w, len + 4, "a subsection header");
    const got = new TextDecoder().decode(w.bytes.subarray(at + 2, at + 2 + len));
    if (want !== undefined && got !== want) {
      throw new VmsdError(w.device, `subsection "${got}" found where "${want}" is described`);
    }
    structOf(w, sub, depth + 1);
  }
}

function advance(w: Walk, n: number, what: string): void {
  if (w.pos + n > w.bytes.length) {
    throw new VmsdError(w.device, `${what} runs past the end of the device state`);
  }
  w.pos += n;
}

function isRecord(x: unknown): x is Record<string, unknown> {
  return typeof x === "object" && x !== null && !Array.isArray(x);
}
