/**
 * A device section that exists only in the tests: an LED panel's state (one byte
 * of colour, a be32 blink count). It shows what a new section costs: this file,
 * and one `register` line where the registry is built.
 */
import { StreamError } from "../../../engine/format/reader.ts";
import type { Section } from "../../../engine/sections/section.ts";

/** The panel whose state the section moves. */
export class LedPanel {
  colour = 0;
  blinks = 0;
}

/** The `led` section carrying `panel` (one panel per ferry). */
export function ledSection(panel: LedPanel): Section {
  return {
    name: "led",
    version: 1,
    kind: "device",
    saver: () => ({
      state: () => {
        const out = new Uint8Array(5);
        out[0] = panel.colour;
        new DataView(out.buffer).setUint32(1, panel.blinks);
        return out;
      },
      describe: () => ({
        name: "led",
        instance_id: 0,
        vmsd_name: "led",
        version: 1,
        fields: [{ name: "colour", type: "uint8", size: 1 }, {
          name: "blinks",
          type: "uint32",
          size: 4,
        }],
      }),
    }),
    loader: () => {
      let loaded = false;
      return {
        load: async (r, _phase, at) => {
          await r.need(5);
          const bytes = r.take(5).slice();
          if (bytes[0] > 7) throw new StreamError(at, `led colour ${bytes[0]} is not 0-7`);
          panel.colour = bytes[0];
          panel.blinks = new DataView(bytes.buffer).getUint32(1);
          loaded = true;
          return bytes;
        },
        finish: (at) => {
          if (!loaded) throw new StreamError(at, `stream ended without the "led" section`);
        },
      };
    },
  };
}
