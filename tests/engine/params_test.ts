import assert from "node:assert/strict";
import { EngineError } from "../../engine/errors.ts";
import {
  channelSecurity,
  DEFAULT_CAPABILITIES,
  DEFAULT_PARAMETERS,
  PARAMETER_LIMITS,
  type Parameters,
  UNSUPPORTED_CAPABILITIES,
  validateParameters,
} from "../../engine/params.ts";

/** The engine's one table of ranges (the API schema is built from it too). */
const BOUNDS = PARAMETER_LIMITS;

function assertInvalid(patch: Record<string, unknown>, field: string, ram?: number): EngineError {
  let caught: unknown;
  try {
    validateParameters(patch as Partial<Parameters>, ram);
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof EngineError, `expected EngineError for ${JSON.stringify(patch)}`);
  assert.equal(caught.code, "invalid-parameter");
  assert.match(caught.message, new RegExp(`"${field}"`));
  return caught;
}

Deno.test("DEFAULT_PARAMETERS are the seed's (32 MiB/s, 30 ms, 64 MiB cache, throttle 20/10), stall after 60 s fails", () => {
  assert.deepEqual(DEFAULT_PARAMETERS, {
    max_bandwidth: 32 << 20,
    downtime_limit: 30,
    xbzrle_cache_size: 64 << 20,
    cpu_throttle_initial: 20,
    cpu_throttle_increment: 10,
    progress_timeout: 60_000,
    stall_windows: 600,
    stall_action: "fail",
    incoming_page_budget: 4096,
    tls_cert: "",
    tls_key: "",
    tls_ca: "",
    tls_hostname: "",
    migration_secret: "",
    snapshot_key: "",
    compress_method: "none",
    compress_level: 1,
    resume_grace: 60_000,
    resume_auto: false,
    multifd_channels: 1,
    completion_timeout_ms: 0,
    completion_timeout_per_gib: 0,
    on_timeout: "cancel",
  });
  assert.doesNotThrow(() => validateParameters(DEFAULT_PARAMETERS));
  // multifd_channels: 1 (the single stream) to 16, named when out of range.
  assert.doesNotThrow(() => validateParameters({ multifd_channels: 16 }));
  for (const bad of [0, 17, 2.5]) {
    assert.throws(
      () => validateParameters({ multifd_channels: bad }),
      /Invalid parameter "multifd_channels": .* is not a whole number from 1 to 16/,
    );
  }
});

Deno.test("DEFAULT_CAPABILITIES are QEMU's (all off) plus verify on; every unsupported one has a reason", () => {
  assert.deepEqual(DEFAULT_CAPABILITIES, {
    xbzrle: false,
    auto_converge: false,
    zero_blocks: false,
    rdma_pin_all: false,
    verify: true,
    page_refs: false,
    pause_before_switchover: false,
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

Deno.test("the documented ranges of the contract", () => {
  assert.deepEqual(PARAMETER_LIMITS.downtime_limit, [1, 2_000_000]);
  assert.deepEqual(PARAMETER_LIMITS.cpu_throttle_initial, [1, 99]);
  assert.deepEqual(PARAMETER_LIMITS.xbzrle_cache_size, [4096, 64 * 2 ** 30]);
  assert.deepEqual(PARAMETER_LIMITS.stall_windows, [0, 10_000_000]);
});

Deno.test("validateParameters() bounds xbzrle_cache_size by the guest's RAM, naming it", () => {
  const ram = 64 << 20;
  assert.doesNotThrow(() => validateParameters({ xbzrle_cache_size: ram }, ram));
  const err = assertInvalid({ xbzrle_cache_size: ram + 4096 }, "xbzrle_cache_size", ram);
  assert.match(err.message, /from 4096 to 67108864 \(the guest's RAM\)/);
  assertInvalid({ xbzrle_cache_size: 9007199254740991 }, "xbzrle_cache_size");
});

Deno.test("validateParameters() takes stall_action fail, switchover or throttle, and nothing else", () => {
  for (const action of ["fail", "switchover", "throttle"]) {
    assert.doesNotThrow(() => validateParameters({ stall_action: action as "fail" }));
  }
  for (const bad of ["cancel", 1, null]) {
    const err = assertInvalid({ stall_action: bad }, "stall_action");
    assert.match(err.message, /fail, switchover, throttle/);
  }
});

Deno.test("validateParameters() takes on_timeout cancel, switchover or throttle, and bounds the completion deadlines", () => {
  for (const action of ["cancel", "switchover", "throttle"]) {
    assert.doesNotThrow(() => validateParameters({ on_timeout: action as "cancel" }));
  }
  const err = assertInvalid({ on_timeout: "fail" }, "on_timeout");
  assert.match(err.message, /cancel, switchover, throttle/);
  assert.doesNotThrow(() => validateParameters({ completion_timeout_ms: 0 }));
  assertInvalid({ completion_timeout_ms: -1 }, "completion_timeout_ms");
  assertInvalid({ completion_timeout_per_gib: 1.5 }, "completion_timeout_per_gib");
});

Deno.test('validateParameters() takes absolute paths (or "") for the security files and a host name for tls_hostname', () => {
  for (const field of ["tls_cert", "tls_key", "tls_ca", "migration_secret", "snapshot_key"]) {
    assert.doesNotThrow(() => validateParameters({ [field]: "/etc/ferry/x.pem" }), field);
    assert.doesNotThrow(() => validateParameters({ [field]: "" }), field);
    const e = assertInvalid({ [field]: "x.pem" }, field);
    assert.match(e.message, /absolute file path/);
    assertInvalid({ [field]: 7 }, field);
  }
  assert.doesNotThrow(() => validateParameters({ tls_hostname: "ferry-dst.example" }));
  assert.doesNotThrow(() => validateParameters({ tls_hostname: "10.0.0.2" }));
  assertInvalid({ tls_hostname: "a b" }, "tls_hostname");
});

Deno.test('channelSecurity(): TLS when any tls_* is set, the secret and the snapshot key when set, nothing for ""', () => {
  assert.deepEqual(channelSecurity(DEFAULT_PARAMETERS), {});
  assert.deepEqual(channelSecurity({ ...DEFAULT_PARAMETERS, tls_ca: "/ca.pem" }), {
    tls: { caFile: "/ca.pem" },
  });
  assert.deepEqual(channelSecurity({ ...DEFAULT_PARAMETERS, tls_hostname: "dst" }), {
    tls: { hostname: "dst" },
  });
  assert.deepEqual(
    channelSecurity({
      ...DEFAULT_PARAMETERS,
      tls_cert: "/c.pem",
      tls_key: "/c.key",
      migration_secret: "/s",
      snapshot_key: "/k",
    }),
    { tls: { certFile: "/c.pem", keyFile: "/c.key" }, secretFile: "/s", snapshotKeyFile: "/k" },
  );
});

Deno.test("validateParameters() takes compress_method none, zstd or lz4, and compress_level 1 to 19", () => {
  for (const method of ["none", "zstd", "lz4"]) {
    assert.doesNotThrow(() => validateParameters({ compress_method: method as "zstd" }));
  }
  for (const bad of ["gzip", "", 1, null]) {
    const err = assertInvalid({ compress_method: bad }, "compress_method");
    assert.match(err.message, /none, zstd, lz4/);
  }
  assert.doesNotThrow(() => validateParameters({ compress_level: 19 }));
  for (const bad of [0, 20, 1.5, "3"]) assertInvalid({ compress_level: bad }, "compress_level");
});
