/** Errors raised by the guest machine ({@link ../vm.ts}). */

/**
 * Thrown when the guest cannot do what was asked: bad device state, a call in the
 * wrong run state, a bad throttle, use after close. `code` is a stable identifier
 * for API layers; the message says what is wrong in one line.
 */
export class VmError extends Error {
  override readonly name = "VmError";

  constructor(
    /** Stable machine-readable identifier, e.g. `"invalid-device-state"`. */
    readonly code: VmErrorCode,
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

/** The identifiers a {@link VmError} can carry. */
export const VM_ERROR_CODES = [
  "invalid-device-state",
  "invalid-run-state",
  "invalid-argument",
  "closed",
  "unsupported",
  "emulator-failed",
] as const;

/** One of {@link VM_ERROR_CODES}. */
export type VmErrorCode = typeof VM_ERROR_CODES[number];
