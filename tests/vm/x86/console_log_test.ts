import assert from "node:assert/strict";
import { ConsoleLog } from "../../../vm/x86/console_log.ts";

const bytes = (s: string) => new TextEncoder().encode(s);

Deno.test("ConsoleLog keeps bytes as Latin-1 text", () => {
  const log = new ConsoleLog();
  log.append(bytes("ab"));
  log.push(0x0d);
  log.push(0xe9);
  assert.equal(log.text, "ab\r\u00e9");
});

Deno.test("ConsoleLog.waitFor resolves at once when the text already matches", async () => {
  const log = new ConsoleLog();
  log.append(bytes("tick 1\n"));
  assert.equal(await log.waitFor((t) => t.includes("tick 1")), true);
});

Deno.test("ConsoleLog.waitFor resolves with the match once later bytes bring it, and not before", async () => {
  const log = new ConsoleLog();
  let answer: string | undefined;
  const waiting = log.waitFor((t) => /\n(\d+)\r?\n/.exec(t)?.[1]).then((v) => (answer = v));
  for (const b of bytes("echo $((6*7))\r\n4")) log.push(b);
  await Promise.resolve();
  await Promise.resolve();
  assert.equal(answer, undefined);
  log.append(bytes("2\r\n"));
  assert.equal(await waiting, "42");
});

Deno.test("ConsoleLog.waitFor keeps unmatched waiters and settles several independently", async () => {
  const log = new ConsoleLog();
  const a = log.waitFor((t) => t.includes("a") && "A");
  const b = log.waitFor((t) => t.includes("b") && "B");
  log.append(bytes("a"));
  assert.equal(await a, "A");
  log.append(bytes("b"));
  assert.equal(await b, "B");
});
