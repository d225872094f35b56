// ferry's dashboard: plain browser JavaScript, no build step. Its one library,
// xterm.js (the terminal pane), comes from the npm package and is inlined into the
// page by web/dashboard.ts, as are web/console_pane.js and web/recorder_pane.js. The pure helpers at the top
// are exported for tests (tests/web/app_test.ts); the page wiring at the bottom runs
// only in a browser.

import { ConsolePane } from "./console_pane.js";
import { drawRateGrid, RecorderPane } from "./recorder_pane.js";

/** Bytes with binary units: "0 B", "512 B", "1.5 KiB", "256.0 MiB". */
export function formatBytes(n) {
  if (typeof n !== "number" || !Number.isFinite(n)) return "—";
  const sign = n < 0 ? "-" : "";
  let v = Math.abs(n);
  if (v < 1024) return `${sign}${Math.round(v)} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let i = -1;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${sign}${v.toFixed(v >= 100 ? 0 : 1)} ${units[i]}`;
}

/** A byte rate: "12.5 MiB/s". */
export function formatRate(bytesPerSecond) {
  if (typeof bytesPerSecond !== "number" || !Number.isFinite(bytesPerSecond)) return "—";
  return `${formatBytes(bytesPerSecond)}/s`;
}

/** Milliseconds for people: "0.4 ms", "850 ms", "2.35 s", "3 min 07 s". */
export function formatMs(ms) {
  if (typeof ms !== "number" || !Number.isFinite(ms)) return "—";
  if (ms < 0) return "∞";
  if (ms < 10) return `${Number(ms.toFixed(1))} ms`;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(2)} s`;
  const s = Math.round(ms / 1000);
  return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
}

const SIZE_UNITS = { "": 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 };

/** "1G", "512M", "1.5g/s", "1048576" → bytes (binary units, as ferry's flags). */
export function parseSize(text) {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(?:([KMGT])(?:i?B)?|B)?\s*(?:\/s)?\s*$/i.exec(String(text));
  if (!m) throw new Error(`"${text}" is not a size: use a number with K, M, G or T, e.g. 1G`);
  const value = Math.round(Number(m[1]) * SIZE_UNITS[(m[2] ?? "").toUpperCase()]);
  if (!Number.isSafeInteger(value) || value < 1) throw new Error(`"${text}" is out of range`);
  return value;
}

/** "30", "30ms", "0.5s", "1.5 s" → whole milliseconds (at least 1). */
export function parseDuration(text) {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s)?\s*$/i.exec(String(text));
  if (!m) throw new Error(`"${text}" is not a duration: use e.g. 30ms or 0.5s`);
  const ms = Math.round(Number(m[1]) * ((m[2] ?? "ms").toLowerCase() === "s" ? 1000 : 1));
  if (!Number.isSafeInteger(ms) || ms < 1) throw new Error(`"${text}" is out of range`);
  return ms;
}

/** Bytes per second the migration is sending (info.ram.mbps is Mbit/s). */
export function throughputOf(info) {
  const mbps = info?.ram?.mbps;
  return typeof mbps === "number" ? (mbps * 1e6) / 8 : undefined;
}

/** Bytes per second the guest dirties (pages/s × page size). */
export function dirtyRateOf(info) {
  const ram = info?.ram;
  if (!ram || typeof ram.dirty_pages_rate !== "number") return undefined;
  return ram.dirty_pages_rate * (ram.page_size || 4096);
}

/** The share of RAM already clean on the destination, 0..1 (1 once completed). */
export function progressOf(info) {
  if (!info) return 0;
  if (info.status === "completed") return 1;
  const ram = info.ram;
  if (!ram || !(ram.total > 0)) return 0;
  return Math.min(1, Math.max(0, 1 - ram.remaining / ram.total));
}

const RUNNING = new Set([
  "setup",
  "active",
  "interrupted",
  "pre-switchover",
  "device",
  "cancelling",
]);
const FINAL = new Set(["completed", "failed", "cancelled"]);

/**
 * Keeps the progress bar from running backwards: within one migration it shows the
 * best fraction seen (a new dirty pass raises `remaining` again; the bar holds).
 * `reset()` when a new migration starts.
 */
export class ProgressTracker {
  #best = 0;

  /** The fraction to show for this info, never below the last one since reset(). */
  update(info) {
    if (!info || info.status === "none") return this.#best;
    this.#best = Math.max(this.#best, progressOf(info));
    return this.#best;
  }

  /** Starts again from 0 (a new migration). */
  reset() {
    this.#best = 0;
  }

  get value() {
    return this.#best;
  }
}

/**
 * How a migration info relates to the one shown: "stale" (an older answer about the
 * same migration), "new" (another migration) or "same". `source` is "event" (the
 * in-order SSE stream), "snapshot" (hello/reset: newer than anything shown) or
 * "fetch" (a GET answer, which may have been overtaken by events).
 */
export function classifyInfo(current, info, source) {
  if (!current || current.status === "none") return info.status === "none" ? "same" : "new";
  if (info.status === "none") return "same";
  if ((current.uri ?? null) !== (info.uri ?? null)) return "new";
  const older = typeof info.total_time === "number" && typeof current.total_time === "number" &&
    info.total_time < current.total_time;
  if (source === "fetch") return older ? "stale" : "same";
  if (older) return "new";
  if (FINAL.has(current.status) && RUNNING.has(info.status)) return "new";
  return "same";
}

const SSE_LINE_END = /\r\n?|\n/g;

/**
 * Parses a Server-Sent Events stream fed in chunks of bytes (or of text) by the
 * WHATWG EventSource rules: CRLF, LF or CR line ends, one leading BOM skipped,
 * `data:` lines joined with "\n", an `id:` with NUL ignored, `retry:` only when all
 * digits, an event dispatched only by a blank line. tools/sse.ts is the same parser.
 */
export class SseParser {
  /** The reconnection time the stream asked for (`retry:`), ms. */
  retry = undefined;
  /** The last event ID buffer: the latest valid `id:` value. */
  lastEventId = "";
  #decoder = new TextDecoder("utf-8", { ignoreBOM: true });
  #started = false;
  #afterCr = false;
  #line = "";
  #type = "";
  #data = "";

  /** Feeds a chunk; returns the events it completed ({event, data, id}) and comments ({comment}). */
  push(chunk) {
    let text = typeof chunk === "string" ? chunk : this.#decoder.decode(chunk, { stream: true });
    const out = [];
    if (text === "") return out;
    if (!this.#started) {
      this.#started = true;
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    }
    let start = 0;
    if (this.#afterCr && text.charCodeAt(0) === 10) start = 1; // the LF of a split CRLF
    this.#afterCr = false;
    SSE_LINE_END.lastIndex = start;
    for (let m; (m = SSE_LINE_END.exec(text));) {
      const line = this.#line + text.slice(start, m.index);
      this.#line = "";
      start = SSE_LINE_END.lastIndex;
      if (m[0] === "\r" && start === text.length) this.#afterCr = true;
      this.#processLine(line, out);
    }
    this.#line += text.slice(start);
    return out;
  }

  #processLine(line, out) {
    if (line === "") {
      const data = this.#data;
      if (data !== "") {
        out.push({ event: this.#type || "message", data: data.slice(0, -1), id: this.lastEventId });
      }
      this.#type = "";
      this.#data = "";
      return;
    }
    const colon = line.indexOf(":");
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.charCodeAt(0) === 32) value = value.slice(1);
    if (colon === 0) {
      out.push({ comment: value });
      return;
    }
    const field = colon < 0 ? line : line.slice(0, colon);
    if (field === "event") this.#type = value;
    else if (field === "data") this.#data += value + "\n";
    else if (field === "id" && !value.includes("\0")) this.lastEventId = value;
    else if (field === "retry" && /^[0-9]+$/.test(value)) this.retry = Number(value);
  }
}

/** A "nice" axis maximum ≥ v: 1, 2 or 5 × 10^n (at least 1). */
export function niceMax(v) {
  if (!(v > 0) || !Number.isFinite(v)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

/**
 * A "nice" maximum for a byte-rate axis, in the binary unit its labels use
 * (e.g. 50 MiB/s rather than 47.7 MiB/s), and at least `floor`.
 */
export function niceBytesMax(v, floor = 2 ** 20) {
  const top = Math.max(v, floor);
  let unit = 1;
  while (top / unit >= 1024 && unit < 2 ** 40) unit *= 1024;
  return niceMax(top / unit) * unit;
}

/**
 * Maps samples [{t, v}] (t in s, v in bytes/s) to canvas points inside a plot box.
 * The x axis spans at least `minSpan` seconds; the y axis runs from 0 to
 * niceBytesMax(max v).
 */
export function chartPoints(samples, box, minSpan = 5) {
  const t0 = samples.length ? samples[0].t : 0;
  const tEnd = samples.length ? samples[samples.length - 1].t : 0;
  const span = Math.max(minSpan, tEnd - t0);
  const yMax = niceBytesMax(samples.reduce((m, s) => Math.max(m, s.v), 0));
  const points = samples.map((s) => ({
    x: box.x + ((s.t - t0) / span) * box.w,
    y: box.y + box.h - (Math.max(0, s.v) / yMax) * box.h,
  }));
  return { points, yMax, span, t0 };
}

/** One line of the state timeline for an event, or null for events it does not show. */
export function describeEvent(type, data) {
  switch (type) {
    case "state":
      return `${data.from} → ${data.to}${data.error ? `: ${data.error}` : ""}`;
    case "pass":
      return `pass ${data.pass}: ${data.dirty_pages} dirty pages`;
    case "incoming":
      return `incoming ${data.from} → ${data.to}${data.error ? `: ${data.error}` : ""}`;
    case "runstate":
      return `guest ${data.from} → ${data.to}`;
    case "reset":
      return `missed events (${data.reason}): state re-fetched`;
    case "warning":
      return `${data.code}: ${data.message}`;
    default:
      return null;
  }
}

/**
 * One line on resuming an interrupted pre-copy (a migration's or incoming `resume`
 * info): interruptions, resumes, pages held, bytes saved, and while interrupted
 * the grace left; null before any interruption.
 */
export function resumeSummary(resume) {
  if (!resume) return null;
  const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
  const parts = [
    plural(resume.interruptions, "interruption"),
    plural(resume.resumes, "resume"),
    `${resume.pages_held} pages held`,
    `${formatBytes(resume.bytes_saved)} not sent again`,
  ];
  if (typeof resume.grace_left === "number") {
    parts.push(`${formatMs(resume.grace_left)} left to resume`);
  }
  return parts.join(" · ");
}

/**
 * The token in a page URL's fragment (`#token=…`, the link ferry prints at start),
 * or null. A fragment never leaves the browser, so the token is not sent in a URL.
 */
export function tokenFromFragment(hash) {
  const m = /^#(?:.*&)?token=([^&]*)/.exec(hash ?? "");
  if (!m || m[1] === "") return null;
  try {
    return decodeURIComponent(m[1]);
  } catch {
    return null;
  }
}

/** The message of an API error body, or a generic one. */
export function errorMessage(status, body) {
  const e = body?.error;
  if (e?.code) return `${e.code}: ${e.message ?? ""}`.trim();
  return `HTTP ${status}`;
}

// ---------------------------------------------------------------------------
// The page.

const TOKEN_KEY = "ferry-token";
const MAX_SAMPLES = 1200;
const MAX_TIMELINE = 300;
/** No byte at all for this long (keep-alives come every 15 s): the stream is dead. */
const STALL_MS = 40_000;

class Dashboard {
  constructor(doc) {
    this.doc = doc;
    // A token handed over in the link ferry printed: kept for this tab, then taken out
    // of the address bar (and so out of the history and of any copied link).
    const handed = tokenFromFragment(globalThis.location?.hash);
    if (handed !== null) {
      sessionStorage.setItem(TOKEN_KEY, handed);
      globalThis.history?.replaceState(null, "", location.pathname + location.search);
    }
    this.token = sessionStorage.getItem(TOKEN_KEY) ?? "";
    this.tokenRequired =
      doc.querySelector('meta[name="ferry-token-required"]')?.getAttribute("content") === "true";
    this.lastEventId = null;
    this.migration = { status: "none" };
    this.incoming = { status: "none", bytes_received: 0 };
    this.vm = null;
    this.params = null;
    this.caps = null;
    this.tracker = new ProgressTracker();
    this.samples = [];
    this.lastExpected = undefined;
    /** Bumped when a migration starts: GET answers asked for before are dropped. */
    this.generation = 0;
    this.timeline = [];
    this.renderQueued = false;
    this.stopped = false;
    this.controller = null;
    this.charts = {
      throughput: new LineChart(this.$("chart-throughput"), "#2563eb"),
      dirty: new LineChart(this.$("chart-dirty"), "#d97706"),
    };
    this.recorder = new RecorderPane(doc, {
      api: (method, path) => this.api(method, path),
      chartPoints,
      formatRate,
    });
    this.console = new ConsolePane(doc, {
      headers: (extra) => this.headers(extra),
      parser: () => new SseParser(),
      unauthorized: () => this.askToken(this.token ? "The token was refused." : ""),
      send: async (text) => {
        try {
          const res = await this.api("POST", "vm/console", { input: text });
          return res.status === 200 ? null : `Not sent — ${errorMessage(res.status, res.body)}`;
        } catch (e) {
          return `Not sent — ${e.message}`;
        }
      },
    });
  }

  $(id) {
    return this.doc.getElementById(id);
  }

  start() {
    this.wire();
    if (this.tokenRequired && !this.token) this.askToken("");
    else this.connect();
    globalThis.addEventListener?.("resize", () => this.queueRender());
  }

  // --- API ------------------------------------------------------------------

  headers(extra = {}) {
    return this.token ? { ...extra, authorization: `Bearer ${this.token}` } : extra;
  }

  /** JSON request; resolves {status, body}; a 401 asks for the token again. */
  async api(method, path, body) {
    const init = { method, headers: this.headers(), cache: "no-store" };
    if (body !== undefined) {
      init.headers["content-type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const res = await fetch(path, init);
    const text = await res.text();
    let parsed;
    try {
      parsed = text ? JSON.parse(text) : undefined;
    } catch {
      parsed = undefined;
    }
    // 429: this address is locked out after wrong tokens, and ours is one of them.
    if (res.status === 401 || res.status === 429) {
      this.askToken(this.token ? "The token was refused." : "");
    }
    return { status: res.status, body: parsed };
  }

  async refresh() {
    const generation = this.generation;
    const [current, incoming, vm, params, caps] = await Promise.all([
      this.api("GET", "migrations/current"),
      this.api("GET", "migrations/incoming"),
      this.api("GET", "vm"),
      this.api("GET", "migrations/parameters"),
      this.api("GET", "migrations/capabilities"),
    ]);
    if (current.status === 200 && generation === this.generation) {
      this.setMigration(current.body, "fetch");
    }
    if (incoming.status === 200) this.incoming = incoming.body;
    if (vm.status === 200) this.vm = vm.body;
    if (params.status === 200) this.params = params.body;
    if (caps.status === 200) this.caps = caps.body;
    this.queueRender();
  }

  async refreshMigration() {
    const generation = this.generation;
    const current = await this.api("GET", "migrations/current");
    if (current.status === 200 && generation === this.generation) {
      this.setMigration(current.body, "fetch");
    }
    this.queueRender();
  }

  // --- events ---------------------------------------------------------------

  /** Follows GET /migrations/events with fetch (so the bearer token can be sent), forever. */
  async connect() {
    this.stopped = false;
    let delay = 500;
    while (!this.stopped) {
      const controller = new AbortController();
      this.controller = controller;
      let watchdog;
      try {
        this.setConnection(this.lastEventId === null ? "connecting" : "reconnecting");
        const headers = this.headers({ accept: "text/event-stream" });
        if (this.lastEventId) headers["last-event-id"] = this.lastEventId;
        const res = await fetch("migrations/events", {
          headers,
          cache: "no-store",
          signal: controller.signal,
        });
        if (res.status === 401 || res.status === 429) {
          await res.body?.cancel();
          this.askToken(this.token ? "The token was refused." : "");
          return;
        }
        if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
        this.setConnection("live");
        delay = 500;
        const parser = new SseParser();
        const reader = res.body.getReader();
        const arm = () => {
          clearTimeout(watchdog);
          watchdog = setTimeout(() => controller.abort(), STALL_MS);
        };
        arm();
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          arm();
          for (const frame of parser.push(value)) this.onFrame(frame);
        }
      } catch (_) {
        // A network blip, a restarted ferry or the watchdog: try again below.
      } finally {
        clearTimeout(watchdog);
      }
      if (this.stopped) return;
      this.setConnection("reconnecting");
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(5000, delay * 2);
    }
  }

  onFrame(frame) {
    if (frame.comment !== undefined) return;
    this.lastEventId = frame.id;
    let data;
    try {
      data = JSON.parse(frame.data);
    } catch {
      return;
    }
    const text = describeEvent(frame.event, data);
    if (text) this.addTimeline(frame.event, text, data.time ?? Date.now());
    switch (frame.event) {
      case "hello":
      case "reset":
        this.setMigration(data.migration, "snapshot");
        this.incoming = data.incoming ?? this.incoming;
        this.refresh().catch(() => {});
        break;
      case "state":
        if (data.to === "setup") this.newMigration();
        this.migration = { ...this.migration, status: data.to };
        if (data.error) this.migration.error_desc = data.error;
        this.refreshMigration().catch(() => {});
        break;
      case "pass":
        this.migration = {
          ...this.migration,
          ram: this.migration.ram
            ? { ...this.migration.ram, dirty_sync_count: data.pass }
            : this.migration.ram,
        };
        break;
      case "progress":
        this.setMigration(data.info, "event");
        break;
      case "incoming":
        this.incoming = data.info ?? { ...this.incoming, status: data.to };
        break;
      case "runstate":
        if (this.vm) this.vm = { ...this.vm, run_state: data.to };
        break;
    }
    this.queueRender();
  }

  /** A migration starts: the bar and the charts start from 0. */
  newMigration(info = { status: "setup" }) {
    this.generation++;
    this.lastExpected = undefined;
    this.tracker.reset();
    this.samples = [];
    this.migration = info;
  }

  /** Shows a migration info unless it is stale; a new migration resets bar and charts. */
  setMigration(info, source) {
    if (!info) return;
    const relation = classifyInfo(this.migration, info, source);
    if (relation === "stale") return;
    if (relation === "new") this.newMigration(info);
    this.migration = info;
    if (typeof info.expected_downtime === "number") this.lastExpected = info.expected_downtime;
    const ram = info.ram;
    if (ram && typeof info.total_time === "number" && RUNNING.has(info.status)) {
      const t = info.total_time / 1000;
      const last = this.samples[this.samples.length - 1];
      if (!last || t > last.t) {
        this.samples.push({ t, throughput: throughputOf(info), dirty: dirtyRateOf(info) });
        if (this.samples.length > MAX_SAMPLES) this.samples.shift();
      }
    }
  }

  addTimeline(kind, text, time) {
    this.timeline.unshift({ kind, text, time });
    if (this.timeline.length > MAX_TIMELINE) this.timeline.pop();
  }

  setConnection(state) {
    const el = this.$("connection");
    el.className = `conn conn-${state}`;
    el.dataset.state = state;
    el.textContent = state === "live"
      ? "live"
      : state === "connecting"
      ? "connecting…"
      : state === "offline"
      ? "needs token"
      : "reconnecting…";
  }

  askToken(message) {
    this.stopped = true;
    this.controller?.abort();
    this.console.stop();
    this.$("token-panel").hidden = false;
    this.$("main").hidden = true;
    this.$("token-error").textContent = message;
    this.setConnection("offline");
    this.$("token-input").focus();
  }

  // --- forms ------------------------------------------------------------------

  message(text, bad = false) {
    const el = this.$("action-message");
    el.textContent = text;
    el.classList.toggle("bad", bad);
  }

  /** Runs an API call for a form and reports its outcome. */
  async act(what, method, path, body, ok = [200, 202]) {
    try {
      const res = await this.api(method, path, body);
      if (ok.includes(res.status)) {
        this.message(`${what}: done`);
        return res;
      }
      this.message(`${what} failed — ${errorMessage(res.status, res.body)}`, true);
      return null;
    } catch (e) {
      this.message(`${what} failed — ${e.message}`, true);
      return null;
    }
  }

  wire() {
    this.$("token-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      this.token = this.$("token-input").value.trim();
      sessionStorage.setItem(TOKEN_KEY, this.token);
      this.$("token-input").value = "";
      this.$("token-panel").hidden = true;
      this.$("main").hidden = false;
      this.connect();
    });
    this.$("migrate-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const uri = this.$("migrate-uri").value.trim();
      const res = await this.act("Start migration", "POST", "migrations", { uri });
      if (res) this.setMigration(res.body, "fetch");
      this.queueRender();
    });
    this.$("migrate-cancel").addEventListener("click", async () => {
      const res = await this.act("Cancel", "DELETE", "migrations/current");
      if (res) this.setMigration(res.body, "fetch");
      this.queueRender();
    });
    this.$("params-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const patch = {};
      try {
        const speed = this.$("param-speed").value;
        const downtime = this.$("param-downtime").value;
        if (speed.trim()) patch.max_bandwidth = parseSize(speed);
        if (downtime.trim()) patch.downtime_limit = parseDuration(downtime);
      } catch (e) {
        this.message(e.message, true);
        return;
      }
      if (Object.keys(patch).length === 0) {
        this.message("Enter a speed, a downtime limit or both", true);
        return;
      }
      const res = await this.act("Set parameters", "PATCH", "migrations/parameters", patch);
      if (res) {
        this.params = res.body;
        this.$("param-speed").value = "";
        this.$("param-downtime").value = "";
      }
      this.queueRender();
    });
    for (const box of this.doc.querySelectorAll("#caps-form input[data-cap]")) {
      box.addEventListener("change", async () => {
        const cap = box.dataset.cap;
        const res = await this.act(
          `Set ${cap}`,
          "PUT",
          "migrations/capabilities",
          { [cap]: box.checked },
        );
        if (res) this.caps = res.body;
        this.queueRender();
      });
    }
    this.$("incoming-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const uri = this.$("incoming-uri").value.trim();
      const res = await this.act("Arm incoming", "POST", "migrations/incoming", { uri });
      if (res) {
        this.incoming = { ...this.incoming, ...res.body };
        this.message(`Listening on ${res.body.address ?? uri}`);
      }
      this.queueRender();
    });
    this.$("vm-start").addEventListener("click", async () => {
      const res = await this.act("Start guest", "POST", "vm/start");
      if (res) this.vm = { ...this.vm, ...res.body };
      this.queueRender();
    });
    this.$("vm-stop").addEventListener("click", async () => {
      const res = await this.act("Stop guest", "POST", "vm/stop");
      if (res) this.vm = { ...this.vm, ...res.body };
      this.queueRender();
    });
  }

  // --- rendering --------------------------------------------------------------

  queueRender() {
    if (this.renderQueued) return;
    this.renderQueued = true;
    requestAnimationFrame(() => {
      this.renderQueued = false;
      this.render();
    });
  }

  text(id, value) {
    const el = this.$(id);
    if (el.textContent !== value) el.textContent = value;
  }

  render() {
    const m = this.migration ?? { status: "none" };
    const ram = m.ram;
    const status = this.$("status");
    status.textContent = m.status;
    status.dataset.status = m.status;
    status.className = `status status-${m.status}`;
    this.text("uri", m.uri ?? "");

    const fraction = this.tracker.update(m);
    const pct = Math.floor(fraction * 1000) / 10;
    const bar = this.$("progress");
    bar.setAttribute("aria-valuenow", String(pct));
    bar.dataset.status = m.status;
    this.$("progress-fill").style.width = `${pct}%`;
    this.text("progress-label", `${pct.toFixed(1)} %`);

    const err = this.$("error-desc");
    err.hidden = !m.error_desc;
    err.textContent = m.error_desc ?? "";

    this.text("transferred", ram ? formatBytes(ram.transferred) : "—");
    this.text("remaining", ram ? formatBytes(ram.remaining) : "—");
    this.text("total", ram ? formatBytes(ram.total) : "—");
    const tput = throughputOf(m);
    this.text(
      "throughput",
      tput === undefined ? "—" : `${formatRate(tput)} (${ram.mbps.toFixed(0)} Mbit/s)`,
    );
    this.text("dirty-rate", ram ? `${formatRate(dirtyRateOf(m))}` : "—");
    this.text("passes", ram ? String(ram.dirty_sync_count) : "—");
    const expected = m.expected_downtime ?? this.lastExpected;
    this.text(
      "expected-downtime",
      expected === undefined
        ? "—"
        : m.expected_downtime === undefined
        ? `${formatMs(expected)} (last estimate)`
        : formatMs(expected),
    );
    this.text("downtime", m.downtime === undefined ? "—" : formatMs(m.downtime));
    this.text(
      "downtime-limit",
      this.params ? formatMs(this.params.downtime_limit) : "—",
    );
    this.text("total-time", m.total_time === undefined ? "—" : formatMs(m.total_time));
    this.text("setup-time", m.setup_time === undefined ? "—" : formatMs(m.setup_time));
    const throttle = m.cpu_throttle_percentage ?? this.vm?.throttle;
    this.text("throttle", throttle === undefined ? "—" : `${throttle} %`);
    this.text(
      "pages",
      ram ? `${ram.normal} normal · ${ram.duplicate} zero` : "—",
    );
    this.text(
      "bandwidth-limit",
      this.params ? formatRate(this.params.max_bandwidth) : "—",
    );

    const x = m.xbzrle_cache;
    this.$("xbzrle").hidden = !x;
    if (x) {
      this.text("xbzrle-cache-size", formatBytes(x.cache_size));
      this.text("xbzrle-bytes", formatBytes(x.bytes));
      this.text("xbzrle-pages", String(x.pages));
      this.text("xbzrle-cache-miss", String(x.cache_miss));
      this.text(
        "xbzrle-cache-miss-rate",
        typeof x.cache_miss_rate === "number" ? `${(x.cache_miss_rate * 100).toFixed(1)} %` : "—",
      );
      this.text("xbzrle-overflow", String(x.overflow));
    }

    const resume = resumeSummary(m.resume);
    this.$("resume").hidden = resume === null;
    this.text("resume-summary", resume ?? "");
    const incResume = resumeSummary(this.incoming?.resume);
    this.$("incoming-resume").hidden = incResume === null;
    this.text("incoming-resume", incResume ?? "");

    const running = RUNNING.has(m.status);
    this.$("migrate-start").disabled = running;
    this.$("migrate-cancel").disabled = !running;

    if (this.vm) {
      this.text("vm-state", `guest: ${this.vm.run_state}`);
      this.text("vm-ram", `RAM ${formatBytes(this.vm.ram_size)}`);
    }
    if (!this.stopped) this.console.update(this.vm);
    if (this.caps) {
      for (const box of this.doc.querySelectorAll("#caps-form input[data-cap]")) {
        box.checked = Boolean(this.caps[box.dataset.cap]);
      }
    }

    const inc = this.incoming ?? { status: "none" };
    this.text("incoming-status", inc.status);
    this.text("incoming-address", inc.address ?? "—");
    this.text("incoming-bytes", formatBytes(inc.bytes_received ?? 0));
    this.text("incoming-time", inc.total_time === undefined ? "—" : formatMs(inc.total_time));
    const incErr = this.$("incoming-error");
    incErr.hidden = !inc.error_desc;
    incErr.textContent = inc.error_desc ?? "";

    this.charts.throughput.draw(this.samples.map((s) => ({ t: s.t, v: s.throughput ?? 0 })));
    this.charts.dirty.draw(this.samples.map((s) => ({ t: s.t, v: s.dirty ?? 0 })));
    if (!this.stopped) this.recorder.update(m, running);
    this.renderTimeline();
  }

  renderTimeline() {
    const list = this.$("timeline");
    const key = `${this.timeline.length}:${this.timeline[0]?.time}:${this.timeline[0]?.text}`;
    if (list.dataset.key === key) return;
    list.dataset.key = key;
    list.replaceChildren(
      ...this.timeline.map((e) => {
        const li = this.doc.createElement("li");
        li.className = e.kind;
        const time = this.doc.createElement("span");
        time.className = "time";
        time.textContent = new Date(e.time).toLocaleTimeString([], { hour12: false }) +
          `.${String(new Date(e.time).getMilliseconds()).padStart(3, "0")}`;
        const kind = this.doc.createElement("span");
        kind.className = "kind";
        kind.textContent = e.kind;
        const text = this.doc.createElement("span");
        text.className = "text";
        text.textContent = e.text;
        li.append(time, kind, text);
        return li;
      }),
    );
  }
}

/** A hand-drawn line chart on a canvas: time on x (s), a byte rate on y. */
class LineChart {
  constructor(canvas, color) {
    this.canvas = canvas;
    this.color = color;
  }

  draw(samples) {
    const canvas = this.canvas;
    const dpr = globalThis.devicePixelRatio || 1;
    const width = canvas.clientWidth || 400;
    const height = canvas.clientHeight || 160;
    if (canvas.width !== Math.round(width * dpr) || canvas.height !== Math.round(height * dpr)) {
      canvas.width = Math.round(width * dpr);
      canvas.height = Math.round(height * dpr);
    }
    const ctx = canvas.getContext("2d");
    if (!ctx) return;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const box = { x: 74, y: 8, w: width - 96, h: height - 30 };
    const { points, yMax, span } = chartPoints(samples, box);
    drawRateGrid(ctx, box, yMax, formatRate);
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (let i = 0; i <= 5; i++) {
      const x = box.x + (i / 5) * box.w;
      ctx.fillText(`${((span * i) / 5).toFixed(span < 10 ? 1 : 0)} s`, x, box.y + box.h + 6);
    }
    if (points.length === 0) {
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      ctx.fillText("no migration data yet", box.x + box.w / 2, box.y + box.h / 2);
      return;
    }
    ctx.beginPath();
    ctx.moveTo(points[0].x, box.y + box.h);
    for (const p of points) ctx.lineTo(p.x, p.y);
    ctx.lineTo(points[points.length - 1].x, box.y + box.h);
    ctx.closePath();
    ctx.globalAlpha = 0.12;
    ctx.fillStyle = this.color;
    ctx.fill();
    ctx.globalAlpha = 1;
    ctx.beginPath();
    points.forEach((p, i) => (i === 0 ? ctx.moveTo(p.x, p.y) : ctx.lineTo(p.x, p.y)));
    ctx.strokeStyle = this.color;
    ctx.lineWidth = 2;
    ctx.lineJoin = "round";
    ctx.stroke();
  }
}

if (typeof document !== "undefined" && typeof sessionStorage !== "undefined") {
  const dashboard = new Dashboard(document);
  globalThis.ferryDashboard = dashboard;
  dashboard.start();
}
