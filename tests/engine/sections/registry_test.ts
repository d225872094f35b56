import assert from "node:assert/strict";
import { Engine } from "../../../engine/engine.ts";
import { defaultSections } from "../../../engine/sections/registry.ts";
import { createSavers, vmDescription } from "../../../engine/outgoing.ts";
import { DEFAULT_CAPABILITIES, DEFAULT_PARAMETERS } from "../../../engine/params.ts";
import { MemoryTransports } from "../../../transports/memory.ts";
import { TestGuest } from "../../../testing/test_guest.ts";
import { LedPanel, ledSection } from "./_led_section.ts";

const URI = "tcp:dst:4444";

Deno.test("the default registry numbers ferry's sections ram 0, vcpu 1, block 2", () => {
  const registry = defaultSections();
  assert.deepEqual(
    registry.entries.map(({ id, section }) => [id, section.name, section.kind]),
    [[0, "ram", "live"], [1, "vcpu", "device"], [2, "block", "live"]],
  );
  assert.throws(() => registry.register(registry.get("ram")!.section), /registered twice/);
});

Deno.test("a new device section is one file plus one register line: it migrates, is described and digested", async () => {
  const transports = new MemoryTransports();
  const srcPanel = Object.assign(new LedPanel(), { colour: 5, blinks: 1234 });
  const dstPanel = new LedPanel();
  const src = new Engine({
    guest: new TestGuest(),
    transports,
    sections: defaultSections().register(ledSection(srcPanel)),
  });
  const dst = new Engine({
    guest: new TestGuest(),
    transports,
    sections: defaultSections().register(ledSection(dstPanel)),
  });
  try {
    await dst.listenIncoming(URI);
    src.setParameters({ max_bandwidth: 1 << 30 });
    src.migrate(URI);
    await src.migration!.done;
    await dst.incoming!.done;
    assert.equal(src.current().status, "completed", src.current().error_desc);
    assert.equal(dst.incomingInfo().status, "completed", dst.incomingInfo().error_desc);
    assert.deepEqual([dstPanel.colour, dstPanel.blinks], [5, 1234]);
    // The vmdescription describes it next to vcpu, in section id order.
    const savers = createSavers(defaultSections().register(ledSection(srcPanel)), {
      guest: new TestGuest(),
      now: () => 0,
      params: DEFAULT_PARAMETERS,
      capabilities: DEFAULT_CAPABILITIES,
    });
    const devices = vmDescription(savers).devices as { name: string }[];
    assert.deepEqual(devices.map((d) => d.name), ["vcpu", "led"]);
  } finally {
    await src.close();
    await dst.close();
  }
});

Deno.test("a destination without the new section refuses a stream carrying it, naming it", async () => {
  const transports = new MemoryTransports();
  const src = new Engine({
    guest: new TestGuest(),
    transports,
    sections: defaultSections().register(ledSection(new LedPanel())),
  });
  const dst = new Engine({ guest: new TestGuest(), transports });
  try {
    await dst.listenIncoming(URI);
    src.setParameters({ max_bandwidth: 1 << 30 });
    src.migrate(URI);
    await src.migration!.done;
    await dst.incoming!.done;
    assert.equal(dst.incomingInfo().status, "failed");
    assert.match(dst.incomingInfo().error_desc!, /unknown device section "led"/);
    assert.equal(src.current().status, "failed");
  } finally {
    await src.close();
    await dst.close();
  }
});

Deno.test("the new section's state is covered by the integrity check like every device section", async () => {
  const transports = new MemoryTransports();
  const dstPanel = new LedPanel();
  // The destination's loader alters what it read before handing it back: the
  // digests of what was sent and what was loaded differ.
  const tampering = ledSection(dstPanel);
  const loader = tampering.loader;
  tampering.loader = (ctx) => {
    const inner = loader(ctx);
    return {
      ...inner,
      load: async (r, phase, at) => {
        const bytes = (await inner.load(r, phase, at)) as Uint8Array;
        return Uint8Array.of(bytes[0] ^ 1, ...bytes.subarray(1));
      },
    };
  };
  const src = new Engine({
    guest: new TestGuest(),
    transports,
    sections: defaultSections().register(ledSection(new LedPanel())),
  });
  const dst = new Engine({
    guest: new TestGuest(),
    transports,
    sections: defaultSections().register(tampering),
  });
  try {
    await dst.listenIncoming(URI);
    src.setParameters({ max_bandwidth: 1 << 30 });
    src.migrate(URI);
    await src.migration!.done;
    await dst.incoming!.done;
    assert.match(dst.incomingInfo().error_desc!, /device state of section "led"/);
  } finally {
    await src.close();
    await dst.close();
  }
});
