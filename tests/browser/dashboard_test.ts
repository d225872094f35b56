/**
 * The dashboard in a real browser: Debian's chromium driven by playwright-core
 * (tests/browser/_chromium.ts). `.ci/run` installs chromium; where
 * /usr/bin/chromium is missing these tests are skipped, saying so.
 */
import assert from "node:assert/strict";
import type { Page } from "playwright-core";
import { FerryProcess } from "../../testing/ferry_process.ts";
import { formatMs } from "../../web/app.js";
import { waitUntil } from "../helpers/wait.ts";
import { BlipProxy } from "./_blip_proxy.ts";
import { launch, skipWithoutChromium, watchErrors } from "./_chromium.ts";

/** The page's document, inside page.evaluate / waitForFunction callbacks (they run in the browser). */
// deno-lint-ignore no-explicit-any
declare const document: any;
// deno-lint-ignore no-explicit-any
declare const MutationObserver: any;

const ARTIFACTS = new URL("../../test-artifacts/", import.meta.url);

const ignore = skipWithoutChromium("tests/browser/dashboard_test.ts");

const text = (page: Page, selector: string) => page.locator(selector).textContent();

Deno.test({
  name: "dashboard: a migration started from the form moves the progress bar to completed",
  ignore,
  async fn() {
    await using dst = await FerryProcess.destination("64M");
    await using src = await FerryProcess.start([
      "--ram",
      "64M",
      "--fill",
      "random",
      "--workload",
      "random:rate=4M,hot=10%:90%",
    ]);

    await using browser = await launch();
    const page = await browser.context.newPage();
    const errors = watchErrors(page);
    const foreign: string[] = [];
    page.on("request", (r) => {
      if (!r.url().startsWith(src.url) && !r.url().startsWith("data:")) foreign.push(r.url());
    });

    // The link a ferry prints carries its token in the fragment.
    await page.goto(`${src.url}/#token=${src.token}`);
    await page.waitForSelector('#connection[data-state="live"]');
    assert.equal(await text(page, "#status"), "none");
    await page.waitForFunction(() =>
      document.getElementById("vm-state")?.textContent === "guest: running"
    );

    // Parameters through the form: 32 MiB/s makes the 64 MiB copy take about 2 s.
    await page.fill("#param-speed", "32M");
    await page.fill("#param-downtime", "300ms");
    await page.click('#params-form button[type="submit"]');
    // The page shows the answer to its PATCH (32 MiB/s is also the default: the
    // downtime limit, 30 ms before, tells the answer arrived).
    await page.waitForFunction(() =>
      document.getElementById("downtime-limit")?.textContent === "300 ms" &&
      document.getElementById("param-downtime")?.value === ""
    );
    assert.equal(await text(page, "#bandwidth-limit"), "32.0 MiB/s");
    const params = await src.api("GET", "/migrations/parameters");
    assert.equal(params.body.max_bandwidth, 32 << 20);
    assert.equal(params.body.downtime_limit, 300);
    assert.equal(await text(page, "#downtime-limit"), "300 ms");

    // Record every value the progress bar shows.
    await page.evaluate(() => {
      const bar = document.getElementById("progress")!;
      const seen: number[] = [];
      (globalThis as unknown as { progressSeen: number[] }).progressSeen = seen;
      new MutationObserver(() => seen.push(Number(bar.getAttribute("aria-valuenow"))))
        .observe(bar, { attributes: true, attributeFilter: ["aria-valuenow"] });
    });

    await page.fill("#migrate-uri", dst.incoming);
    await page.click("#migrate-start");
    await page.waitForFunction(
      () => {
        const s = document.getElementById("status")?.textContent;
        return s === "active" || s === "completed";
      },
    );
    // A screenshot mid-migration, for the record.
    await Deno.mkdir(ARTIFACTS, { recursive: true });
    await page.waitForFunction(
      () => {
        const v = Number(document.getElementById("progress")?.getAttribute("aria-valuenow"));
        return v > 30 || document.getElementById("status")?.textContent === "completed";
      },
      undefined,
      { timeout: 60_000 },
    );
    await page.screenshot({ path: new URL("dashboard-active.png", ARTIFACTS).pathname });
    await page.waitForFunction(
      () =>
        ["completed", "failed", "cancelled"].includes(
          document.getElementById("status")?.textContent ?? "",
        ),
      undefined,
      { timeout: 60_000 },
    );
    assert.equal(await text(page, "#status"), "completed", await text(page, "#error-desc") ?? "");
    await page.waitForFunction(() =>
      document.getElementById("progress")?.getAttribute("aria-valuenow") === "100"
    );

    const seen: number[] = await page.evaluate(() =>
      (globalThis as unknown as { progressSeen: number[] }).progressSeen
    );
    assert.ok(seen.some((v) => v > 0 && v < 100), `the bar moved through ${seen.join(", ")}`);
    for (let i = 1; i < seen.length; i++) {
      assert.ok(seen[i] >= seen[i - 1], `the bar never runs backwards: ${seen.join(", ")}`);
    }
    assert.equal(seen.at(-1), 100);

    // The numbers and the timeline reflect the finished migration.
    await page.waitForFunction(() => document.getElementById("downtime")?.textContent !== "—");
    assert.match(await text(page, "#total") ?? "", /^64\.0 MiB$/);
    assert.match(await text(page, "#remaining") ?? "", /^0 B$/);
    assert.match(await text(page, "#passes") ?? "", /^\d+$/);
    const timeline = await page.locator("#timeline li").allTextContents();
    for (const step of ["none → setup", "setup → active", "active → completed"]) {
      assert.ok(timeline.some((t) => t.includes(step)), `timeline has ${step}: ${timeline}`);
    }
    const incoming = await dst.waitFor("/migrations/incoming", (b) => b.status === "completed");
    assert.ok(incoming.bytes_received > 0);
    const info = (await src.api("GET", "/migrations/current")).body;
    assert.equal(await text(page, "#downtime"), formatMs(info.downtime));

    // The bar's width transition has ended: the fill spans the whole bar.
    await page.waitForFunction(() => {
      const bar = document.getElementById("progress");
      const fill = document.getElementById("progress-fill");
      return fill.getAnimations().length === 0 &&
        fill.getBoundingClientRect().width === bar.getBoundingClientRect().width;
    });
    await page.screenshot({
      path: new URL("dashboard.png", ARTIFACTS).pathname,
      fullPage: true,
    });
    assert.deepEqual(errors, { console: [], page: [] }, "no console errors");
    assert.deepEqual(foreign, [], "the page loads nothing from anywhere else");
  },
});

Deno.test({
  name: "dashboard: after a network blip it reconnects by itself and catches up (Last-Event-ID)",
  ignore,
  async fn() {
    await using src = await FerryProcess.start(["--ram", "16M"]);
    await using proxy = new BlipProxy(src.url);
    await using browser = await launch();
    const page = await browser.context.newPage();
    const errors = watchErrors(page);
    const eventRequests: Record<string, string>[] = [];
    page.on("request", (r) => {
      if (r.url().endsWith("/migrations/events")) eventRequests.push(r.headers());
    });

    await page.goto(`${proxy.url}/#token=${src.token}`);
    await page.waitForSelector('#connection[data-state="live"]');
    await page.waitForFunction(() =>
      document.getElementById("vm-state")?.textContent === "guest: running"
    );

    // The blip: connections drop, and new ones hang for a while.
    proxy.hold();
    proxy.blip();
    await page.waitForSelector('#connection[data-state="reconnecting"]');
    // Meanwhile the guest is stopped: the page is not connected to hear it, and
    // its attempt to reconnect hangs.
    assert.equal((await src.api("POST", "/vm/stop")).status, 200);
    await waitUntil(() => proxy.held > 0, "the page's attempt to reconnect");
    assert.equal(proxy.connections, 0);
    assert.equal(await text(page, "#vm-state"), "guest: running");
    proxy.release();

    await page.waitForSelector('#connection[data-state="live"]');
    await page.waitForFunction(() =>
      document.getElementById("vm-state")?.textContent === "guest: paused"
    );
    const timeline = await page.locator("#timeline li").allTextContents();
    assert.ok(timeline.some((t) => t.includes("guest running → paused")), String(timeline));
    assert.ok(eventRequests.length >= 2, "the page reopened the event stream");
    const resumed = eventRequests.at(-1)!;
    assert.match(resumed["last-event-id"] ?? "", /^\d+$/, "it resumed with Last-Event-ID");

    assert.deepEqual(errors.page, [], "no uncaught errors");
    // Only the cut connection itself may be reported by the browser.
    for (const e of errors.console) assert.match(e, /net::ERR_|Failed to load resource/);
  },
});

Deno.test({
  name: "dashboard: a ferry with --token serves the page, which asks for the token",
  ignore,
  async fn() {
    await using src = await FerryProcess.start(["--ram", "8M", "--token", "s3cret-token-0123"]);
    const denied = await fetch(`${src.url}/migrations/current`);
    await denied.body?.cancel();
    assert.equal(denied.status, 401, "the API still needs the token");

    await using browser = await launch();
    const page = await browser.context.newPage();
    const errors = watchErrors(page);
    await page.goto(`${src.url}/`);
    await page.waitForSelector("#token-panel:not([hidden])");
    assert.equal(await page.locator("#main").isHidden(), true);

    await page.fill("#token-input", "wrong");
    await page.click('#token-form button[type="submit"]');
    await page.waitForFunction(() =>
      document.getElementById("token-error")?.textContent === "The token was refused."
    );

    await page.fill("#token-input", "s3cret-token-0123");
    await page.click('#token-form button[type="submit"]');
    await page.waitForSelector('#connection[data-state="live"]');
    await page.waitForFunction(() =>
      document.getElementById("vm-state")?.textContent === "guest: running"
    );
    assert.equal(await text(page, "#status"), "none");
    assert.equal(
      await page.evaluate(() => sessionStorage.getItem("ferry-token")),
      "s3cret-token-0123",
    );
    // A reload keeps the token for this tab.
    await page.reload();
    await page.waitForSelector('#connection[data-state="live"]');
    assert.equal(await page.locator("#token-panel").isHidden(), true);

    assert.deepEqual(errors.page, []);
    // The wrong token's 401s (and 429s while its address is locked out) are the only errors.
    for (const e of errors.console) assert.match(e, /401|429/);
  },
});

Deno.test({
  name:
    "dashboard: the link a ferry prints (#token=…) connects at once and leaves no token in the address bar",
  ignore,
  async fn() {
    const runtime = await Deno.makeTempDir({ prefix: "ferry-xdg-" });
    try {
      await using src = await FerryProcess.start(["--ram", "8M"], { XDG_RUNTIME_DIR: runtime }, {
        token: false,
      });
      const link = /^ferry: dashboard (\S+)$/m.exec(src.output())?.[1];
      assert.ok(link?.endsWith(`/#token=${src.token}`), src.output());

      await using browser = await launch();
      const page = await browser.context.newPage();
      const errors = watchErrors(page);
      const consoleRequests: string[] = [];
      page.on("request", (r) => {
        if (new URL(r.url()).pathname === "/vm/console") consoleRequests.push(r.url());
      });
      await page.goto(link!);
      await page.waitForSelector('#connection[data-state="live"]');
      await page.waitForFunction(() =>
        document.getElementById("vm-state")?.textContent === "guest: running"
      );
      assert.equal(await page.locator("#token-panel").isHidden(), true, "it did not ask");
      // The synthetic guest has no console: no terminal pane, and no request for one.
      assert.equal((await src.api("GET", "/vm")).body.guest, "synthetic");
      assert.equal(await page.locator("#console-card").isHidden(), true);
      assert.deepEqual(consoleRequests, []);
      assert.equal(page.url(), `${src.url}/`, "the fragment is gone from the address bar");
      assert.equal(await page.evaluate(() => sessionStorage.getItem("ferry-token")), src.token);
      // A state change from the page passes the origin check (same origin).
      await page.click("#vm-stop");
      await src.waitFor("/vm", (b) => b.run_state === "paused");
      assert.deepEqual(errors, { console: [], page: [] });
    } finally {
      await Deno.remove(runtime, { recursive: true });
    }
  },
});
