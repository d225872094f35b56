/** Error codes the engine reports; the API turns each into an HTTP status. */
export type EngineErrorCode =
  | "migration-active"
  | "migration-blocked"
  | "capability-unsupported"
  | "capability-conflict"
  | "invalid-parameter"
  | "incoming-active"
  | "not-incoming"
  | "not-paused"
  | "migration-not-found"
  | "guest-incomplete"
  | "guest-not-runnable"
  | "blocker-not-found"
  | "guest-running"
  | "not-interrupted"
  | "resume-refused";

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

/**
 * Text for an unknown thrown value, without stack traces. The cause is appended
 * when it adds something: not when the message already holds it, nor when it is
 * a domain error of the same kind (a StreamError wrapping a StreamError), which
 * the message restates in its own words.
 */
export function describeError(e: unknown): string {
  if (e instanceof Error) {
    const c = e.cause;
    const sameKind = c instanceof Error && c.name === e.name && e.name !== "Error";
    const cause = c instanceof Error && !sameKind && !e.message.includes(c.message)
      ? `: ${c.message}`
      : "";
    return e.message + cause;
  }
  return String(e);
}
