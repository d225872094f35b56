import XTERM_CSS from "@xterm/xterm/css/xterm.css" with { type: "text" };
import XTERM_JS from "@xterm/xterm/lib/xterm.js" with { type: "text" };
import XTERM_LICENSE from "@xterm/xterm/LICENSE" with { type: "text" };

/** What the served page needs to know about the ferry serving it. */
export interface DashboardOptions {
  /** The API wants a bearer token: the page asks for it before its first request. */
  readonly tokenRequired?: boolean;
}

/** xterm.js as the page takes it: its browser build (which defines `Terminal`), stylesheet and license. */
export interface XtermFiles {
  readonly js: string;
  readonly css: string;
  readonly license: string;
}

/** The files the page is built from. */
export interface DashboardFiles {
  readonly html: string;
  readonly css: string;
  readonly js: string;
  /** The modules app.js imports (`import { … } from "./name.js";`), by file name. */
  readonly modules: Readonly<Record<string, string>>;
  readonly xterm: XtermFiles;
}

/** The files of web/ that app.js imports. */
const MODULES = ["console_pane.js", "recorder_pane.js"];

/** xterm.js from the npm package pinned in deno.json (the text imports put it in the module graph). */
export const XTERM: XtermFiles = { js: XTERM_JS, css: XTERM_CSS, license: XTERM_LICENSE };

/** An `import { … } from "…";` line of a module. */
const IMPORT_LINE = /^import\s*\{[^}]*\}\s*from\s*"([^"]*)";[ \t]*$/gm;

/**
 * app.js with each module it imports put in place of its import line, so the page
 * needs one inline module script. An imported module may import nothing itself.
 */
function inlineModules(js: string, modules: Readonly<Record<string, string>>): string {
  const uses = [...js.matchAll(IMPORT_LINE)].map((m) => m[1]);
  if (/^\s*import[\s{*"]/m.test(js.replace(IMPORT_LINE, ""))) {
    throw new Error('web/app.js may only import named exports of "./module.js" files');
  }
  for (const spec of uses) {
    const name = /^\.\/([a-z_]+\.js)$/.exec(spec)?.[1];
    const text = name === undefined ? undefined : modules[name];
    if (text === undefined) throw new Error(`web/app.js imports ${spec}, which the page lacks`);
    if (/^\s*import[\s{*"]/m.test(text)) throw new Error(`web/${name} must not import anything`);
  }
  return js.replace(IMPORT_LINE, (_, spec: string) => modules[spec.slice(2)]);
}

/** xterm's browser build as an inline classic script: license first, no source-map link. */
function xtermScript(xterm: XtermFiles): string {
  if (xterm.license.includes("*/")) throw new Error("xterm's license must not contain */");
  const js = xterm.js.replace(/^\/\/# sourceMappingURL=.*$/m, "");
  return `/*! xterm.js, from the npm package @xterm/xterm\n${xterm.license}*/\n${js}`;
}

/**
 * Builds the one self-contained page served at GET /: web/index.html with
 * web/style.css, web/app.js (with the modules it imports) and xterm.js's script and
 * stylesheet inlined (no other request, no CDN, works offline).
 */
export function buildDashboard(files: DashboardFiles, opts: DashboardOptions = {}): string {
  const js = inlineModules(files.js, files.modules);
  const xterm = xtermScript(files.xterm);
  const scripts = [["web/app.js", js], ["xterm.js", xterm]];
  for (const [name, text] of scripts) {
    // "<!--" could make the HTML parser read past the closing tag.
    if (/<\/script|<!--/i.test(text)) throw new Error(`${name} must not contain </script or <!--`);
  }
  for (const [name, text] of [["web/style.css", files.css], ["xterm.css", files.xterm.css]]) {
    if (/<\/style/i.test(text)) throw new Error(`${name} must not contain </style`);
  }
  const replaceOnce = (text: string, pattern: RegExp, by: string) => {
    if (!pattern.test(text)) throw new Error(`web/index.html has no ${pattern}`);
    return text.replace(pattern, () => by);
  };
  let html = replaceOnce(
    files.html,
    /<link rel="stylesheet" href="xterm\.css">/,
    `<style>\n${files.xterm.css}</style>`,
  );
  html = replaceOnce(
    html,
    /<link rel="stylesheet" href="style\.css">/,
    `<style>\n${files.css}</style>`,
  );
  html = replaceOnce(html, /<script src="xterm\.js"><\/script>/, `<script>\n${xterm}</script>`);
  html = replaceOnce(
    html,
    /<script type="module" src="app\.js"><\/script>/,
    `<script type="module">\n${js}</script>`,
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
    const modules: Record<string, string> = {};
    for (const name of MODULES) modules[name] = await read(name);
    files = {
      html: await read("index.html"),
      css: await read("style.css"),
      js: await read("app.js"),
      modules,
      xterm: XTERM,
    };
  } catch {
    return undefined;
  }
  return buildDashboard(files, opts);
}
