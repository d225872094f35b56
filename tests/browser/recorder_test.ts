/**
 * The dashboard's flight-recorder pane in a real browser (tests/browser/_chromium.ts):
 * it draws the timeline of the latest migration with the ferry's explanation,
 * follows a new one, and shows a chosen past one. The ferries are in-process on
 * real sockets, the source on an injected clock.
 */
import assert from "node:assert/strict";
import { TestGuest } from "../../testing/test_guest.ts";
import { PAGE_SIZE } from "../../vm/ram.ts";
import { loadDashboard } from "../../web/dashboard.ts";
import { dirtyingClock, LiveFerry } from "../helpers/live_ferry.ts";
import { launch, skipWithoutChromium, watchErrors } from "./_chromium.ts";

// deno-lint-ignore no-explicit-any
declare const document: any;

const ignore = skipWithoutChromium("tests/browser/recorder_test.ts");

Deno.test({
  name:
    "dashboard: the flight recorder draws the latest migration with its explanation, follows the next, and shows a chosen past one",
  ignore,
  async fn() {
    const guest = new TestGuest([["pc.ram", 512 * PAGE_SIZE]]);
    guest.fillRandom(4);
    guest.start();
    const clock = dirtyingClock(guest, 20);
    const dashboard = await loadDashboard({ tokenRequired: true });
    await using src = LiveFerry.start({ guest, clock, app: { dashboard } });
    await using dst = LiveFerry.start();
    await src.api("PATCH", "/migrations/parameters", {
      max_bandwidth: 10 << 20,
      downtime_limit: 300,
      completion_timeout_ms: 3000,
    });
    const first = (await src.api("POST", "/migrations", { uri: await dst.listen() })).body.id;
    assert.equal(await src.outgoingFinal(), "completed");

    await using browser = await launch();
    const page = await browser.context.newPage();
    const errors = watchErrors(page);
    await page.goto(`${src.url}/#token=${src.token}`);
    await page.waitForSelector(`#recorder[data-id="${first}"]`);
    assert.match(
      await page.locator("#recorder-explain").textContent() ?? "",
      /^It converged at pass \d+/,
    );
    assert.match(
      await page.locator("#recorder-summary").textContent() ?? "",
      /^completed · \d+ windows/,
    );
    // The chart is drawn: some pixels of the canvas are not blank.
    const inked = await page.evaluate(() => {
      const c = document.getElementById("chart-recorder");
      const data = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
      let n = 0;
      for (let i = 3; i < data.length; i += 4) if (data[i] > 0) n++;
      return n;
    });
    assert.ok(inked > 500, `${inked} pixels drawn`);

    // A second migration the guest outruns, cancelled at its deadline: the pane follows it.
    clock.perSleep = 400;
    await src.api("PATCH", "/migrations/parameters", { downtime_limit: 30 });
    await dst.api("POST", "/vm/stop"); // the destination's guest runs since the first one
    assert.equal((await src.api("POST", "/vm/start")).status, 200); // and the source's runs on
    const second = (await src.api("POST", "/migrations", { uri: await dst.listen() })).body.id;
    assert.equal(await src.outgoingFinal(), "cancelled");
    await page.waitForSelector(`#recorder[data-id="${second}"]`);
    await page.waitForFunction(() =>
      /could not have converged/.test(document.getElementById("recorder-explain").textContent)
    );
    // Choosing the first one shows it again.
    await page.waitForFunction(() =>
      document.querySelectorAll("#recorder-pick option").length === 3
    );
    await page.selectOption("#recorder-pick", first);
    await page.waitForSelector(`#recorder[data-id="${first}"]`);
    assert.match(await page.locator("#recorder-explain").textContent() ?? "", /^It converged/);
    assert.deepEqual(errors, { console: [], page: [] });
  },
});
