/**
 * The dashboard's terminal pane in a real browser, on a real Linux guest
 * (`--guest x86`): xterm.js shows the guest's ticks, runs what is typed into it, and
 * after a live migration the destination's pages (one open before, one opened after)
 * show the source's output carried over and the ticks going on. Needs chromium and
 * `deno task guest:image`; without either it is skipped, saying so. Waits are on
 * what the terminal shows and on migration states, under hang guards; nothing here
 * measures speed.
 */
import assert from "node:assert/strict";
import type { Page } from "playwright-core";
import { FerryProcess } from "../../testing/ferry_process.ts";
import { guestImagePresent } from "../../vm/x86/guest_image.ts";
import { GUEST_PROMPT } from "../../vm/x86/initramfs.ts";
import { parseTicks, tickChainError } from "../../vm/x86/ticks.ts";
import { BOOT_GUARD_MS, LINES_GUARD_MS } from "../vm/x86/_guest.ts";
import { launch, skipWithoutChromium, watchErrors } from "./_chromium.ts";

// deno-lint-ignore no-explicit-any
declare const document: any;

const FILE = "tests/browser/console_test.ts";
const HAVE_IMAGE = guestImagePresent();
if (!HAVE_IMAGE) {
  console.warn(
    `${FILE}: SKIPPED — no guest image (.cache/guest/manifest.json): run deno task guest:image`,
  );
}
const ignore = skipWithoutChromium(FILE) || !HAVE_IMAGE;

const ARTIFACTS = new URL("../../test-artifacts/", import.meta.url);
/** Hang guard for one migration. */
const MIGRATION_GUARD_MS = 300_000;
const FINAL = ["completed", "failed", "cancelled"];
const UNLIMITED = 100_000_000_000;
/** What is typed into the terminal (Enter follows). */
const COMMAND = "echo $((6*7))";
/** A report the terminal sends back by itself (the shell asks for the cursor position). */
const REPORT = new RegExp(`${String.fromCharCode(27)}\\[[?>]?[0-9;]*[Rcn]`, "g");

/** Starts an x86 ferry (`extra`: a destination's --incoming). */
function x86Ferry(extra: string[] = []): Promise<FerryProcess> {
  return FerryProcess.start(["--guest", "x86", "--ram", "128M", ...extra], {}, {
    startTimeoutMs: 120_000,
  });
}

/** What the page's terminal holds, scrollback included. */
function terminalText(page: Page): Promise<string> {
  // deno-lint-ignore no-explicit-any
  return page.evaluate(() => (globalThis as any).ferryDashboard.console.text());
}

/** The highest tick number in terminal text (0 if none). */
function maxTick(text: string): number {
  return Math.max(0, ...parseTicks(`${text}\n`).map((t) => t.n));
}

/**
 * Resolves with the page's terminal text once `test(text)` holds, looking a few
 * times a second; fails naming `what`, with the terminal's last lines, after `guard`
 * ms (a hang guard, not a speed limit).
 */
async function terminalShows(
  page: Page,
  test: (text: string) => boolean,
  what: string,
  guard = LINES_GUARD_MS,
): Promise<string> {
  const deadline = performance.now() + guard;
  for (;;) {
    const text = await terminalText(page);
    if (test(text)) return text;
    if (performance.now() > deadline) {
      const tail = text.split("\n").slice(-8).join("\n");
      throw new Error(`${what} did not show within ${guard} ms; the terminal ends with:\n${tail}`);
    }
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** Whether terminal text shows a tick numbered above `n`. */
function hasTickAbove(text: string, n: number): boolean {
  return text.split("\n").some((line) => {
    const m = /tick ([1-9][0-9]*) [0-9a-f]{16}$/.exec(line);
    return m !== null && Number(m[1]) > n;
  });
}

/** Whether terminal text has a line that is just `line`. */
function hasLine(text: string, line: string): boolean {
  return text.split("\n").some((l) => l.trim() === line);
}

/** Opens the dashboard of `ferry` and waits until its terminal pane follows the console. */
async function openDashboard(page: Page, ferry: FerryProcess): Promise<void> {
  await page.goto(`${ferry.url}/#token=${ferry.token}`);
  await page.waitForSelector('#connection[data-state="live"]');
  await page.waitForSelector("#console-card:not([hidden])");
  await page.waitForSelector('#console-conn[data-state="live"]');
}

/** Checks terminal text holds one unbroken tick chain, through tick `through` and past it. */
function assertChainThrough(text: string, through: number): void {
  const ticks = parseTicks(`${text}\n`);
  assert.equal(tickChainError(ticks), null, "one unbroken tick chain, nothing twice");
  assert.ok(ticks.some((t) => t.n === through), `the history holds tick ${through}`);
  assert.ok(ticks.some((t) => t.n > through), `ticks go on past ${through}`);
}

Deno.test({
  name: "dashboard console: xterm.js shows the x86 guest's ticks, runs `echo $((6*7))` typed " +
    "into it, and goes on at a migration's destination (needs chromium and the guest image)",
  ignore,
  async fn(t) {
    await using src = await x86Ferry();
    await using browser = await launch({ width: 1280, height: 1400 });
    const srcPage = await browser.context.newPage();
    const errors = [watchErrors(srcPage)];
    const foreign: string[] = [];
    const typed: string[] = [];
    const typedStatus: number[] = [];
    srcPage.on("request", (r) => {
      if (!r.url().startsWith(src.url) && !r.url().startsWith("data:")) foreign.push(r.url());
      if (r.method() === "POST" && r.url() === `${src.url}/vm/console`) {
        typed.push(JSON.parse(r.postData() ?? "{}").input);
      }
    });
    srcPage.on("response", (r) => {
      if (r.request().method() === "POST" && r.url() === `${src.url}/vm/console`) {
        typedStatus.push(r.status());
      }
    });
    await openDashboard(srcPage, src);

    let sourceTicks = 0;
    await t.step("the source's page shows the guest's ticks and its shell", async () => {
      await terminalShows(srcPage, (text) => hasTickAbove(text, 2), "three ticks", BOOT_GUARD_MS);
      const prompt = GUEST_PROMPT.trim();
      const text = await terminalShows(srcPage, (text) => text.includes(prompt), "the prompt");
      assert.equal(tickChainError(parseTicks(`${text}\n`)), null);
      assert.ok(!hasLine(text, "42"), "no answer before the question");
      assert.equal(await srcPage.locator("#console-note").isHidden(), true, "a running guest");
    });

    await t.step("what is typed into the terminal runs in the guest's shell", async () => {
      await srcPage.click("#terminal");
      await srcPage.keyboard.type(COMMAND);
      await srcPage.keyboard.press("Enter");
      const text = await terminalShows(srcPage, (text) => hasLine(text, "42"), "the answer 42");
      sourceTicks = maxTick(text);
      // Every keystroke went out once, in order, Enter as CR, in POSTs the guest took.
      assert.equal(typed.join("").replace(REPORT, ""), `${COMMAND}\r`);
      assert.ok(typedStatus.length > 0 && typedStatus.every((s) => s === 200), `${typedStatus}`);
    });

    await t.step(
      "after a live migration the destination's pages carry the console on",
      async () => {
        await using dst = await x86Ferry(["--incoming", "tcp:127.0.0.1:0"]);
        assert.ok(dst.incoming, dst.output());
        // One page on the destination before the guest arrives …
        const early = await browser.context.newPage();
        errors.push(watchErrors(early));
        await openDashboard(early, dst);
        await early.waitForFunction(() =>
          /incoming migration/.test(document.getElementById("console-note")?.textContent ?? "")
        );

        await src.api("PATCH", "/migrations/parameters", { max_bandwidth: UNLIMITED });
        sourceTicks = Math.max(sourceTicks, maxTick(await terminalText(srcPage)));
        const started = await src.api("POST", "/migrations", { uri: dst.incoming });
        assert.equal(started.status, 202, JSON.stringify(started.body));
        const info = await src.waitFor(
          "/migrations/current",
          (b) => FINAL.includes(b.status),
          MIGRATION_GUARD_MS,
        );
        assert.equal(info.status, "completed", JSON.stringify(info));
        await dst.waitFor("/migrations/incoming", (b) => FINAL.includes(b.status));

        // The source's page says where its console went; its last tick is the last it shows.
        await srcPage.waitForFunction(() =>
          /migrated away/.test(document.getElementById("console-note")?.textContent ?? "")
        );
        const lastOnSource = maxTick(await terminalText(srcPage));
        assert.ok(lastOnSource >= sourceTicks);
        // A key typed there is refused by the ferry, and the note says why.
        const refused = srcPage.waitForResponse((r) =>
          r.request().method() === "POST" && r.url() === `${src.url}/vm/console`
        );
        await srcPage.click("#terminal");
        await srcPage.keyboard.type("x");
        assert.equal((await refused).status(), 409);
        await srcPage.waitForFunction(() =>
          /^Not sent — invalid-run-state: .*postmigrate/.test(
            document.getElementById("console-note")?.textContent ?? "",
          )
        );

        // … and one opened after it arrived: both show the source's output, then new ticks.
        const late = await browser.context.newPage();
        errors.push(watchErrors(late));
        await openDashboard(late, dst);
        for (const [page, name] of [[early, "open before"], [late, "opened after"]] as const) {
          const text = await terminalShows(
            page,
            (text) => hasTickAbove(text, lastOnSource),
            `a tick past ${lastOnSource} on the destination page ${name}`,
          );
          assertChainThrough(text, lastOnSource);
          assert.ok(hasLine(text, "42"), "the earlier output is there");
          assert.equal(await page.locator("#console-note").isHidden(), true, "its guest runs");
        }
        await Deno.mkdir(ARTIFACTS, { recursive: true });
        await late.locator("#console-card").screenshot({
          path: new URL("dashboard-console.png", ARTIFACTS).pathname,
        });
        await early.close();
        await late.close();
      },
    );

    for (const e of errors) {
      assert.deepEqual(e.page, [], "no uncaught errors");
      // The one refused key is the only request that failed.
      for (const c of e.console) assert.match(c, /status of 409/);
    }
    assert.equal(errors.flatMap((e) => e.console).length <= 1, true, String(errors[0].console));
    assert.deepEqual(foreign, [], "the page loads nothing from anywhere else");
  },
});
