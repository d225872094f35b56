import assert from "node:assert/strict";
import { z } from "@hono/zod-openapi";
import { createApp, VERSION } from "../../routes/app.ts";
import * as schemas from "../../routes/schemas.ts";
import { call, testApp } from "../helpers/app.ts";

/** Every path of the API contract (docs/API.md) and the methods it must document. */
const CONTRACT: Record<string, string[]> = {
  "/migrations": ["get", "post"],
  "/migrations/current": ["get", "delete"],
  "/migrations/current/resume": ["post"],
  "/migrations/current/continue": ["post"],
  "/migrations/{id}": ["get"],
  "/migrations/{id}/timeline": ["get"],
  "/migrations/incoming": ["get", "post", "delete"],
  "/migrations/incoming/resume": ["post"],
  "/migrations/capabilities": ["get", "put"],
  "/migrations/parameters": ["get", "patch"],
  "/migrations/blockers": ["get", "post"],
  "/migrations/blockers/{id}": ["delete"],
  "/migrations/events": ["get"],
  "/vm": ["get"],
  "/vm/start": ["post"],
  "/vm/stop": ["post"],
  "/vm/ram": ["get"],
  "/vm/console": ["get", "post"],
  "/vm/ram/digest": ["get"],
  "/metrics": ["get"],
};

const HTTP_METHODS = ["get", "put", "post", "delete", "patch", "head", "options", "trace"];

// deno-lint-ignore no-explicit-any
type Json = any;

async function openapi(): Promise<Json> {
  const { app, engine } = testApp();
  const res = await app.request("/openapi.json");
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type") ?? "", /application\/json/);
  const text = await res.text();
  await engine.close();
  return JSON.parse(text);
}

/** The zod schema in routes/schemas.ts behind a component name, if there is one. */
function zodFor(component: string): z.ZodType | undefined {
  const aliases: Record<string, string> = { RamDigest: "DigestSchema" };
  const exported = (schemas as Record<string, unknown>)[aliases[component] ?? `${component}Schema`];
  return exported instanceof z.ZodType ? exported : undefined;
}

function unwrap(schema: z.ZodType): z.ZodType {
  let s = schema;
  while (s instanceof z.ZodOptional || s instanceof z.ZodNullable || s instanceof z.ZodDefault) {
    s = s.unwrap() as z.ZodType;
  }
  return s;
}

/**
 * Walks a JSON schema and the zod schema it was generated from side by side,
 * calling `check` for every `example` / `examples` entry found.
 */
function walkExamples(
  doc: Json,
  json: Json,
  zod: z.ZodType,
  path: string,
  check: (where: string, example: unknown, zod: z.ZodType) => void,
): void {
  if (json === null || typeof json !== "object") return;
  if (typeof json.$ref === "string") {
    const name = json.$ref.replace("#/components/schemas/", "");
    walkExamples(doc, doc.components.schemas[name], zod, path, check);
    return;
  }
  if ("example" in json) check(path, json.example, zod);
  if (Array.isArray(json.examples)) {
    json.examples.forEach((e: unknown, i: number) => check(`${path}.examples[${i}]`, e, zod));
  }
  const inner = unwrap(zod);
  for (const [key, sub] of Object.entries(json.properties ?? {})) {
    const child = inner instanceof z.ZodObject
      ? inner.shape[key] as z.ZodType | undefined
      : undefined;
    assert.ok(child, `${path}.${key} is documented but has no zod field`);
    walkExamples(doc, sub, child, `${path}.${key}`, check);
  }
  if (json.items && inner instanceof z.ZodArray) {
    walkExamples(doc, json.items, inner.element as z.ZodType, `${path}[]`, check);
  }
  for (const key of ["anyOf", "oneOf", "allOf"]) {
    for (const sub of json[key] ?? []) walkExamples(doc, sub, zod, path, check);
  }
}

Deno.test("GET /openapi.json is valid JSON describing ferry in OpenAPI 3.1", async () => {
  const doc = await openapi();
  assert.equal(doc.openapi, "3.1.0");
  assert.equal(doc.info.title, "ferry");
  assert.equal(doc.info.version, VERSION);
  assert.equal(typeof doc.paths, "object");
  assert.equal(typeof doc.components?.schemas, "object");
});

Deno.test("GET /openapi.json lists every path of the contract with its methods", async () => {
  const doc = await openapi();
  for (const [path, methods] of Object.entries(CONTRACT)) {
    const item = doc.paths[path];
    assert.ok(item, `path ${path} is documented`);
    const documented = Object.keys(item).filter((k) => HTTP_METHODS.includes(k)).sort();
    for (const m of methods) assert.ok(documented.includes(m), `${m.toUpperCase()} ${path}`);
    for (const m of documented) {
      assert.ok(methods.includes(m), `${m} ${path} is not in the contract`);
      assert.ok(Object.keys(item[m].responses ?? {}).length > 0, `${m} ${path} has responses`);
      assert.equal(typeof item[m].summary, "string", `${m} ${path} has a summary`);
    }
  }
});

Deno.test("GET /openapi.json documents the JSON error shape on every 4xx answer", async () => {
  const doc = await openapi();
  for (const [path, item] of Object.entries<Json>(doc.paths)) {
    for (const [method, op] of Object.entries<Json>(item)) {
      for (const [status, answer] of Object.entries<Json>(op.responses ?? {})) {
        if (!status.startsWith("4")) continue;
        const schema = answer.content?.["application/json"]?.schema;
        assert.deepEqual(
          schema,
          { $ref: "#/components/schemas/Error" },
          `${method} ${path} ${status}`,
        );
      }
    }
  }
});

Deno.test("GET /openapi.json: every example in components validates against its zod schema", async () => {
  const doc = await openapi();
  const checked: string[] = [];
  for (const [name, json] of Object.entries<Json>(doc.components.schemas)) {
    const zod = zodFor(name);
    if (!zod) continue;
    walkExamples(doc, json, zod, name, (where, example, schema) => {
      const result = schema.safeParse(example);
      assert.ok(
        result.success,
        `example at ${where} (${JSON.stringify(example)}) is invalid: ${result.error?.message}`,
      );
      checked.push(where);
    });
  }
  // The examples the contract is known to carry were all found and checked.
  for (
    const where of [
      "Error.error.code",
      "MigrateRequest.uri",
      "IncomingRequest.uri",
      "MigrationInfo",
      "CapabilitiesPatch",
      "ParametersPatch",
      "BlockerRequest.reason",
    ]
  ) {
    assert.ok(checked.includes(where), `example ${where} was checked (checked: ${checked})`);
  }
});

Deno.test("GET /openapi.json: every component schema except RamInfo has its zod schema", async () => {
  const doc = await openapi();
  const missing = Object.keys(doc.components.schemas).filter((n) => n !== "RamInfo" && !zodFor(n));
  assert.deepEqual(missing, []);
});

Deno.test("GET /openapi.json: the blocker id parameter example validates", async () => {
  const doc = await openapi();
  const param = doc.paths["/migrations/blockers/{id}"].delete.parameters
    .find((p: Json) => p.name === "id");
  assert.equal(param.in, "path");
  assert.equal(param.required, true);
  assert.ok(schemas.BlockerIdParam.shape.id.safeParse(param.schema.example).success);
});

Deno.test("every documented GET route without parameters answers (no 404)", async () => {
  const { app, engine } = testApp();
  for (const [path, methods] of Object.entries(CONTRACT)) {
    if (!methods.includes("get") || path.includes("{") || path === "/migrations/events") continue;
    if (path === "/vm/console") continue; // SSE, and this guest has none (tests/routes/console_test.ts)
    if (path === "/vm/ram" || path === "/metrics") {
      const raw = await app.request(path === "/vm/ram" ? `${path}?length=4096` : path);
      await raw.body?.cancel();
      assert.equal(raw.status, 200, `GET ${path}`);
      continue;
    }
    const res = await call(app, "GET", path);
    assert.equal(res.status, 200, `GET ${path}`);
  }
  await engine.close();
});

Deno.test("GET / answers the service summary when no dashboard is configured", async () => {
  const { app, engine } = testApp();
  const res = await call(app, "GET", "/");
  assert.equal(res.status, 200);
  assert.deepEqual(res.body, {
    name: "ferry",
    version: VERSION,
    api: "/openapi.json",
    events: "/migrations/events",
  });
  await engine.close();
});

Deno.test("GET / answers the dashboard page as HTML when one is configured", async () => {
  const { engine } = testApp();
  const page = "<!doctype html><title>ferry</title>";
  const app = createApp({
    engine,
    dashboard: page,
    vm: {
      info: () => ({
        guest: "synthetic",
        run_state: "prelaunch",
        ram_size: 0,
        page_size: 4096,
        workload: "idle",
        throttle: 0,
        ops: 0,
      }),
      digest: () => Promise.resolve({ blocks: [], sha256: "" }),
    },
  });
  const res = await app.request("/");
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type") ?? "", /text\/html/);
  assert.equal(await res.text(), page);
  await engine.close();
});

Deno.test("a wrong method on a known path answers 405 method-not-allowed with Allow", async () => {
  const { app, engine } = testApp();
  const cases: [string, string, string][] = [
    ["DELETE", "/vm", "GET, HEAD"],
    ["GET", "/vm/stop", "POST"],
    ["PUT", "/migrations/current", "GET, HEAD, DELETE"],
    ["GET", "/migrations/blockers/7", "DELETE"],
    ["PATCH", "/migrations/capabilities", "GET, HEAD, PUT"],
  ];
  for (const [method, path, allow] of cases) {
    const res = await app.request(path, { method });
    assert.equal(res.status, 405, `${method} ${path}`);
    assert.equal(res.headers.get("allow"), allow, `${method} ${path}`);
    const body = await res.json();
    assert.equal(body.error.code, "method-not-allowed");
    assert.match(body.error.message, new RegExp(`${method} is not allowed on ${path}`));
  }
  // An unknown path is still 404.
  const missing = await call(app, "DELETE", "/nowhere");
  assert.equal(missing.status, 404);
  assert.equal(missing.body.error.code, "not-found");
  await engine.close();
});

Deno.test("a wrong method's Allow lists exactly the methods the registered routes take", async () => {
  const { app, engine } = testApp();
  const byPath = new Map<string, Set<string>>();
  for (const r of app.routes) {
    if (r.method === "ALL") continue;
    const methods = byPath.get(r.path) ?? new Set<string>();
    methods.add(r.method);
    if (r.method === "GET") methods.add("HEAD");
    byPath.set(r.path, methods);
  }
  for (const [pattern, methods] of byPath) {
    const path = pattern.replace(/:(\w+)(\{[^}]*\})?/g, "1");
    const wrong = ["GET", "POST", "PUT", "PATCH", "DELETE"].find((m) => !methods.has(m));
    if (!wrong) continue;
    const res = await app.request(path, { method: wrong });
    await res.body?.cancel();
    assert.equal(res.status, 405, `${wrong} ${path}`);
    assert.deepEqual(
      new Set(res.headers.get("allow")!.split(", ")),
      methods,
      `${wrong} ${path}`,
    );
  }
  await engine.close();
});

/** Every route the app really serves, as OpenAPI "method path" (":id" → "{id}"). */
function registeredRoutes(app: ReturnType<typeof testApp>["app"]): Set<string> {
  const out = new Set<string>();
  for (const r of app.routes) {
    if (r.method === "ALL") continue; // middleware
    out.add(`${r.method.toLowerCase()} ${r.path.replace(/:(\w+)(\{[^}]*\})?/g, "{$1}")}`);
  }
  return out;
}

Deno.test("GET /openapi.json documents every route the app registers, and nothing else", async () => {
  const { app, engine } = testApp();
  const doc = await (await app.request("/openapi.json")).json();
  await engine.close();
  const documented = new Set<string>();
  for (const [path, item] of Object.entries<Json>(doc.paths)) {
    for (const method of Object.keys(item).filter((k) => HTTP_METHODS.includes(k))) {
      documented.add(`${method} ${path}`);
    }
  }
  const registered = registeredRoutes(app);
  // The document itself and the dashboard page are not API operations.
  registered.delete("get /openapi.json");
  registered.delete("get /");
  assert.ok(registered.size >= 18, `found ${registered.size} routes`);
  assert.deepEqual([...registered].filter((r) => !documented.has(r)), [], "undocumented routes");
  assert.deepEqual([...documented].filter((r) => !registered.has(r)), [], "documented, not served");
  // And that contract is a subset of both.
  for (const [path, methods] of Object.entries(CONTRACT)) {
    for (const m of methods) assert.ok(registered.has(`${m} ${path}`), `${m} ${path} is served`);
  }
});

/** The example a documented JSON body schema carries (its own, or one built from its fields). */
function bodyExample(doc: Json, schema: Json): Json {
  const s = schema.$ref ? doc.components.schemas[schema.$ref.split("/").pop()] : schema;
  if ("example" in s) return s.example;
  const out: Record<string, unknown> = {};
  for (const [key, prop] of Object.entries<Json>(s.properties ?? {})) {
    if ("example" in prop) out[key] = prop.example;
  }
  return out;
}

Deno.test("every documented request example is accepted by the route it documents (no 400)", async () => {
  const doc = await openapi();
  const tried: string[] = [];
  for (const [path, item] of Object.entries<Json>(doc.paths)) {
    for (const [method, op] of Object.entries<Json>(item)) {
      if (!HTTP_METHODS.includes(method)) continue;
      const params: Json[] = op.parameters ?? [];
      const jsonBody = op.requestBody?.content?.["application/json"]?.schema;
      const withExamples = params.filter((p) => p.schema && "example" in p.schema);
      if (!jsonBody && withExamples.length === 0) continue;
      let url = path;
      const query = new URLSearchParams();
      const headers: Record<string, string> = {};
      for (const p of params) {
        const example = p.schema?.example;
        assert.ok(
          !p.required || example !== undefined,
          `${method} ${path}: ${p.name} has an example`,
        );
        if (example === undefined) continue;
        if (p.in === "path") url = url.replace(`{${p.name}}`, encodeURIComponent(String(example)));
        else if (p.in === "query") query.set(p.name, String(example));
        else if (p.in === "header") headers[p.name] = String(example);
      }
      if (query.size) url += `?${query}`;
      const init: RequestInit = { method: method.toUpperCase(), headers };
      if (jsonBody) {
        headers["content-type"] = "application/json";
        init.body = JSON.stringify(bodyExample(doc, jsonBody));
      }
      const { app, engine } = testApp();
      const res = await app.request(url, init);
      const text = res.headers.get("content-type")?.startsWith("text/event-stream")
        ? (await res.body?.cancel(), "")
        : await res.text();
      assert.notEqual(
        res.status,
        400,
        `${method.toUpperCase()} ${url} ${init.body ?? ""}: ${text}`,
      );
      assert.ok(res.status < 500, `${method} ${url}: ${res.status}`);
      tried.push(`${method} ${path}`);
      await engine.migration?.done;
      await engine.close();
    }
  }
  for (
    const op of [
      "post /migrations",
      "post /migrations/incoming",
      "put /migrations/capabilities",
      "patch /migrations/parameters",
      "post /migrations/blockers",
      "delete /migrations/blockers/{id}",
      "get /migrations/events",
      "get /vm/ram",
    ]
  ) assert.ok(tried.includes(op), `${op} was tried (tried: ${tried})`);
});

Deno.test("GET /openapi.json: the event stream's documented example is a valid SSE frame", async () => {
  const doc = await openapi();
  const op = doc.paths["/migrations/events"].get;
  assert.match(op.description, /Last-Event-ID/);
  for (const name of ["hello", "state", "pass", "progress", "incoming", "runstate", "reset"]) {
    assert.match(op.description, new RegExp(`\`${name}\``), `${name} is described`);
  }
  const header = op.parameters.find((p: Json) => p.name === "last-event-id");
  assert.equal(header.in, "header");
  const example: string = op.responses["200"].content["text/event-stream"].schema.example;
  const { SseReader } = await import("./_helpers.ts");
  const reader = new SseReader(new Response(example).body!);
  const frame = await reader.next();
  assert.equal(frame?.event, "state");
  assert.match(frame?.id ?? "", /^\d+$/);
  const data = JSON.parse(frame!.data!);
  assert.ok(schemas.MigrationInfoSchema.shape.status.safeParse(data.to).success);
  assert.ok(schemas.MigrationInfoSchema.shape.status.safeParse(data.from).success);
});
