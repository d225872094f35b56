/**
 * ferryctl's `history` and `timeline` commands, over GET /migrations,
 * GET /migrations/{id} and GET /migrations/{id}/timeline:
 *
 *   deno task history  -- [--api URL] [--limit N] [--json]
 *   deno task timeline -- ID [--api URL] [--rows N] [--json | --ndjson]
 *
 * `timeline` takes an id or a unique prefix of one, as `history` prints them.
 * @module
 */
import { parseArgs } from "node:util";
import {
  ApiError,
  type Env,
  FerryApi,
  formatBytes,
  formatMs,
  type Io,
  resolveToken,
  UsageError,
} from "./ferryctl.ts";

// deno-lint-ignore no-explicit-any
type Json = any;

export const HISTORY_HELP = `Usage: deno task history -- [options]

Lists a ferry's past migrations, both directions, newest first (a running one first):
id, direction, outcome, start, total time, downtime, bytes and passes.

  --api URL      the ferry's API (default $FERRY_API or http://127.0.0.1:8080)
  --limit N      at most N migrations (default 20)
  --json         print GET /migrations as JSON
  --token TOKEN  the API token (default $FERRY_TOKEN, else the token file of the ferry
                 on this machine's --api port)
  -h, --help     this text`;

export const TIMELINE_HELP = `Usage: deno task timeline -- ID [options]

Prints why an outgoing migration converged when it did (or why not) and why its downtime
landed where it did, then its flight recorder's 100 ms windows (bandwidth, dirty rate,
what was left against max_size, expected downtime, throttle, pass). ID is an id from
"deno task history", or a unique prefix of one.

  --api URL      the ferry's API (default $FERRY_API or http://127.0.0.1:8080)
  --rows N       at most N windows, evenly spread, the last always shown (default 30)
  --json         print the timeline as JSON
  --ndjson       print the windows as NDJSON, one per line, all of them
  --token TOKEN  the API token (default $FERRY_TOKEN, else the token file of the ferry
                 on this machine's --api port)
  -h, --help     this text`;

const DEFAULT_API = "http://127.0.0.1:8080";
const FULL_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** Text rows as a table with a header row, columns padded (numbers right-aligned). */
export function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const numeric = header.map((_, i) =>
    rows.every((r) => /^-?\d[\d.]*( [A-Za-z%/]+)?$/.test(r[i]) || r[i] === "—")
  );
  const line = (cells: string[]) =>
    cells.map((c, i) => numeric[i] ? c.padStart(widths[i]) : c.padEnd(widths[i])).join("  ")
      .trimEnd();
  return [line(header), ...rows.map(line)].join("\n");
}

/** A byte rate in decimal MB/s, as the explanations write it. */
export function formatMBps(bytesPerSecond: number): string {
  return `${(bytesPerSecond / 1e6).toFixed(1)} MB/s`;
}

/** GET /migrations as a table. */
export function historyTable(records: Json[]): string {
  if (records.length === 0) return "no migrations yet";
  return table(
    ["id", "direction", "status", "started", "total", "downtime", "bytes", "passes"],
    records.map((r) => [
      String(r.id).slice(0, 8),
      r.direction,
      r.status,
      new Date(r.started_at).toISOString().replace("T", " ").slice(0, 19),
      r.total_time === undefined ? "—" : formatMs(r.total_time),
      r.downtime === undefined ? "—" : formatMs(r.downtime),
      formatBytes(r.bytes),
      r.passes === undefined ? "—" : String(r.passes),
    ]),
  );
}

/** At most `rows` of `items`, evenly spread, the first and the last included. */
export function spread<T>(items: readonly T[], rows: number): T[] {
  if (items.length <= rows) return [...items];
  if (rows <= 1) return items.slice(-1);
  const out: T[] = [];
  for (let i = 0; i < rows; i++) out.push(items[Math.round((i * (items.length - 1)) / (rows - 1))]);
  return out;
}

/** A migration's explanation and its timeline's windows (at most `rows` of them) as text. */
export function timelineText(record: Json, timeline: Json, rows: number): string {
  const head = [
    `migration ${record.id} (${record.direction}, ${record.status}${
      record.uri ? `, ${record.uri}` : ""
    })`,
  ];
  if (record.explanation) {
    head.push(`convergence: ${record.explanation.convergence}`);
    head.push(`downtime:    ${record.explanation.downtime}`);
  }
  const windows = spread(timeline.windows as Json[], rows);
  const shown = windows.length < timeline.windows.length
    ? ` (${windows.length} of ${timeline.windows.length} shown; --ndjson prints all)`
    : "";
  head.push(`${timeline.windows.length} windows, ${timeline.passes.length} passes${shown}`);
  if (timeline.dropped_windows > 0) head.push(`${timeline.dropped_windows} older windows dropped`);
  if (windows.length === 0) return head.join("\n");
  return `${head.join("\n")}\n\n${
    table(
      [
        "t",
        "bandwidth",
        "dirty rate",
        "remaining",
        "max_size",
        "exp. downtime",
        "throttle",
        "pass",
      ],
      windows.map((w) => [
        `${(w.t / 1000).toFixed(1)} s`,
        formatMBps(w.bandwidth),
        formatMBps(w.dirty_rate),
        formatBytes(w.remaining),
        formatBytes(w.max_size),
        w.expected_downtime < 0 ? "—" : formatMs(w.expected_downtime),
        `${w.throttle} %`,
        String(w.pass),
      ]),
    )
  }`;
}

function parse(
  args: string[],
  options: Record<string, { type: "string" | "boolean" }>,
  // deno-lint-ignore no-explicit-any
): { values: Record<string, any>; positionals: string[] } {
  try {
    return parseArgs({
      args: args.filter((a, i) => !(a === "--" && i === 0)),
      options: { ...options, help: { type: "boolean", short: "h" } },
      strict: true,
      allowPositionals: true,
    });
  } catch (e) {
    throw new UsageError(`${(e as Error).message.split("\n")[0]} (see --help)`);
  }
}

function count(flag: string, text: string | undefined, fallback: number): number {
  if (text === undefined) return fallback;
  if (!/^\d{1,6}$/.test(text) || Number(text) < 1) {
    throw new UsageError(`Invalid --${flag} "${text}": a whole number from 1`);
  }
  return Number(text);
}

function client(values: Record<string, unknown>, env: Env): FerryApi {
  const base = String(values.api ?? env.FERRY_API ?? DEFAULT_API);
  return new FerryApi(base, resolveToken(base, values.token as string | undefined, env));
}

/** `history`: returns the exit status. */
export async function history(args: string[], env: Env, io: Io): Promise<number> {
  const { values, positionals } = parse(args, {
    api: { type: "string" },
    limit: { type: "string" },
    json: { type: "boolean" },
    token: { type: "string" },
  });
  if (values.help) {
    io.out(`${HISTORY_HELP}\n`);
    return 0;
  }
  if (positionals.length > 0) throw new UsageError(`Unexpected "${positionals[0]}" (see --help)`);
  const limit = count("limit", values.limit as string | undefined, 20);
  const records = ((await client(values, env).call("GET", "/migrations")) as Json[]).slice(
    0,
    limit,
  );
  io.out(values.json ? `${JSON.stringify(records, null, 2)}\n` : `${historyTable(records)}\n`);
  return 0;
}

/** `timeline ID`: returns the exit status. */
export async function timeline(args: string[], env: Env, io: Io): Promise<number> {
  const { values, positionals } = parse(args, {
    api: { type: "string" },
    rows: { type: "string" },
    json: { type: "boolean" },
    ndjson: { type: "boolean" },
    token: { type: "string" },
  });
  if (values.help) {
    io.out(`${TIMELINE_HELP}\n`);
    return 0;
  }
  if (positionals.length !== 1) {
    throw new UsageError("Give one migration id (or a unique prefix): deno task timeline -- ID");
  }
  if (values.json && values.ndjson) throw new UsageError("--json and --ndjson exclude each other");
  const rows = count("rows", values.rows as string | undefined, 30);
  const api = client(values, env);
  const id = await resolveId(api, positionals[0]);
  const tl = await api.call("GET", `/migrations/${id}/timeline`);
  if (values.ndjson) {
    io.out(tl.windows.map((w: Json) => JSON.stringify(w) + "\n").join(""));
    return 0;
  }
  if (values.json) {
    io.out(`${JSON.stringify(tl, null, 2)}\n`);
    return 0;
  }
  const record = await api.call("GET", `/migrations/${id}`);
  io.out(`${timelineText(record, tl, rows)}\n`);
  return 0;
}

/** A full id for `text`: itself when it is one, else the one id GET /migrations has with that prefix. */
async function resolveId(api: FerryApi, text: string): Promise<string> {
  const wanted = text.toLowerCase();
  if (FULL_ID.test(wanted)) return wanted;
  if (!/^[0-9a-f-]{1,36}$/.test(wanted)) {
    throw new UsageError(`Invalid migration id "${text}": expected an id as history prints it`);
  }
  const ids = ((await api.call("GET", "/migrations")) as Json[]).map((r) => String(r.id));
  const matches = [...new Set(ids.filter((i) => i.startsWith(wanted)))];
  if (matches.length === 1) return matches[0];
  throw new ApiError(
    matches.length === 0
      ? `no migration id starts with "${text}" (deno task history lists them)`
      : `"${text}" is the start of ${matches.length} ids: give more of it`,
  );
}
