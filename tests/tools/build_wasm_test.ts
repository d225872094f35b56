/**
 * Each committed binary (engine/wasm/kernels_wasm.ts, vm/x86/page_sync_wasm.ts)
 * must be exactly what its .wat assembles to, so it cannot drift from its source:
 * rerun `deno task build:wasm` after editing a .wat.
 */
import assert from "node:assert/strict";
import { assemble, moduleSource, WASM_MODULES } from "../../tools/build_wasm.ts";
import { KERNELS_WASM } from "../../engine/wasm/kernels.ts";
import { PAGE_SYNC_WASM } from "../../vm/x86/page_sync.ts";

Deno.test("every .wat assembles to its committed TypeScript module, byte for byte", async () => {
  for (const spec of WASM_MODULES) {
    const built = await assemble(spec);
    const committed = await Deno.readTextFile(spec.out);
    assert.equal(
      committed,
      moduleSource(spec, built),
      `stale ${spec.out.pathname}: run deno task build:wasm`,
    );
  }
});

Deno.test("the binaries validate and export their functions", () => {
  const exports = (bytes: Uint8Array) =>
    WebAssembly.Module.exports(new WebAssembly.Module(bytes as Uint8Array<ArrayBuffer>)).map((e) =>
      e.name
    ).sort();
  assert.ok(WebAssembly.validate(KERNELS_WASM));
  assert.deepEqual(exports(KERNELS_WASM), [
    "copy_digest",
    "digest",
    "digest_copy",
    "err_pos",
    "first_nonzero_page",
    "is_zero",
    "xbzrle_decode",
    "xbzrle_encode",
  ]);
  assert.deepEqual(exports(PAGE_SYNC_WASM), ["diff_copy"]);
});
