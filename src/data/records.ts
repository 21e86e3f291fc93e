/**
 * MiniMind record shapes (the JSONL files upstream's `dataset/lm_dataset.py` reads), their Effect Schemas, and validation that
 * names file, line and field: `sft.jsonl:17: conversations[2].role: expected one of
 * system|user|assistant|tool, got "bot"`.
 *
 *   pretrain  { text }                                          (v1 CSV: a `text` column, same shape)
 *   sft       { conversations: [{ role, content, reasoning_content?, tools?, tool_calls? }] }
 *             (v1 CSV: `history`, `q`, `a`, history a Python list of [q, a] pairs)
 *   dpo       { chosen: [turns], rejected: [turns] }
 *
 * Rules beyond the shape: pretrain text is non-empty; a conversation has at least one turn and at
 * least one assistant turn; `tools` and `tool_calls` are arrays or JSON strings of arrays (MiniMind
 * stores them as strings) and are parsed (a string that is empty or blank counts as none).
 *
 * Contents, as upstream trains on them: any turn's content may be an empty (or blank) string — a
 * system turn that only carries `tools`, an empty tool result, an empty user or assistant turn —
 * and is rendered as it is. A content that is null or absent stays absent (`ChatTurn.content`
 * undefined), so the chat template sees the turn without one, as after transformers drops None
 * values: MiniMind's template renders it as empty text, except in a leading system turn, where
 * rendering fails (upstream's too) and samples.ts treats the record as a bad record (skipped and
 * counted, naming the turn; fatal under onBadRecord "fail").
 */
import { Effect, Result, Schema, SchemaIssue, Stream } from "effect"
import type { BadRecordLog } from "./bad-records.ts"
import { BadRecord } from "./errors.ts"
import { parsePyLiteral, type PyValue } from "./py-literal.ts"
import { mapChunksFiltered, type RawRecord } from "./raw-record.ts"

export type DataKind = "pretrain" | "sft" | "dpo"
export const ROLES = ["system", "user", "assistant", "tool"] as const
export type Role = (typeof ROLES)[number]

/** One chat turn after validation; `tools`/`tool_calls` are parsed arrays. */
export interface ChatTurn {
  readonly role: Role
  /** Absent when the record had none (null or no key): the template then sees no content key. */
  readonly content?: string
  readonly reasoning_content?: string
  readonly tools?: unknown[]
  readonly tool_calls?: unknown[]
}
export interface PretrainRecord {
  readonly text: string
}
export interface SftRecord {
  readonly conversations: ChatTurn[]
}
export interface DpoRecord {
  readonly chosen: ChatTurn[]
  readonly rejected: ChatTurn[]
}
export type RecordOf<K extends DataKind> = K extends "pretrain" ? PretrainRecord : K extends "sft" ? SftRecord : DpoRecord

/** A validated record with its origin. */
export interface Validated<K extends DataKind = DataKind> {
  readonly file: string
  readonly line: number
  readonly record: RecordOf<K>
}

// ---- schemas (the shapes as they arrive; JSON, CSV and Parquet give null for absent fields) ----

const JsonList = Schema.Union([Schema.String, Schema.Array(Schema.Unknown)])
export const TurnSchema = Schema.Struct({
  role: Schema.Literals(ROLES),
  content: Schema.optionalKey(Schema.NullOr(Schema.String)),
  reasoning_content: Schema.optionalKey(Schema.NullOr(Schema.String)),
  tools: Schema.optionalKey(Schema.NullOr(JsonList)),
  tool_calls: Schema.optionalKey(Schema.NullOr(JsonList)),
})
export const Conversation = Schema.Array(TurnSchema)
export const PretrainSchema = Schema.Struct({ text: Schema.String })
export const SftSchema = Schema.Struct({ conversations: Conversation })
export const DpoSchema = Schema.Struct({ chosen: Conversation, rejected: Conversation })
/** The seed's v1 SFT CSV row. */
export const SftV1Schema = Schema.Struct({
  q: Schema.String,
  a: Schema.String,
  history: Schema.optionalKey(Schema.NullOr(Schema.String)),
})

// ---- error formatting ----

interface Problem {
  readonly field?: string
  readonly reason: string
}

const fieldPath = (path: ReadonlyArray<PropertyKey>): string =>
  path.reduce<string>((s, k) => (typeof k === "number" ? `${s}[${k}]` : s ? `${s}.${String(k)}` : String(k)), "")

const valueAt = (root: unknown, path: ReadonlyArray<PropertyKey>): unknown =>
  path.reduce<unknown>((v, k) => (v !== null && typeof v === "object" ? (v as Record<PropertyKey, unknown>)[k] : undefined), root)

export const show = (v: unknown): string => {
  const s = v === undefined ? "nothing" : JSON.stringify(v) ?? String(v)
  return s.length > 60 ? `${s.slice(0, 57)}...` : s
}

const formatter = SchemaIssue.makeFormatterStandardSchemaV1()

const problemsOf = (error: Schema.SchemaError, input: unknown): Problem[] =>
  formatter(error.issue).issues.map(({ path, message }) => {
    const keys = (path ?? []).map((p) => (typeof p === "object" && p !== null && "key" in p ? p.key : p)) as PropertyKey[]
    const field = fieldPath(keys)
    if (message === "Missing key") return { field, reason: "missing" }
    const literals = /^Expected ((?:"[^"]*"(?: \| )?)+)$/.exec(message)
    const expected = literals ? `expected one of ${literals[1]!.replace(/"/g, "").replace(/ \| /g, "|")}` : message.replace(/^Expected/, "expected")
    return { field, reason: `${expected}, got ${show(valueAt(input, keys))}` }
  })

const decode = <S extends Schema.Top & { readonly DecodingServices: never }>(schema: S) => {
  const run = Schema.decodeUnknownResult(schema as any, { errors: "all" })
  return (input: unknown): Result.Result<S["Type"], Problem[]> => {
    const r = run(input) as Result.Result<S["Type"], Schema.SchemaError>
    return Result.isSuccess(r) ? Result.succeed(r.success) : Result.fail(problemsOf(r.failure, input))
  }
}
const decodePretrain = decode(PretrainSchema)
const decodeSft = decode(SftSchema)
const decodeDpo = decode(DpoSchema)
const decodeSftV1 = decode(SftV1Schema)

// ---- rules beyond the shape ----

const parseList = (v: string | ReadonlyArray<unknown>, field: string, problems: Problem[]): unknown[] | undefined => {
  if (typeof v !== "string") return [...v]
  if (v.trim() === "") return undefined
  try {
    const parsed: unknown = JSON.parse(v)
    if (Array.isArray(parsed)) return parsed
    problems.push({ field, reason: `expected a JSON array, got ${show(parsed)}` })
  } catch (e) {
    problems.push({ field, reason: `invalid JSON: ${e instanceof Error ? e.message : String(e)}` })
  }
  return undefined
}

type TurnIn = Schema.Schema.Type<typeof TurnSchema>

const checkConversation = (turns: ReadonlyArray<TurnIn>, at: string, problems: Problem[]): ChatTurn[] => {
  if (turns.length === 0) problems.push({ field: at, reason: "empty conversation" })
  const out = turns.map((t, i): ChatTurn => {
    const field = `${at}[${i}]`
    const tools = t.tools != null ? parseList(t.tools, `${field}.tools`, problems) : undefined
    const toolCalls = t.tool_calls != null ? parseList(t.tool_calls, `${field}.tool_calls`, problems) : undefined
    return {
      role: t.role,
      ...(t.content != null ? { content: t.content } : {}),
      ...(t.reasoning_content != null ? { reasoning_content: t.reasoning_content } : {}),
      ...(tools && tools.length > 0 ? { tools } : {}),
      ...(toolCalls && toolCalls.length > 0 ? { tool_calls: toolCalls } : {}),
    }
  })
  if (turns.length > 0 && !turns.some((t) => t.role === "assistant"))
    problems.push({ field: at, reason: "no assistant turn: nothing to train on" })
  return out
}

/** v1 row → conversation, as the seed's SFTDataset built it (history pairs of length < 2 skipped). */
const fromV1 = (row: Schema.Schema.Type<typeof SftV1Schema>, problems: Problem[]): TurnIn[] => {
  const turns: TurnIn[] = []
  if (row.history != null && row.history.trim() !== "") {
    let history: PyValue
    try {
      history = parsePyLiteral(row.history)
    } catch (e) {
      problems.push({ field: "history", reason: `not a Python list literal: ${e instanceof Error ? e.message : e}` })
      return []
    }
    if (!Array.isArray(history)) {
      problems.push({ field: "history", reason: `expected a list of [q, a] pairs, got ${show(history)}` })
      return []
    }
    for (const pair of history) {
      if (!Array.isArray(pair) || pair.length <= 1) continue
      turns.push({ role: "user", content: String(pair[0]) }, { role: "assistant", content: String(pair[1]) })
    }
  }
  turns.push({ role: "user", content: row.q }, { role: "assistant", content: row.a })
  return turns
}

const isObject = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === "object" && !Array.isArray(v)

/** Validates one raw value as a record of `kind`; on failure, the problems found (first first). */
export const validateValue = <K extends DataKind>(kind: K, value: unknown): Result.Result<RecordOf<K>, Problem[]> => {
  const problems: Problem[] = []
  const done = (rec: unknown) => (problems.length ? Result.fail(problems) : Result.succeed(rec as RecordOf<K>))
  if (!isObject(value)) return Result.fail([{ reason: `expected a JSON object, got ${show(value)}` }])
  switch (kind) {
    case "pretrain": {
      const r = decodePretrain(value)
      if (Result.isFailure(r)) return Result.fail(r.failure)
      if (r.success.text.trim() === "") problems.push({ field: "text", reason: "empty text" })
      return done({ text: r.success.text })
    }
    case "sft": {
      if (!("conversations" in value) && ("q" in value || "a" in value)) {
        const v1 = decodeSftV1(value)
        if (Result.isFailure(v1)) return Result.fail(v1.failure)
        const turns = fromV1(v1.success, problems)
        if (problems.length) return Result.fail(problems)
        // q and a are strings and the turns' roles fixed: the synthesized conversation always passes
        return done({ conversations: checkConversation(turns, "conversations", problems) })
      }
      const r = decodeSft(value)
      if (Result.isFailure(r)) return Result.fail(r.failure)
      return done({ conversations: checkConversation(r.success.conversations, "conversations", problems) })
    }
    case "dpo": {
      const r = decodeDpo(value)
      if (Result.isFailure(r)) return Result.fail(r.failure)
      const chosen = checkConversation(r.success.chosen, "chosen", problems)
      const rejected = checkConversation(r.success.rejected, "rejected", problems)
      return done({ chosen, rejected })
    }
  }
  return Result.fail([{ reason: `unknown data kind ${kind}` }])
}

/** One raw record → a validated record, or the `BadRecord` naming its first problem. */
export const validateRecord = <K extends DataKind>(kind: K, raw: RawRecord): Result.Result<Validated<K>, BadRecord> => {
  const r = validateValue(kind, raw.value)
  if (Result.isSuccess(r)) return Result.succeed({ file: raw.file, line: raw.line, record: r.success })
  const [first, ...rest] = r.failure
  const more = rest.length ? ` (and ${rest.length} more problem${rest.length > 1 ? "s" : ""})` : ""
  return Result.fail(new BadRecord({ file: raw.file, line: raw.line, field: first?.field || undefined, reason: `${first?.reason ?? "invalid"}${more}` }))
}

/** Validates a stream of raw records, sending bad ones through the `onBadRecord` policy. */
export const validateRecords =
  <K extends DataKind>(kind: K, bad: BadRecordLog) =>
  <E, R>(self: Stream.Stream<RawRecord, E, R>): Stream.Stream<Validated<K>, E | BadRecord, R> =>
    self.pipe(
      mapChunksFiltered((raws) =>
        Effect.gen(function* () {
          const out: Validated<K>[] = []
          for (const raw of raws) {
            const r = validateRecord(kind, raw)
            if (Result.isSuccess(r)) out.push(r.success)
            else yield* bad.bad(r.failure)
          }
          return out
        }),
      ),
    )

/** Guesses the kind of a raw value from its keys (for `inspectDataset`). */
export const detectKind = (value: unknown): DataKind | undefined => {
  if (!isObject(value)) return undefined
  if ("conversations" in value || ("q" in value && "a" in value)) return "sft"
  if ("chosen" in value && "rejected" in value) return "dpo"
  if ("text" in value) return "pretrain"
  return undefined
}
