/**
 * ferry's `x86` device section: the x86 guest's emulator state without RAM (v86's
 * own format), the emulator's version, and the tail of the serial console, so the
 * destination's console carries on (docs/ARCHITECTURE.md, "The x86 guest"). Its
 * RAM travels in the `ram` section as block `pc.ram`.
 *
 * Payload: u8 length + version text; be32 length + device state; be64 console
 * offset, be32 length + console bytes. The vmdescription describes these as fields, so QEMU's
 * analyze-migration.py reads the section as opaque buffers.
 * @module
 */
import type { MachineDevices, MachineState } from "../../vm/guest.ts";
import { SectionName, X86_SECTION_VERSION } from "../format/constants.ts";
import { StreamError, type StreamReader } from "../format/reader.ts";
import type { Section, SectionLoader } from "./section.ts";

/** Largest device state a stream may carry (v86's is a few MB; this bounds a hostile length). */
export const MAX_DEVICE_STATE_BYTES = 64 << 20;
/** Largest console history a stream may carry. */
export const MAX_CONSOLE_BYTES = 1 << 20;
/** Bytes read from the stream per step of a large field. */
const READ_STEP = 1 << 20;

/** Encodes the section's payload. */
export function encodeX86State(version: string, state: MachineState): Uint8Array {
  const name = new TextEncoder().encode(version);
  if (name.length > 255) throw new RangeError(`emulator version "${version}" is over 255 bytes`);
  const out = new Uint8Array(
    1 + name.length + 4 + state.devices.length + 8 + 4 + state.console.length,
  );
  const view = new DataView(out.buffer);
  let at = 0;
  out[at++] = name.length;
  out.set(name, at);
  at += name.length;
  view.setUint32(at, state.devices.length);
  out.set(state.devices, at + 4);
  at += 4 + state.devices.length;
  view.setBigUint64(at, BigInt(state.consoleOffset));
  view.setUint32(at + 8, state.console.length);
  out.set(state.console, at + 12);
  return out;
}

/** The vmdescription entry of a payload encoded by {@link encodeX86State}. */
export function describeX86(version: string, state: MachineState): Record<string, unknown> {
  const versionBytes = new TextEncoder().encode(version).length;
  return {
    name: SectionName.X86,
    instance_id: 0,
    vmsd_name: SectionName.X86,
    version: X86_SECTION_VERSION,
    fields: [
      { name: "version_len", type: "uint8", size: 1 },
      { name: "version", type: "buffer", size: versionBytes },
      { name: "devices_len", type: "uint32", size: 4 },
      { name: "devices", type: "buffer", size: state.devices.length },
      { name: "console_offset", type: "uint64", size: 8 },
      { name: "console_len", type: "uint32", size: 4 },
      { name: "console", type: "buffer", size: state.console.length },
    ],
  };
}

/** Reads `n` bytes, a step at a time (a field may be larger than the reader's buffer). */
async function readBytes(r: StreamReader, n: number): Promise<Uint8Array> {
  const out = new Uint8Array(n);
  for (let got = 0; got < n;) {
    const step = Math.min(READ_STEP, n - got);
    await r.need(step);
    out.set(r.take(step), got);
    got += step;
  }
  return out;
}

/** Reads and checks a payload; returns it and its bytes (for the integrity digest). */
async function readX86State(
  r: StreamReader,
  machine: MachineDevices,
): Promise<{ state: MachineState; bytes: Uint8Array }> {
  const start = r.offset;
  await r.need(1);
  const nameLength = r.u8();
  await r.need(nameLength);
  const version = new TextDecoder().decode(r.take(nameLength));
  if (version !== machine.version) {
    throw new StreamError(
      start,
      `the x86 state is from ${
        version || "an unnamed emulator"
      }; this ferry runs ${machine.version}`,
    );
  }
  const length = async (what: string, max: number) => {
    const at = r.offset;
    await r.need(4);
    const n = r.be32();
    if (n > max) throw new StreamError(at, `x86 ${what} of ${n} bytes (at most ${max})`);
    return n;
  };
  const devicesAt = r.offset + 4;
  const devices = await readBytes(r, await length("device state", MAX_DEVICE_STATE_BYTES));
  try {
    machine.check(devices);
  } catch (e) {
    throw new StreamError(
      devicesAt,
      `bad x86 device state: ${e instanceof Error ? e.message : e}`,
      { cause: e },
    );
  }
  const offsetAt = r.offset;
  await r.need(8);
  const [hi, lo] = r.be64Parts();
  const consoleOffset = hi * 2 ** 32 + lo;
  if (!Number.isSafeInteger(consoleOffset)) {
    throw new StreamError(offsetAt, `x86 console offset ${consoleOffset} is out of range`);
  }
  const console = await readBytes(r, await length("console history", MAX_CONSOLE_BYTES));
  const state = { devices, console, consoleOffset };
  return { state, bytes: encodeX86State(version, state) };
}

/**
 * The `x86` device section. The saver takes the state on the emulator's thread
 * once the guest is stopped. The loader checks it as it arrives and loads it into
 * the emulator only at commit, once the whole stream has checked out, so a damaged
 * stream never reaches the machine.
 */
export const x86Section: Section = {
  name: SectionName.X86,
  version: X86_SECTION_VERSION,
  kind: "device",
  saver: (ctx) => {
    const machine = ctx.guest.machine;
    if (!machine) return null;
    let last: MachineState = {
      devices: new Uint8Array(),
      console: new Uint8Array(),
      consoleOffset: 0,
    };
    return {
      state: async () => {
        last = await machine.save();
        return encodeX86State(machine.version, last);
      },
      describe: () => describeX86(machine.version, last),
    };
  },
  loader: (ctx): SectionLoader => {
    let loaded: MachineState | null = null;
    return {
      load: async (r, _phase, at) => {
        const machine = ctx.guest.machine;
        if (!machine) {
          throw new StreamError(
            at,
            `section "x86" is for the x86 guest; this ferry runs the synthetic one`,
          );
        }
        if (loaded) throw new StreamError(at, `section "x86" sent twice`);
        const { state, bytes } = await readX86State(r, machine);
        loaded = state;
        return bytes;
      },
      finish: (at) => {
        if (!loaded) throw new StreamError(at, `stream ended without the "x86" device section`);
      },
      commit: async () => {
        await ctx.guest.machine!.load(loaded!);
      },
    };
  },
};
