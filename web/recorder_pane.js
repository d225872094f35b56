/**
 * The dashboard's flight-recorder pane (docs/ARCHITECTURE.md, "The flight
 * recorder"): the timeline of the current or a chosen past outgoing migration,
 * bandwidth against the dirty rate window by window, and the ferry's explanation
 * of why it converged (or not) and of its downtime. It imports nothing: app.js
 * hands it the API and the chart helpers.
 */

/** The options of the migration picker: outgoing migrations, newest first (the API's order). */
export function recorderChoices(records) {
  return (records ?? [])
    .filter((r) => r.direction === "outgoing")
    .map((r) => ({
      id: r.id,
      label: `${new Date(r.started_at).toLocaleTimeString([], { hour12: false })} ${r.status} ${
        r.uri ?? ""
      }`.trim(),
    }));
}

/** A timeline's windows as two series of {t (s), v (bytes/s)}: bandwidth and dirty rate. */
export function timelineSeries(timeline) {
  const windows = timeline?.windows ?? [];
  return {
    bandwidth: windows.map((w) => ({ t: w.t / 1000, v: w.bandwidth })),
    dirty: windows.map((w) => ({ t: w.t / 1000, v: w.dirty_rate })),
  };
}

/** How often a running migration's timeline is fetched again, ms. */
const LIVE_REFRESH_MS = 1000;

/**
 * The rate axis both charts draw: five grid lines across `box`, labelled from 0 to
 * `yMax` with `formatRate`.
 */
export function drawRateGrid(ctx, box, yMax, formatRate) {
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#667085";
  ctx.strokeStyle = "#e5e7eb";
  ctx.lineWidth = 1;
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (let i = 0; i <= 4; i++) {
    const y = box.y + box.h - (i / 4) * box.h;
    ctx.beginPath();
    ctx.moveTo(box.x, Math.round(y) + 0.5);
    ctx.lineTo(box.x + box.w, Math.round(y) + 0.5);
    ctx.stroke();
    ctx.fillText(formatRate((yMax * i) / 4), box.x - 6, y);
  }
}

export class RecorderPane {
  /**
   * `deps`: `api(method, path)` (resolves {status, body}), `chartPoints` and
   * `formatRate` from app.js.
   */
  constructor(doc, deps) {
    this.doc = doc;
    this.deps = deps;
    this.select = doc.getElementById("recorder-pick");
    this.canvas = doc.getElementById("chart-recorder");
    this.shown = null;
    this.fetchedAt = 0;
    this.lastStatus = null;
    this.timeline = null;
    this.listing = null;
    this.select.addEventListener("change", () => this.show(this.target(this.current)));
  }

  /** The id to show: the one picked, else the current migration's, else the newest. */
  target(current) {
    if (this.select.value) return this.select.value;
    return current?.id ?? this.select.options[1]?.value ?? null;
  }

  /** Lists past outgoing migrations in the picker, keeping the choice. */
  async refreshList() {
    const res = await this.deps.api("GET", "migrations");
    if (res.status !== 200) return;
    const keep = this.select.value;
    const follow = this.doc.createElement("option");
    follow.value = "";
    follow.textContent = "current / latest";
    const options = recorderChoices(res.body).map((c) => {
      const o = this.doc.createElement("option");
      o.value = c.id;
      o.textContent = c.label;
      return o;
    });
    this.select.replaceChildren(follow, ...options);
    this.select.value = options.some((o) => o.value === keep) ? keep : "";
  }

  /** Called at every render with the current migration: follows it while it runs. */
  update(current, running) {
    this.current = current;
    const finished = this.lastStatus !== null && this.lastStatus !== current?.status && !running;
    this.lastStatus = current?.status ?? null;
    if (finished || (this.select.options.length === 0 && !this.listing)) {
      this.listing = this.refreshList()
        .then(() => this.show(this.target(current)))
        .catch(() => {})
        .finally(() => this.listing = null);
      return;
    }
    if (this.listing) return;
    const id = this.target(current);
    const stale = running && !this.select.value && Date.now() - this.fetchedAt > LIVE_REFRESH_MS;
    if (id && (id !== this.shown || stale)) this.show(id).catch(() => {});
  }

  /** Fetches and draws one migration's timeline and explanation. */
  async show(id) {
    if (!id) return;
    this.shown = id;
    this.fetchedAt = Date.now();
    const [tl, rec] = await Promise.all([
      this.deps.api("GET", `migrations/${id}/timeline`),
      this.deps.api("GET", `migrations/${id}`),
    ]);
    if (this.shown !== id) return;
    const pane = this.doc.getElementById("recorder");
    const explain = this.doc.getElementById("recorder-explain");
    if (tl.status !== 200 || rec.status !== 200) {
      explain.textContent = (tl.body ?? rec.body)?.error?.message ?? "No timeline";
      return;
    }
    this.timeline = tl.body;
    pane.dataset.id = id;
    pane.dataset.windows = String(tl.body.windows.length);
    const e = rec.body.explanation;
    explain.textContent = e ? `${e.convergence}. ${e.downtime}.` : "";
    this.doc.getElementById("recorder-summary").textContent =
      `${rec.body.status} · ${tl.body.windows.length} windows · ${tl.body.passes.length} passes`;
    this.draw();
  }

  /** Bandwidth (blue, filled) and dirty rate (amber) over time. */
  draw() {
    const canvas = this.canvas;
    const { bandwidth, dirty } = timelineSeries(this.timeline);
    const dpr = globalThis.devicePixelRatio || 1;
    const width = canvas.clientWidth || 400;
    const height = canvas.clientHeight || 160;
    canvas.width = Math.round(width * dpr);
    canvas.height = Math.round(height * dpr);
    const ctx = canvas.getContext("2d");
    if (!ctx) return;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const box = { x: 74, y: 8, w: width - 96, h: height - 30 };
    // One scale for both series: chartPoints over the two merged.
    const all = [...bandwidth, ...dirty].sort((a, b) => a.t - b.t);
    const { yMax, span, t0 } = this.deps.chartPoints(all, box);
    const toPoint = (s) => ({
      x: box.x + ((s.t - t0) / span) * box.w,
      y: box.y + box.h - (Math.max(0, s.v) / yMax) * box.h,
    });
    drawRateGrid(ctx, box, yMax, this.deps.formatRate);
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (let i = 0; i <= 5; i++) {
      ctx.fillText(`${((span * i) / 5).toFixed(1)} s`, box.x + (i / 5) * box.w, box.y + box.h + 6);
    }
    for (const [series, color] of [[bandwidth, "#2563eb"], [dirty, "#d97706"]]) {
      if (series.length === 0) continue;
      ctx.beginPath();
      series.map(toPoint).forEach((
        p,
        i,
      ) => (i === 0 ? ctx.moveTo(p.x, p.y) : ctx.lineTo(p.x, p.y)));
      ctx.strokeStyle = color;
      ctx.lineWidth = 2;
      ctx.stroke();
    }
  }
}
