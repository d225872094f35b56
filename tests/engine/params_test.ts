import assert from "node:assert/strict";
import { EngineError } from "../../engine/errors.ts";
import {
  DEFAULT_CAPABILITIES,
  DEFAULT_PARAMETERS,
  type Parameters,
  UNSUPPORTED_CAPABILITIES,
  validateParameters,
} from "../../engine/params.ts";

const BOUNDS: Record<keyof Parameters, [number, number]> = {
  max_bandwidth: [1, Number.MAX_SAFE_INTEGER],
  downtime_limit: [1, 2_000_000],
  xbzrle_cache_size: [4096, Number.MAX_SAFE_INTEGER],
  cpu_throttle_initial: [1, 99],
  cpu_throttle_increment: [1, 99],
  progress_timeout: [10, 86_400_000],
};

function assertInvalid(patch: Record<string, unknown>, field: string): EngineError {
  let caught: unknown;
  try {
    validateParameters(patch as Partial<Parameters>);
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof EngineError, `expected EngineError for ${JSON.stringify(patch)}`);
  assert.equal(caught.code, "invalid-parameter");
  assert.match(caught.message, new RegExp(`"${field}"`));
  return caught;
}

Deno.test("DEFAULT_PARAMETERS are the seed's: 32 MiB/s, 30 ms, 64 MiB cache, throttle 20/10", () => {
  assert.deepEqual(DEFAULT_PARAMETERS, {
    max_bandwidth: 32 << 20,
    downtime_limit: 30,
    xbzrle_cache_size: 64 << 20,
    cpu_throttle_initial: 20,
    cpu_throttle_increment: 10,
    progress_timeout: 60_000,
  });
  assert.doesNotThrow(() => validateParameters(DEFAULT_PARAMETERS));
});

Deno.test("DEFAULT_CAPABILITIES are all off and every unsupported one has a reason", () => {
  assert.deepEqual(DEFAULT_CAPABILITIES, {
    xbzrle: false,
    auto_converge: false,
    zero_blocks: false,
    rdma_pin_all: false,
    verify: false,
  });
  assert.match(UNSUPPORTED_CAPABILITIES.rdma_pin_all!, /RDMA/);
});

Deno.test("validateParameters() accepts each field at its minimum and maximum", () => {
  for (const [field, [min, max]] of Object.entries(BOUNDS)) {
    assert.doesNotThrow(() => validateParameters({ [field]: min }), field);
    assert.doesNotThrow(() => validateParameters({ [field]: max }), field);
  }
  assert.doesNotThrow(() => validateParameters({}));
});

Deno.test("validateParameters() rejects each field below its minimum or above its maximum, naming the field", () => {
  for (const [field, [min, max]] of Object.entries(BOUNDS)) {
    const low = assertInvalid({ [field]: min - 1 }, field);
    assert.deepEqual(low.details, { field });
    assert.match(low.message, new RegExp(`from ${min} to ${max}`));
    if (max < Number.MAX_SAFE_INTEGER) assertInvalid({ [field]: max + 1 }, field);
    else assertInvalid({ [field]: max + 2 }, field); // 2^53 + 1 rounds: not a safe value
  }
});

Deno.test("validateParameters() rejects non-integers, NaN, Infinity and non-numbers, naming the field", () => {
  for (const bad of [1.5, NaN, Infinity, -Infinity, "10", null, true]) {
    assertInvalid({ downtime_limit: bad }, "downtime_limit");
  }
});

Deno.test("validateParameters() rejects an unknown parameter by name", () => {
  const err = assertInvalid({ speed: 5 }, "speed");
  assert.match(err.message, /Unknown parameter "speed"/);
});

Deno.test("validateParameters() names the first bad field of a patch", () => {
  assertInvalid(
    { max_bandwidth: 100, cpu_throttle_initial: 0, downtime_limit: 0 },
    "cpu_throttle_initial",
  );
});
