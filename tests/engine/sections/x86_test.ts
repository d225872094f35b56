/**
 * The `x86` device section with a stand-in machine (no emulator): its state and
 * console history reach the destination's machine only once the whole stream has
 * checked out; another emulator version, a state the machine rejects, or a
 * synthetic destination are refused with messages that say so.
 */
import assert from "node:assert/strict";
import { Engine } from "../../../engine/engine.ts";
import { createSavers, vmDescription } from "../../../engine/outgoing.ts";
import { DEFAULT_CAPABILITIES, DEFAULT_PARAMETERS } from "../../../engine/params.ts";
import { defaultSections, x86Sections } from "../../../engine/sections/registry.ts";
import { encodeX86State } from "../../../engine/sections/x86.ts";
import { MemoryTransports } from "../../../transports/memory.ts";
import { TestGuest } from "../../../testing/test_guest.ts";
import type { MachineDevices, MachineState } from "../../../vm/guest.ts";
import { VmError } from "../../../vm/error.ts";

const URI = "tcp:dst:4444";

/** A machine whose state is whatever bytes it holds; it rejects states starting with 0xff. */
class StandInMachine implements MachineDevices {
  loads: MachineState[] = [];
  constructor(
    readonly version: string,
    public devices: Uint8Array = new Uint8Array(),
    public consoleText = "",
    public consoleOffset = 0,
  ) {}
  save(): Promise<MachineState> {
    return Promise.resolve({
      devices: this.devices,
      console: new TextEncoder().encode(this.consoleText),
      consoleOffset: this.consoleOffset,
    });
  }
  check(devices: Uint8Array): void {
    if (devices[0] === 0xff) throw new VmError("invalid-device-state", "starts with 0xff");
  }
  load(state: MachineState): Promise<void> {
    this.loads.push(state);
    return Promise.resolve();
  }
}

function machineGuest(machine: StandInMachine): TestGuest {
  return Object.assign(new TestGuest(), { machine });
}

async function migrate(src: Engine, dst: Engine): Promise<void> {
  try {
    await dst.listenIncoming(URI);
    src.setParameters({ max_bandwidth: 1 << 30 });
    src.migrate(URI);
    await src.migration!.done;
    await dst.incoming!.done;
  } finally {
    await src.close();
    await dst.close();
  }
}

Deno.test("x86 section: the machine's state and console history arrive, loaded once the stream checked out", async () => {
  const transports = new MemoryTransports();
  const devices = Uint8Array.from({ length: 3 << 20 }, (_, i) => (i * 7) & 0xff); // > one read step
  const source = new StandInMachine("emu 1", devices, "tick 41\ntick 42\n", 5000);
  const target = new StandInMachine("emu 1");
  const src = new Engine({ guest: machineGuest(source), transports, sections: x86Sections() });
  const dst = new Engine({ guest: machineGuest(target), transports, sections: x86Sections() });
  await migrate(src, dst);
  assert.equal(dst.incomingInfo().status, "completed", dst.incomingInfo().error_desc);
  assert.equal(src.current().status, "completed", src.current().error_desc);
  assert.equal(target.loads.length, 1);
  assert.deepEqual(target.loads[0].devices, devices);
  assert.equal(new TextDecoder().decode(target.loads[0].console), "tick 41\ntick 42\n");
  assert.equal(target.loads[0].consoleOffset, 5000);
});

Deno.test("x86 section: its vmdescription fields add up to its payload", async () => {
  const machine = new StandInMachine("emu 1", new Uint8Array(1000), "hello", 7);
  const savers = createSavers(x86Sections(), {
    guest: machineGuest(machine),
    now: () => 0,
    params: DEFAULT_PARAMETERS,
    capabilities: DEFAULT_CAPABILITIES,
  });
  const saver = savers.devices[0].saver;
  const payload = await saver.state();
  assert.deepEqual(payload, encodeX86State("emu 1", await machine.save()));
  const [device] = vmDescription(savers).devices as { name: string; fields: { size: number }[] }[];
  assert.equal(device.name, "x86");
  assert.equal(device.fields.reduce((n, f) => n + f.size, 0), payload.length);
  assert.equal(savers.machineType, "ferry-x86");
});

Deno.test("x86 section: another emulator version is refused by name, and nothing is loaded", async () => {
  const transports = new MemoryTransports();
  const target = new StandInMachine("emu 2");
  const src = new Engine({
    guest: machineGuest(new StandInMachine("emu 1", new Uint8Array(64))),
    transports,
    sections: x86Sections(),
  });
  const dst = new Engine({ guest: machineGuest(target), transports, sections: x86Sections() });
  await migrate(src, dst);
  assert.equal(dst.incomingInfo().status, "failed");
  assert.match(
    dst.incomingInfo().error_desc!,
    /the x86 state is from emu 1; this ferry runs emu 2/,
  );
  assert.equal(target.loads.length, 0);
  assert.equal(src.current().status, "failed");
});

Deno.test("x86 section: a state the machine rejects fails the stream at that field", async () => {
  const transports = new MemoryTransports();
  const target = new StandInMachine("emu 1");
  const src = new Engine({
    guest: machineGuest(new StandInMachine("emu 1", Uint8Array.of(0xff, 1, 2))),
    transports,
    sections: x86Sections(),
  });
  const dst = new Engine({ guest: machineGuest(target), transports, sections: x86Sections() });
  await migrate(src, dst);
  assert.match(
    dst.incomingInfo().error_desc!,
    /at byte 0x[0-9a-f]+: bad x86 device state: starts with 0xff/,
  );
  assert.equal(target.loads.length, 0);
});

Deno.test("x86 section: a synthetic destination refuses an x86 stream before any RAM, and the reverse", async () => {
  for (
    const [srcSections, dstSections, want] of [
      [
        x86Sections,
        defaultSections,
        /machine type "ferry-x86" does not match this guest's "ferry-pc"/,
      ],
      [
        defaultSections,
        x86Sections,
        /machine type "ferry-pc" does not match this guest's "ferry-x86"/,
      ],
    ] as const
  ) {
    const transports = new MemoryTransports();
    const src = new Engine({
      guest: machineGuest(new StandInMachine("emu 1", new Uint8Array(8))),
      transports,
      sections: srcSections(),
    });
    const dst = new Engine({
      guest: machineGuest(new StandInMachine("emu 1")),
      transports,
      sections: dstSections(),
    });
    await migrate(src, dst);
    assert.match(dst.incomingInfo().error_desc!, want);
    assert.equal(dst.incomingInfo().pages?.normal ?? 0, 0);
  }
});
