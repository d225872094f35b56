/**
 * The sections a ferry speaks, in the order that gives them their section ids
 * (docs/ARCHITECTURE.md, "Sections"): for the synthetic guest `ram` 0, `vcpu` 1,
 * `block` 2; for the x86 guest `ram` 0, `x86` 1, `block` 2.
 * @module
 */
import type { Guest } from "../../vm/guest.ts";
import { X86_MACHINE_TYPE } from "../format/constants.ts";
import { blockSection } from "./block.ts";
import { ramSection } from "./ram.ts";
import { SectionRegistry } from "./section.ts";
import { vcpuSection } from "./vcpu.ts";
import { x86Section } from "./x86.ts";

/** A registry of the synthetic guest's sections; add one with `.register(section)`. */
export function defaultSections(): SectionRegistry {
  return new SectionRegistry([ramSection, vcpuSection, blockSection]);
}

/** The sections of the x86 guest, whose devices travel in the `x86` section. */
export function x86Sections(): SectionRegistry {
  return new SectionRegistry([ramSection, x86Section, blockSection], X86_MACHINE_TYPE);
}

/** The registry for `guest`: x86 for a guest with an emulated machine, else the default. */
export function sectionsFor(guest: Guest): SectionRegistry {
  return guest.machine ? x86Sections() : defaultSections();
}
