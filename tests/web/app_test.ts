import assert from "node:assert/strict";
import {
  chartPoints,
  classifyInfo,
  describeEvent,
  dirtyRateOf,
  errorMessage,
  formatBytes,
  formatMs,
  niceBytesMax,
  niceMax,
  parseDuration,
  parseSize,
  progressOf,
  ProgressTracker,
  resumeSummary,
  SseParser,
  throughputOf,
  tokenFromFragment,
} from "../../web/app.js";
import { buildDashboard, loadDashboard, XTERM } from "../../web/dashboard.ts";

const MiB = 1 << 20;

Deno.test("formatBytes / formatMs / formatRate-style helpers", () => {
  assert.equal(formatBytes(0), "0 B");
  assert.equal(formatBytes(1023), "1023 B");
  assert.equal(formatBytes(1536), "1.5 KiB");
  assert.equal(formatBytes(256 * MiB), "256 MiB");
  assert.equal(formatBytes(64 * MiB), "64.0 MiB");
  assert.equal(formatBytes(undefined), "—");
  assert.equal(formatMs(0.25), "0.3 ms");
  assert.equal(formatMs(30), "30 ms");
  assert.equal(formatMs(2345), "2.35 s");
  assert.equal(formatMs(187_000), "3 min 07 s");
  assert.equal(formatMs(-1), "∞", "expected_downtime -1 means no estimate yet");
});

Deno.test("parseSize and parseDuration read what the forms accept", () => {
  assert.equal(parseSize("1G"), 2 ** 30);
  assert.equal(parseSize("512M"), 512 * MiB);
  assert.equal(parseSize("1.5 GiB/s"), 1.5 * 2 ** 30);
  assert.equal(parseSize("4096"), 4096);
  assert.throws(() => parseSize("fast"), /not a size/);
  assert.throws(() => parseSize("0"), /out of range/);
  assert.equal(parseDuration("30"), 30);
  assert.equal(parseDuration("30ms"), 30);
  assert.equal(parseDuration("0.3 s"), 300);
  assert.throws(() => parseDuration("soon"), /not a duration/);
});

Deno.test("throughput and dirty rate come out in bytes per second", () => {
  const info = { status: "active", ram: { mbps: 80, dirty_pages_rate: 256, page_size: 4096 } };
  assert.equal(throughputOf(info), 10_000_000);
  assert.equal(dirtyRateOf(info), MiB);
  assert.equal(throughputOf({ status: "none" }), undefined);
});

Deno.test("progress: share of RAM clean on the destination; the tracker never goes backwards", () => {
  const at = (remaining: number, status = "active") => ({
    status,
    uri: "tcp:h:1",
    ram: { remaining, total: 100 },
  });
  assert.equal(progressOf(at(100)), 0);
  assert.equal(progressOf(at(25)), 0.75);
  assert.equal(progressOf(at(25, "completed")), 1);
  const t = new ProgressTracker();
  assert.equal(t.update(at(60)), 0.4);
  assert.equal(t.update(at(20)), 0.8);
  assert.equal(t.update(at(50)), 0.8, "a new dirty pass does not move the bar back");
  assert.equal(t.update({ status: "none" }), 0.8);
  assert.equal(t.update(at(0, "completed")), 1);
  t.reset();
  assert.ok(Math.abs(t.update(at(90)) - 0.1) < 1e-9, "a new migration starts from 0");
});

Deno.test("classifyInfo tells stale GET answers from new migrations", () => {
  const cur = { status: "active", uri: "tcp:h:1", total_time: 500 };
  assert.equal(classifyInfo(cur, { ...cur, total_time: 600 }, "event"), "same");
  assert.equal(classifyInfo(cur, { ...cur, total_time: 400 }, "fetch"), "stale");
  assert.equal(classifyInfo(cur, { ...cur, total_time: 400 }, "snapshot"), "new");
  assert.equal(classifyInfo(cur, { ...cur, uri: "tcp:h:2" }, "fetch"), "new");
  const done = { ...cur, status: "completed", total_time: 900 };
  assert.equal(classifyInfo(done, { ...cur, total_time: 950 }, "snapshot"), "new");
  assert.equal(classifyInfo({ status: "none" }, cur, "fetch"), "new");
});

Deno.test("SseParser splits frames across chunks, joins data lines, keeps ids and comments", () => {
  const p = new SseParser();
  assert.deepEqual(p.push('event: hello\ndata: {"a"'), []);
  assert.deepEqual(
    p.push(":1}\nid: 0\nretry: 1000\n\n: keep-alive\n\nevent: state\r\ndata: x\r\n"),
    [
      { event: "hello", data: '{"a":1}', id: "0" },
      { comment: "keep-alive" },
    ],
  );
  assert.equal(p.retry, 1000);
  assert.deepEqual(p.push("data: y\n\n"), [{ event: "state", data: "x\ny", id: "0" }]);
});

Deno.test("chart axes: nice maxima in the unit the labels use; points inside the box", () => {
  assert.equal(niceMax(0), 1);
  assert.equal(niceMax(3.2), 5);
  assert.equal(niceMax(47), 50);
  assert.equal(niceMax(100), 100);
  assert.equal(niceBytesMax(47.7 * MiB), 50 * MiB);
  assert.equal(niceBytesMax(0), MiB, "an empty chart still has a 1 MiB/s axis");
  assert.equal(niceBytesMax(3 * 2 ** 30), 5 * 2 ** 30);
  const box = { x: 10, y: 0, w: 100, h: 50 };
  const { points, yMax, span } = chartPoints(
    [{ t: 1, v: 0 }, { t: 3.5, v: 25 * MiB }, { t: 6, v: 50 * MiB }],
    box,
  );
  assert.equal(yMax, 50 * MiB);
  assert.equal(span, 5);
  assert.deepEqual(points, [{ x: 10, y: 50 }, { x: 60, y: 25 }, { x: 110, y: 0 }]);
  assert.deepEqual(chartPoints([], box).points, []);
});

Deno.test("describeEvent writes the timeline lines", () => {
  assert.equal(describeEvent("state", { from: "setup", to: "active" }), "setup → active");
  assert.equal(
    describeEvent("state", { from: "active", to: "failed", error: "boom" }),
    "active → failed: boom",
  );
  assert.equal(describeEvent("pass", { pass: 3, dirty_pages: 12 }), "pass 3: 12 dirty pages");
  assert.equal(
    describeEvent("incoming", { from: "listening", to: "active" }),
    "incoming listening → active",
  );
  assert.equal(
    describeEvent("runstate", { from: "running", to: "paused" }),
    "guest running → paused",
  );
  assert.match(describeEvent("reset", { reason: "client-behind" }) ?? "", /client-behind/);
  assert.equal(describeEvent("progress", {}), null);
  assert.equal(
    describeEvent("warning", { code: "migration-resumed", message: "Resumed over tcp:h:1" }),
    "migration-resumed: Resumed over tcp:h:1",
  );
  assert.equal(
    errorMessage(409, { error: { code: "migration-active", message: "busy" } }),
    "migration-active: busy",
  );
  assert.equal(errorMessage(502, undefined), "HTTP 502");
});

Deno.test("the served page is one self-contained document: CSS and JS inline, nothing remote", async () => {
  const page = await loadDashboard();
  assert.ok(page);
  assert.match(page, /^<!doctype html>/);
  assert.match(page, /<style>\n:root \{/);
  assert.match(page, /<script type="module">\n\/\/ ferry's dashboard/);
  assert.ok(!/<script[^>]+src=/.test(page), "no external script");
  assert.ok(!/<link[^>]+rel="stylesheet"/.test(page), "no external stylesheet");
  const urls = [...page.matchAll(/(?:src|href)="([^"]*)"/g)].map((m) => m[1]);
  assert.deepEqual(urls, ["data:,", "openapi.json"]);
  assert.ok(!/sourceMappingURL/.test(page), "no source map to fetch");
  assert.match(page, /<meta name="ferry-token-required" content="false">/);
  const locked = await loadDashboard({ tokenRequired: true });
  assert.match(locked!, /<meta name="ferry-token-required" content="true">/);
});

Deno.test("the page carries xterm.js from the npm package, with its license, and the console pane", async () => {
  const page = (await loadDashboard())!;
  assert.ok(page.includes(`<style>\n${XTERM.css}</style>`), "xterm.css inline");
  assert.match(page, /<script>\n\/\*! xterm\.js, from the npm package @xterm\/xterm\nCopyright/);
  assert.ok(page.includes(XTERM.license.trim()), "xterm's MIT notice travels with its code");
  // Its one import line became the module's text.
  assert.ok(!/^import /m.test(page), "no import left");
  assert.match(page, /export class ConsolePane/);
  assert.ok(page.indexOf("/*! xterm.js") < page.indexOf('<script type="module">'), "xterm first");
  // The inlined module loads: app.js and console_pane.js share one scope without clashes.
  const module = /<script type="module">\n([\s\S]*?)<\/script>/.exec(page)![1];
  const url = URL.createObjectURL(new Blob([module], { type: "text/javascript" }));
  try {
    const loaded = await import(url);
    assert.equal(typeof loaded.ConsolePane, "function");
    assert.equal(typeof loaded.SseParser, "function");
  } finally {
    URL.revokeObjectURL(url);
  }
});

Deno.test("buildDashboard refuses files it cannot inline safely", () => {
  const html = indexHtml();
  const modules = { "console_pane.js": "export const a = 1;\n" };
  const files = { html, css: "", js: "", modules, xterm: XTERM };
  assert.throws(
    () => buildDashboard({ ...files, js: "x = '</script>'" }),
    /must not contain <\/script/,
  );
  assert.throws(
    () => buildDashboard({ ...files, xterm: { ...XTERM, js: "a <!-- b" } }),
    /xterm\.js must not contain/,
  );
  assert.throws(() => buildDashboard({ ...files, html: "<html></html>" }), /has no/);
  assert.throws(
    () => buildDashboard({ ...files, js: 'import { x } from "./nowhere.js";\n' }),
    /imports \.\/nowhere\.js, which the page lacks/,
  );
  assert.throws(
    () => buildDashboard({ ...files, js: 'import x from "npm:y";\n' }),
    /may only import named exports/,
  );
  assert.throws(
    () =>
      buildDashboard({
        ...files,
        js: 'import { a } from "./console_pane.js";\n',
        modules: { "console_pane.js": 'import { b } from "./b.js";\n' },
      }),
    /must not import anything/,
  );
  const built = buildDashboard({ ...files, js: 'import { a } from "./console_pane.js";\na;\n' });
  assert.match(built, /<script type="module">\nexport const a = 1;\n\na;\n<\/script>/);
});

function indexHtml(): string {
  return Deno.readTextFileSync(new URL("../../web/index.html", import.meta.url));
}

Deno.test("tokenFromFragment reads #token=… (the link ferry prints), decoded; null otherwise", () => {
  assert.equal(tokenFromFragment("#token=abc_DEF-123"), "abc_DEF-123");
  assert.equal(tokenFromFragment("#x=1&token=a%2Bb"), "a+b");
  assert.equal(tokenFromFragment("#token=abc&x=1"), "abc");
  for (
    const hash of ["", "#", "#token=", "#mytoken=abc", "?token=abc", undefined, "#token=%E0%A4%A"]
  ) {
    assert.equal(tokenFromFragment(hash), null, String(hash));
  }
});

Deno.test("resumeSummary says what resuming did, with the grace left while interrupted", () => {
  assert.equal(resumeSummary(undefined), null);
  const resume = {
    interruptions: 1,
    resumes: 0,
    pages_held: 2048,
    pages_resent: 0,
    bytes_saved: 0,
    grace_left: 42_000,
  };
  assert.match(
    resumeSummary(resume) ?? "",
    /^1 interruption · 0 resumes · 2048 pages held · .* left to resume$/,
  );
  assert.equal(
    resumeSummary({ ...resume, resumes: 1, grace_left: undefined, bytes_saved: 8 << 20 }),
    `1 interruption · 1 resume · 2048 pages held · ${formatBytes(8 << 20)} not sent again`,
  );
});
