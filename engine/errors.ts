/** Error codes the engine reports; the API turns each into an HTTP status. */
export type EngineErrorCode =
  | "migration-active"
  | "migration-blocked"
  | "capability-unsupported"
  | "capability-conflict"
  | "invalid-parameter"
  | "incoming-active"
  | "not-incoming"
  | "guest-incomplete"
  | "blocker-not-found"
  | "guest-running";

/** A refused engine request: `code` names why, `details` carries extra facts (e.g. blocker reasons). */
export class EngineError extends Error {
  override readonly name = "EngineError";
  constructor(
    readonly code: EngineErrorCode,
    message: string,
    readonly details?: Readonly<Record<string, unknown>>,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

/** Text for an unknown thrown value, without stack traces. */
export function describeError(e: unknown): string {
  if (e instanceof Error) {
    const cause = e.cause instanceof Error && !e.message.includes(e.cause.message)
      ? `: ${e.cause.message}`
      : "";
    return e.message + cause;
  }
  return String(e);
}
