import assert from "node:assert/strict";
import { QmpClient, QmpError, type QmpEvent, QmpProtocolError } from "../../bench/qemu/qmp.ts";
import {
  assembleGuest,
  findMultibootHeader,
  GUEST_IMAGE_SIZE,
  GUEST_LOAD_ADDR,
  GuestImageError,
  GuestMode,
  guestParamsFor,
  lowRamEnd,
  MULTIBOOT_AOUT_KLUDGE,
  PARAM_MAGIC,
  ParamOffset,
  parseStatus,
  patchGuest,
  READY_MAGIC,
  WORKLOAD_BASE,
} from "../../bench/qemu/guest.ts";
import {
  ensureImageCopy,
  ensureRandomFill,
  parseSize,
  parseWorkload,
  runQemu,
} from "../../bench/qemu/mod.ts";
import { parseQemuConfigs, withConfig } from "../../bench/qemu/configs.ts";

const MiB = 1024 * 1024;

/** Awaits `fn`'s rejection, checks its class (and message), and returns the error. */
async function rejects<E extends Error>(
  fn: () => Promise<unknown>,
  cls: new (...args: never[]) => E,
  includes?: string,
): Promise<E> {
  try {
    await fn();
  } catch (e) {
    assert.ok(e instanceof cls, `expected ${cls.name}, got ${e}`);
    if (includes !== undefined) assert.ok(e.message.includes(includes), e.message);
    return e;
  }
  throw new assert.AssertionError({ message: `expected ${cls.name}, nothing thrown` });
}

function onPath(bin: string): boolean {
  for (const dir of (Deno.env.get("PATH") ?? "/usr/bin:/bin").split(":")) {
    try {
      if (Deno.statSync(`${dir}/${bin}`).isFile) return true;
    } catch {
      // not here
    }
  }
  return false;
}

const HAVE_NASM = onPath("nasm");
const HAVE_QEMU = onPath("qemu-system-x86_64") && HAVE_NASM;

// ---- QMP client against a fake server on a real unix socket ----

type Reply = (cmd: { execute: string; id?: unknown; arguments?: unknown }) => unknown[];

/**
 * A one-connection QMP server: sends `greeting`, then answers each command line with
 * the messages `reply` returns (the reply's `id` is filled in). Records the commands.
 */
async function withFakeQmp(
  greeting: unknown,
  reply: Reply,
  body: (path: string, seen: string[]) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "qmp-test-" });
  const path = `${dir}/qmp.sock`;
  const listener = Deno.listen({ transport: "unix", path });
  const seen: string[] = [];
  const enc = new TextEncoder();
  const server = (async () => {
    const conn = await listener.accept();
    try {
      await conn.write(enc.encode(JSON.stringify(greeting) + "\r\n"));
      const dec = new TextDecoder();
      const buf = new Uint8Array(4096);
      let pending = "";
      for (;;) {
        const n = await conn.read(buf).catch(() => null);
        if (n === null) return;
        pending += dec.decode(buf.subarray(0, n), { stream: true });
        let nl: number;
        while ((nl = pending.indexOf("\n")) >= 0) {
          const cmd = JSON.parse(pending.slice(0, nl));
          pending = pending.slice(nl + 1);
          seen.push(cmd.execute);
          const out = reply(cmd).map((m) =>
            typeof m === "object" && m !== null && !("event" in m) ? { ...m, id: cmd.id } : m
          );
          if (out.length === 0) return; // hang up
          // Split writes so the client must reassemble lines.
          const text = out.map((m) => JSON.stringify(m) + "\r\n").join("");
          const mid = Math.floor(text.length / 2);
          await conn.write(enc.encode(text.slice(0, mid)));
          await conn.write(enc.encode(text.slice(mid)));
        }
      }
    } finally {
      conn.close();
    }
  })();
  try {
    await body(path, seen);
  } finally {
    await server.catch(() => {});
    listener.close();
    await Deno.remove(dir, { recursive: true });
  }
}

const GREETING = {
  QMP: { version: { qemu: { major: 7, minor: 2, micro: 0 }, package: "" }, capabilities: ["oob"] },
};
const EVENT = {
  event: "MIGRATION",
  data: { status: "setup" },
  timestamp: { seconds: 1, microseconds: 2 },
};

Deno.test("QMP client: greeting, capabilities first, events skipped, errors thrown", async () => {
  await withFakeQmp(GREETING, (cmd) => {
    switch (cmd.execute) {
      case "qmp_capabilities":
        return [{ return: {} }];
      case "query-status":
        return [EVENT, EVENT, { return: { status: "running", running: true } }];
      case "echo":
        return [{ return: cmd.arguments }];
      case "migrate":
        return [EVENT, {
          error: { class: "GenericError", desc: "There's a migration process in progress" },
        }];
      default:
        return [{
          error: {
            class: "CommandNotFound",
            desc: `The command ${cmd.execute} has not been found`,
          },
        }];
    }
  }, async (path, seen) => {
    const events: QmpEvent[] = [];
    const qmp = await QmpClient.connect(path, { onEvent: (e) => events.push(e) });
    try {
      assert.deepEqual(qmp.greeting.version?.qemu?.major, 7);
      assert.deepEqual(seen, ["qmp_capabilities"]);
      assert.deepEqual(await qmp.execute("query-status"), { status: "running", running: true });
      assert.deepEqual(events.map((e) => e.event), ["MIGRATION", "MIGRATION"]);
      assert.deepEqual(await qmp.execute("echo", { a: [1, 2] }), { a: [1, 2] });

      const err = await rejects(() => qmp.execute("migrate", { uri: "tcp:x:1" }), QmpError);
      assert.deepEqual(err.name, "QmpError");
      assert.deepEqual(err.command, "migrate");
      assert.deepEqual(err.errorClass, "GenericError");
      assert.match(err.message, /migrate.*migration process in progress/);

      const nf = await rejects(() => qmp.execute("no-such"), QmpError);
      assert.match(nf.message, /no-such/);
      assert.deepEqual(nf.errorClass, "CommandNotFound");

      // Concurrent callers are serialized; each gets its own reply.
      const [a, b] = await Promise.all([
        qmp.execute("echo", { n: 1 }),
        qmp.execute("echo", { n: 2 }),
      ]);
      assert.deepEqual([a, b], [{ n: 1 }, { n: 2 }]);
    } finally {
      qmp.close();
    }
  });
});

Deno.test("QMP client: nextEvent takes an event read during a command, or waits for the next one", async () => {
  const done = { event: "MIGRATION", data: { status: "completed" } };
  await withFakeQmp(GREETING, (cmd) => {
    switch (cmd.execute) {
      case "qmp_capabilities":
        return [{ return: {} }];
      case "query-migrate":
        // An event arrives while the command waits; it is kept.
        return [EVENT, { return: { status: "active" } }];
      case "migrate":
        // The reply first, the event after it: nextEvent reads it when it comes.
        return [{ return: {} }, { event: "STOP" }, done];
      default:
        return [{ return: {} }];
    }
  }, async (path) => {
    const seen: string[] = [];
    const qmp = await QmpClient.connect(path, { onEvent: (e) => seen.push(e.event) });
    try {
      assert.deepEqual(await qmp.execute("query-migrate"), { status: "active" });
      const status = (e: QmpEvent) => (e.data as { status?: string } | undefined)?.status;
      const setup = await qmp.nextEvent((e) => status(e) === "setup");
      assert.equal(setup.event, "MIGRATION");
      assert.ok(setup.receivedAt > 0 && setup.receivedAt <= performance.now());
      const t = performance.now();
      await qmp.execute("migrate", { uri: "tcp:x:1" });
      const end = await qmp.nextEvent((e) => e.event === "MIGRATION" && status(e) === "completed");
      assert.deepEqual(end.data, { status: "completed" });
      assert.ok(end.receivedAt >= t);
      assert.deepEqual(seen, ["MIGRATION", "STOP", "MIGRATION"]);
      // The STOP event was kept, not lost; commands still work after a wait.
      assert.equal((await qmp.nextEvent((e) => e.event === "STOP")).event, "STOP");
      assert.deepEqual(await qmp.execute("query-status"), {});
    } finally {
      qmp.close();
    }
  });
});

Deno.test("QMP client: nextEvent rejects when QEMU hangs up", async () => {
  await withFakeQmp(
    GREETING,
    (cmd) => cmd.execute === "qmp_capabilities" ? [{ return: {} }] : [],
    async (path) => {
      const qmp = await QmpClient.connect(path);
      try {
        // Any command makes the fake server hang up; the wait queued behind it sees the end.
        const quit = qmp.execute("quit");
        const waiting = qmp.nextEvent(() => true);
        await rejects(() => quit, QmpProtocolError);
        await rejects(() => waiting, QmpProtocolError, "closed");
      } finally {
        qmp.close();
      }
    },
  );
});

Deno.test("QMP client: a non-QMP greeting is refused", async () => {
  await withFakeQmp({ hello: "world" }, () => [{ return: {} }], async (path) => {
    await rejects(() => QmpClient.connect(path), QmpProtocolError, "greeting");
  });
});

Deno.test("QMP client: QEMU hanging up mid-command is an error naming the command", async () => {
  await withFakeQmp(
    GREETING,
    (cmd) => cmd.execute === "qmp_capabilities" ? [{ return: {} }] : [],
    async (path) => {
      const qmp = await QmpClient.connect(path);
      try {
        await rejects(() => qmp.execute("query-migrate"), QmpProtocolError, "query-migrate");
      } finally {
        qmp.close();
      }
    },
  );
});

Deno.test("QMP client: a failed capabilities negotiation is thrown", async () => {
  await withFakeQmp(
    GREETING,
    () => [{ error: { class: "GenericError", desc: "nope" } }],
    async (path) => {
      await rejects(() => QmpClient.connect(path), QmpError, "qmp_capabilities");
    },
  );
});

// ---- guest image ----

Deno.test({
  name: "guest image: valid Multiboot header with address fields, parameter block",
  ignore: !HAVE_NASM,
  async fn() {
    const image = await assembleGuest();
    assert.deepEqual(image.byteLength, GUEST_IMAGE_SIZE);
    const h = findMultibootHeader(image);
    assert.ok(h !== undefined, "no Multiboot header");
    assert.ok(h.offset < 8192 && h.offset % 4 === 0, `header at ${h.offset}`);
    assert.ok(h.checksumValid, "checksum");
    assert.ok((h.flags & MULTIBOOT_AOUT_KLUDGE) !== 0, "flag bit 16");
    assert.deepEqual(h.loadAddr, GUEST_LOAD_ADDR);
    assert.deepEqual(h.headerAddr, GUEST_LOAD_ADDR + h.offset);
    assert.deepEqual(h.loadEndAddr, 0);
    assert.deepEqual(h.bssEndAddr, 0);
    assert.ok(
      h.entryAddr > h.headerAddr && h.entryAddr < GUEST_LOAD_ADDR + 0x1000,
      "entry in page 0",
    );
    const dv = new DataView(image.buffer, image.byteOffset, image.byteLength);
    assert.deepEqual(dv.getUint32(ParamOffset.magic, true), PARAM_MAGIC);
    // The status page (page 1) is zero in the image.
    assert.ok(image.subarray(0x1000).every((b) => b === 0), "status page not zero");
  },
});

Deno.test({
  name: "guest image: parameters patched at their offsets, input untouched",
  ignore: !HAVE_NASM,
  async fn() {
    const image = await assembleGuest();
    const before = image.slice();
    const params = guestParamsFor({ kind: "dirty", bytesPerSecond: 50e6 }, 512 * MiB);
    const patched = patchGuest(image, params);
    assert.deepEqual(image, before);
    const dv = new DataView(patched.buffer);
    assert.deepEqual(dv.getUint32(ParamOffset.mode, true), GuestMode.dirty);
    assert.deepEqual(dv.getUint32(ParamOffset.base, true), WORKLOAD_BASE);
    assert.deepEqual(dv.getUint32(ParamOffset.end, true), 512 * MiB);
    assert.deepEqual(dv.getUint32(ParamOffset.pagesPerSecond, true), Math.round(50e6 / 4096));
    // Nothing else changed; the header checksum still holds.
    for (let i = 0; i < image.length; i++) {
      if (i >= ParamOffset.mode && i < ParamOffset.pagesPerSecond + 4) continue;
      if (patched[i] !== image[i]) throw new Error(`byte ${i} changed`);
    }
    assert.ok(findMultibootHeader(patched)?.checksumValid);
  },
});

Deno.test("guest params: ab from 1 MiB, dirty over reachable RAM, bad values refused", () => {
  assert.deepEqual(guestParamsFor({ kind: "ab", rangeBytes: 256 * MiB }, 512 * MiB), {
    mode: GuestMode.ab,
    base: WORKLOAD_BASE,
    end: WORKLOAD_BASE + 256 * MiB,
    pagesPerSecond: 0,
  });
  // Clipped to RAM; above 3.5 GiB only the low 3 GiB is reachable without paging.
  assert.deepEqual(guestParamsFor({ kind: "ab", rangeBytes: 256 * MiB }, 64 * MiB).end, 64 * MiB);
  assert.deepEqual(lowRamEnd(4096 * MiB), 3072 * MiB);
  assert.deepEqual(
    guestParamsFor({ kind: "dirty", bytesPerSecond: 1e6 }, 4096 * MiB).end,
    3072 * MiB,
  );
  assert.deepEqual(guestParamsFor({ kind: "idle" }, 64 * MiB).mode, GuestMode.idle);
  assert.throws(
    () => guestParamsFor({ kind: "dirty", bytesPerSecond: 0 }, 64 * MiB),
    GuestImageError,
  );
  assert.throws(() => guestParamsFor({ kind: "ab", rangeBytes: 100 }, 64 * MiB), GuestImageError);
  const fake = new Uint8Array(GUEST_IMAGE_SIZE);
  new DataView(fake.buffer).setUint32(ParamOffset.magic, PARAM_MAGIC, true);
  assert.throws(
    () => patchGuest(fake, { mode: GuestMode.ab, base: 4097, end: 8192, pagesPerSecond: 0 }),
    (e: Error) => e instanceof GuestImageError && /page-aligned/.test(e.message),
  );
  assert.throws(
    () => patchGuest(new Uint8Array(GUEST_IMAGE_SIZE), guestParamsFor({ kind: "idle" }, 64 * MiB)),
    (e: Error) => e instanceof GuestImageError && /parameter block/.test(e.message),
  );
});

Deno.test("guest status: parsed from the monitor's xp output", () => {
  const out = "0000000000011000: 0x52595246 0x063f0a92 0x00000010 0x00000001\r\n" +
    "0000000000011010: 0x00029dc0 0x001fd2a0\r\n";
  const st = parseStatus(out);
  assert.deepEqual(st.ready, true);
  assert.deepEqual(READY_MAGIC, 0x52595246);
  assert.deepEqual(st.tscPer50ms, 0x063f0a92);
  assert.deepEqual(st.count, 2 ** 32 + 16);
  assert.deepEqual(st.ticksPerPage, 0x29dc0);
  assert.throws(() => parseStatus("Cannot access memory"), GuestImageError);
});

Deno.test("CLI parsing: sizes and workloads", () => {
  assert.deepEqual(parseSize("1G"), 1024 * MiB);
  assert.deepEqual(parseSize("256M"), 256 * MiB);
  assert.deepEqual(parseSize("64MiB"), 64 * MiB);
  assert.deepEqual(parseSize("50MB"), 50e6);
  assert.deepEqual(parseSize("1GB"), 1e9);
  assert.deepEqual(parseSize("100e9"), 100e9);
  assert.throws(() => parseSize("lots"), RangeError);
  assert.deepEqual(parseWorkload("ab:256M"), { kind: "ab", rangeBytes: 256 * MiB });
  assert.deepEqual(parseWorkload("dirty:50MB"), { kind: "dirty", bytesPerSecond: 50e6 });
  assert.deepEqual(parseWorkload("paused"), { kind: "paused" });
  assert.throws(() => parseWorkload("busy"), RangeError);
});

// ---- real QEMU (only where it is installed) ----

function gone(pid: number): boolean {
  try {
    Deno.statSync(`/proc/${pid}`);
    return false;
  } catch {
    return true;
  }
}

Deno.test({
  name: "real QEMU: a 64 MiB ab guest migrates at a 300 ms limit; nothing left behind",
  ignore: !HAVE_QEMU,
  async fn() {
    const lines: string[] = [];
    const run = await runQemu({
      ramBytes: 64 * MiB,
      fill: "zero",
      workload: { kind: "ab", rangeBytes: 32 * MiB },
      transport: "unix",
      maxBandwidth: 100e9,
      downtimeLimitMs: 300,
      timeoutS: 8,
    }, { log: (l) => lines.push(l) });
    assert.ok(run.completed, `not completed: ${run.note}`);
    assert.ok(run.totalS > 0 && run.totalS < 8, `total ${run.totalS}`);
    assert.ok(Number.isFinite(run.downtimeMs), "downtime");
    assert.ok(run.bytes > 0 && run.passes >= 1, JSON.stringify(run));
    assert.ok(run.peakRssSrc > 64 * MiB && run.peakRssDst > 64 * MiB, JSON.stringify(run));
    assert.match(run.note ?? "", /passes\/s/);
    const pids = /source pid (\d+), destination pid (\d+)/.exec(lines.join("\n"));
    assert.ok(pids, lines.join("\n"));
    assert.ok(gone(Number(pids[1])) && gone(Number(pids[2])), "a QEMU process outlived runQemu");
  },
});

Deno.test({
  name:
    "real QEMU: a running guest on a shared mapping writes its own copy; the wall clock runs to the destination's event",
  ignore: !HAVE_QEMU,
  async fn() {
    const existed = [...Deno.readDirSync("/dev/shm")].some((e) =>
      e.name === "ferry-bench-qemu-random-64M"
    );
    const fill = await ensureRandomFill(64 * MiB);
    const digest = async () =>
      new Uint8Array(await crypto.subtle.digest("SHA-256", await Deno.readFile(fill)));
    const before = await digest();
    const shmBefore = [...Deno.readDirSync("/dev/shm")].map((e) => e.name).sort();
    const spec = withConfig({
      ramBytes: 64 * MiB,
      fill: "random",
      workload: { kind: "dirty", bytesPerSecond: 20e6 },
      transport: "tcp",
      maxBandwidth: 100e9,
      downtimeLimitMs: 300,
      timeoutS: 20,
      wall: true,
    }, parseQemuConfigs("multifd-2-zstd")[0]);
    const run = await runQemu(spec);
    assert.ok(run.completed, `not completed: ${run.note}`);
    // The destination reports completed after the source does, and not long after.
    assert.ok(run.wallS !== undefined && run.wallS > 0, JSON.stringify(run));
    assert.ok(run.wallS >= run.totalS - 0.005, `wall ${run.wallS} < total ${run.totalS}`);
    assert.ok(run.wallS < run.totalS + 5, `wall ${run.wallS}, total ${run.totalS}`);
    assert.deepEqual(await digest(), before, "the shared fill file was written");
    const shmAfter = [...Deno.readDirSync("/dev/shm")].map((e) => e.name).sort();
    assert.deepEqual(shmAfter, shmBefore, "the run's own copy was left behind");
    if (!existed) await Deno.remove(fill);
  },
});

Deno.test({
  name: "real QEMU: a guest that cannot converge is cancelled at the timeout",
  ignore: !HAVE_QEMU,
  async fn() {
    const run = await runQemu({
      ramBytes: 64 * MiB,
      fill: "zero",
      workload: { kind: "ab", rangeBytes: 48 * MiB },
      transport: "tcp",
      maxBandwidth: 20e6,
      downtimeLimitMs: 1,
      timeoutS: 2,
    });
    assert.deepEqual(run.completed, false);
    assert.ok(Number.isNaN(run.downtimeMs));
    assert.match(run.note ?? "", /never completed in 2 s/);
    assert.ok(run.passes >= 1 && run.bytes > 0, JSON.stringify(run));
    assert.ok(run.peakRssDst > 0, "destination RSS sampled before it exits");
  },
});

Deno.test("ensureImageCopy puts the image's bytes in /dev/shm once, zero pages as holes, and checks its size", async () => {
  const bytes = new Uint8Array(64 * 4096);
  bytes.fill(9, 4096, 8192);
  bytes[60 * 4096 + 7] = 3;
  const image = await Deno.makeTempFile({ suffix: ".img" });
  let copy: string | undefined;
  try {
    await Deno.writeFile(image, bytes);
    copy = await ensureImageCopy(image, bytes.length);
    assert.ok(copy.startsWith("/dev/shm/ferry-bench-qemu-image-"));
    assert.deepEqual(await Deno.readFile(copy), bytes);
    assert.equal(await ensureImageCopy(image, bytes.length), copy, "reused");
    await rejects(() => ensureImageCopy(image, 2 * bytes.length), RangeError, "holds 262144 bytes");
  } finally {
    await Deno.remove(image);
    if (copy) await Deno.remove(copy).catch(() => {});
  }
});
