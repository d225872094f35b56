import assert from "node:assert/strict";
import {
  openSockets,
  raiseSendBuffer,
  UNIX_SEND_BUFFER,
  warmUpSendBuffer,
} from "../../transports/send_buffer.ts";
import { connectUnix, listenUnix } from "../../transports/unix.ts";

const readSysctl = (name: string) => Number(Deno.readTextFileSync(`/proc/sys/net/core/${name}`));
const linux = Deno.build.os === "linux";
/** What SO_SNDBUF reads once raised (the kernel doubles the request). */
const RAISED = 2 * UNIX_SEND_BUFFER;

/**
 * SO_SNDBUF of every socket of this process, by descriptor, read back through libc's
 * getsockopt (independently of the module under test).
 */
function sendBuffers(): Map<number, number> {
  const lib = Deno.dlopen("libc.so.6", {
    getsockopt: { parameters: ["i32", "i32", "i32", "buffer", "buffer"], result: "i32" },
  });
  try {
    const value = new Int32Array(1);
    const length = new Uint32Array(1);
    const buffers = new Map<number, number>();
    for (const { name } of Deno.readDirSync("/proc/self/fd")) {
      length[0] = 4;
      const rc = lib.symbols.getsockopt(
        Number(name),
        1, // SOL_SOCKET
        7, // SO_SNDBUF
        new Uint8Array(value.buffer),
        new Uint8Array(length.buffer),
      );
      if (rc === 0) buffers.set(Number(name), value[0]);
    }
    return buffers;
  } finally {
    lib.close();
  }
}

/** A fresh temporary directory removed when the test's `using` scope ends. */
function tempDir(): { path: string } & Disposable {
  const path = Deno.makeTempDirSync({ prefix: "ferry-sndbuf-" });
  return { path, [Symbol.dispose]: () => Deno.removeSync(path, { recursive: true }) };
}

/** A plain Deno unix listener at `path`, a client connected to it and the accepted end. */
async function plainPair(path: string) {
  const listener = Deno.listen({ transport: "unix", path });
  const [client, server] = await Promise.all([
    Deno.connect({ transport: "unix", path }),
    listener.accept(),
  ]);
  return {
    client,
    [Symbol.dispose]() {
      client.close();
      server.close();
      listener.close();
    },
  };
}

Deno.test({
  name: "raiseSendBuffer() lets one write hand the kernel far more than the default buffer",
  ignore: !linux || readSysctl("wmem_max") < UNIX_SEND_BUFFER,
  fn: async () => {
    using dir = tempDir();
    const chunk = new Uint8Array(3 << 20);
    // Nobody reads the peer: a write takes what fits in the send buffer and returns.
    using plain = await plainPair(`${dir.path}/a.sock`);
    const plainAccepted = await plain.client.write(chunk);
    const before = openSockets();
    using raised = await plainPair(`${dir.path}/b.sock`);
    const fd = raiseSendBuffer(`${dir.path}/b.sock`, before);
    assert.ok(fd !== null);
    assert.equal(sendBuffers().get(fd), RAISED);
    const raisedAccepted = await raised.client.write(chunk);
    assert.ok(plainAccepted < 512 << 10, `default buffer took ${plainAccepted}`);
    assert.ok(raisedAccepted >= 1 << 20, `raised buffer took ${raisedAccepted}`);
    // Already raised: a second call finds nothing left to raise.
    assert.equal(raiseSendBuffer(`${dir.path}/b.sock`, before), null);
  },
});

Deno.test({
  name:
    "connectUnix() raises only its own socket: unrelated sockets and older ones to the same path keep theirs",
  ignore: !linux || readSysctl("wmem_max") < UNIX_SEND_BUFFER,
  fn: async () => {
    warmUpSendBuffer(); // raises nothing
    using dir = tempDir();
    // An unrelated connection of this process.
    using _unrelated = await plainPair(`${dir.path}/other.sock`);
    // ferry's listener (bound under a temporary name, then linked at its path) and
    // an older connection to it made without connectUnix.
    const path = `${dir.path}/in.sock`;
    using listener = await listenUnix(`unix:${path}`);
    const [older, olderServer] = await Promise.all([
      Deno.connect({ transport: "unix", path }),
      listener.accept(),
    ]);
    using _older = older;
    using _olderServer = olderServer;

    /** Connects through connectUnix: of the two new sockets only the client's is raised. */
    const connectAndCheck = async () => {
      const before = sendBuffers();
      const pair = await Promise.all([connectUnix(`unix:${path}`), listener.accept()]);
      const after = sendBuffers();
      for (const [fd, size] of before) {
        assert.equal(after.get(fd), size, `fd ${fd} kept its buffer`);
      }
      const fresh = [...after].filter(([fd]) => !before.has(fd));
      assert.deepEqual(
        fresh.map(([, size]) => size === RAISED).sort(),
        [false, true],
        `the client end raised, the accepted end not: ${JSON.stringify(fresh)}`,
      );
      return pair;
    };
    const [first, firstServer] = await connectAndCheck();
    using _first = first;
    using _firstServer = firstServer;
    // A second connection to the same path: only the newest is raised.
    const [second, secondServer] = await connectAndCheck();
    using _second = second;
    using _secondServer = secondServer;
  },
});

Deno.test({
  name: "raiseSendBuffer() works with `deno task start`'s permissions (FFI, no -A)",
  ignore: !linux || readSysctl("wmem_max") < UNIX_SEND_BUFFER,
  fn: async () => {
    const child = new URL("./_send_buffer_child.ts", import.meta.url).pathname;
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-read", "--allow-write", "--allow-net", "--allow-ffi", child],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 0, stderr);
    const { fd, accepted } = JSON.parse(new TextDecoder().decode(out.stdout));
    assert.equal(typeof fd, "number", stderr);
    assert.ok(accepted >= 1 << 20, `raised buffer took ${accepted}`);
  },
});

Deno.test({
  name: "raiseSendBuffer() does nothing without FFI permission",
  permissions: { ffi: false, read: true, write: true, net: true },
  fn: async () => {
    using dir = tempDir();
    const before = openSockets();
    assert.equal(before.size, 0);
    using pair = await plainPair(`${dir.path}/s.sock`);
    assert.equal(raiseSendBuffer(`${dir.path}/s.sock`, before), null);
    warmUpSendBuffer();
    assert.ok(await pair.client.write(new Uint8Array(3 << 20)) < 512 << 10);
  },
});
