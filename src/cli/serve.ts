/** `bunmind serve` (OpenAI-compatible HTTP server + web chat) and `bunmind chat` (terminal chat). */
import { existsSync, statSync } from "node:fs"
import { dirname } from "node:path"
import { createInterface } from "node:readline"
import { Effect, Option } from "effect"
import { Command, Flag } from "effect/cli"
import { runChat, type ChatSettings } from "../chat/chat.ts"
import { loadModel } from "../model/model.ts"
import { InlineEngine } from "../serve/engine.ts"
import { startServer } from "../serve/server.ts"
import { loadTokenizerConfig } from "../tokenizer/chat-template.ts"
import { loadTokenizer } from "../tokenizer/tokenizer.ts"
import { apiKey as envApiKey } from "../util/env.ts"
import { UsageError } from "./errors.ts"
import { deviceFlag, parseDevice, resolveTokenizer, samplingFlags } from "./model.ts"

const modelFlag = Flag.String("model").pipe(Flag.withDescription("model directory (config.json + model.safetensors)"))
const tokenizerFlag = Flag.String("tokenizer").pipe(
  Flag.optional,
  Flag.withDescription("tokenizer.json or its directory, with tokenizer_config.json (chat template) beside it (default: next to the model)"),
)

/** The directory holding tokenizer_config.json for a tokenizer argument. */
const configDir = (tok: string): string => (existsSync(tok) && statSync(tok).isDirectory() ? tok : dirname(tok))

const usage = (e: unknown) => new UsageError({ message: (e as Error).message })

export const serveCommand = Command.make(
  "serve",
  {
    model: modelFlag,
    tokenizer: tokenizerFlag,
    host: Flag.String("host").pipe(Flag.withDefault("127.0.0.1"), Flag.withDescription("address to listen on (0.0.0.0 for every interface)")),
    port: Flag.Int("port").pipe(Flag.withDefault(8998), Flag.withDescription("TCP port (0 = any free port); MiniMind's server uses 8998")),
    apiKey: Flag.String("api-key").pipe(Flag.optional, Flag.withDescription("require `Authorization: Bearer <key>` on /v1/* (also $BUNMIND_API_KEY)")),
    modelName: Flag.String("model-name").pipe(Flag.optional, Flag.withDescription("the model id clients send (default: the model directory's name)")),
    maxActive: Flag.Int("max-active").pipe(Flag.withDefault(32), Flag.withDescription("requests decoded together (round-robin, one token each per round); more wait in a FIFO queue")),
    maxTokens: Flag.Int("max-tokens").pipe(Flag.withDefault(1024), Flag.withDescription("max_tokens for requests that give none (capped by the context left)")),
    engine: Flag.Literals("engine", ["worker", "inline"] as const).pipe(
      Flag.withDefault("worker" as const),
      Flag.withDescription("worker: decode in a Bun Worker (the event loop stays free); inline: one decode step per event-loop turn on the main thread"),
    ),
    device: deviceFlag,
  },
  (a) =>
    Effect.gen(function* () {
      if (a.port < 0 || a.port > 65535) return yield* Effect.fail(new UsageError({ message: `--port ${a.port}: expected 0..65535` }))
      if (a.maxActive < 1) return yield* Effect.fail(new UsageError({ message: `--max-active ${a.maxActive}: expected at least 1` }))
      if (a.maxTokens < 1) return yield* Effect.fail(new UsageError({ message: `--max-tokens ${a.maxTokens}: expected at least 1` }))
      const device = yield* parseDevice(a.device)
      const tok = yield* resolveTokenizer(a.model, a.tokenizer)
      const apiKey = Option.getOrUndefined(a.apiKey) ?? envApiKey()
      const server = yield* Effect.acquireRelease(
        Effect.tryPromise({
          try: () =>
            startServer({
              modelDir: a.model,
              tokenizer: tok,
              modelName: Option.getOrUndefined(a.modelName),
              apiKey,
              host: a.host,
              port: a.port,
              device,
              engine: a.engine,
              maxActive: a.maxActive,
              defaultMaxTokens: a.maxTokens,
            }),
          catch: usage,
        }),
        (s) => Effect.promise(() => s.shutdown()),
      )
      console.log(`bunmind serve: ${server.url} (model "${server.ctx.modelName}", ${a.engine} engine${apiKey ? ", API key required" : ""})`)
      console.log(`  web chat ${server.url}/   OpenAI API ${server.url}/v1   health ${server.url}/health`)
      return yield* Effect.never
    }).pipe(Effect.scoped),
).pipe(Command.withDescription("serve a model over an OpenAI-compatible API (/v1/chat/completions, streaming, tool calls) with a web chat at /"))

export const chatCommand = Command.make(
  "chat",
  {
    model: modelFlag,
    tokenizer: tokenizerFlag,
    think: Flag.Boolean("think").pipe(Flag.withDefault(false), Flag.withDescription("start in reasoning mode (/think on|off switches)")),
    history: Flag.Int("history").pipe(Flag.withDefault(3), Flag.withDescription("earlier turns sent with each message (0 = each message alone)")),
    system: Flag.String("system").pipe(Flag.optional, Flag.withDescription("system prompt")),
    device: deviceFlag,
    ...samplingFlags,
  },
  (a) =>
    Effect.gen(function* () {
      if (a.history < 0) return yield* Effect.fail(new UsageError({ message: `--history ${a.history}: expected 0 or more` }))
      if (!(a.topP > 0 && a.topP <= 1)) return yield* Effect.fail(new UsageError({ message: `--top-p ${a.topP}: expected a number in (0, 1]` }))
      const device = yield* parseDevice(a.device)
      const tokPath = yield* resolveTokenizer(a.model, a.tokenizer)
      const config = yield* Effect.try({ try: () => loadTokenizerConfig(configDir(tokPath)), catch: usage })
      const model = yield* loadModel(a.model, device)
      const tokenizer = yield* loadTokenizer(tokPath)
      const engine = yield* Effect.acquireRelease(
        Effect.sync(() => new InlineEngine(model, 1)),
        (e) => Effect.promise(() => e.close()),
      )
      const settings: ChatSettings = {
        temperature: a.temperature,
        topK: a.topK,
        topP: a.topP,
        repetitionPenalty: a.repetitionPenalty,
        maxNewTokens: a.maxNewTokens,
        seed: a.seed,
        think: a.think,
        historyTurns: a.history,
        system: Option.getOrUndefined(a.system),
      }
      const tty = process.stdin.isTTY === true
      const rl = createInterface({ input: process.stdin, terminal: tty })
      const interruptHandlers = new Set<() => void>()
      // Ctrl-C stops the answer being written; at the prompt it quits.
      rl.on("SIGINT", () => {
        if (interruptHandlers.size > 0) interruptHandlers.forEach((f) => f())
        else rl.close()
      })
      if (tty) console.error(`bunmind chat: ${a.model} (/help for commands, /exit or Ctrl-D to quit)`)
      yield* Effect.promise(() =>
        runChat(engine, tokenizer, config, settings, {
          lines: rl,
          out: (s) => process.stdout.write(s),
          info: (s) => process.stderr.write(`${s}\n`),
          color: process.stdout.isTTY === true,
          prompt: tty ? () => process.stdout.write("> ") : undefined,
          interrupt: {
            onInterrupt(f) {
              interruptHandlers.add(f)
              return () => interruptHandlers.delete(f)
            },
          },
        }).finally(() => rl.close()),
      )
    }).pipe(Effect.scoped),
).pipe(Command.withDescription("chat with a model in the terminal (streams; /help for commands; reads lines from stdin, so pipes work)"))
