/**
 * The sections every ferry speaks, in the order that gives them their section
 * ids: `ram` 0, `vcpu` 1, `block` 2 (docs/ARCHITECTURE.md, "Sections").
 * @module
 */
import { blockSection } from "./block.ts";
import { ramSection } from "./ram.ts";
import { SectionRegistry } from "./section.ts";
import { vcpuSection } from "./vcpu.ts";

/** A registry of ferry's own sections; add one with `.register(section)`. */
export function defaultSections(): SectionRegistry {
  return new SectionRegistry([ramSection, vcpuSection, blockSection]);
}
