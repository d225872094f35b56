/**
 * One HTTP/1.1 request written by hand over TCP, for headers fetch() will not
 * send as given (Host: a DNS-rebinding page's name). The answer is read to the
 * end (Connection: close).
 */
export async function rawRequest(
  url: string,
  opts: { method?: string; headers?: Record<string, string>; body?: string } = {},
): Promise<{ status: number; headers: Headers; body: string }> {
  const u = new URL(url);
  const headers: Record<string, string> = { host: u.host, ...opts.headers, connection: "close" };
  const body = new TextEncoder().encode(opts.body ?? "");
  if (opts.body !== undefined) headers["content-length"] = String(body.length);
  const head = `${opts.method ?? "GET"} ${u.pathname}${u.search} HTTP/1.1\r\n` +
    Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join("") + "\r\n";
  const conn = await Deno.connect({ hostname: u.hostname.replace(/^\[|\]$/g, ""), port: +u.port });
  const chunks: Uint8Array[] = [];
  try {
    await conn.write(new Uint8Array([...new TextEncoder().encode(head), ...body]));
    const buf = new Uint8Array(64 << 10);
    for (;;) {
      const n = await conn.read(buf);
      if (n === null) break;
      chunks.push(buf.slice(0, n));
    }
  } finally {
    conn.close();
  }
  const all = new Uint8Array(chunks.reduce((a, c) => a + c.length, 0));
  let at = 0;
  for (const c of chunks) all.set(c, (at += c.length) - c.length);
  const text = new TextDecoder().decode(all);
  const end = text.indexOf("\r\n\r\n");
  const [statusLine, ...lines] = text.slice(0, end).split("\r\n");
  const answer = new Headers(lines.map((l) => {
    const colon = l.indexOf(":");
    return [l.slice(0, colon).trim(), l.slice(colon + 1).trim()] as [string, string];
  }));
  let rest = text.slice(end + 4);
  if (answer.get("transfer-encoding")?.includes("chunked")) {
    let decoded = "";
    for (;;) {
      const nl = rest.indexOf("\r\n");
      const size = parseInt(rest.slice(0, nl), 16);
      if (!(size > 0)) break;
      decoded += rest.slice(nl + 2, nl + 2 + size);
      rest = rest.slice(nl + 2 + size + 2);
    }
    rest = decoded;
  }
  return { status: Number(statusLine.split(" ")[1]), headers: answer, body: rest };
}
