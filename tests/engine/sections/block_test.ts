import assert from "node:assert/strict";
import { loadStream } from "../../../engine/incoming.ts";
import { StreamError, StreamReader } from "../../../engine/format/reader.ts";
import { StreamWriter } from "../../../engine/format/writer.ts";
import { BlockFlag, BlockLoader, BlockSaver } from "../../../engine/sections/block.ts";
import type { Channel } from "../../../transports/transport.ts";
import { Disk, DISK_CHUNK, incompletePath, sidecarPath } from "../../../vm/disk.ts";
import { BytesChannel, concatBytes } from "../../helpers/byte_channels.ts";
import {
  BF,
  SMALL_BLOCKS,
  StreamBuilder,
  TEST_GUEST_VMDESC,
} from "../../../testing/stream_builder.ts";
import { TestGuest } from "../../../testing/test_guest.ts";

const MIB = DISK_CHUNK;

/** A Channel that keeps what is written. */
class Sink implements Channel {
  readonly peer = "sink:";
  readonly parts: Uint8Array[] = [];
  closed = false;
  write(chunk: Uint8Array): Promise<void> {
    this.parts.push(chunk.slice());
    return Promise.resolve();
  }
  read(): Promise<number | null> {
    return Promise.resolve(null);
  }
  finish(): Promise<void> {
    return Promise.resolve();
  }
  close(): void {
    this.closed = true;
  }
  [Symbol.dispose](): void {
    this.close();
  }
  get bytes(): Uint8Array {
    return concatBytes(this.parts);
  }
}

function chunkData(seed: number): Uint8Array {
  const out = new Uint8Array(MIB);
  let x = seed * 2654435761 >>> 0 || 1;
  for (let i = 0; i < MIB; i += 4) {
    x ^= x << 13, x ^= x >>> 17, x ^= x << 5;
    out[i] = x, out[i + 1] = x >>> 8, out[i + 2] = x >>> 16, out[i + 3] = x >>> 24;
  }
  return out;
}

async function withDisk<T>(size: number, fn: (disk: Disk, dir: string) => Promise<T>): Promise<T> {
  const dir = await Deno.makeTempDir({ prefix: "ferry-block-" });
  const disk = Disk.open(`${dir}/disk.img`, size);
  try {
    return await fn(disk, dir);
  } finally {
    disk.close();
    await Deno.remove(dir, { recursive: true });
  }
}

function guestWith(disk: Disk | undefined): TestGuest {
  const guest = new TestGuest(SMALL_BLOCKS.map(([n, l]) => [n, l]));
  if (disk) Object.defineProperty(guest, "disk", { value: disk });
  return guest;
}

/** A complete stream for SMALL_BLOCKS plus a `block` section (id 2) built by `records`. */
function blockStream(records: (b: StreamBuilder) => void): Uint8Array {
  const b = new StreamBuilder().header().configuration().ramStart(0, SMALL_BLOCKS);
  b.start(2, "block", 1).blockEos().footer(2);
  b.part(2);
  records(b);
  b.blockEos().footer(2);
  b.end(0).eos().footer(0);
  b.end(2).blockEos().footer(2);
  return b.vcpu(1, 7n).eof().vmdescription(TEST_GUEST_VMDESC).build();
}

function load(bytes: Uint8Array, guest: TestGuest) {
  return loadStream(new StreamReader(new BytesChannel(bytes, 1 << 16), 2 << 20), guest);
}

Deno.test("BlockSaver → BlockLoader copies an image; zero_blocks sends empty chunks as ZERO_BLOCK", async () => {
  await withDisk(4 * MIB, async (src) => {
    src.writeChunk(1, chunkData(1));
    src.writeChunk(3, chunkData(3));
    for (const zeroBlocks of [false, true]) {
      const sink = new Sink();
      const w = new StreamWriter(sink);
      const saver = new BlockSaver(src, { incremental: false, zeroBlocks });
      assert.equal(saver.remainingBytes, 4 * MIB);
      await saver.setup(w);
      await saver.iterate(w, () => false);
      await saver.complete(w);
      await w.drain();
      assert.equal(saver.remainingBytes, 0);
      assert.equal(saver.stats.transferred, sink.bytes.length);
      assert.equal(saver.stats.zeroChunks, zeroBlocks ? 2 : 0);
      assert.equal(sink.bytes.length < 3 * MIB, zeroBlocks);
      await withDisk(4 * MIB, async (dst) => {
        dst.writeChunk(0, chunkData(9)); // a zero chunk must overwrite it
        const loader = new BlockLoader(dst);
        loader.start(0);
        assert.ok(dst.incomplete);
        const r = new StreamReader(new BytesChannel(sink.bytes, 1000), 2 << 20);
        await loader.load(r); // START
        await loader.load(r); // PART
        await loader.load(r); // END
        assert.equal(loader.stats.progress, 100);
        loader.finish();
        await loader.commit();
        assert.equal(dst.incomplete, false);
        assert.equal((await dst.digest()).sha256, (await src.digest()).sha256);
      });
    }
  });
});

Deno.test("BlockSaver with inc sends only chunks written since the base, plus chunks dirtied during the migration", async () => {
  await withDisk(8 * MIB, async (disk, dir) => {
    disk.writeChunk(5, chunkData(5));
    disk.persist();
    assert.deepEqual([...Deno.readFileSync(sidecarPath(`${dir}/disk.img`))], [1 << 5]);
    const saver = new BlockSaver(disk, { incremental: true, zeroBlocks: false });
    assert.equal(saver.remainingBytes, MIB);
    // A guest write during the migration: data first, then the dirty bit.
    Atomics.or(disk.dirty, 0, 1 << 2);
    assert.equal(saver.pending(), 2 * MIB);
    // The sidecar outlives the process: a reopened image keeps its base.
    disk.persist();
    assert.deepEqual([...await Deno.readFile(sidecarPath(`${dir}/disk.img`))], [1 << 5]);
  });
});

Deno.test("loadStream() writes a block section into the guest's disk, fsyncs it and removes the incomplete marker", async () => {
  await withDisk(4 * MIB, async (disk, dir) => {
    const data = chunkData(2);
    const bytes = blockStream((b) => {
      b.blockRecord(2 * 2048, BF.DEVICE_BLOCK, "disk0", data);
      b.blockRecord(3 * 2048, BF.DEVICE_BLOCK | BF.ZERO_BLOCK, "disk0");
      b.blockRecord(50, BF.PROGRESS);
    });
    await load(bytes, guestWith(disk));
    const back = new Uint8Array(MIB);
    disk.readChunk(2, back);
    assert.deepEqual(back, data);
    await assert.rejects(Deno.stat(incompletePath(`${dir}/disk.img`)), Deno.errors.NotFound);
  });
});

const CORRUPT: [string, (b: StreamBuilder) => void, RegExp][] = [
  [
    "a wrong device name",
    (b) => b.blockRecord(0, BF.DEVICE_BLOCK, "disk1", new Uint8Array(MIB)),
    /device "disk1", this guest has "disk0"/,
  ],
  [
    "a sector beyond the image",
    (b) => b.blockRecord(4 * 2048, BF.DEVICE_BLOCK | BF.ZERO_BLOCK, "disk0"),
    /sector 8192 lies beyond the 4194304-byte image/,
  ],
  [
    "a chunk that straddles the end of the image",
    (b) => b.blockRecord(3 * 2048 + 1024, BF.DEVICE_BLOCK | BF.ZERO_BLOCK, "disk0"),
    /not aligned to a 2048-sector chunk/,
  ],
  [
    "unknown flags",
    (b) => b.blockRecord(0, BF.DEVICE_BLOCK | 0x10, "disk0"),
    /unknown block record flags 0x11/,
  ],
  ["a progress above 100 %", (b) => b.blockRecord(101, BF.PROGRESS), /progress 101% is above 100/],
  [
    "a huge sector",
    (b) => b.blockRecord(1n << 50n, BF.DEVICE_BLOCK, "disk0"),
    /offset beyond 2\^53/,
  ],
];

for (const [what, records, reason] of CORRUPT) {
  Deno.test(`loadStream() rejects a block record with ${what}, writes nothing past the image, leaves it marked incomplete`, async () => {
    await withDisk(4 * MIB, async (disk, dir) => {
      const bytes = blockStream((b) => {
        b.blockRecord(0, BF.DEVICE_BLOCK, "disk0", chunkData(7));
        records(b);
      });
      const err = await load(bytes, guestWith(disk)).then(() => null, (e) => e);
      assert.ok(err instanceof StreamError, `expected a StreamError, got ${err}`);
      assert.match(err.reason, reason);
      assert.equal((await Deno.stat(`${dir}/disk.img`)).size, 4 * MIB);
      assert.ok(disk.incomplete);
    });
  });
}

Deno.test("loadStream() rejects a truncated block chunk and a block section sent to a guest without a disk", async () => {
  await withDisk(4 * MIB, async (disk) => {
    const bytes = blockStream((b) => b.blockRecord(0, BF.DEVICE_BLOCK, "disk0", chunkData(1)));
    const cut = bytes.subarray(0, bytes.length - 300_000 - MIB / 2);
    const err = await load(cut, guestWith(disk)).then(() => null, (e) => e);
    assert.ok(err instanceof StreamError);
    assert.match(err.reason, /truncated/);
    assert.ok(disk.incomplete);
    const none = await load(bytes, guestWith(undefined)).then(() => null, (e) => e);
    assert.ok(none instanceof StreamError);
    assert.match(none.reason, /"block" section but this guest has no disk/);
  });
});

Deno.test("BlockFlag values are QEMU's", () => {
  assert.deepEqual({ ...BlockFlag }, { DEVICE_BLOCK: 1, EOS: 2, PROGRESS: 4, ZERO_BLOCK: 8 });
});
