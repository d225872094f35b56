/**
 * What the browser tests share: Debian's chromium driven by playwright-core (which
 * runs under Deno as is), a fresh profile per browser, and the page's errors.
 * `.ci/run` installs chromium; where /usr/bin/chromium is missing the tests are
 * skipped, saying so ({@link skipWithoutChromium}).
 */
import type { BrowserContext, Page } from "playwright-core";

export const CHROMIUM = "/usr/bin/chromium";

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

/** Whether chromium is installed. */
export const HAVE_CHROMIUM = exists(CHROMIUM);

/** True when the browser tests of `file` must be skipped; says why once. */
export function skipWithoutChromium(file: string): boolean {
  if (HAVE_CHROMIUM) return false;
  console.warn(
    `${file}: SKIPPED — ${CHROMIUM} not found. ` +
      "Install it with `apt-get update && apt-get install -y chromium` (.ci/run does).",
  );
  return true;
}

/** A fresh headless chromium with its own profile directory, removed on dispose. */
export async function launch(
  viewport = { width: 1280, height: 1000 },
): Promise<{ context: BrowserContext } & AsyncDisposable> {
  const { chromium } = await import("playwright-core");
  const userDataDir = await Deno.makeTempDir({ prefix: "ferry-chromium-" });
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    viewport,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  return {
    context,
    async [Symbol.asyncDispose]() {
      await context.close();
      await Deno.remove(userDataDir, { recursive: true }).catch(() => {});
    },
  };
}

/** Collects console errors and uncaught page errors. */
export function watchErrors(page: Page): { console: string[]; page: string[] } {
  const errors = { console: [] as string[], page: [] as string[] };
  page.on("console", (m) => {
    if (m.type() === "error") errors.console.push(m.text());
  });
  page.on("pageerror", (e) => errors.page.push(String(e)));
  return errors;
}
