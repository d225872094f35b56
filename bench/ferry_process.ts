/**
 * Runs a real ferry (`main.ts`) as a child process for end-to-end tests: waits for
 * the API URL (and the incoming address) it prints, and kills it on dispose.
 */
export class FerryProcess implements AsyncDisposable {
  readonly #child: Deno.ChildProcess;
  readonly #stdoutLines: string[] = [];
  readonly #stderr: Promise<string>;
  readonly #stdoutDone: Promise<void>;
  url = "";
  incoming: string | undefined;

  private constructor(child: Deno.ChildProcess) {
    this.#child = child;
    this.#stderr = new Response(child.stderr).text();
    this.#stdoutDone = this.#pump();
  }

  /** Starts `main.ts` with `args` and resolves once its API answers. */
  static async start(args: string[], env: Record<string, string> = {}): Promise<FerryProcess> {
    const main = new URL("../main.ts", import.meta.url).pathname;
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", main, "--listen", "127.0.0.1:0", ...args],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      env,
    }).spawn();
    const ferry = new FerryProcess(child);
    const deadline = Date.now() + 30_000;
    while (!ferry.url) {
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
        const url = /(http:\/\/\S+?)(?:\s|$)/.exec(line);
        if (url && !this.url) this.url = url[1];
        const inc = /incoming migration on (\S+)/.exec(line);
        if (inc) this.incoming = inc[1];
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

  /** Calls the API: JSON in, JSON out. */
  // deno-lint-ignore no-explicit-any
  async api(method: string, path: string, body?: unknown): Promise<{ status: number; body: any }> {
    const res = await fetch(this.url + path, {
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
