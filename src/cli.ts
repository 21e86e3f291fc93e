#!/usr/bin/env bun
/**
 * bunmind's command line. `bun run bunmind <command>` in the repo, or `bunmind <command>` when
 * installed. Every command is an Effect program; Ctrl-C interrupts it and runs its finalizers.
 */
import { NodeRuntime, NodeServices } from "@effect/platform-node"
import { Cause, Effect } from "effect"
import { Command } from "effect/cli"
import { dataCommand } from "./cli/data.ts"
import { demoCommand } from "./cli/demo.ts"
import { edgeCommand } from "./cli/edge.ts"
import { evalCommand } from "./cli/eval.ts"
import { generateCommand, modelCommand } from "./cli/model.ts"
import { pipelineCommand } from "./cli/pipeline.ts"
import { reportCommand } from "./cli/report.ts"
import { chatCommand, serveCommand } from "./cli/serve.ts"
import { tokenizerCommand } from "./cli/tokenizer.ts"
import { loraCommand, trainCommand } from "./cli/train.ts"
import { debug } from "./util/env.ts"

const pkg = await Bun.file(new URL("../package.json", import.meta.url)).json()

export const root = Command.make("bunmind").pipe(
  Command.withDescription("train and run small language models end to end (MiniMind-compatible)"),
  Command.withSubcommands([
    demoCommand,
    tokenizerCommand,
    dataCommand,
    modelCommand,
    generateCommand,
    trainCommand,
    loraCommand,
    pipelineCommand,
    reportCommand,
    evalCommand,
    serveCommand,
    chatCommand,
    edgeCommand,
  ]),
)

/** Prints a user-facing error (no stack for known errors) and sets the exit code. */
const report = (cause: Cause.Cause<unknown>) =>
  Effect.sync(() => {
    if (Cause.hasInterruptsOnly(cause)) {
      process.exitCode = 130
      return
    }
    const err = Cause.squash(cause) as { _tag?: string; message?: string; stack?: string }
    const known = err && typeof err === "object" && typeof err._tag === "string"
    const cliTags = ["DuplicateOption", "InvalidValue", "MissingArgument", "MissingOption", "ShowHelp", "UnexpectedArgument", "UnknownSubcommand", "UnrecognizedOption", "ValidationError"]
    if (known && cliTags.includes(err._tag!)) {
      // effect/cli already rendered its parse/help error.
    } else {
      process.stderr.write(`error: ${known || err instanceof Error ? err.message : String(err)}\n`)
      if (debug() && err?.stack) process.stderr.write(`${err.stack}\n`)
    }
    process.exitCode = 1
  })

if (import.meta.main) {
  Command.run(root, { version: pkg.version }).pipe(
    Effect.catchCause(report),
    Effect.provide(NodeServices.layer),
    NodeRuntime.runMain({ disableErrorReporting: true }),
  )
}
