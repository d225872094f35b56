/**
 * ferry's command-line client, over the REST + SSE API only:
 *
 *   deno task migrate -- --api URL --to URI [--speed 1G] [--downtime 30ms] [--xbzrle]
 *                        [--auto-converge] [--watch]
 *   deno task status  -- [--api URL] [--watch] [--json]
 *   deno task token   -- [--api URL]
 *   deno task console -- [--api URL] [--replay BYTES]
 *   deno task plan    -- [--api URL] [--to URI] [--speed 1G] [--downtime 30ms] [--measure 1s]
 *   deno task history -- [--api URL] [--json]           (tools/ferryctl_history.ts)
 *   deno task timeline -- ID [--api URL] [--json|--ndjson]
 *
 * `migrate` exits 0 only when the migration completed; `console` attaches the
 * terminal to the guest's serial console until Ctrl-]. The API token is `--token`,
 * else `FERRY_TOKEN`, else the token file of a ferry on this machine (loopback API).
 */
import { readSse } from "./sse.ts";
import {
  type ConsoleStdin,
  DETACH_NAME,
  processStdin,
  runConsoleSession,
} from "./console_session.ts";
import { parseArgs } from "node:util";
import { parseSize } from "../vm/ram.ts";
import { defaultTokenFile, readTokenFile, TokenFileError } from "../api_token.ts";
import { isLoopbackHost } from "../routes/host_check.ts";
import { plan } from "./ferryctl_plan.ts";
import { history, timeline } from "./ferryctl_history.ts";

/** A bad command line: printed on one line, exit status 2. */
export class UsageError extends Error {
  override readonly name = "UsageError";
}

/** The API answered an error, or could not be reached: exit status 1. */
export class ApiError extends Error {
  override readonly name = "ApiError";
  /** The HTTP status the API answered, when it answered. */
  readonly status: number | undefined;
  constructor(message: string, status?: number) {
    super(message);
    this.status = status;
  }
}

export const MIGRATE_HELP = `Usage: deno task migrate -- --to URI [options]

Starts a migration on a ferry and waits for it to end; exit status 0 only when it
completed (1 when it failed or was cancelled or the API refused, 2 for a bad command line).

  --api URL           the source ferry's API (default $FERRY_API or http://127.0.0.1:8080)
  --to URI            destination: tcp:HOST:PORT, unix:PATH, …
  --speed SIZE        max bandwidth in bytes/s, e.g. 1G, 512M (K/M/G/T are binary)
  --downtime TIME     downtime limit, e.g. 30ms, 0.3s (a bare number is ms)
  --xbzrle            enable the xbzrle capability first
  --auto-converge     enable the auto_converge capability first
  --watch             draw a live progress bar (throughput, remaining, ETA) from the event stream
  --timeout TIME      give up (exit 1, migration left running) after this long, e.g. 5min
  --token TOKEN       the API token (default $FERRY_TOKEN, else the token file of the ferry
                      on this machine's --api port)
  -h, --help          this text`;

export const STATUS_HELP = `Usage: deno task status -- [options]

Prints the current (or last) migration of a ferry, and its incoming side when armed.

  --api URL    the ferry's API (default $FERRY_API or http://127.0.0.1:8080)
  --watch      follow an active migration with a progress bar until it ends
  --json       print GET /migrations/current as JSON
  --token TOKEN  the API token (default $FERRY_TOKEN, else the token file of the ferry
                 on this machine's --api port)
  -h, --help   this text`;

export const TOKEN_HELP = `Usage: deno task token -- [--api URL]

Prints the API token a ferry on this machine generated (it was started without --token
or FERRY_TOKEN, by this user), read from its token file:
$XDG_RUNTIME_DIR/ferry/api-PORT.token, else $HOME/.local/state/ferry/api-PORT.token.

  --api URL    the ferry's API (default $FERRY_API or http://127.0.0.1:8080)
  -h, --help   this text

  export FERRY_TOKEN=$(deno task -q token)
  curl -H "Authorization: Bearer $FERRY_TOKEN" http://127.0.0.1:8080/vm`;

export const CONSOLE_HELP = `Usage: deno task console -- [options]

Attaches this terminal to the guest's serial console (a ferry started with --guest x86):
what the guest prints goes to stdout, what you type goes to the guest. On a terminal
every key goes to the guest as typed (Ctrl-C too); ${DETACH_NAME} detaches (exit status 0).
Piped input goes a line at a time; after it ends, output goes on until ${DETACH_NAME}
in the input, Ctrl-C, or the end of the stream. A dropped stream is resumed where it
stopped; a stream that cannot be resumed ends the session (exit status 1).

  --api URL       the ferry's API (default $FERRY_API or http://127.0.0.1:8080)
  --replay BYTES  console history to print first (default 1024, at most 65536)
  --token TOKEN   the API token (default $FERRY_TOKEN, else the token file of the ferry
                  on this machine's --api port)
  -h, --help      this text

  printf 'echo $((6*7))\\n' | deno task console     # prints the guest's 42 (Ctrl-C to stop)`;

/** Console history `console` prints before what comes next, unless --replay says otherwise. */
export const DEFAULT_CONSOLE_REPLAY = 1024;

/** The environment ferryctl reads. */
export type Env = Record<string, string | undefined>;

/** An API token and where it came from, for messages. */
export interface ResolvedToken {
  readonly token: string | undefined;
  /** "--token", "FERRY_TOKEN", the token file's path, or "" when none was found. */
  readonly source: string;
  /** The token file looked for, when the API is on this machine. */
  readonly file?: string;
}

/** Parses --api (or its default) into a URL, refusing anything but http(s). */
function apiUrl(base: string): URL {
  let url: URL;
  try {
    url = new URL(base);
  } catch {
    throw new UsageError(`Invalid --api "${base}": expected a URL like http://127.0.0.1:8080`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new UsageError(`Invalid --api "${base}": expected an http:// or https:// URL`);
  }
  return url;
}

/** The token file a ferry serving `api` would have written, when `api` is on this machine. */
export function tokenFileFor(api: string, env: Env): string | undefined {
  const url = apiUrl(api);
  if (!isLoopbackHost(url.hostname)) return undefined;
  const port = Number(url.port || (url.protocol === "https:" ? 443 : 80));
  return defaultTokenFile(port, { XDG_RUNTIME_DIR: env.XDG_RUNTIME_DIR, HOME: env.HOME });
}

/**
 * The API token to send to `api`: `flag` (--token), else FERRY_TOKEN, else the
 * token file a ferry on this machine wrote for that port (none for a remote API).
 */
export function resolveToken(api: string, flag: string | undefined, env: Env): ResolvedToken {
  if (flag) return { token: flag, source: "--token" };
  if (env.FERRY_TOKEN) return { token: env.FERRY_TOKEN, source: "FERRY_TOKEN" };
  const file = tokenFileFor(api, env);
  if (file === undefined) return { token: undefined, source: "" };
  let token: string | undefined;
  try {
    token = readTokenFile(file);
  } catch (e) {
    if (!(e instanceof TokenFileError)) throw e;
    throw new ApiError(`${e.message} (pass --token or set FERRY_TOKEN)`);
  }
  return token === undefined ? { token, source: "", file } : { token, source: file, file };
}

// deno-lint-ignore no-explicit-any
type Json = any;

const FINAL = new Set(["completed", "failed", "cancelled"]);

/** "30", "30ms", "0.5s", "2min" → milliseconds. */
export function parseDuration(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|min|m)?\s*$/i.exec(text);
  if (!m) throw new UsageError(`Invalid duration "${text}": use e.g. 30ms, 0.5s or 2min`);
  const unit = { ms: 1, s: 1000, min: 60_000, m: 60_000 }[
    (m[2] ?? "ms").toLowerCase() as "ms" | "s" | "min" | "m"
  ];
  const ms = Math.round(Number(m[1]) * unit);
  if (!Number.isSafeInteger(ms) || ms < 1) throw new UsageError(`Invalid duration "${text}"`);
  return ms;
}

/** Bytes with binary units. */
export function formatBytes(n: number | undefined): string {
  if (typeof n !== "number" || !Number.isFinite(n)) return "—";
  if (Math.abs(n) < 1024) return `${Math.round(n)} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let i = -1;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(1)} ${units[i]}`;
}

/** Milliseconds for people. */
export function formatMs(ms: number | undefined): string {
  if (typeof ms !== "number" || !Number.isFinite(ms)) return "—";
  if (ms < 0) return "∞";
  if (ms < 10) return `${Number(ms.toFixed(2))} ms`;
  if (ms < 100) return `${Number(ms.toFixed(1))} ms`;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(2)} s`;
  const s = Math.round(ms / 1000);
  return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
}

/** Bytes per second sent, from info.ram.mbps (Mbit/s). */
function throughput(info: Json): number | undefined {
  const mbps = info?.ram?.mbps;
  return typeof mbps === "number" ? (mbps * 1e6) / 8 : undefined;
}

/** The progress line `--watch` draws; `best` is the highest fraction shown so far. */
export function progressLine(info: Json, best: number, width = 30): string {
  const ram = info?.ram;
  const filled = Math.round(Math.max(0, Math.min(1, best)) * width);
  const bar = "#".repeat(filled) + "-".repeat(width - filled);
  const pct = `${(best * 100).toFixed(1).padStart(5)}%`;
  if (!ram) return `[${bar}] ${pct}  ${info?.status ?? ""}`;
  const rate = throughput(info);
  const eta = rate && rate > 0 ? formatMs((ram.remaining / rate) * 1000) : "—";
  return `[${bar}] ${pct}  ${formatBytes(ram.transferred)} sent  ` +
    `${formatBytes(ram.remaining)} remaining  ${formatBytes(rate)}/s  ETA ${eta}  ` +
    `pass ${ram.dirty_sync_count}`;
}

/** Share of RAM already clean on the destination (1 once completed). */
export function progressOf(info: Json): number {
  if (info?.status === "completed") return 1;
  const ram = info?.ram;
  if (!ram || !(ram.total > 0)) return 0;
  return Math.min(1, Math.max(0, 1 - ram.remaining / ram.total));
}

/** The two-column table printed at the end of a migration (and by `status`). */
export function summaryTable(info: Json, params?: Json): string {
  const rows: [string, string][] = [["status", info.status]];
  if (info.uri) rows.push(["uri", info.uri]);
  if (info.error_desc) rows.push(["error", info.error_desc]);
  if (info.total_time !== undefined) rows.push(["total time", formatMs(info.total_time)]);
  if (info.setup_time !== undefined) rows.push(["setup time", formatMs(info.setup_time)]);
  if (info.expected_downtime !== undefined) {
    rows.push(["expected downtime", formatMs(info.expected_downtime)]);
  }
  if (info.downtime !== undefined) {
    const limit = params?.downtime_limit;
    rows.push([
      "downtime",
      `${formatMs(info.downtime)}${limit !== undefined ? ` (limit ${formatMs(limit)})` : ""}`,
    ]);
  }
  const ram = info.ram;
  if (ram) {
    rows.push(["transferred", formatBytes(ram.transferred)]);
    rows.push(["remaining", formatBytes(ram.remaining)]);
    rows.push(["total RAM", formatBytes(ram.total)]);
    rows.push(["throughput", `${formatBytes(throughput(info))}/s (${ram.mbps.toFixed(1)} Mbit/s)`]);
    rows.push(["normal pages", `${ram.normal} (${formatBytes(ram.normal_bytes)})`]);
    rows.push(["zero pages", String(ram.duplicate)]);
    rows.push(["dirty syncs", String(ram.dirty_sync_count)]);
    rows.push(["dirty rate", `${ram.dirty_pages_rate} pages/s`]);
  }
  if (info.cpu_throttle_percentage !== undefined) {
    rows.push(["cpu throttle", `${info.cpu_throttle_percentage} %`]);
  }
  const x = info.xbzrle_cache;
  if (x) {
    rows.push(["xbzrle cache", formatBytes(x.cache_size)]);
    rows.push(["xbzrle bytes", `${formatBytes(x.bytes)} in ${x.pages} pages`]);
    rows.push([
      "xbzrle misses",
      `${x.cache_miss} (${(x.cache_miss_rate * 100).toFixed(1)} %), ${x.overflow} overflows`,
    ]);
  }
  const width = Math.max(...rows.map(([k]) => k.length));
  const valueWidth = Math.max(...rows.map(([, v]) => v.length));
  const line = `+${"-".repeat(width + 2)}+${"-".repeat(valueWidth + 2)}+`;
  return [
    line,
    ...rows.map(([k, v]) => `| ${k.padEnd(width)} | ${v.padEnd(valueWidth)} |`),
    line,
  ].join("\n");
}

/** An API client for one ferry. */
export class FerryApi {
  readonly base: string;
  readonly #token: string | undefined;
  readonly #source: ResolvedToken;

  /** `token` is a token, or how one was resolved (for what a 401 should say). */
  constructor(base: string, token?: string | ResolvedToken) {
    this.base = apiUrl(base).href.replace(/\/$/, "");
    this.#source = typeof token === "object"
      ? token
      : { token: token || undefined, source: token ? "FERRY_TOKEN" : "" };
    this.#token = this.#source.token || undefined;
  }

  /** What to add to a 401: which token was refused, or how to give one. */
  #unauthorizedHint(): string {
    const { source, file } = this.#source;
    if (this.#token) return ` (the token from ${source} was refused)`;
    return ` (no token: pass --token, set FERRY_TOKEN${
      file ? `, or run as the user whose ferry wrote ${file}` : ""
    })`;
  }

  headers(extra: Record<string, string> = {}): Record<string, string> {
    return this.#token ? { ...extra, authorization: `Bearer ${this.#token}` } : extra;
  }

  async #fetch(method: string, path: string, init: RequestInit = {}): Promise<Response> {
    try {
      return await fetch(this.base + path, { method, ...init });
    } catch (e) {
      throw new ApiError(`cannot reach ${this.base}: ${(e as Error).message}`);
    }
  }

  /** The ApiError for an error answer: the request, the status and the error body's code and message. */
  #answerError(method: string, path: string, res: Response, text: string): ApiError {
    let parsed: Json;
    try {
      parsed = text ? JSON.parse(text) : undefined;
    } catch {
      parsed = undefined;
    }
    const err = parsed?.error;
    let message = `${method} ${path} answered ${res.status}`;
    if (err?.code) message += ` ${err.code}: ${err.message}`;
    else if (text) message += `: ${text.slice(0, 200)}`;
    // A lockout (429) only holds back requests without the right token.
    if (res.status === 401 || res.status === 429) message += this.#unauthorizedHint();
    return new ApiError(message, res.status);
  }

  /** A JSON call; throws ApiError naming the request, status and the error body. */
  async call(method: string, path: string, body?: unknown): Promise<Json> {
    const res = await this.#fetch(method, path, {
      headers: this.headers(body === undefined ? {} : { "content-type": "application/json" }),
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    if (!res.ok) throw this.#answerError(method, path, res, text);
    try {
      return text ? JSON.parse(text) : undefined;
    } catch {
      return undefined;
    }
  }

  /**
   * Opens an event stream (GET `path`), resuming after `lastEventId` when given; the
   * caller reads (and cancels) the body. Throws ApiError as {@link call} does.
   */
  async stream(
    path: string,
    opts: { signal?: AbortSignal; lastEventId?: string } = {},
  ): Promise<ReadableStream<Uint8Array>> {
    const headers: Record<string, string> = { accept: "text/event-stream" };
    if (opts.lastEventId !== undefined) headers["last-event-id"] = opts.lastEventId;
    const res = await this.#fetch("GET", path, {
      headers: this.headers(headers),
      signal: opts.signal,
    });
    if (!res.ok || !res.body) {
      throw this.#answerError("GET", path, res, await res.text().catch(() => ""));
    }
    return res.body;
  }

  /** Opens GET /migrations/events; the caller reads (and cancels) the body. */
  events(signal?: AbortSignal): Promise<ReadableStream<Uint8Array>> {
    return this.stream("/migrations/events", { signal });
  }
}

/** Where output goes (tests capture it). */
export interface Io {
  out(text: string): void;
  err(text: string): void;
  /** Redraw the current line in place (a terminal) or print lines now and then. */
  readonly tty: boolean;
}

const encoder = new TextEncoder();

/** The process's stdout/stderr. */
export const stdio: Io = {
  out: (text) => Deno.stdout.writeSync(encoder.encode(text)),
  err: (text) => Deno.stderr.writeSync(encoder.encode(text)),
  tty: Deno.stdout.isTerminal(),
};

/** Draws the progress line: in place on a terminal, at most once a second otherwise. */
class ProgressView {
  #best = 0;
  #lastPrint = 0;
  #drawn = false;
  constructor(readonly io: Io, readonly enabled: boolean) {}

  update(info: Json, force = false): void {
    this.#best = Math.max(this.#best, progressOf(info));
    if (!this.enabled) return;
    const line = progressLine(info, this.#best);
    if (this.io.tty) {
      this.io.out(`\r${line}\x1b[K`);
      this.#drawn = true;
    } else if (force || performance.now() - this.#lastPrint >= 1000) {
      this.io.out(`${line}\n`);
      this.#lastPrint = performance.now();
    }
  }

  /** Ends the in-place line before other output. */
  break(): void {
    if (this.#drawn) this.io.out("\n");
    this.#drawn = false;
  }
}

/**
 * Follows the migration until it reaches a final state, from the event stream
 * `events` (opened before the migration started, so nothing is missed); falls back
 * to polling GET /migrations/current if the stream breaks. Returns the final info.
 */
async function follow(
  api: FerryApi,
  io: Io,
  opts: {
    watch: boolean;
    events?: { body: ReadableStream<Uint8Array>; abort: AbortController };
    deadline?: number;
    /** Follow a migration that is already running (no `→ setup` event to wait for). */
    running?: boolean;
  },
): Promise<Json> {
  const view = new ProgressView(io, opts.watch);
  const note = (text: string) => {
    view.break();
    io.out(`${text}\n`);
  };
  const events = opts.events;
  let stream = events?.body;
  let timer: ReturnType<typeof setTimeout> | undefined;
  if (events && opts.deadline !== undefined) {
    timer = setTimeout(() => events.abort.abort(), Math.max(0, opts.deadline - Date.now()));
  }
  try {
    if (stream) {
      try {
        // Our migration's events begin with its `→ setup` transition; a final state
        // before that belongs to an earlier migration.
        let started = opts.running ?? false;
        for await (const ev of readSse(stream)) {
          const data = JSON.parse(ev.data);
          if (ev.event === "reset") break; // events were lost: read the state below
          if (ev.event === "hello" && started && FINAL.has(data.migration?.status)) break;
          if (ev.event === "state") {
            if (data.to === "setup") started = true;
            if (!started) continue;
            note(
              `ferry: migration ${data.from} → ${data.to}${data.error ? `: ${data.error}` : ""}`,
            );
            if (FINAL.has(data.to)) break;
          } else if (ev.event === "progress" && started) {
            view.update(data.info);
          }
        }
      } catch {
        // The stream broke (network, ferry restarted, timeout): poll instead.
      }
      stream = undefined;
    }
    // Read the final state (or poll until there is one).
    for (;;) {
      const info = await api.call("GET", "/migrations/current");
      if (FINAL.has(info.status) || info.status === "none") {
        view.update(info, true);
        view.break();
        return info;
      }
      if (opts.deadline !== undefined && Date.now() > opts.deadline) {
        view.break();
        throw new ApiError(`timed out: the migration is still ${info.status}`);
      }
      view.update(info);
      await new Promise((r) => setTimeout(r, 200));
    }
  } finally {
    clearTimeout(timer);
    events?.abort.abort();
    await stream?.cancel().catch(() => {});
  }
}

/** `migrate`: returns the exit status. */
export async function migrate(args: string[], env: Record<string, string | undefined>, io: Io) {
  const { values } = parse(args, {
    api: { type: "string" },
    to: { type: "string" },
    speed: { type: "string" },
    downtime: { type: "string" },
    xbzrle: { type: "boolean", default: false },
    "auto-converge": { type: "boolean", default: false },
    watch: { type: "boolean", default: false },
    timeout: { type: "string" },
    token: { type: "string" },
    help: { type: "boolean", short: "h", default: false },
  });
  if (values.help) {
    io.out(`${MIGRATE_HELP}\n`);
    return 0;
  }
  if (!values.to) throw new UsageError("Missing --to URI (e.g. --to tcp:127.0.0.1:4444)");
  const patch: Record<string, number> = {};
  if (values.speed !== undefined) {
    try {
      patch.max_bandwidth = parseSize(String(values.speed));
    } catch (e) {
      throw new UsageError(`Invalid --speed: ${(e as Error).message}`);
    }
    if (patch.max_bandwidth < 1) throw new UsageError("Invalid --speed: must be above 0");
  }
  if (values.downtime !== undefined) patch.downtime_limit = parseDuration(String(values.downtime));
  const deadline = values.timeout !== undefined
    ? Date.now() + parseDuration(String(values.timeout))
    : undefined;
  const base = String(values.api ?? env.FERRY_API ?? DEFAULT_API);
  const api = new FerryApi(base, resolveToken(base, values.token, env));

  const caps: Record<string, boolean> = {};
  if (values.xbzrle) caps.xbzrle = true;
  if (values["auto-converge"]) caps.auto_converge = true;
  if (Object.keys(caps).length > 0) {
    try {
      await api.call("PUT", "/migrations/capabilities", caps);
    } catch (e) {
      throw new ApiError(`cannot enable ${Object.keys(caps).join(", ")}: ${(e as Error).message}`);
    }
  }
  let params: Json;
  if (Object.keys(patch).length > 0) {
    params = await api.call("PATCH", "/migrations/parameters", patch);
  } else {
    params = await api.call("GET", "/migrations/parameters");
  }

  const abort = new AbortController();
  const events = { body: await api.events(abort.signal), abort };
  let info: Json;
  try {
    info = await api.call("POST", "/migrations", { uri: values.to });
  } catch (e) {
    abort.abort();
    await events.body.cancel().catch(() => {});
    throw e;
  }
  io.out(
    `ferry: migrating to ${values.to} (max ${formatBytes(params.max_bandwidth)}/s, ` +
      `downtime limit ${formatMs(params.downtime_limit)})\n`,
  );
  info = await follow(api, io, { watch: values.watch, events, deadline });
  io.out(`${summaryTable(info, params)}\n`);
  return info.status === "completed" ? 0 : 1;
}

/** `status`: returns the exit status. */
export async function status(args: string[], env: Record<string, string | undefined>, io: Io) {
  const { values } = parse(args, {
    api: { type: "string" },
    watch: { type: "boolean", default: false },
    json: { type: "boolean", default: false },
    token: { type: "string" },
    help: { type: "boolean", short: "h", default: false },
  });
  if (values.help) {
    io.out(`${STATUS_HELP}\n`);
    return 0;
  }
  const base = String(values.api ?? env.FERRY_API ?? DEFAULT_API);
  const api = new FerryApi(base, resolveToken(base, values.token, env));
  let info = await api.call("GET", "/migrations/current");
  if (values.watch && !FINAL.has(info.status) && info.status !== "none") {
    const abort = new AbortController();
    const events = { body: await api.events(abort.signal), abort };
    info = await follow(api, io, { watch: true, events, running: true });
  }
  if (values.json) {
    io.out(`${JSON.stringify(info, null, 2)}\n`);
    return 0;
  }
  const params = await api.call("GET", "/migrations/parameters");
  io.out(`${summaryTable(info, params)}\n`);
  const incoming = await api.call("GET", "/migrations/incoming");
  if (incoming.status !== "none") {
    const rows = [
      `incoming: ${incoming.status}`,
      incoming.address ? `on ${incoming.address}` : "",
      `${formatBytes(incoming.bytes_received)} received`,
      incoming.error_desc ? `error: ${incoming.error_desc}` : "",
    ].filter(Boolean);
    io.out(`${rows.join(", ")}\n`);
  }
  return 0;
}

/**
 * `console`: attaches `stdin` and `io` to the guest's serial console until the
 * detach key (exit status 0) or the end of its stream (1). Refusals — no console,
 * a bad token — throw ApiError before anything is read from `stdin`. A refused input
 * (409: the guest is not running) is reported and the session goes on when typing
 * on a terminal; piped input stops there (exit status 1).
 */
export async function consoleCommand(
  args: string[],
  env: Env,
  io: Io,
  stdin: ConsoleStdin,
): Promise<number> {
  const { values } = parse(args, {
    api: { type: "string" },
    replay: { type: "string" },
    token: { type: "string" },
    help: { type: "boolean", short: "h", default: false },
  });
  if (values.help) {
    io.out(`${CONSOLE_HELP}\n`);
    return 0;
  }
  const replay = values.replay === undefined ? DEFAULT_CONSOLE_REPLAY : Number(values.replay);
  if (!/^\d+$/.test(values.replay ?? "0") || replay > 65536) {
    throw new UsageError(`Invalid --replay "${values.replay}": bytes from 0 to 65536`);
  }
  const base = String(values.api ?? env.FERRY_API ?? DEFAULT_API);
  const api = new FerryApi(base, resolveToken(base, values.token, env));
  // On a raw terminal a line needs its carriage return.
  const eol = () => (stdin.tty ? "\r\n" : "\n");
  const note = (line: string) => io.err(`ferry console: ${line}${eol()}`);
  const end = await runConsoleSession({
    open: (lastEventId, signal) =>
      api.stream(`/vm/console?replay=${replay}`, { signal, lastEventId }),
    send: async (text) => {
      try {
        await api.call("POST", "/vm/console", { input: text });
      } catch (e) {
        if (!(stdin.tty && e instanceof ApiError && e.status === 409)) throw e;
        note(`input not sent: ${e.message}`);
      }
    },
    stdin,
    out: io.out,
    note,
  });
  if (end.kind === "detached") {
    note("detached");
    return 0;
  }
  if (end.kind === "stopped") throw new ApiError(`stopped by ${end.signal}`);
  throw new ApiError(`the console stream ended: ${end.reason}`);
}

/** `token`: prints the token from the token file of a ferry on this machine; returns the exit status. */
export function token(args: string[], env: Env, io: Io): number {
  const { values } = parse(args, {
    api: { type: "string" },
    help: { type: "boolean", short: "h", default: false },
  });
  if (values.help) {
    io.out(`${TOKEN_HELP}\n`);
    return 0;
  }
  const base = String(values.api ?? env.FERRY_API ?? DEFAULT_API);
  const file = tokenFileFor(base, env);
  if (file === undefined) {
    throw new ApiError(
      isLoopbackHost(apiUrl(base).hostname)
        ? "neither XDG_RUNTIME_DIR nor HOME is set: cannot find the token file"
        : `${base} is not on this machine: its token file is on the machine that runs it`,
    );
  }
  let found: string | undefined;
  try {
    found = readTokenFile(file);
  } catch (e) {
    if (!(e instanceof TokenFileError)) throw e;
    throw new ApiError(e.message);
  }
  if (found === undefined) {
    throw new ApiError(
      `no token file ${file}: is a ferry of this user listening on ${base}, started without --token or FERRY_TOKEN?`,
    );
  }
  io.out(`${found}\n`);
  return 0;
}

export const DEFAULT_API = "http://127.0.0.1:8080";

type Options = NonNullable<Parameters<typeof parseArgs>[0]>["options"];

// deno-lint-ignore no-explicit-any
export function parse(args: string[], options: Options): { values: Record<string, any> } {
  try {
    return parseArgs({
      args: args.filter((a, i) => !(a === "--" && i === 0)),
      options,
      strict: true,
      allowPositionals: false,
    });
  } catch (e) {
    throw new UsageError(`${(e as Error).message.split("\n")[0]} (see --help)`);
  }
}

/** Runs `ferryctl COMMAND ARGS…`; returns the exit status. `stdin` is what `console` types. */
export async function run(
  argv: string[],
  env: Record<string, string | undefined>,
  io: Io = stdio,
  stdin: ConsoleStdin = processStdin,
): Promise<number> {
  const [command, ...args] = argv;
  try {
    if (command === "migrate") return await migrate(args, env, io);
    if (command === "status") return await status(args, env, io);
    if (command === "token") return token(args, env, io);
    if (command === "console") return await consoleCommand(args, env, io, stdin);
    if (command === "plan") return await plan(args, env, io);
    if (command === "history") return await history(args, env, io);
    if (command === "timeline") return await timeline(args, env, io);
    throw new UsageError(
      `Unknown command "${
        command ?? ""
      }": expected migrate, status, token, console, plan, history or timeline`,
    );
  } catch (e) {
    if (e instanceof UsageError) {
      io.err(`ferry ${command ?? ""}: ${e.message}\n`);
      return 2;
    }
    if (e instanceof ApiError) {
      io.err(`ferry ${command}: ${e.message}\n`);
      return 1;
    }
    throw e;
  }
}

if (import.meta.main) {
  Deno.exit(
    await run(Deno.args, {
      FERRY_API: Deno.env.get("FERRY_API"),
      FERRY_TOKEN: Deno.env.get("FERRY_TOKEN"),
      XDG_RUNTIME_DIR: Deno.env.get("XDG_RUNTIME_DIR"),
      HOME: Deno.env.get("HOME"),
    }),
  );
}
