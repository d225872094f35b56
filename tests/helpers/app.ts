import type { Clock } from "../../engine/clock.ts";
import { Engine } from "../../engine/engine.ts";
import { type AppDeps, createApp } from "../../routes/app.ts";
import type { VmInspector } from "../../routes/vm.ts";
import { MemoryTransports } from "../../transports/memory.ts";
import { PAGE_SIZE } from "../../vm/ram.ts";
import { ramDigest, TestGuest } from "../../testing/test_guest.ts";

/** GET /vm and its digest over a TestGuest. */
export function testVmInspector(guest: TestGuest): VmInspector {
  return {
    info: () => ({
      guest: "synthetic",
      run_state: guest.runState,
      ram_size: guest.blocks[0].length,
      page_size: PAGE_SIZE,
      workload: "idle",
      throttle: guest.throttle,
      ops: 0,
    }),
    digest: async () => ({
      blocks: guest.blocks.map((b) => ({ name: b.name, length: b.length, sha256: "" })),
      sha256: await ramDigest(guest),
    }),
  };
}

/**
 * An in-process API over a TestGuest and memory transports, for route tests via
 * app.request; `app` adds or overrides what the API is built from (a token, host
 * names, a dashboard page, …).
 */
export function testApp(
  opts: {
    ram?: number;
    transports?: MemoryTransports;
    clock?: Clock;
    app?: Partial<Omit<AppDeps, "engine" | "vm">>;
  } = {},
) {
  const guest = new TestGuest([["pc.ram", opts.ram ?? 1 << 20]]);
  const transports = opts.transports ?? new MemoryTransports();
  // Ids from 1, so the route tests can name them.
  const engine = new Engine({ guest, transports, firstEventId: 1, clock: opts.clock });
  const vm = testVmInspector(guest);
  const app = createApp({ engine, vm, keepAliveMs: 50, ...opts.app });
  return { app, engine, guest, transports };
}

/** Sends a JSON request to an in-process app and returns status and parsed body. */
export async function call(
  app: { request: (path: string, init?: RequestInit) => Response | Promise<Response> },
  method: string,
  path: string,
  body?: unknown,
  // deno-lint-ignore no-explicit-any
): Promise<{ status: number; body: any }> {
  const init: RequestInit = { method };
  if (body !== undefined) {
    init.body = typeof body === "string" ? body : JSON.stringify(body);
    init.headers = { "content-type": "application/json" };
  }
  const res = await app.request(path, init);
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : undefined };
}
