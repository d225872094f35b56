/**
 * Regenerates the README's dashboard screenshots: two ferries on loopback, a
 * 256 MiB guest dirtying memory, a migration started from the dashboard's form,
 * one screenshot while it runs and one after it completed.
 *
 *   deno run -A tools/dashboard_screenshot.ts [OUT_DIR]   (default docs/)
 *
 * Needs /usr/bin/chromium (apt-get install chromium).
 */
import { chromium } from "playwright-core";
import { FerryProcess } from "../testing/ferry_process.ts";

// deno-lint-ignore no-explicit-any
declare const document: any;

const out = new URL(
  Deno.args[0] ? `file://${Deno.realPathSync(Deno.args[0])}/` : "../docs/",
  import.meta.url,
);
await Deno.mkdir(out, { recursive: true });

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

const userDataDir = await Deno.makeTempDir({ prefix: "ferry-chromium-" });
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1280, height: 980 },
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"],
});
try {
  const page = await context.newPage();
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
} finally {
  await context.close();
  await Deno.remove(userDataDir, { recursive: true });
}
