import { call } from "./app.ts";

/**
 * Waits, one event-loop turn at a time (a fake clock's sleeps take one each),
 * until GET /vm/dirty-rate no longer says measuring; returns its answer.
 */
export async function measurementSettled(app: Parameters<typeof call>[0]) {
  for (let turn = 0; turn < 100_000; turn++) {
    const res = await call(app, "GET", "/vm/dirty-rate");
    if (res.body.status !== "measuring") return res;
    await new Promise((r) => setTimeout(r, 0));
  }
  throw new Error("the measurement never ended");
}
