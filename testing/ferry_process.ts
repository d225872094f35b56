/**
 * Runs real ferry processes (`main.ts`) for end-to-end tests, benchmarks and tools, and
 * talks to their API: {@link FerryProcess}, {@link FerryClient}, {@link FerryShell}.
 * @module
 */
import { generateToken } from "../api_token.ts";

/** The API URL a ferry prints on stdout (`ferry: API on http://…`), if `line` is that line. */
function apiUrlIn(line: string): string | undefined {
  return /API on (http:\/\/\S+?)(?:\s|$)/.exec(line)?.[1];
}

/** The token in the dashboard URL a ferry prints when it generated its token, if `line` has it. */
function generatedTokenIn(line: string): string | undefined {
  return /^ferry: dashboard http:\/\/\S+#token=([A-Za-z0-9_-]+)$/.exec(line)?.[1];
}

/** The value of `--token` in a ferry's flags, if any. */
function tokenFlag(args: string[]): string | undefined {
  const i = args.lastIndexOf("--token");
  return i >= 0 ? args[i + 1] : undefined;
}

/** The address a destination prints (`… incoming migration on URI`), if `line` is that line. */
function incomingIn(line: string): string | undefined {
  return /incoming migration on (.+)$/.exec(line)?.[1];
}

/** A client for one running ferry's API: JSON calls and polling. */
export class FerryClient {
  /** The API base URL, e.g. `http://127.0.0.1:43210`. */
  url = "";
  /** The address the ferry printed for its incoming migration, if it was started with --incoming. */
  incoming: string | undefined;
  /** The API token, sent as `Authorization: Bearer` on every call. */
  token: string | undefined;

  /** `extra` plus the Authorization header when there is a token. */
  headers(extra: Record<string, string> = {}): Record<string, string> {
    return this.token === undefined ? extra : { ...extra, authorization: `Bearer ${this.token}` };
  }

  /** fetch() of `path` on this ferry, with the token; the caller reads or cancels the body. */
  fetch(path: string, init: RequestInit = {}): Promise<Response> {
    const headers = this.headers(Object.fromEntries(new Headers(init.headers)));
    return fetch(this.url + path, { ...init, headers });
  }

  /** Calls the API: JSON in, JSON out. */
  // deno-lint-ignore no-explicit-any
  async api(method: string, path: string, body?: unknown): Promise<{ status: number; body: any }> {
    const res = await this.fetch(path, {
      method,
      headers: body === undefined ? {} : { "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    return { status: res.status, body: text ? JSON.parse(text) : undefined };
  }

  /** Polls GET path until `done(body)` is true; throws after `timeoutMs`. */
  // deno-lint-ignore no-explicit-any
  async waitFor(path: string, done: (body: any) => boolean, timeoutMs = 60_000): Promise<any> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const { body } = await this.api("GET", path);
      if (done(body)) return body;
      if (Date.now() > deadline) {
        throw new Error(`timed out waiting on ${path}: ${JSON.stringify(body)}`);
      }
      await new Promise((r) => setTimeout(r, 25));
    }
  }
}

/** Extra ways to start a {@link FerryProcess}; every field is optional. */
export interface FerryStartOptions {
  /**
   * A command the ferry runs under, e.g. `["ip", "netns", "exec", "ferry-dst"]`: the
   * child is then `prefix… deno run -A main.ts …`. The prefix must exec (not fork)
   * so that killing the child kills the ferry.
   */
  prefix?: string[];
  /**
   * The ferry's API token, given to it as FERRY_TOKEN (out of `ps`'s sight) and sent
   * on every call. By default each ferry gets a random one, unless `args` (--token)
   * or `env` (FERRY_TOKEN) already give one. `false` gives none: the ferry generates
   * its own and the client takes it from the dashboard URL the ferry prints.
   */
  token?: string | false;
  /** How long start-up may take, ms (default 30 s; a 4 GiB random fill needs more). */
  startTimeoutMs?: number;
}

/**
 * Runs a real ferry (`main.ts`) as a child process for end-to-end tests: waits for
 * the API URL (and the incoming address) it prints, and kills it on dispose.
 */
export class FerryProcess extends FerryClient implements AsyncDisposable {
  readonly #child: Deno.ChildProcess;
  readonly #stdoutLines: string[] = [];
  readonly #stderr: Promise<string>;
  readonly #stdoutDone: Promise<void>;

  private constructor(child: Deno.ChildProcess) {
    super();
    this.#child = child;
    this.#stderr = new Response(child.stderr).text();
    this.#stdoutDone = this.#pump();
  }

  /**
   * Starts `main.ts` with `args` (after `--listen 127.0.0.1:0`, which a `--listen` in
   * `args` overrides) and resolves once its API answers. `opts` can run it under a
   * command prefix and choose its API token.
   */
  static async start(
    args: string[],
    env: Record<string, string> = {},
    opts: FerryStartOptions = {},
  ): Promise<FerryProcess> {
    const main = new URL("../main.ts", import.meta.url).pathname;
    const ferryArgs = ["run", "-A", main, "--listen", "127.0.0.1:0", ...args];
    let token = tokenFlag(args) ?? (env.FERRY_TOKEN || undefined);
    if (token === undefined) {
      // An empty FERRY_TOKEN is no token: it hides one the test runner may have set.
      if (opts.token !== false) token = opts.token ?? generateToken();
      env = { ...env, FERRY_TOKEN: token ?? "" };
    }
    const prefix = opts.prefix ?? [];
    const child = new Deno.Command(prefix.length > 0 ? prefix[0] : Deno.execPath(), {
      args: prefix.length > 0 ? [...prefix.slice(1), Deno.execPath(), ...ferryArgs] : ferryArgs,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      env,
    }).spawn();
    const ferry = new FerryProcess(child);
    ferry.token = token;
    const deadline = Date.now() + (opts.startTimeoutMs ?? 30_000);
    // A ferry that generates its token prints it (in the dashboard URL) after the API URL.
    while (!ferry.url || ferry.token === undefined) {
      if (Date.now() > deadline) {
        await ferry[Symbol.asyncDispose]();
        throw new Error(`ferry did not start: ${ferry.output()}`);
      }
      const status = await Promise.race([
        child.status,
        new Promise((r) => setTimeout(() => r(null), 20)),
      ]);
      if (status) throw new Error(`ferry exited early: ${ferry.output()} ${await ferry.#stderr}`);
    }
    return ferry;
  }

  /**
   * Starts a destination: `--ram ram --incoming uri --no-autostart` plus `extra`, and
   * resolves once it has printed the address it listens on (`incoming`).
   */
  static async destination(
    ram: string,
    uri = "tcp:127.0.0.1:0",
    extra: string[] = [],
    opts: FerryStartOptions = {},
  ): Promise<FerryProcess & { incoming: string }> {
    const ferry = await FerryProcess.start(
      [
        "--ram",
        ram,
        "--incoming",
        uri,
        "--no-autostart",
        ...extra,
      ],
      {},
      opts,
    );
    // main.ts prints the incoming address before the API URL, so it is known by now.
    if (ferry.incoming === undefined) {
      await ferry[Symbol.asyncDispose]();
      throw new Error(`destination printed no incoming address: ${ferry.output()}`);
    }
    return ferry as FerryProcess & { incoming: string };
  }

  async #pump(): Promise<void> {
    const decoder = new TextDecoderStream();
    let partial = "";
    for await (const chunk of this.#child.stdout.pipeThrough(decoder)) {
      partial += chunk;
      let nl;
      while ((nl = partial.indexOf("\n")) >= 0) {
        const line = partial.slice(0, nl);
        partial = partial.slice(nl + 1);
        this.#stdoutLines.push(line);
        const url = apiUrlIn(line);
        if (url && !this.url) this.url = url;
        const inc = incomingIn(line);
        if (inc) this.incoming = inc;
        this.token ??= generatedTokenIn(line);
      }
    }
  }

  /** Everything the process printed on stdout so far. */
  output(): string {
    return this.#stdoutLines.join("\n");
  }

  /** The child's pid. */
  get pid(): number {
    return this.#child.pid;
  }

  /** Sends a signal and waits for the process to exit. */
  async kill(signal: Deno.Signal = "SIGTERM"): Promise<Deno.CommandStatus> {
    try {
      this.#child.kill(signal);
    } catch {
      // already exited
    }
    const status = await this.#child.status;
    await this.#stdoutDone;
    await this.#stderr;
    return status;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.kill("SIGKILL");
  }
}

/** Quotes `s` for a POSIX shell. */
export function shellQuote(s: string): string {
  return /^[A-Za-z0-9_./:=,@%+-]+$/.test(s) ? s : `'${s.replaceAll("'", `'\\''`)}'`;
}

/**
 * Several ferries started by one shell script, for descriptor plumbing that
 * Deno.Command cannot express (a pipe on fd 3 between two ferries,
 * `3>snap.bin`, …). Each ferry's stdout and stderr go to log files, from which
 * its API URL is read; dispose kills the script's whole process group.
 *
 *   await using sh = await FerryShell.start((f) =>
 *     `${f.ferry("a", ["--ram", "64M"])} 3>&1 ${f.logs("a")} | ` +
 *     `${f.ferry("b", ["--incoming", "fd:3"])} 3<&0 ${f.logs("b")}`, ["a", "b"]);
 */
export class FerryShell implements AsyncDisposable {
  readonly #child: Deno.ChildProcess;
  readonly #dir: string;
  readonly #clients = new Map<string, FerryClient>();

  private constructor(child: Deno.ChildProcess, dir: string, names: string[], token: string) {
    this.#child = child;
    this.#dir = dir;
    for (const name of names) {
      const client = new FerryClient();
      client.token = token;
      this.#clients.set(name, client);
    }
  }

  /**
   * Runs the script `build` returns with bash and waits until every ferry in
   * `names` printed its API URL. `build` gets helpers: `ferry(name, args)` is
   * the command line of one ferry (`--listen 127.0.0.1:0` added), `logs(name)`
   * the redirections of its stdout and stderr to log files. The ferries share one
   * random API token (FERRY_TOKEN), which every client sends.
   */
  static async start(
    build: (f: {
      ferry(name: string, args: string[]): string;
      logs(name: string): string;
    }) => string,
    names: string[],
  ): Promise<FerryShell> {
    const dir = await Deno.makeTempDir({ prefix: "ferry-shell-" });
    const main = new URL("../main.ts", import.meta.url).pathname;
    const script = build({
      ferry: (_name, args) =>
        [Deno.execPath(), "run", "-A", main, "--listen", "127.0.0.1:0", ...args].map(shellQuote)
          .join(" "),
      logs: (name) => `>${shellQuote(`${dir}/${name}.out`)} 2>${shellQuote(`${dir}/${name}.err`)}`,
    });
    const token = generateToken();
    const child = new Deno.Command("bash", {
      args: ["-c", script],
      stdin: "null",
      stdout: "null",
      stderr: "null",
      env: { FERRY_TOKEN: token },
      detached: true,
    }).spawn();
    const shell = new FerryShell(child, dir, names, token);
    const deadline = Date.now() + 30_000;
    for (;;) {
      let missing = 0;
      for (const name of names) {
        const client = shell.#clients.get(name)!;
        const lines = shell.output(name).split("\n");
        client.url ||= lines.map(apiUrlIn).find((u) => u !== undefined) ?? "";
        client.incoming ??= lines.map(incomingIn).find((u) => u !== undefined);
        if (!client.url) missing++;
      }
      if (missing === 0) return shell;
      if (Date.now() > deadline) {
        const logs = names.map((n) => `${n}: ${shell.output(n)} ${shell.errors(n)}`).join("; ");
        await shell[Symbol.asyncDispose]();
        throw new Error(`ferries did not start: ${logs}`);
      }
      await new Promise((r) => setTimeout(r, 25));
    }
  }

  /** The API client of ferry `name`. */
  client(name: string): FerryClient {
    const client = this.#clients.get(name);
    if (!client) throw new Error(`no ferry named ${name}`);
    return client;
  }

  /** What ferry `name` printed on stdout so far. */
  output(name: string): string {
    return readOrEmpty(`${this.#dir}/${name}.out`);
  }

  /** What ferry `name` printed on stderr so far. */
  errors(name: string): string {
    return readOrEmpty(`${this.#dir}/${name}.err`);
  }

  /** Kills the script and every ferry it started, then removes the log files. */
  async [Symbol.asyncDispose](): Promise<void> {
    try {
      Deno.kill(-this.#child.pid, "SIGKILL");
    } catch {
      // already gone
    }
    await this.#child.status;
    await Deno.remove(this.#dir, { recursive: true }).catch(() => {});
  }
}

function readOrEmpty(path: string): string {
  try {
    return Deno.readTextFileSync(path);
  } catch {
    return "";
  }
}
