/**
 * Dirty tracking for the x86 guest, whose emulator keeps no dirty log
 * (docs/ARCHITECTURE.md, "The x86 guest"): a SIMD kernel compares the emulator's
 * RAM with the copy the migration sends from, page by page, and copies each page
 * that differs. A page is clean only if it equals the copy byte for byte.
 * @module
 */
import { PAGE_SIZE } from "../ram.ts";
import { PAGE_SYNC_WASM_BASE64 } from "./page_sync_wasm.ts";

/** The page-sync kernel's binary. */
export const PAGE_SYNC_WASM: Uint8Array<ArrayBuffer> = Uint8Array.from(
  atob(PAGE_SYNC_WASM_BASE64),
  (c) => c.charCodeAt(0),
);

let compiled: WebAssembly.Module | undefined;

/** Finds and copies the pages of one memory that differ from another's. */
export interface PageSync {
  /**
   * Compares `npages` pages at `srcAt` of the emulator's memory with those at
   * `dstAt` of the shared copy; copies each that differs and calls `changed(i)`
   * with its index (0 to npages - 1). Returns how many differed.
   */
  diffCopy(srcAt: number, dstAt: number, npages: number, changed: (i: number) => void): number;
}

/**
 * A {@link PageSync} from `emulator` (any memory, such as v86's own) into `copy`
 * (a shared memory of at most 4 GiB). Throws when the engine lacks WebAssembly
 * SIMD or multiple memories.
 */
export function pageSync(emulator: WebAssembly.Memory, copy: WebAssembly.Memory): PageSync {
  compiled ??= new WebAssembly.Module(PAGE_SYNC_WASM);
  const instance = new WebAssembly.Instance(compiled, { env: { emulator, ram: copy } });
  const diff = instance.exports.diff_copy as (src: number, dst: number, n: number) => number;
  return {
    diffCopy(srcAt, dstAt, npages, changed) {
      let found = 0;
      let i = 0;
      while (i < npages) {
        const at = i + diff(srcAt + i * PAGE_SIZE, dstAt + i * PAGE_SIZE, npages - i);
        if (at >= npages) break;
        changed(at);
        found++;
        i = at + 1;
      }
      return found;
    },
  };
}
