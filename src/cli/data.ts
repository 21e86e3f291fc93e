/** `bunmind data ...`: prepare (tokenize into shards), inspect, view (hyperparam). */
import { existsSync, statSync } from "node:fs"
import { join, resolve } from "node:path"
import { Effect, Option } from "effect"
import { Argument, Command, Flag } from "effect/cli"
import {
  formatDatasetInspection,
  formatShardInspection,
  inspectDataset,
  inspectShards,
  prepareShards,
} from "../data/index.ts"
import { loadTokenizer } from "../tokenizer/tokenizer.ts"
import { UsageError } from "./errors.ts"

const KINDS = ["pretrain", "sft", "dpo"] as const

const prepare = Command.make(
  "prepare",
  {
    input: Flag.String("input").pipe(Flag.atLeast(1), Flag.withDescription("JSONL / CSV / Parquet / txt files (repeat --input)")),
    more: Argument.String("files").pipe(Argument.variadic()),
    tokenizer: Flag.String("tokenizer").pipe(Flag.withDescription("tokenizer.json or its directory (with tokenizer_config.json for chat data)")),
    kind: Flag.Literals("kind", KINDS).pipe(Flag.withDescription("dataset shape")),
    out: Flag.String("out").pipe(Flag.withDescription("output shard directory")),
    maxLen: Flag.Int("max-len").pipe(Flag.withDefault(512), Flag.withDescription("longest sample in tokens")),
    pack: Flag.Boolean("pack").pipe(Flag.withDefault(false), Flag.withDescription("pack pretraining documents into full rows")),
    onBadRecord: Flag.Literals("on-bad-record", ["skip", "fail"] as const).pipe(Flag.withDefault("skip" as const)),
    overLong: Flag.Literals("over-long", ["truncate", "skip"] as const).pipe(Flag.withDefault("truncate" as const)),
    skipUnlabeled: Flag.Boolean("skip-unlabeled").pipe(
      Flag.withDefault(false),
      Flag.withDescription("SFT/DPO: drop samples with no assistant token within --max-len (upstream keeps them)"),
    ),
    systemPromptP: Flag.Finite("random-system-prompt").pipe(Flag.withDefault(0), Flag.withDescription("SFT: share of samples given a random system prompt (upstream 0.2)")),
    stripThinkP: Flag.Finite("strip-empty-think").pipe(Flag.withDefault(0), Flag.withDescription("SFT: share of empty think blocks removed (upstream 0.8)")),
    seed: Flag.Int("seed").pipe(Flag.withDefault(42)),
  },
  (a) =>
    Effect.gen(function* () {
      const r = yield* prepareShards({
        input: [...a.input, ...a.more],
        tokenizer: a.tokenizer,
        kind: a.kind,
        outDir: a.out,
        maxLen: a.maxLen,
        pack: a.pack,
        onBadRecord: a.onBadRecord,
        overLong: a.overLong,
        unlabeled: a.skipUnlabeled ? "skip" : "keep",
        augment: { systemPromptP: a.systemPromptP, stripEmptyThinkP: a.stripThinkP, seed: a.seed },
        log: true,
      })
      console.log(`${r.outDir}: ${r.summary}`)
    }),
).pipe(Command.withDescription("tokenize a dataset once into memory-mapped shards (uint16 ids + loss masks + index)"))

const inspect = Command.make(
  "inspect",
  {
    path: Argument.String("path").pipe(Argument.withDescription("a shard directory or a dataset file")),
    sample: Flag.Int("sample").pipe(Flag.withDefault(0), Flag.withDescription("which sample to render with its mask")),
    tokenizer: Flag.String("tokenizer").pipe(Flag.optional, Flag.withDescription("decode the rendered sample (default: the shard index's tokenizer)")),
    kind: Flag.Literals("kind", KINDS).pipe(Flag.optional),
  },
  (a) =>
    Effect.gen(function* () {
      const p = resolve(a.path)
      if (!existsSync(p)) return yield* Effect.fail(new UsageError({ message: `${a.path}: no such file or directory` }))
      if (statSync(p).isDirectory()) {
        const idx = JSON.parse(yield* Effect.promise(() => Bun.file(join(p, "index.json")).text()).pipe(Effect.orElseSucceed(() => "{}")))
        const tokPath = Option.getOrUndefined(a.tokenizer) ?? idx?.tokenizer?.path
        const tok = tokPath && existsSync(tokPath) ? yield* loadTokenizer(tokPath) : undefined
        const r = yield* inspectShards(p, { sampleIndex: a.sample, decode: tok ? (ids) => tok.decode(ids, false) : undefined })
        console.log(formatShardInspection(r))
      } else {
        const r = yield* inspectDataset(p, { kind: Option.getOrUndefined(a.kind) })
        console.log(formatDatasetInspection(r))
      }
    }).pipe(Effect.scoped),
).pipe(Command.withDescription("counts, token statistics and a rendered sample with its loss mask (⟦trained⟧)"))

const view = Command.make(
  "view",
  { file: Argument.String("file").pipe(Argument.withDescription("a JSONL / CSV / Parquet file to browse")) },
  (a) =>
    Effect.gen(function* () {
      const file = resolve(a.file)
      if (!existsSync(file)) return yield* Effect.fail(new UsageError({ message: `${a.file}: no such file` }))
      const bin = resolve(import.meta.dir, "..", "..", "node_modules", ".bin", "hyperparam")
      // Always pass the file: with no argument hyperparam contacts a remote service.
      const proc = Bun.spawn([bin, file], { stdio: ["inherit", "inherit", "inherit"] })
      yield* Effect.promise(() => proc.exited)
    }),
).pipe(Command.withDescription("open a dataset file in hyperparam's local viewer"))

export const dataCommand = Command.make("data").pipe(
  Command.withDescription("prepare, inspect and view datasets (MiniMind JSONL shapes, seed v1 CSV, Parquet)"),
  Command.withSubcommands([prepare, inspect, view]),
)
