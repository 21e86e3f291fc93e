import { Data } from "effect"

/** A mistake the user can fix (bad flag, bad input line); printed without a stack trace. */
export class UsageError extends Data.TaggedError("UsageError")<{ readonly message: string }> {}
