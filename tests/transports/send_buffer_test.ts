import assert from "node:assert/strict";
import { raiseUnixSendBuffer, socketFds, UNIX_SEND_BUFFER } from "../../transports/send_buffer.ts";

const readSysctl = (name: string) => Number(Deno.readTextFileSync(`/proc/sys/net/core/${name}`));

/** A unix listener in a fresh directory, a client connected to it and the accepted end. */
async function connectedPair(raise: boolean) {
  const dir = Deno.makeTempDirSync({ prefix: "ferry-sndbuf-" });
  const listener = Deno.listen({ transport: "unix", path: `${dir}/s.sock` });
  const before = socketFds();
  const [client, server] = await Promise.all([
    Deno.connect({ transport: "unix", path: `${dir}/s.sock` }),
    listener.accept(),
  ]);
  const raised = raise ? raiseUnixSendBuffer(before) : null;
  return {
    client,
    raised,
    [Symbol.dispose]() {
      client.close();
      server.close();
      listener.close();
      Deno.removeSync(dir, { recursive: true });
    },
  };
}

Deno.test({
  name: "raiseUnixSendBuffer() lets one write hand the kernel far more than the default buffer",
  ignore: Deno.build.os !== "linux" || readSysctl("wmem_max") < 4 * readSysctl("wmem_default"),
  fn: async () => {
    const chunk = new Uint8Array(3 << 20);
    using plain = await connectedPair(false);
    using raised = await connectedPair(true);
    assert.equal(plain.raised, null);
    assert.ok(raised.raised !== null && raised.raised >= UNIX_SEND_BUFFER, `got ${raised.raised}`);
    // Nobody reads either peer: a write takes what fits in the send buffer and returns.
    const plainAccepted = await plain.client.write(chunk);
    const raisedAccepted = await raised.client.write(chunk);
    assert.ok(plainAccepted < 1 << 20, `default buffer took ${plainAccepted}`);
    assert.ok(raisedAccepted >= 2 << 20, `raised buffer took ${raisedAccepted}`);
  },
});

Deno.test("raiseUnixSendBuffer() raises nothing when no socket appeared since the snapshot", async () => {
  using pair = await connectedPair(false);
  assert.ok(pair.client);
  assert.equal(raiseUnixSendBuffer(socketFds()), null);
  assert.equal(raiseUnixSendBuffer(null), null);
});

Deno.test({
  name: "socketFds() is null without FFI permission, so nothing is raised",
  permissions: { ffi: false, read: true },
  fn: () => {
    assert.equal(socketFds(), null);
    assert.equal(raiseUnixSendBuffer(new Set()), null);
  },
});
