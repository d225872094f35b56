import assert from "node:assert/strict";
import {
  afterBytes,
  bufferText,
  consoleNote,
  InputBatcher,
  isTerminalReport,
  MAX_INPUT_CHARS,
  placeChunk,
} from "../../web/console_pane.js";

const chunk = (offset: number, text: string) => ({
  offset,
  end: offset + new TextEncoder().encode(text).length,
  text,
});

Deno.test("placeChunk: in order it writes; a first chunk is taken where it starts", () => {
  assert.deepEqual(placeChunk(null, chunk(500, "tick 9\r\n"), true), {
    action: "write",
    text: "tick 9\r\n",
  });
  assert.deepEqual(placeChunk(10, chunk(10, "ab"), false), { action: "write", text: "ab" });
  // Resumed past what the console still keeps: the gap is gone for good.
  assert.deepEqual(placeChunk(10, chunk(90, "ab"), true), { action: "write", text: "ab" });
});

Deno.test("placeChunk: a jump inside a connection resumes; overlaps and repeats are cut", () => {
  // A migration put the source's history under this connection: fetch what is missing.
  assert.deepEqual(placeChunk(10, chunk(4000, "tick"), false), { action: "resume" });
  assert.deepEqual(placeChunk(10, chunk(2, "abcdef"), false), { action: "skip" });
  assert.deepEqual(placeChunk(10, chunk(7, "abcdef"), false), { action: "write", text: "def" });
  // A first chunk before what was shown: another console (a restarted ferry).
  assert.deepEqual(placeChunk(10, chunk(0, "boot"), true), { action: "reset", text: "boot" });
});

Deno.test("afterBytes cuts whole UTF-8 bytes", () => {
  assert.equal(afterBytes("héllo", 3), "llo");
  assert.equal(afterBytes("abc", 0), "abc");
  assert.equal(afterBytes("abc", 5), "");
});

Deno.test("isTerminalReport tells the terminal's answers from keystrokes", () => {
  for (const report of ["\x1b[24;1R", "\x1b[?1;2c", "\x1b[>0;276;0c", "\x1b[0n"]) {
    assert.ok(isTerminalReport(report), JSON.stringify(report));
  }
  for (const key of ["a", "\r", "\x1b[A", "\x1b[3~", "\x03", "echo 1\r", "\x1b"]) {
    assert.ok(!isTerminalReport(key), JSON.stringify(key));
  }
});

Deno.test("consoleNote explains why typing does nothing, and is empty while the guest runs", () => {
  assert.equal(consoleNote("running"), "");
  assert.equal(consoleNote(undefined), "");
  assert.match(consoleNote("paused"), /guest is paused.*only while the guest runs/);
  assert.match(consoleNote("postmigrate"), /migrated away.*destination/);
  assert.match(consoleNote("inmigrate"), /incoming migration/);
});

/** A send function whose calls wait until the test answers them. */
function heldSends() {
  const calls: { text: string; answer: (ok: boolean) => void }[] = [];
  const send = (text: string) =>
    new Promise<boolean>((answer) => {
      calls.push({ text, answer });
    });
  return { calls, send };
}

const turn = () => new Promise((r) => setTimeout(r, 0));

Deno.test("InputBatcher: one POST at a time; what is typed meanwhile goes in the next one", async () => {
  const { calls, send } = heldSends();
  const batcher = new InputBatcher(send);
  batcher.push("e");
  assert.deepEqual(calls.map((c) => c.text), ["e"], "the first key goes at once");
  for (const key of "cho 42\r") batcher.push(key);
  assert.equal(calls.length, 1, "nothing else while the first is on its way");
  assert.equal(batcher.pending, 7);
  calls[0].answer(true);
  await turn();
  assert.deepEqual(calls.map((c) => c.text), ["e", "cho 42\r"]);
  calls[1].answer(true);
  await turn();
  assert.equal(calls.length, 2);
  assert.equal(batcher.pending, 0);
});

Deno.test("InputBatcher: a failed send drops what was typed meanwhile; later keys go again", async () => {
  const { calls, send } = heldSends();
  const batcher = new InputBatcher(send);
  batcher.push("a");
  batcher.push("b");
  calls[0].answer(false);
  await turn();
  assert.equal(calls.length, 1, "b was typed for a guest that could not take it");
  assert.equal(batcher.pending, 0);
  batcher.push("c");
  assert.deepEqual(calls.map((c) => c.text), ["a", "c"]);
  calls[1].answer(true);
  await turn();
});

Deno.test("InputBatcher: a paste longer than one POST takes splits, never inside a surrogate pair", async () => {
  const sent: string[] = [];
  const batcher = new InputBatcher((text: string) => {
    sent.push(text);
    return Promise.resolve(true);
  });
  const paste = "x".repeat(MAX_INPUT_CHARS - 1) + "😀" + "y".repeat(10);
  batcher.push(paste);
  while (batcher.pending > 0 || sent.join("").length < paste.length) await turn();
  assert.equal(sent.join(""), paste);
  assert.deepEqual(sent.map((s) => s.length), [MAX_INPUT_CHARS - 1, 12]);
  for (const s of sent) assert.ok(s.length <= MAX_INPUT_CHARS);
});

Deno.test("bufferText joins wrapped rows and cuts trailing blank rows", () => {
  const rows = [
    { text: "tick 1 aa", wrapped: false },
    { text: "a very long li", wrapped: false },
    { text: "ne", wrapped: true },
    { text: "42", wrapped: false },
    { text: "", wrapped: false },
  ];
  const buffer = {
    length: rows.length,
    getLine: (i: number) => ({
      isWrapped: rows[i].wrapped,
      translateToString: (trim: boolean) => (trim ? rows[i].text : rows[i].text + "   "),
    }),
  };
  assert.equal(bufferText(buffer), "tick 1 aa\na very long line\n42");
});
