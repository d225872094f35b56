import { createRoute, z } from "@hono/zod-openapi";
import { HTTPException } from "hono/http-exception";
import type { Engine } from "../engine/engine.ts";
import type { VmInfo } from "../engine/contract.ts";
import { newRouter } from "./router.ts";
import {
  DigestSchema,
  DiskDigestSchema,
  errorResponses,
  jsonResponse,
  queryInteger,
  VmInfoSchema,
} from "./schemas.ts";

/** What the VM routes read from the guest beyond the engine's Guest interface. */
export interface VmInspector {
  info(): VmInfo;
  digest(): Promise<{
    readonly blocks: readonly {
      readonly name: string;
      readonly length: number;
      readonly sha256: string;
    }[];
    readonly sha256: string;
  }>;
}

const info = createRoute({
  method: "get",
  path: "/vm",
  summary: "Guest status (QEMU query-status)",
  responses: {
    200: jsonResponse(VmInfoSchema, "Run state, RAM size, workload, throttle, op count"),
  },
});

const start = createRoute({
  method: "post",
  path: "/vm/start",
  summary: "Start or resume the guest (QEMU cont)",
  responses: { 200: jsonResponse(VmInfoSchema, "The guest runs"), ...errorResponses(409) },
});

const stop = createRoute({
  method: "post",
  path: "/vm/stop",
  summary: "Pause the guest (QEMU stop)",
  responses: { 200: jsonResponse(VmInfoSchema, "The guest is paused") },
});

const digest = createRoute({
  method: "get",
  path: "/vm/ram/digest",
  summary: "SHA-256 of every RAM block and overall; compare two stopped guests",
  responses: {
    200: jsonResponse(DigestSchema, "Digests (of a running guest they change as it runs)"),
  },
});

const diskDigest = createRoute({
  method: "get",
  path: "/vm/disk/digest",
  summary: "SHA-256 of the guest's disk image; compare two stopped guests",
  responses: {
    200: jsonResponse(DiskDigestSchema, "Digest of the whole image"),
    ...errorResponses(404),
  },
});

/** Largest read of guest RAM in one GET /vm/ram request. */
export const MAX_RAM_READ = 16 << 20;

const RamQuery = z.object({
  block: z.string().min(1).max(255).optional().openapi({ example: "pc.ram" }),
  offset: queryInteger("the byte offset to read from", { min: 0 }).default(0).openapi({
    example: 0,
  }),
  length: queryInteger("the number of bytes to read", { min: 1, max: MAX_RAM_READ }).openapi({
    example: 4096,
  }),
});

const ram = createRoute({
  method: "get",
  path: "/vm/ram",
  summary: "Read guest RAM bytes (for inspection and tests); at most 16 MiB per request",
  request: { query: RamQuery },
  responses: {
    200: {
      description: "The bytes",
      content: { "application/octet-stream": { schema: z.string() } },
    },
    ...errorResponses(400, 404),
  },
});

/** GET /vm, POST /vm/start, POST /vm/stop, GET /vm/ram/digest, GET /vm/disk/digest. */
export function vmRoutes(deps: { engine: Engine; vm: VmInspector }) {
  const { engine, vm } = deps;
  return newRouter()
    .openapi(info, (c) => c.json(vm.info(), 200))
    .openapi(start, (c) => {
      engine.startGuest();
      return c.json(vm.info(), 200);
    })
    .openapi(stop, (c) => {
      engine.stopGuest();
      return c.json(vm.info(), 200);
    })
    .openapi(ram, (c) => {
      const q = c.req.valid("query");
      const offset = q.offset;
      const name = q.block ?? engine.guest.blocks[0].name;
      const block = engine.guest.blocks.find((b) => b.name === name);
      if (!block) throw new HTTPException(404, { message: `No RAM block "${name}"` });
      if (offset + q.length > block.length) {
        throw new HTTPException(400, {
          message: `Range 0x${offset.toString(16)}+0x${
            q.length.toString(16)
          } lies beyond block "${name}"`,
        });
      }
      block.refresh(); // the x86 guest's RAM lives in its emulator: copy what changed
      const bytes = block.bytes.slice(offset, offset + q.length);
      return c.body(bytes, 200, { "content-type": "application/octet-stream" });
    })
    .openapi(digest, async (c) => {
      const d = await vm.digest();
      const blocks = d.blocks.map((b) => ({ name: b.name, length: b.length, sha256: b.sha256 }));
      return c.json({ blocks, sha256: d.sha256, run_state: engine.guest.runState }, 200);
    })
    .openapi(diskDigest, async (c) => {
      const disk = engine.guest.disk;
      if (!disk) throw new HTTPException(404, { message: "This guest has no disk" });
      const d = await disk.digest();
      return c.json({ ...d, run_state: engine.guest.runState }, 200);
    });
}
