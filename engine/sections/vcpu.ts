/**
 * ferry's `vcpu` device section: the guest's vCPU state (workload, counters, PRNG),
 * its fields described in the vmdescription JSON as QEMU describes a device
 * (docs/ARCHITECTURE.md, "Sections").
 * @module
 */
import type { DeviceField, Guest } from "../../vm/guest.ts";
import { StreamError, type StreamReader } from "../format/reader.ts";
import { SectionName, VCPU_SECTION_VERSION } from "../format/constants.ts";
import type { Section, SectionLoader } from "./section.ts";

/** Total bytes of a device's fields. */
export function deviceStateSize(fields: readonly DeviceField[]): number {
  return fields.reduce((n, f) => n + f.size, 0);
}

/** The vCPU's device state, the payload of its FULL section. */
function vcpuState(guest: Guest): Uint8Array {
  const state = guest.saveDeviceState();
  const expected = deviceStateSize(guest.deviceFields);
  if (state.length !== expected) {
    throw new Error(`vcpu device state is ${state.length} bytes, its description says ${expected}`);
  }
  return state;
}

/**
 * Reads the vCPU's device state (its size is fixed by the local field list), loads
 * it into the guest and returns it; a rejection by the guest becomes a StreamError.
 */
async function loadVcpu(r: StreamReader, guest: Guest): Promise<Uint8Array> {
  const size = deviceStateSize(guest.deviceFields);
  const at = r.offset;
  await r.need(size);
  const bytes = r.take(size).slice();
  try {
    guest.loadDeviceState(bytes);
  } catch (e) {
    throw new StreamError(at, `bad vcpu device state: ${e instanceof Error ? e.message : e}`, {
      cause: e,
    });
  }
  return bytes;
}

/** The vmdescription entry describing the vcpu section (as QEMU describes devices). */
export function describeVcpu(guest: Guest, version: number): Record<string, unknown> {
  return {
    name: "vcpu",
    instance_id: 0,
    vmsd_name: "vcpu",
    version,
    fields: guest.deviceFields.map((f) => ({ name: f.name, type: f.type, size: f.size })),
  };
}

/** The `vcpu` device section: every stream must carry it exactly once. */
export const vcpuSection: Section = {
  name: SectionName.VCPU,
  version: VCPU_SECTION_VERSION,
  kind: "device",
  saver: (ctx) => ({
    state: () => vcpuState(ctx.guest),
    describe: () => describeVcpu(ctx.guest, VCPU_SECTION_VERSION),
  }),
  loader: (ctx): SectionLoader => {
    let loaded = false;
    return {
      load: async (r, _phase, at) => {
        if (loaded) throw new StreamError(at, `section "vcpu" sent twice`);
        const bytes = await loadVcpu(r, ctx.guest);
        loaded = true;
        return bytes;
      },
      finish: (at) => {
        if (!loaded) throw new StreamError(at, `stream ended without the "vcpu" device section`);
      },
    };
  },
};
