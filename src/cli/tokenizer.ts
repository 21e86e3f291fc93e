/** `bunmind tokenizer ...`: train, encode, decode. */
import { Effect, Option } from "effect"
import { Argument, Command, Flag } from "effect/cli"
import { fmtBytes, ProgressBar } from "../util/progress.ts"
import { loadTokenizer, type Tokenizer } from "../tokenizer/tokenizer.ts"
import { SCHEMES, trainTokenizer } from "../tokenizer/train.ts"
import { UsageError } from "./errors.ts"

const tokenizerFlag = Flag.String("tokenizer").pipe(
  Flag.withDescription("a tokenizer.json file, or a directory holding one"),
)

const train = Command.make(
  "train",
  {
    data: Flag.String("data").pipe(
      Flag.atLeast(1),
      Flag.withDescription("text or JSONL files to train on (repeat --data, or list files after it)"),
    ),
    more: Argument.String("files").pipe(Argument.variadic()),
    vocabSize: Flag.Int("vocab-size").pipe(Flag.withDefault(6400), Flag.withDescription("vocabulary size, special tokens included")),
    minFrequency: Flag.Int("min-frequency").pipe(Flag.withDefault(2), Flag.withDescription("minimum pair count for a merge")),
    scheme: Flag.String("scheme").pipe(
      Flag.withDefault("minimind"),
      Flag.withDescription(`special-token scheme: ${SCHEMES.join(" | ")} (minimind = ChatML ids 0-35, v1 = <unk> <s> </s>)`),
    ),
    maxTokenLength: Flag.Int("max-token-length").pipe(Flag.optional, Flag.withDescription("longest token the trainer may create")),
    out: Flag.String("out").pipe(Flag.withDescription("output directory (tokenizer.json + tokenizer_config.json)")),
  },
  (a) =>
    Effect.gen(function* () {
      if (!SCHEMES.includes(a.scheme as never)) {
        return yield* Effect.fail(new UsageError({ message: `--scheme: unknown special-token scheme "${a.scheme}"; use one of: ${SCHEMES.join(", ")}` }))
      }
      const files = [...a.data, ...a.more]
      const bar = new ProgressBar({ label: "tokenizer", format: fmtBytes })
      const tok = yield* trainTokenizer(
        {
          files,
          vocabSize: a.vocabSize,
          minFrequency: a.minFrequency,
          scheme: a.scheme,
          maxTokenLength: Option.getOrUndefined(a.maxTokenLength),
          out: a.out,
        },
        (p) => {
          if (p.phase === "reading") bar.update(p.bytes_read, { phase: "reading", docs: p.documents }, p.bytes_total)
          else if (p.state === "running") bar.update(p.bytes_read, { phase: "merging", docs: p.documents })
        },
      )
      bar.finish(`vocab ${tok.vocabSize}, scheme ${a.scheme} → ${a.out}/tokenizer.json`)
    }).pipe(Effect.scoped),
).pipe(Command.withDescription("train a byte-level BPE tokenizer"))

/** Reads stdin line by line, `batch` lines at a time, numbering lines from 1. */
async function* stdinBatches(batch = 512): AsyncGenerator<{ first: number; lines: string[] }> {
  let lines: string[] = []
  let first = 1
  let n = 0
  let blank = 0
  for await (const line of console) {
    n++
    // Blank lines are only allowed at the very end of the input (a trailing newline).
    if (line === "") {
      blank++
      continue
    }
    if (blank) throw new UsageError({ message: `stdin:${n - blank}: empty line; every line must hold one JSON value` })
    lines.push(line)
    if (lines.length >= batch) {
      yield { first, lines }
      first = n + 1
      lines = []
    }
  }
  if (lines.length) yield { first, lines }
}

const parseLine = <T>(line: string, lineNo: number, check: (v: unknown) => v is T, expected: string): T => {
  let v: unknown
  try {
    v = JSON.parse(line)
  } catch (e) {
    throw new UsageError({ message: `stdin:${lineNo}: not valid JSON (${(e as Error).message}); expected ${expected}` })
  }
  if (!check(v)) throw new UsageError({ message: `stdin:${lineNo}: expected ${expected}, got ${JSON.stringify(v).slice(0, 60)}` })
  return v
}

const isString = (v: unknown): v is string => typeof v === "string"
const isIds = (v: unknown): v is number[] => Array.isArray(v) && v.every((x) => Number.isInteger(x) && x >= 0 && x <= 0xffffffff)

/** Runs `each` over a batch, keeping the outputs made before a failing line. */
const upTo = <T>(lines: string[], first: number, each: (l: string, lineNo: number) => T): { ok: T[]; error?: unknown } => {
  const ok: T[] = []
  for (let i = 0; i < lines.length; i++) {
    try {
      ok.push(each(lines[i]!, first + i))
    } catch (error) {
      return { ok, error }
    }
  }
  return { ok }
}

const pump = (tokenizer: string, body: (tok: Tokenizer, first: number, lines: string[]) => { ok: string[]; error?: unknown }) =>
  Effect.gen(function* () {
    const tok = yield* loadTokenizer(tokenizer)
    yield* Effect.tryPromise({
      try: async () => {
        const writer = Bun.stdout.writer()
        try {
          for await (const { first, lines } of stdinBatches()) {
            const { ok, error } = body(tok, first, lines)
            for (const out of ok) writer.write(out + "\n")
            await writer.flush()
            if (error) throw error
          }
        } finally {
          await writer.flush()
        }
        await writer.end()
      },
      catch: (e) => e as Error,
    })
  }).pipe(Effect.scoped)

const encode = Command.make(
  "encode",
  {
    tokenizer: tokenizerFlag,
    addSpecial: Flag.Boolean("add-special-tokens").pipe(Flag.withDefault(false), Flag.withDescription("apply the post-processor's special tokens")),
  },
  (a) =>
    pump(a.tokenizer, (tok, first, lines) => {
      const { ok: texts, error } = upTo(lines, first, (l, n) => parseLine(l, n, isString, "one JSON string per line"))
      return { ok: tok.encodeBatch(texts, a.addSpecial).map((ids) => `[${ids.join(",")}]`), error }
    }),
).pipe(Command.withDescription("stdin: one JSON string per line → stdout: one JSON array of token ids per line"))

const decode = Command.make(
  "decode",
  {
    tokenizer: tokenizerFlag,
    skipSpecial: Flag.Boolean("skip-special-tokens").pipe(Flag.withDefault(false), Flag.withDescription("drop special tokens from the text")),
  },
  (a) =>
    pump(a.tokenizer, (tok, first, lines) =>
      upTo(lines, first, (l, n) => {
        const ids = parseLine(l, n, isIds, "one JSON array of token ids per line")
        try {
          return JSON.stringify(tok.decode(ids, a.skipSpecial))
        } catch (e) {
          throw new UsageError({ message: `stdin:${n}: ${(e as Error).message}` })
        }
      }),
    ),
).pipe(Command.withDescription("stdin: one JSON array of ids per line → stdout: one JSON string per line"))

export const tokenizerCommand = Command.make("tokenizer").pipe(
  Command.withDescription("train and use byte-level BPE tokenizers (Hugging Face tokenizer.json)"),
  Command.withSubcommands([train, encode, decode]),
)
