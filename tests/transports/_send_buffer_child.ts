/**
 * A child process for send_buffer tests, run with `deno task start`'s permissions
 * rather than `-A`: it connects to a unix listener of its own, raises the new
 * socket's send buffer and prints one JSON line: the descriptor raised and how many
 * bytes of a 3 MiB write the kernel took with nobody reading.
 * @module
 */
import { openSockets, raiseSendBuffer } from "../../transports/send_buffer.ts";

const dir = Deno.makeTempDirSync({ prefix: "ferry-sndbuf-child-" });
const path = `${dir}/s.sock`;
const listener = Deno.listen({ transport: "unix", path });
const before = openSockets();
const [client, server] = await Promise.all([
  Deno.connect({ transport: "unix", path }),
  listener.accept(),
]);
const fd = raiseSendBuffer(path, before);
const accepted = await client.write(new Uint8Array(3 << 20));
console.log(JSON.stringify({ fd, accepted }));
client.close();
server.close();
listener.close();
Deno.removeSync(dir, { recursive: true });
