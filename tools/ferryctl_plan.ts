/**
 * `ferryctl plan`: asks a ferry whether a migration would converge before starting
 * it (POST /migrations/plan), measuring the guest's dirty rate first when needed
 * (POST /vm/dirty-rate), and prints the plan (docs/ARCHITECTURE.md, "Planning a
 * migration").
 * @module
 */
import { parseSize } from "../vm/ram.ts";
import {
  ApiError,
  DEFAULT_API,
  type Env,
  FerryApi,
  formatBytes,
  formatMs,
  type Io,
  parse,
  parseDuration,
  resolveToken,
  UsageError,
} from "./ferryctl.ts";

export const PLAN_HELP = `Usage: deno task plan -- [options]

Predicts a migration without starting it: whether it converges, its total time,
passes and downtime, and when it does not, what would make it (the bandwidth
needed, or what auto-converge would do). Exit status 0 when it converges, 3 when
it does not, 1 when the API refused, 2 for a bad command line.

  --api URL        the source ferry's API (default $FERRY_API or http://127.0.0.1:8080)
  --to URI         the destination (tcp: and unix: are probed for the round trip)
  --speed SIZE     plan with this max bandwidth in bytes/s, e.g. 1G, 512M
  --downtime TIME  plan with this downtime limit, e.g. 30ms, 0.3s
  --auto-converge  plan with the auto_converge capability
  --xbzrle         plan with the xbzrle capability
  --measure TIME   measure the dirty rate for this long first (default: use the last
                   measurement, or measure 1s when there is none)
  --json           print the plan as JSON
  --token TOKEN    the API token (default $FERRY_TOKEN, else the token file of the ferry
                   on this machine's --api port)
  -h, --help       this text`;

/** Exit status of a plan that does not converge. */
export const EXIT_NO_CONVERGENCE = 3;

// deno-lint-ignore no-explicit-any
type Json = any;

/** Measures the dirty rate for `ms` and waits until the measurement ended. */
async function measure(api: FerryApi, ms: number, io: Io): Promise<Json> {
  io.err(`ferry plan: measuring the dirty rate for ${formatMs(ms)}\n`);
  await api.call("POST", "/vm/dirty-rate", { calc_time_ms: ms });
  for (;;) {
    await new Promise((r) => setTimeout(r, Math.min(250, ms)));
    const info = await api.call("GET", "/vm/dirty-rate");
    if (info.status === "measured") return info;
    if (info.status !== "measuring") {
      throw new ApiError(`the dirty-rate measurement ended ${info.status}: ${info.error_desc}`);
    }
  }
}

/** The plan as lines for people. */
export function planText(plan: Json, limit: number): string {
  const lines: string[] = [];
  const verdict = plan.converges
    ? `converges in ${formatMs(plan.total_time_ms)}`
    : plan.outcome === "stalled-failed"
    ? `does not converge: fails after ${formatMs(plan.total_time_ms)}`
    : plan.outcome === "stalled-switchover"
    ? `does not converge: forced switchover after ${formatMs(plan.total_time_ms)}`
    : plan.outcome === "completed"
    ? `switches over above the limit after ${formatMs(plan.total_time_ms)}`
    : `does not converge within ${formatMs(plan.total_time_ms)}`;
  lines.push(
    `plan: ${verdict}, ${plan.passes} dirty-log syncs, downtime ~${
      formatMs(plan.downtime_ms)
    } (limit ${formatMs(limit)})${plan.throttle ? `, throttle ${plan.throttle} %` : ""}`,
  );
  lines.push(
    `  link ${formatBytes(plan.bandwidth)}/s (max_bandwidth), round trip ${
      plan.rtt_source === "probe" ? formatMs(plan.rtt_ms) : "not probed"
    }`,
  );
  const d = plan.dirty_rate;
  if (d?.status === "measured") {
    const sets = (d.working_set ?? []).map((w: Json) =>
      `${formatMs(w.window_ms)} ${formatBytes(w.pages * d.page_size)}`
    );
    lines.push(
      `  dirty rate ${formatBytes(d.pages_per_second * d.page_size)}/s; working set ` +
        sets.join(", "),
    );
  }
  lines.push(`  ${plan.explanation}`);
  const to = plan.to_converge;
  if (to) {
    const options: string[] = [];
    if (to.bandwidth !== null) options.push(`--speed ${formatBytes(to.bandwidth)}/s or more`);
    const ac = to.auto_converge;
    if (ac?.converges) {
      options.push(
        `--auto-converge (converges in ${formatMs(ac.total_time_ms)} at throttle ${ac.throttle} %)`,
      );
    } else if (ac) options.push("auto-converge would not be enough");
    const xb = to.xbzrle;
    if (xb?.converges) {
      options.push(
        `xbzrle (predicted ratio ${xb.ratio}: converges in ${formatMs(xb.total_time_ms)})`,
      );
    }
    if (options.length > 0) lines.push(`  to converge: ${options.join("; or ")}`);
  }
  for (const a of plan.assumptions ?? []) lines.push(`  assumes ${a}`);
  return lines.join("\n");
}

/** `plan`: returns the exit status. */
export async function plan(args: string[], env: Env, io: Io): Promise<number> {
  const { values } = parse(args, {
    api: { type: "string" },
    to: { type: "string" },
    speed: { type: "string" },
    downtime: { type: "string" },
    "auto-converge": { type: "boolean", default: false },
    xbzrle: { type: "boolean", default: false },
    measure: { type: "string" },
    json: { type: "boolean", default: false },
    token: { type: "string" },
    help: { type: "boolean", short: "h", default: false },
  });
  if (values.help) {
    io.out(`${PLAN_HELP}\n`);
    return 0;
  }
  const parameters: Record<string, number> = {};
  if (values.speed !== undefined) {
    try {
      parameters.max_bandwidth = parseSize(String(values.speed));
    } catch (e) {
      throw new UsageError(`Invalid --speed: ${(e as Error).message}`);
    }
    if (parameters.max_bandwidth < 1) throw new UsageError("Invalid --speed: must be above 0");
  }
  if (values.downtime !== undefined) {
    parameters.downtime_limit = parseDuration(String(values.downtime));
  }
  const measureMs = values.measure !== undefined ? parseDuration(String(values.measure)) : null;
  const capabilities: Record<string, boolean> = {};
  if (values["auto-converge"]) capabilities.auto_converge = true;
  if (values.xbzrle) capabilities.xbzrle = true;
  const base = String(values.api ?? env.FERRY_API ?? DEFAULT_API);
  const api = new FerryApi(base, resolveToken(base, values.token, env));
  const body = {
    ...(values.to !== undefined ? { uri: String(values.to) } : {}),
    parameters,
    capabilities,
  };
  if (measureMs !== null) await measure(api, measureMs, io);
  let answer: Json;
  try {
    answer = await api.call("POST", "/migrations/plan", body);
  } catch (e) {
    if (!(e instanceof ApiError) || !/dirty-rate-unmeasured/.test(e.message)) throw e;
    if (/still being measured/.test(e.message)) {
      for (;;) {
        await new Promise((r) => setTimeout(r, 250));
        if ((await api.call("GET", "/vm/dirty-rate")).status !== "measuring") break;
      }
    } else await measure(api, 1000, io);
    answer = await api.call("POST", "/migrations/plan", body);
  }
  if (values.json) io.out(`${JSON.stringify(answer, null, 2)}\n`);
  else {
    const limit = parameters.downtime_limit ??
      (await api.call("GET", "/migrations/parameters")).downtime_limit;
    io.out(`${planText(answer, limit)}\n`);
  }
  return answer.converges ? 0 : EXIT_NO_CONVERGENCE;
}
