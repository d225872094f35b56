/**
 * Regenerates the README's dashboard screenshots: two ferries on loopback, a
 * 256 MiB guest dirtying memory, a migration started from the dashboard's form,
 * one screenshot while it runs and one after it completed. With `--console`, the
 * terminal pane instead: an x86 guest (needs `deno task guest:image`) answering
 * `echo $((6*7))` typed into it, in dashboard-console.png.
 *
 *   deno run -A tools/dashboard_screenshot.ts [--console] [OUT_DIR]   (default docs/)
 *
 * Needs /usr/bin/chromium (apt-get install chromium).
 */
import { chromium, type Page } from "playwright-core";
import { FerryProcess } from "../testing/ferry_process.ts";

// deno-lint-ignore no-explicit-any
declare const document: any;

const consoleShot = Deno.args.includes("--console");
const dir = Deno.args.find((a) => a !== "--console");
const out = new URL(dir ? `file://${Deno.realPathSync(dir)}/` : "../docs/", import.meta.url);
await Deno.mkdir(out, { recursive: true });

/** Runs `shoot` on a page of a fresh headless chromium. */
async function withPage(shoot: (page: Page) => Promise<void>): Promise<void> {
  const userDataDir = await Deno.makeTempDir({ prefix: "ferry-chromium-" });
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: "/usr/bin/chromium",
    headless: true,
    viewport: { width: 1280, height: 980 },
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"],
  });
  try {
    await shoot(await context.newPage());
  } finally {
    await context.close();
    await Deno.remove(userDataDir, { recursive: true });
  }
}

/** Waits until the page's terminal holds text `done` accepts. */
function terminalShows(page: Page, done: string): Promise<unknown> {
  return page.waitForFunction(
    (pattern) =>
      // deno-lint-ignore no-explicit-any
      new RegExp(pattern, "m").test((globalThis as any).ferryDashboard.console.text()),
    done,
    { timeout: 600_000, polling: 250 },
  );
}

/** The terminal pane of an x86 guest that answered `echo $((6*7))`: dashboard-console.png. */
async function consoleScreenshot(): Promise<void> {
  await using x86 = await FerryProcess.start(["--guest", "x86", "--ram", "128M"], {}, {
    startTimeoutMs: 120_000,
  });
  await withPage(async (page) => {
    await page.goto(`${x86.url}/#token=${x86.token}`);
    await page.waitForSelector("#console-card:not([hidden])");
    await terminalShows(page, "^tick [0-9]+ ");
    await terminalShows(page, "guest#");
    await page.click("#terminal");
    await page.keyboard.type("echo $((6*7))");
    await page.keyboard.press("Enter");
    await terminalShows(page, "^42\\n[\\s\\S]*^tick [0-9]+ [0-9a-f]{16}$");
    await page.locator("#console-card").screenshot({
      path: new URL("dashboard-console.png", out).pathname,
    });
    console.log(`wrote ${new URL("dashboard-console.png", out).pathname}`);
  });
}

/** A migration started from the form: dashboard-active.png while it runs, dashboard.png after. */
async function migrationScreenshots(): Promise<void> {
  await using dst = await FerryProcess.destination("256M");
  await using src = await FerryProcess.start([
    "--ram",
    "256M",
    "--fill",
    "random",
    "--workload",
    "random:rate=24M,hot=10%:90%",
  ]);
  while (!dst.incoming) await new Promise((r) => setTimeout(r, 10));

  await withPage(async (page) => {
    await page.goto(`${src.url}/#token=${src.token}`);
    await page.waitForSelector('#connection[data-state="live"]');
    await page.fill("#param-speed", "64M");
    await page.fill("#param-downtime", "50ms");
    await page.click('#params-form button[type="submit"]');
    await page.waitForFunction(() =>
      document.getElementById("bandwidth-limit")?.textContent === "64.0 MiB/s"
    );
    await page.fill("#migrate-uri", dst.incoming);
    await page.click("#migrate-start");
    await page.waitForFunction(() =>
      Number(document.getElementById("progress")?.getAttribute("aria-valuenow")) > 70 ||
      document.getElementById("status")?.textContent === "completed"
    );
    await page.screenshot({ path: new URL("dashboard-active.png", out).pathname });
    await page.waitForFunction(
      () =>
        ["completed", "failed", "cancelled"].includes(
          document.getElementById("status")?.textContent,
        ),
      undefined,
      { timeout: 120_000 },
    );
    await page.waitForFunction(() => document.getElementById("downtime")?.textContent !== "—");
    await new Promise((r) => setTimeout(r, 500));
    await page.screenshot({ path: new URL("dashboard.png", out).pathname });
    console.log(`wrote ${new URL("dashboard.png", out).pathname} and dashboard-active.png`);
  });
}

if (consoleShot) await consoleScreenshot();
else await migrationScreenshots();
