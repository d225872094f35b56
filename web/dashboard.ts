/** What the served page needs to know about the ferry serving it. */
export interface DashboardOptions {
  /** The API wants a bearer token: the page asks for it before its first request. */
  readonly tokenRequired?: boolean;
}

/**
 * Builds the one self-contained page served at GET /: web/index.html with
 * web/style.css and web/app.js inlined (no other request, no CDN, works offline).
 * The three files also work as they are, opened next to each other.
 */
export function buildDashboard(
  files: { html: string; css: string; js: string },
  opts: DashboardOptions = {},
): string {
  if (/<\/script/i.test(files.js)) throw new Error("web/app.js must not contain </script");
  if (/<\/style/i.test(files.css)) throw new Error("web/style.css must not contain </style");
  const replaceOnce = (text: string, pattern: RegExp, by: string) => {
    if (!pattern.test(text)) throw new Error(`web/index.html has no ${pattern}`);
    return text.replace(pattern, () => by);
  };
  let html = replaceOnce(
    files.html,
    /<link rel="stylesheet" href="style\.css">/,
    `<style>\n${files.css}</style>`,
  );
  html = replaceOnce(
    html,
    /<script type="module" src="app\.js"><\/script>/,
    `<script type="module">\n${files.js}</script>`,
  );
  html = replaceOnce(
    html,
    /<meta name="ferry-token-required" content="false">/,
    `<meta name="ferry-token-required" content="${opts.tokenRequired ? "true" : "false"}">`,
  );
  return html;
}

/** Loads the dashboard page served at GET / (web/*), or undefined when it is absent. */
export async function loadDashboard(opts: DashboardOptions = {}): Promise<string | undefined> {
  const read = (name: string) => Deno.readTextFile(new URL(`./${name}`, import.meta.url));
  let files;
  try {
    files = {
      html: await read("index.html"),
      css: await read("style.css"),
      js: await read("app.js"),
    };
  } catch {
    return undefined;
  }
  return buildDashboard(files, opts);
}
