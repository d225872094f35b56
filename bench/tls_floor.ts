/**
 * The bare cost of Deno's TLS against plain TCP on loopback, with no ferry code:
 * one process copies `bytes` of random data from a client to a server (1 MiB
 * writes, 4 MiB read buffer), over TCP and over TLS (`Deno.startTls` /
 * `Deno.listenTls`, the calls transports/tls.ts makes). It also counts the read
 * and write calls: Deno's TLS connection takes at most 64 KiB per write and
 * returns one 16 KiB record per read, where TCP moves a MiB or more per call.
 * `deno task bench --only tls` prints it beside ferry's figures.
 * @module
 */
import type { TestPki } from "../testing/certs.ts";

/** One copy's outcome. */
export interface TlsFloorRun {
  readonly seconds: number;
  readonly writes: number;
  readonly reads: number;
}

/** Copies `bytes` over loopback, with TLS (certificates of `pki`) or without. */
export async function tlsFloor(pki: TestPki, tls: boolean, bytes = 2 ** 30): Promise<TlsFloorRun> {
  const listener = tls
    ? Deno.listenTls({
      hostname: "127.0.0.1",
      port: 0,
      cert: await Deno.readTextFile(pki.server.cert),
      key: await Deno.readTextFile(pki.server.key),
    })
    : Deno.listen({ hostname: "127.0.0.1", port: 0 });
  try {
    const received = (async () => {
      using conn = await listener.accept();
      const buf = new Uint8Array(4 << 20);
      let got = 0;
      let reads = 0;
      while (got < bytes) {
        const n = await conn.read(buf);
        if (n === null) break;
        got += n;
        reads++;
      }
      return reads;
    })();
    const tcp = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
    using conn = tls
      ? await Deno.startTls(tcp, {
        hostname: "127.0.0.1",
        caCerts: [await Deno.readTextFile(pki.ca)],
      })
      : tcp;
    const chunk = crypto.getRandomValues(new Uint8Array(65536));
    const data = new Uint8Array(1 << 20);
    for (let at = 0; at < data.length; at += chunk.length) data.set(chunk, at);
    const start = performance.now();
    let sent = 0;
    let writes = 0;
    while (sent < bytes) {
      sent += await conn.write(data.subarray(0, Math.min(data.length, bytes - sent)));
      writes++;
    }
    const reads = await received;
    return { seconds: (performance.now() - start) / 1000, writes, reads };
  } finally {
    listener.close();
  }
}
