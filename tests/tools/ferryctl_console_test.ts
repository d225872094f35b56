import assert from "node:assert/strict";
import { capture } from "../helpers/cli_io.ts";
import { followConsole } from "../../testing/console_follower.ts";
import { FerryProcess } from "../../testing/ferry_process.ts";
import { MAX_CONSOLE_INPUT_CHARS } from "../../routes/schemas.ts";
import { InputSender, MAX_INPUT_CHARS, splitInput } from "../../tools/console_session.ts";
import { run } from "../../tools/ferryctl.ts";
import { guestImagePresent } from "../../vm/x86/guest_image.ts";
import { GUEST_PROMPT } from "../../vm/x86/initramfs.ts";
import { waitUntil, withTimeout } from "../helpers/wait.ts";
import { BOOT_GUARD_MS, LINES_GUARD_MS, QUESTION } from "../vm/x86/_guest.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** A stdin the test types into; `raw` records the raw-mode switches. */
function fakeStdin(tty: boolean) {
  let controller!: ReadableStreamDefaultController<Uint8Array>;
  const raw: boolean[] = [];
  return {
    readable: new ReadableStream<Uint8Array>({ start: (c) => void (controller = c) }),
    tty,
    raw,
    setRaw: (on: boolean) => void raw.push(on),
    type: (text: string) => controller.enqueue(encoder.encode(text)),
    end: () => controller.close(),
  };
}

/** One SSE `output` event as ferry writes it; `retry` adds the reconnection delay. */
function outputEvent(offset: number, text: string, retry?: number): string {
  return `event: output\ndata: ${JSON.stringify({ offset, text })}\nid: ${
    offset + encoder.encode(text).length
  }\n${retry === undefined ? "" : `retry: ${retry}\n`}\n`;
}

/**
 * A stand-in ferry for the console routes. Each GET /vm/console is handed to
 * `stream` (its Last-Event-ID and a writer); each POST's input is recorded and
 * answered by `post`.
 */
function stubFerry(handlers: {
  stream(
    lastEventId: string | null,
    out: { write(text: string): void; close(): void },
  ): Response | void;
  post?(input: string): Response | Promise<Response>;
}) {
  const inputs: string[] = [];
  const streams: ReadableStreamDefaultController<Uint8Array>[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (req) => {
    const url = new URL(req.url);
    if (url.pathname !== "/vm/console") return new Response("not found", { status: 404 });
    if (req.method === "POST") {
      const { input } = await req.json();
      inputs.push(input);
      return handlers.post?.(input) ?? Response.json({ sent: input.length });
    }
    let controller!: ReadableStreamDefaultController<Uint8Array>;
    const body = new ReadableStream<Uint8Array>({ start: (c) => void (controller = c) });
    streams.push(controller);
    const refused = handlers.stream(req.headers.get("last-event-id"), {
      write: (text) => controller.enqueue(encoder.encode(text)),
      close: () => controller.close(),
    });
    if (refused) return refused;
    return new Response(body, { headers: { "content-type": "text/event-stream" } });
  });
  return {
    url: `http://127.0.0.1:${server.addr.port}`,
    inputs,
    async [Symbol.asyncDispose]() {
      for (const c of streams) {
        try {
          c.close();
        } catch {
          // already closed
        }
      }
      await server.shutdown();
    },
  };
}

/** A 409 as ferry answers it. */
function conflict(code: string, message: string): Response {
  return Response.json({ error: { code, message } }, { status: 409 });
}

Deno.test("the sender merges keystrokes typed while a request is on its way, or sends lines one by one", async () => {
  assert.equal(MAX_INPUT_CHARS, MAX_CONSOLE_INPUT_CHARS, "the API's limit");
  const sent: string[] = [];
  let release!: () => void;
  const keys = new InputSender(async (text) => {
    sent.push(text);
    if (sent.length === 1) await new Promise<void>((r) => (release = r));
  }, { merge: true, batchMs: 1 });
  keys.push("e");
  keys.push("c");
  await waitUntil(() => sent.length === 1, "the first request");
  keys.push("h");
  keys.push("o\r");
  release();
  await keys.drain();
  assert.deepEqual(sent, ["ec", "ho\r"]);

  const lines: string[] = [];
  const piped = new InputSender((text) => {
    lines.push(text);
    return Promise.resolve();
  }, { merge: false, batchMs: 1 });
  piped.push("ls\n");
  piped.push("pwd\n");
  piped.push("x".repeat(MAX_INPUT_CHARS + 1));
  await piped.drain();
  assert.deepEqual(lines, ["ls\n", "pwd\n", "x".repeat(MAX_INPUT_CHARS), "x"]);

  const failing = new InputSender(() => Promise.reject(new Error("refused")), {
    merge: false,
    batchMs: 0,
  });
  failing.push("a\n");
  await assert.rejects(failing.failed(), /refused/);
  await assert.rejects(failing.drain(), /refused/);
});

Deno.test("splitInput keeps surrogate pairs whole", () => {
  const text = "a".repeat(MAX_INPUT_CHARS - 1) + "😀" + "b";
  const pieces = splitInput(text);
  assert.deepEqual(pieces, ["a".repeat(MAX_INPUT_CHARS - 1), "😀b"]);
  assert.equal(pieces.join(""), text);
});

Deno.test("console: piped lines go one per request; a dropped stream resumes at its Last-Event-ID; Ctrl-] in the input detaches with exit 0", async () => {
  const seen: (string | null)[] = [];
  await using stub = stubFerry({
    stream(lastEventId, out) {
      seen.push(lastEventId);
      if (seen.length === 1) {
        out.write(outputEvent(0, "hello ", 5));
        out.write(outputEvent(6, "world\r\n"));
        out.close(); // the stream drops
      } else {
        out.write(outputEvent(Number(lastEventId), "again\r\n"));
      }
    },
  });
  const io = capture();
  const stdin = fakeStdin(false);
  const session = run(["console", "--api", stub.url, "--replay", "0"], {}, io, stdin);
  await waitUntil(() => io.stdout.includes("again"), "the resumed stream's output");
  assert.deepEqual(seen, [null, "13"]);
  assert.equal(io.stdout, "hello world\r\nagain\r\n", "nothing lost, nothing repeated");
  stdin.type("echo one\necho tw");
  stdin.type("o\npartial\x1dignored\n");
  assert.equal(await session, 0, io.stderr);
  assert.deepEqual(stub.inputs, ["echo one\n", "echo two\n", "partial"]);
  assert.deepEqual(stdin.raw, [], "a pipe is never put in raw mode");
  assert.match(
    io.stderr,
    /^ferry console: attached .*Ctrl-\] detaches.*\nferry console: detached\n$/,
  );
});

Deno.test("console: a stream that cannot be resumed ends the session with exit 1, saying why", async () => {
  let connections = 0;
  await using stub = stubFerry({
    stream(_id, out) {
      if (++connections > 1) return conflict("no-console", "This guest has no console");
      out.write(outputEvent(0, "bye\r\n", 1));
      out.close();
      return undefined;
    },
  });
  const io = capture();
  const stdin = fakeStdin(false);
  stdin.end(); // input ends at once: output still goes on until the stream does
  assert.equal(await run(["console", "--api", stub.url], {}, io, stdin), 1);
  assert.equal(io.stdout, "bye\r\n");
  assert.match(
    io.stderr.split("\n")[1],
    /^ferry console: the console stream ended: GET \/vm\/console\?replay=1024 answered 409 no-console: This guest has no console$/,
  );

  // Reopened streams that bring nothing: it gives up after a few.
  let empties = 0;
  await using quiet = stubFerry({
    stream(_id, out) {
      if (empties++ === 0) out.write(outputEvent(0, "x", 1));
      out.close();
    },
  });
  const io2 = capture();
  const stdin2 = fakeStdin(false);
  assert.equal(await run(["console", "--api", quiet.url], {}, io2, stdin2), 1);
  assert.match(io2.stderr, /the console stream ended: the ferry closed it\n$/);
  assert.equal(empties, 5, "the first stream and four empty reopenings");
});

Deno.test("console on a terminal: raw mode, keystrokes batched, Ctrl-C typed, a refused input reported, Ctrl-] restores and exits 0", async () => {
  let release!: () => void;
  let refuse = false;
  await using stub = stubFerry({
    stream(_id, out) {
      out.write(outputEvent(0, "guest# "));
    },
    async post() {
      if (refuse) return conflict("invalid-run-state", "The guest is paused");
      if (!release) await new Promise<void>((r) => (release = r));
      return Response.json({ sent: 1 });
    },
  });
  const io = capture();
  const stdin = fakeStdin(true);
  const session = run(["console", "--api", stub.url], {}, io, stdin);
  await waitUntil(() => io.stdout === "guest# ", "the console's output");
  assert.deepEqual(stdin.raw, [true]);
  stdin.type("s");
  stdin.type("l");
  await waitUntil(() => stub.inputs.length === 1, "the first keystrokes");
  stdin.type("e");
  stdin.type("ep\x03");
  await waitUntil(() => release !== undefined, "the first request held");
  release();
  await waitUntil(() => stub.inputs.length === 2, "the keystrokes typed meanwhile");
  assert.deepEqual(stub.inputs, ["sl", "eep\x03"], "Ctrl-C goes to the guest");
  refuse = true;
  stdin.type("x");
  await waitUntil(() => io.stderr.includes("input not sent"), "the refusal");
  stdin.type("\x1d");
  assert.equal(await session, 0, io.stderr);
  assert.deepEqual(stdin.raw, [true, false], "the terminal is restored");
  assert.match(
    io.stderr,
    /\r\nferry console: input not sent: POST \/vm\/console answered 409 invalid-run-state: The guest is paused\r\nferry console: detached\r\n$/,
  );
});

Deno.test("console against a synthetic ferry: no console, one line, exit 1; a bad token likewise", async () => {
  await using ferry = await FerryProcess.start(["--ram", "8M"]);
  const io = capture();
  const stdin = fakeStdin(false);
  const code = await run(["console", "--api", ferry.url], { FERRY_TOKEN: ferry.token }, io, stdin);
  assert.equal(code, 1);
  assert.equal(io.stdout, "");
  assert.match(
    io.stderr,
    /^ferry console: GET \/vm\/console\S* answered 409 no-console: .*start ferry with --guest x86\n$/,
  );
  const denied = capture();
  const env = { FERRY_TOKEN: "nope-nope-nope-nope" };
  assert.equal(await run(["console", "--api", ferry.url], env, denied, stdin), 1);
  assert.match(
    denied.stderr,
    /^ferry console: GET \/vm\/console\S* answered 401 unauthorized: .*the token from FERRY_TOKEN was refused\)\n$/,
  );
  stdin.end();

  // The task, with its narrow permissions: the same line and a real exit status.
  const task = await new Deno.Command(Deno.execPath(), {
    args: ["task", "-q", "console", "--", "--api", ferry.url],
    cwd: new URL("../../", import.meta.url).pathname,
    env: { FERRY_TOKEN: ferry.token! },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(task.code, 1);
  assert.equal(decoder.decode(task.stdout), "");
  assert.match(decoder.decode(task.stderr), /^ferry console: .* 409 no-console: /);
});

Deno.test({
  name: "deno task console on a real x86 guest: piped `echo $((6*7))` prints 42, Ctrl-] exits 0; " +
    "input to a paused guest exits 1 (needs deno task guest:image)",
  ignore: !guestImagePresent(),
  async fn() {
    await using ferry = await FerryProcess.start(["--guest", "x86", "--ram", "128M"], {}, {
      startTimeoutMs: 120_000,
    });
    {
      await using followed = await followConsole(ferry);
      await withTimeout(
        followed.log.waitFor((text) => text.includes(GUEST_PROMPT)),
        BOOT_GUARD_MS,
        "the guest's shell prompt",
      );
    }
    const child = new Deno.Command(Deno.execPath(), {
      args: ["task", "-q", "console", "--", "--api", ferry.url, "--replay", "0"],
      cwd: new URL("../../", import.meta.url).pathname,
      env: { FERRY_TOKEN: ferry.token! },
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const stderr = new Response(child.stderr).text();
    let stdout = "";
    const reading = (async () => {
      for await (const chunk of child.stdout) stdout += decoder.decode(chunk, { stream: true });
    })();
    const input = child.stdin.getWriter();
    try {
      await input.write(encoder.encode(QUESTION));
      await waitUntil(
        () => /(^|\n)42\r?\n/.test(stdout),
        "the answer 42 on ferryctl's stdout",
        LINES_GUARD_MS,
      );
      await input.write(encoder.encode("\x1d"));
      await input.close().catch(() => {}); // ferryctl may have gone already
      const status = await withTimeout(child.status, LINES_GUARD_MS, "ferryctl's exit");
      await reading;
      assert.equal(status.code, 0, await stderr);
      // The guest's tick lines may land between the echoed command and its answer.
      assert.match(stdout, /echo \$\(\(6\*7\)\)\r?\n(tick [^\n]*\n)*42\r?\n/);
      assert.match(await stderr, /ferry console: detached\n$/);
    } finally {
      try {
        child.kill("SIGKILL");
      } catch {
        // exited
      }
      await child.status;
      await reading;
      await stderr;
    }

    assert.equal((await ferry.api("POST", "/vm/stop")).status, 200);
    const io = capture();
    const stdin = fakeStdin(false);
    stdin.type("echo hi\n");
    assert.equal(
      await run(["console", "--api", ferry.url], { FERRY_TOKEN: ferry.token }, io, stdin),
      1,
    );
    assert.match(
      io.stderr,
      /\nferry console: POST \/vm\/console answered 409 invalid-run-state: The guest is paused: console input needs it running\n$/,
    );
  },
});
