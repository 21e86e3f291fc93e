/**
 * The OpenAI chat-completions request as an Effect Schema, and OpenAI-shaped error bodies.
 * Unknown fields are ignored (clients send many); known fields with wrong types or out-of-range values
 * are rejected with the path of the first problem as `param`.
 */
import { Schema, SchemaIssue } from "effect"

const Int = Schema.Number.check(Schema.isInt())
const nullable = <S extends Schema.Top>(s: S) => Schema.optional(Schema.NullOr(s))

const TextPart = Schema.Struct({ type: Schema.Literal("text"), text: Schema.String })

const ToolCallIn = Schema.Struct({
  id: Schema.optional(Schema.String),
  type: Schema.optional(Schema.Literal("function")),
  function: Schema.Struct({
    name: Schema.String,
    arguments: Schema.Union([Schema.String, Schema.Record(Schema.String, Schema.Unknown)]),
  }),
})

export const Message = Schema.Struct({
  role: Schema.Literals(["system", "user", "assistant", "tool"]),
  content: nullable(Schema.Union([Schema.String, Schema.Array(TextPart)])),
  name: Schema.optional(Schema.String),
  tool_calls: nullable(Schema.Array(ToolCallIn)),
  tool_call_id: Schema.optional(Schema.String),
  reasoning_content: nullable(Schema.String),
})
export type Message = typeof Message.Type

const Tool = Schema.Struct({
  type: Schema.Literal("function"),
  function: Schema.Struct({
    name: Schema.String,
    description: Schema.optional(Schema.String),
    parameters: Schema.optional(Schema.Record(Schema.String, Schema.Unknown)),
  }),
})

export const ChatCompletionRequest = Schema.Struct({
  model: Schema.String,
  messages: Schema.Array(Message).check(Schema.isMinLength(1)),
  stream: nullable(Schema.Boolean),
  stream_options: nullable(Schema.Struct({ include_usage: Schema.optional(Schema.Boolean) })),
  max_tokens: nullable(Int.check(Schema.isGreaterThanOrEqualTo(1))),
  max_completion_tokens: nullable(Int.check(Schema.isGreaterThanOrEqualTo(1))),
  temperature: nullable(Schema.Number.check(Schema.isBetween({ minimum: 0, maximum: 2 }))),
  top_p: nullable(Schema.Number.check(Schema.isGreaterThan(0), Schema.isLessThanOrEqualTo(1))),
  /** Not OpenAI (vLLM's extension): 0 or -1 = off. */
  top_k: nullable(Int.check(Schema.isGreaterThanOrEqualTo(-1))),
  stop: nullable(Schema.Union([Schema.String, Schema.Array(Schema.String).check(Schema.isMaxLength(16))])),
  seed: nullable(Int),
  /** Not OpenAI: CTRL-style penalty as MiniMind uses it; wins over frequency/presence penalties. */
  repetition_penalty: nullable(Schema.Number.check(Schema.isGreaterThan(0), Schema.isLessThanOrEqualTo(10))),
  frequency_penalty: nullable(Schema.Number.check(Schema.isBetween({ minimum: -2, maximum: 2 }))),
  presence_penalty: nullable(Schema.Number.check(Schema.isBetween({ minimum: -2, maximum: 2 }))),
  n: nullable(Int.check(Schema.isBetween({ minimum: 1, maximum: 1 }))),
  logprobs: nullable(Schema.Literal(false)),
  tools: nullable(Schema.Array(Tool)),
  tool_choice: nullable(
    Schema.Union([Schema.Literals(["none", "auto", "required"]), Schema.Struct({ type: Schema.Literal("function"), function: Schema.Struct({ name: Schema.String }) })]),
  ),
  /** MiniMind / Qwen3 switch: open a `<think>` block in the prompt. Also read from `chat_template_kwargs`. */
  enable_thinking: nullable(Schema.Boolean),
  chat_template_kwargs: nullable(Schema.Struct({ enable_thinking: Schema.optional(Schema.Boolean), open_thinking: Schema.optional(Schema.Boolean) })),
  /** Not OpenAI (vLLM's extension): keep generating past the end-of-turn token (benchmarks). */
  ignore_eos: nullable(Schema.Boolean),
  user: nullable(Schema.String),
})
export type ChatCompletionRequest = typeof ChatCompletionRequest.Type

export interface OpenAIError {
  readonly status: number
  readonly message: string
  readonly type: string
  readonly param: string | null
  readonly code: string | null
}

export const apiError = (status: number, message: string, param: string | null = null, code: string | null = null, type = "invalid_request_error"): OpenAIError => ({
  status,
  message,
  type,
  param,
  code,
})

export const errorBody = (e: OpenAIError) => ({ error: { message: e.message, type: e.type, param: e.param, code: e.code } })

const formatter = SchemaIssue.makeFormatterStandardSchemaV1()

const pathText = (path: ReadonlyArray<PropertyKey | { key: PropertyKey }>) =>
  path
    .map((p) => (typeof p === "object" ? p.key : p))
    .map((k, i) => (typeof k === "number" ? `[${k}]` : i === 0 ? String(k) : `.${String(k)}`))
    .join("")

const decode = Schema.decodeUnknownExit(ChatCompletionRequest, { errors: "first" })

/** Validates a parsed JSON body; the error names the first bad field. */
export function decodeChatRequest(body: unknown): { ok: true; value: ChatCompletionRequest } | { ok: false; error: OpenAIError } {
  if (body === null || typeof body !== "object" || Array.isArray(body)) {
    return { ok: false, error: apiError(400, "the request body must be a JSON object", null, "invalid_value") }
  }
  const exit = decode(body)
  if (exit._tag === "Success") return { ok: true, value: exit.value }
  const err = (exit.cause as unknown as { reasons?: Array<{ error?: { issue?: SchemaIssue.Issue } }> }).reasons?.[0]?.error
  const first = err?.issue ? formatter(err.issue).issues[0] : undefined
  const param = first ? pathText(first.path ?? []) : null
  const message = first ? `${param ? `${param}: ` : ""}${first.message}` : "invalid request"
  return { ok: false, error: apiError(400, message, param || null, "invalid_value") }
}
