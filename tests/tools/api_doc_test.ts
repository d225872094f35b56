/**
 * docs/API.md is what `deno task docs:api` writes from the API's own OpenAPI
 * document, so it cannot drift from the routes: rerun the task after changing them.
 */
import assert from "node:assert/strict";
import { apiMarkdown, openApiDocument } from "../../tools/api_doc.ts";

async function fmt(markdown: string): Promise<string> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["fmt", "--ext", "md", "-"],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(markdown));
  await writer.close();
  const { code, stdout, stderr } = await child.output();
  assert.equal(code, 0, new TextDecoder().decode(stderr));
  return new TextDecoder().decode(stdout);
}

Deno.test("docs/API.md is the page deno task docs:api writes from /openapi.json", async () => {
  const committed = await Deno.readTextFile(new URL("../../docs/API.md", import.meta.url));
  assert.equal(committed, await fmt(apiMarkdown(openApiDocument())), "run deno task docs:api");
});

Deno.test("docs/API.md names every operation the API serves", () => {
  const page = apiMarkdown(openApiDocument());
  for (
    const op of [
      "POST /migrations",
      "DELETE /migrations/incoming",
      "GET /migrations/events",
      "PATCH /migrations/parameters",
      "GET /vm/ram/digest",
    ]
  ) {
    assert.ok(page.includes(`### ${op}\n`), op);
  }
});
