import assert from "node:assert/strict";
import { raiseUnixSendBuffers, UNIX_SEND_BUFFER } from "../../transports/send_buffer.ts";

const readSysctl = (name: string) => Number(Deno.readTextFileSync(`/proc/sys/net/core/${name}`));

/** A unix listener in a fresh directory, a client connected to it and the accepted end. */
async function connectedPair() {
  const dir = Deno.makeTempDirSync({ prefix: "ferry-sndbuf-" });
  const listener = Deno.listen({ transport: "unix", path: `${dir}/s.sock` });
  const [client, server] = await Promise.all([
    Deno.connect({ transport: "unix", path: `${dir}/s.sock` }),
    listener.accept(),
  ]);
  return {
    client,
    [Symbol.dispose]() {
      client.close();
      server.close();
      listener.close();
      Deno.removeSync(dir, { recursive: true });
    },
  };
}

Deno.test({
  name: "raiseUnixSendBuffers() lets one write hand the kernel far more than the default buffer",
  ignore: Deno.build.os !== "linux" || readSysctl("wmem_max") < UNIX_SEND_BUFFER,
  fn: async () => {
    const chunk = new Uint8Array(3 << 20);
    // Nobody reads the peer: a write takes what fits in the send buffer and returns.
    using before = await connectedPair();
    const plainAccepted = await before.client.write(chunk);
    using after = await connectedPair();
    const raised = raiseUnixSendBuffers();
    assert.ok(raised.length >= 2, `raised ${raised}`); // both ends of both pairs are unix sockets
    const raisedAccepted = await after.client.write(chunk);
    assert.ok(plainAccepted < 512 << 10, `default buffer took ${plainAccepted}`);
    assert.ok(raisedAccepted >= 1 << 20, `raised buffer took ${raisedAccepted}`);
    // Already raised: a second call leaves them alone.
    assert.deepEqual(raiseUnixSendBuffers(), []);
  },
});

Deno.test({
  name: "raiseUnixSendBuffers() does nothing without FFI permission",
  permissions: { ffi: false, read: true, write: true, net: true },
  fn: async () => {
    using pair = await connectedPair();
    assert.deepEqual(raiseUnixSendBuffers(), []);
    assert.ok(await pair.client.write(new Uint8Array(3 << 20)) < 512 << 10);
  },
});
