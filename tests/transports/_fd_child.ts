/**
 * A child process for fd: tests: it is started by a shell that hands it a
 * descriptor, runs one transport operation on it and reports one JSON line on
 * stderr (stdout may be the pipe under test).
 *
 *   send URI SIZE SEED      connect, write pattern(SIZE, SEED), finish
 *   abandon URI SIZE MS     connect, write pattern(SIZE), close() without finish, stay MS alive
 *   recv URI                listen, accept, read to EOF: reports length and SHA-256
 *   validate URI            createTransports().validate(URI)
 */
import { createTransports } from "../../transports/mod.ts";
import { TransportError } from "../../transports/transport.ts";
import { pattern, readAll, writeAll, writeAllAndFinish } from "./_helpers.ts";

function report(value: Record<string, unknown>): void {
  console.error(JSON.stringify({ ...value, at: Date.now() }));
}

const [op, uri, a, b] = Deno.args;
const transports = createTransports();
try {
  switch (op) {
    case "send": {
      const ch = await transports.connect(uri);
      await writeAllAndFinish(ch, pattern(Number(a), Number(b)));
      report({ op, ok: true });
      break;
    }
    case "abandon": {
      const ch = await transports.connect(uri);
      await writeAll(ch, pattern(Number(a)));
      ch.close();
      report({ op, ok: true, closed: true });
      await new Promise((r) => setTimeout(r, Number(b)));
      report({ op, exiting: true });
      break;
    }
    case "recv": {
      const listener = await transports.listen(uri);
      const ch = await listener.accept();
      listener.close();
      const data = await readAll(ch);
      ch.close();
      const sha = new Uint8Array(
        await crypto.subtle.digest("SHA-256", data as Uint8Array<ArrayBuffer>),
      );
      report({
        op,
        ok: true,
        length: data.length,
        sha256: Array.from(sha, (x) => x.toString(16).padStart(2, "0")).join(""),
      });
      break;
    }
    case "validate":
      transports.validate(uri);
      report({ op, ok: true });
      break;
    default:
      throw new Error(`unknown op ${op}`);
  }
} catch (err) {
  report({
    op,
    ok: false,
    code: err instanceof TransportError ? err.code : undefined,
    message: (err as Error).message,
  });
  Deno.exit(1);
}
