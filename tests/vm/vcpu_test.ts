import assert from "node:assert/strict";
import { RamBlock } from "../../vm/ram.ts";
import { Vcpu, VcpuError } from "../../vm/vcpu.ts";
import { parseWorkload } from "../../vm/workload.ts";
import { waitUntil } from "../helpers/wait.ts";

const delay = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

async function vcpu(workload: string, size = 1 << 20): Promise<{ block: RamBlock; cpu: Vcpu }> {
  const block = new RamBlock("pc.ram", size);
  const cpu = await Vcpu.create({ blocks: [block], workload: parseWorkload(workload) });
  return { block, cpu };
}

Deno.test("Vcpu.create resolves with a stopped vCPU that runs no ops", async () => {
  const { cpu } = await vcpu("ab");
  try {
    assert.equal(cpu.running, false);
    await delay(30);
    assert.equal(cpu.opsCount, 0);
  } finally {
    cpu.terminate();
  }
});

Deno.test("Vcpu.stop() returns after the worker acknowledged: the counter is final", async () => {
  const { block, cpu } = await vcpu("ab");
  try {
    cpu.start();
    await waitUntil(() => cpu.opsCount > 0, "the first ops");
    cpu.stop();
    const ops = cpu.opsCount;
    const byte0 = block.bytes[0];
    await delay(30);
    assert.ok(ops > 0);
    assert.equal(cpu.opsCount, ops);
    assert.equal(block.bytes[0], byte0);
  } finally {
    cpu.terminate();
  }
});

Deno.test("Vcpu.start() and stop() are idempotent", async () => {
  const { cpu } = await vcpu("idle");
  try {
    cpu.stop();
    cpu.start();
    cpu.start();
    assert.equal(cpu.running, true);
    cpu.stop();
    cpu.stop();
    assert.equal(cpu.running, false);
  } finally {
    cpu.terminate();
  }
});

Deno.test("Vcpu.readState/writeState carry cursor, counter and PRNG; writeState refuses while running", async () => {
  const { cpu } = await vcpu("ab");
  try {
    const state = {
      workload: parseWorkload("ab:range=64K"),
      abCursor: 7,
      ops: 1234,
      prng: [9, 8, 7, 6] as const,
    };
    cpu.writeState(state);
    assert.deepEqual(cpu.readState(), state);
    cpu.start();
    assert.throws(() => cpu.writeState(state), /while the vCPU is running/);
    cpu.stop();
    assert.throws(() => cpu.writeState({ ...state, abCursor: 16 }), /ab cursor 16 outside 0..15/);
    assert.throws(() => cpu.writeState({ ...state, prng: [0, 0, 0, 0] }), VcpuError);
  } finally {
    cpu.terminate();
  }
});

Deno.test("Vcpu.setThrottle accepts 0-99 and rejects anything else", async () => {
  const { cpu } = await vcpu("idle");
  try {
    cpu.setThrottle(99);
    assert.equal(cpu.throttle, 99);
    for (const bad of [-1, 100, 1.5, NaN]) assert.throws(() => cpu.setThrottle(bad), VcpuError);
  } finally {
    cpu.terminate();
  }
});

Deno.test("Vcpu.terminate() is idempotent and later commands throw VcpuError", async () => {
  const { cpu } = await vcpu("ab");
  cpu.start();
  cpu.terminate();
  cpu.terminate();
  assert.equal(cpu.terminated, true);
  assert.throws(() => cpu.start(), /terminated vCPU/);
});

Deno.test("Vcpu.create rejects a workload that does not fit the first block", async () => {
  await assert.rejects(() => vcpu("ab:range=2M", 1 << 20), /exceeds the RAM block/);
});
