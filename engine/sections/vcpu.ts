import type { DeviceField, Guest } from "../../vm/guest.ts";
import { StreamError, type StreamReader } from "../format/reader.ts";
import type { StreamWriter } from "../format/writer.ts";
import type { MigrationDigests } from "../integrity.ts";
import { sharedKernels } from "../wasm/kernels.ts";

/** Total bytes of a device's fields. */
export function deviceStateSize(fields: readonly DeviceField[]): number {
  return fields.reduce((n, f) => n + f.size, 0);
}

/** Writes the vCPU's device state as the payload of a FULL section (digested with `verify`). */
export async function saveVcpu(
  w: StreamWriter,
  guest: Guest,
  digests?: MigrationDigests,
): Promise<void> {
  const state = guest.saveDeviceState();
  const expected = deviceStateSize(guest.deviceFields);
  if (state.length !== expected) {
    throw new Error(`vcpu device state is ${state.length} bytes, its description says ${expected}`);
  }
  digests?.addDevice("vcpu", 0, state.length, sharedKernels().digest(state, 0, state.length));
  await w.write(state);
}

/**
 * Reads the vCPU's device state (its size is fixed by the local field list) and
 * loads it into the guest; any rejection by the guest becomes a StreamError.
 */
export async function loadVcpu(
  r: StreamReader,
  guest: Guest,
  digests?: MigrationDigests,
): Promise<void> {
  const size = deviceStateSize(guest.deviceFields);
  const at = r.offset;
  await r.need(size);
  const bytes = r.take(size).slice();
  digests?.addDevice("vcpu", 0, bytes.length, sharedKernels().digest(bytes, 0, bytes.length));
  try {
    guest.loadDeviceState(bytes);
  } catch (e) {
    throw new StreamError(at, `bad vcpu device state: ${e instanceof Error ? e.message : e}`, {
      cause: e,
    });
  }
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
