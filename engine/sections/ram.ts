/**
 * QEMU's `ram` live section, version 4 (docs/ARCHITECTURE.md, "Sections"): its
 * saver (ram_saver.ts), its loader (ram_loader.ts) and its records
 * (ram_records.ts).
 * @module
 */
import { popcount32 } from "../../vm/ram.ts";
import { RAM_SECTION_VERSION, SectionName } from "../format/constants.ts";
import { RamLoader } from "./ram_loader.ts";
import { RamSaver } from "./ram_saver.ts";
import type { Section } from "./section.ts";

export { MAX_ITERATE_MS, RamSaver } from "./ram_saver.ts";
export type {
  CompressionStats,
  IterateResult,
  RamSaverOptions,
  RamStats,
  XbzrleStats,
} from "./ram_saver.ts";
export { RamLoader } from "./ram_loader.ts";
export type { RamLoadOptions, RamLoadStats } from "./ram_loader.ts";

/** The `ram` section: every migration carries it, and a stream without it is incomplete. */
export const ramSection: Section = {
  name: SectionName.RAM,
  version: RAM_SECTION_VERSION,
  kind: "live",
  saver: (ctx) =>
    new RamSaver(ctx.guest.blocks, ctx.now, {
      ...(ctx.capabilities.xbzrle ? { xbzrleCacheSize: ctx.params.xbzrle_cache_size } : {}),
      ...(ctx.digests ? { digests: ctx.digests } : {}),
      ...(ctx.snapshot ? { zeroedAsPages: true } : {}),
      // With multifd the channels' workers compress (engine/multifd/pages.ts).
      ...(ctx.params.compress_method !== "none" && !ctx.multifd
        ? { compress: { codec: ctx.params.compress_method, level: ctx.params.compress_level } }
        : {}),
      ...(ctx.capabilities.page_refs ? { pageRefs: true } : {}),
      ...(ctx.multifd ? { multifd: ctx.multifd } : {}),
    }),
  loader: (ctx) =>
    new RamLoader(ctx.guest.blocks, undefined, ctx.digests, ctx.maxRecords, {
      compression: ctx.compression ?? "none",
      pageRefs: ctx.pageRefs ?? false,
      ...(ctx.multifd ? { multifd: ctx.multifd } : {}),
    }),
};

/** Number of dirty bits set in a bitmap (for tests and diagnostics). */
export function countBits(map: Uint32Array): number {
  let n = 0;
  for (let i = 0; i < map.length; i++) n += popcount32(map[i]);
  return n;
}
