/**
 * A ferry in the test's own process: an Engine over a TestGuest with the real
 * transports (tcp on port 0) and its API served by Deno.serve on port 0, driven
 * over HTTP like any ferry. Unlike a FerryProcess it takes an injected clock, so
 * end-to-end tests of deadlines and pauses never depend on the machine's speed.
 */
import type { Clock } from "../../engine/clock.ts";
import { Engine } from "../../engine/engine.ts";
import type { MigrationHistory } from "../../engine/history.ts";
import type { MigrationStatus } from "../../engine/contract.ts";
import { FINAL_STATES } from "../../engine/migration.ts";
import { type AppDeps, createApp } from "../../routes/app.ts";
import { FerryClient } from "../../testing/ferry_process.ts";
import { TestGuest } from "../../testing/test_guest.ts";
import { createTransports } from "../../transports/mod.ts";
import { PAGE_SIZE } from "../../vm/ram.ts";
import { testVmInspector } from "./app.ts";
import { FakeClock } from "./fake_clock.ts";

/** A ferry served on a real port, with its engine and guest at hand. */
export class LiveFerry extends FerryClient implements AsyncDisposable {
  private constructor(
    readonly engine: Engine,
    readonly guest: TestGuest,
    readonly server: Deno.HttpServer<Deno.NetAddr>,
    readonly app: ReturnType<typeof createApp>,
  ) {
    super();
    this.url = `http://127.0.0.1:${server.addr.port}`;
  }

  /** Starts one; `app` adds to what its API is built from (a state dir, …). */
  static start(
    opts: {
      guest?: TestGuest;
      clock?: Clock;
      token?: string;
      app?: Partial<Omit<AppDeps, "engine" | "vm" | "token">>;
      history?: MigrationHistory;
    } = {},
  ): LiveFerry {
    const guest = opts.guest ?? new TestGuest([["pc.ram", 512 * PAGE_SIZE]]);
    const engine = new Engine({
      guest,
      transports: createTransports(),
      clock: opts.clock,
      ...(opts.history ? { history: opts.history } : {}),
    });
    const token = opts.token ?? crypto.randomUUID();
    const app = createApp({
      engine,
      vm: testVmInspector(guest),
      token,
      keepAliveMs: 1000,
      ...opts.app,
    });
    const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, app.fetch);
    const ferry = new LiveFerry(engine, guest, server, app);
    ferry.token = token;
    return ferry;
  }

  /** Arms an incoming migration on tcp port 0 over the API; returns the address to migrate to. */
  async listen(): Promise<string> {
    const res = await this.api("POST", "/migrations/incoming", { uri: "tcp:127.0.0.1:0" });
    if (res.status !== 202) throw new Error(`arming failed: ${JSON.stringify(res.body)}`);
    this.incoming = res.body.address;
    return res.body.address;
  }

  /** Resolves with the first outgoing state that `want` accepts (from the engine's events). */
  outgoingState(want: (s: MigrationStatus) => boolean): Promise<MigrationStatus> {
    const now = this.engine.migration?.state;
    if (now !== undefined && want(now)) return Promise.resolve(now);
    return new Promise((resolve) => {
      const off = this.engine.events.subscribe((e) => {
        if (e.type === "state" && want(e.to)) {
          off();
          resolve(e.to);
        }
      });
    });
  }

  /** Resolves once the outgoing migration reached a final state. */
  outgoingFinal(): Promise<MigrationStatus> {
    return this.outgoingState((s) => FINAL_STATES.has(s));
  }

  /** Resolves once the incoming migration left listening and active. */
  async incomingFinal(): Promise<string> {
    const incoming = this.engine.incoming;
    if (!incoming) throw new Error("not armed");
    await incoming.done.catch(() => {});
    return incoming.info().status;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.engine.close();
    await this.server.shutdown();
  }
}

/**
 * A FakeClock whose every sleep also lets the guest run: it dirties `perSleep`
 * pages (fewer when throttled, in proportion) with new values, as a vCPU would
 * between the loop's windows. The pre-copy loop sleeps once per full window, so
 * the guest dirties a fixed amount per window whatever the machine's speed.
 * `perSleep` may be changed at any time.
 */
export function dirtyingClock(
  guest: TestGuest,
  perSleep: number,
): FakeClock & { perSleep: number } {
  const clock = Object.assign(new FakeClock(), { perSleep });
  const sleep = clock.sleep;
  const pages = guest.blocks[0].length / PAGE_SIZE;
  let n = 0;
  (clock as { sleep: typeof sleep }).sleep = async (ms, signal) => {
    await sleep(ms, signal);
    if (guest.runState !== "running") return;
    const count = Math.round(clock.perSleep * (100 - guest.throttle) / 100);
    for (let i = 0; i < count; i++) {
      n++;
      guest.write(((n * 7919) % pages) * PAGE_SIZE, Uint8Array.of(n & 0xff, (n >> 8) & 0xff));
    }
  };
  return clock;
}
