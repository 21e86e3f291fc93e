import { Command } from "effect/cli"
// Placeholder: replaced by the OpenAI-compatible server and the terminal chat.
export const serveCommand = Command.make("serve").pipe(Command.withDescription("OpenAI-compatible server (in progress)"))
export const chatCommand = Command.make("chat").pipe(Command.withDescription("terminal chat (in progress)"))
