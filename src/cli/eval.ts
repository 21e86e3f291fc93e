import { Command } from "effect/cli"
// Placeholder: replaced by the evaluation commands (C-Eval, perplexity).
export const evalCommand = Command.make("eval").pipe(Command.withDescription("evaluate models (in progress)"))
