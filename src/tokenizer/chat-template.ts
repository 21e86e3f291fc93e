/**
 * Hugging Face chat templates, rendered the way `transformers`' `apply_chat_template(..., tokenize=False)` does.
 *
 * - The template runs on `@huggingface/jinja` with trim_blocks + lstrip_blocks, like transformers' Jinja
 *   environment; template newlines are normalised to "\n" and one trailing newline is dropped, as Jinja2 does.
 * - Messages are cleaned as transformers cleans them: keys holding null/undefined are dropped, and reasoning given
 *   as `thinking` or `reasoning` is also offered as `reasoning_content` (and vice versa as `thinking`).
 * - The template sees `messages`, `tools` (null when absent), `documents` (null), `add_generation_prompt`, the
 *   special tokens (`bos_token`, `eos_token`, `unk_token`, `pad_token`) and any extra kwargs.
 * - `enableThinking` is passed both as `enable_thinking` (Qwen3-style templates) and as `open_thinking` (what
 *   MiniMind's template and training code read).
 * - Python's `str.strip/lstrip/rstrip(chars)` honour their argument here too, and `{{ flag }}` prints True/False
 *   (see `patchPythonSemantics`); MiniMind's template relies on `.strip('\n')` keeping spaces.
 *
 * Known differences that remain. In `tojson` (MiniMind's template dumps tool schemas and object arguments with it):
 * JS objects order integer-like keys first ({"b":1,"2":2} dumps as {"2": 2, "b": 1}), whole floats dump as `1`
 * where Python writes `1.0`, and exponents differ (`1e+20` vs `100000000000000000000`); pass arguments as a JSON
 * string when their exact text matters. In features MiniMind's template does not use: `{{ none }}` prints ""
 * (Python: "None"), `{{ dict }}` and
 * `{{ list }}` print JSON (Python: repr), `true | string` and `'x' ~ true` give "true"; `| trim(chars)` is
 * refused (plain `| trim` works); `| length` counts UTF-16 units, not code points.
 */
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs"
import { basename, dirname, join } from "node:path"
import { Environment, Template } from "@huggingface/jinja"
import { Schema } from "effect"

export type ChatRole = "system" | "user" | "assistant" | "tool"

/** An OpenAI-shaped tool call; `arguments` is an object or the JSON text of one. Templates also accept it flat. */
export interface ToolCall {
  readonly type?: "function"
  readonly id?: string
  readonly function: { readonly name: string; readonly arguments: Record<string, unknown> | string }
}

export interface ChatMessage {
  readonly role: ChatRole
  /** Templates render non-string content (multimodal parts) as empty text. */
  readonly content?: string | ReadonlyArray<unknown> | null
  readonly reasoning_content?: string | null
  readonly tool_calls?: ReadonlyArray<ToolCall | { readonly name: string; readonly arguments: unknown }> | null
  readonly name?: string
  readonly tool_call_id?: string
  /** MiniMind's SFT data carries the tool schemas as a JSON string on the system message. */
  readonly tools?: string | ReadonlyArray<unknown>
  readonly [key: string]: unknown
}

export interface RenderOptions {
  readonly addGenerationPrompt?: boolean
  readonly enableThinking?: boolean
  readonly tools?: ReadonlyArray<unknown>
  readonly bosToken?: string
  readonly eosToken?: string
  readonly unkToken?: string
  readonly padToken?: string
  /** Further template kwargs; they override the special tokens and thinking flags, as transformers' kwargs do. */
  readonly extra?: Record<string, unknown>
  /** Where the template came from, for error messages (a file path, or a name). */
  readonly source?: string
}

export class ChatTemplateError extends Schema.TaggedError<ChatTemplateError>()("ChatTemplateError", {
  /** The file (or template name) the problem is in. */
  file: Schema.String,
  reason: Schema.Literals(["config", "syntax", "render", "input"]),
  message: Schema.String
}) {}

const INLINE_SOURCE = "<inline chat template>"

// ---------------------------------------------------------------------------------------------------------------
// Python semantics where @huggingface/jinja follows JS

/** Characters Python's `str.isspace()` accepts, i.e. what `str.strip()` removes with no argument. */
const PY_WHITESPACE = new Set(
  [..."\t\n\v\f\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000"].concat(
    Array.from({ length: 11 }, (_, i) => String.fromCharCode(0x2000 + i))
  )
)

function pyStrip(s: string, chars: string | null, left: boolean, right: boolean): string {
  const set = chars === null ? PY_WHITESPACE : new Set(chars)
  const cps = [...s]
  let start = 0
  let end = cps.length
  if (left) while (start < end && set.has(cps[start]!)) start++
  if (right) while (end > start && set.has(cps[end - 1]!)) end--
  return cps.slice(start, end).join("")
}

interface RuntimeLike {
  readonly type: string
  readonly value: unknown
}

/**
 * `@huggingface/jinja` 0.5 implements `s.strip(chars)` as JS `trim()` and ignores `chars`, so `'\n  x'.lstrip('\n')`
 * loses the spaces that Python keeps, and prints booleans as true/false. We wrap the string type's builtins getter
 * once, replacing those three methods with Python's behaviour, and give booleans Python's spelling. The classes are
 * not exported, so we reach them through values the Environment builds.
 */
function patchPythonSemantics(): void {
  const env = new Environment()
  const stringValue = env.set("__s", "") as unknown as object
  const functionValue = env.set("__f", () => null) as unknown as object
  const StringValue = stringValue.constructor as new (v: string) => RuntimeLike
  const FunctionValue = functionValue.constructor as new (f: (args: RuntimeLike[]) => RuntimeLike) => RuntimeLike
  const proto = Object.getPrototypeOf(stringValue) as object
  const original = Object.getOwnPropertyDescriptor(proto, "builtins")
  if (original?.get === undefined || (proto as { __pyStrip?: boolean }).__pyStrip) return
  const originalGet = original.get
  const patched = new WeakSet<object>()
  Object.defineProperty(proto, "builtins", {
    configurable: true,
    get(this: RuntimeLike) {
      const builtins = originalGet.call(this) as Map<string, RuntimeLike>
      if (patched.has(builtins)) return builtins
      const self = this.value as string
      const method = (left: boolean, right: boolean) =>
        new FunctionValue((args) => {
          const arg = args[0]
          if (arg !== undefined && arg.type !== "NullValue" && arg.type !== "UndefinedValue" && arg.type !== "StringValue") {
            throw new Error(`strip arg must be None or str, not ${arg.type}`)
          }
          const chars = arg?.type === "StringValue" ? (arg.value as string) : null
          return new StringValue(pyStrip(self, chars, left, right))
        })
      builtins.set("strip", method(true, true))
      builtins.set("lstrip", method(true, false))
      builtins.set("rstrip", method(false, true))
      patched.add(builtins)
      return builtins
    }
  })
  Object.defineProperty(proto, "__pyStrip", { value: true })

  // `{{ flag }}` prints Python's True/False (the library prints JS's true/false).
  const booleanProto = Object.getPrototypeOf(env.set("__b", true)) as { toString(this: RuntimeLike): string }
  Object.defineProperty(booleanProto, "toString", {
    configurable: true,
    value(this: RuntimeLike) {
      return this.value ? "True" : "False"
    }
  })
}
patchPythonSemantics()

// ---------------------------------------------------------------------------------------------------------------
// Compiling and rendering

const compiled = new Map<string, Template>()

/**
 * Jinja2 turns every \r\n and \r of the source into \n. (Its keep_trailing_newline=False, dropping one final \n, is
 * already done by @huggingface/jinja.)
 */
function normaliseSource(template: string): string {
  return template.replace(/\r\n?/g, "\n")
}

function describe(e: unknown): string {
  if (e instanceof Error) return `${e.name === "Error" ? "" : `${e.name}: `}${e.message}`
  return String(e)
}

/** Parses a template (cached), failing with a ChatTemplateError that names `source`. */
export function compileChatTemplate(template: string, source: string = INLINE_SOURCE): Template {
  if (typeof template !== "string") {
    throw new ChatTemplateError({ file: source, reason: "input", message: `${source}: chat template must be a string, got ${typeof template}` })
  }
  const src = normaliseSource(template)
  const hit = compiled.get(src)
  if (hit) return hit
  try {
    const t = new Template(src)
    compiled.set(src, t)
    return t
  } catch (e) {
    throw new ChatTemplateError({ file: source, reason: "syntax", message: `${source}: chat template syntax error: ${syntaxDetail(src, e)}` })
  }
}

/** The parser's messages, made readable; an unknown statement is located when it occurs once in the source. */
function syntaxDetail(src: string, e: unknown): string {
  // The parser runs off the end of its token list (a TypeError) when a block or expression is never closed.
  if (e instanceof TypeError) return "the template ends inside an unclosed block or expression; check that every {% if %}/{% for %}/{% macro %} has its end tag and every {{ / {% is closed"
  const detail = describe(e)
  const stmt = /Unknown statement type: (\w+)/.exec(detail)?.[1]
  if (stmt !== undefined) {
    const hits = [...src.matchAll(new RegExp(String.raw`\{%[-+]?\s*${stmt}\b`, "g"))]
    const line = hits.length === 1 ? ` (line ${src.slice(0, hits[0]!.index).split("\n").length})` : ""
    return `unexpected {% ${stmt} %}${line}: unknown tag, or an end tag that does not match the open block`
  }
  return `${detail}; check the {{ }} / {% %} expressions`
}

/** Deep copy into plain JSON-like data, as transformers does before rendering: drops undefined object fields. */
function plain(value: unknown): unknown {
  if (value === null || typeof value !== "object") return value === undefined ? null : value
  if (Array.isArray(value)) return value.map(plain)
  if (value instanceof Map) return plain(Object.fromEntries(value))
  const out: Record<string, unknown> = {}
  for (const [k, v] of Object.entries(value)) if (v !== undefined) out[k] = plain(v)
  return out
}

const REASONING_FIELDS = ["reasoning_content", "thinking", "reasoning"] as const

/** transformers' `_normalize_chat_messages` + `_alias_reasoning_fields`. */
function normaliseMessages(messages: ReadonlyArray<ChatMessage>, source: string): Record<string, unknown>[] {
  if (!Array.isArray(messages) || messages.length === 0) {
    throw new ChatTemplateError({ file: source, reason: "input", message: `${source}: cannot apply a chat template to an empty conversation; give at least one message` })
  }
  return messages.map((m, i) => {
    if (m === null || typeof m !== "object" || Array.isArray(m)) {
      throw new ChatTemplateError({ file: source, reason: "input", message: `${source}: messages[${i}] must be an object with "role" and "content", got ${JSON.stringify(m)}` })
    }
    const msg: Record<string, unknown> = {}
    for (const [k, v] of Object.entries(m)) if (v !== null && v !== undefined) msg[k] = plain(v)
    const reasoning = REASONING_FIELDS.map((f) => msg[f]).find((v) => v !== undefined)
    if (reasoning === undefined) return msg
    return { thinking: reasoning, ...msg, reasoning_content: reasoning }
  })
}

const RESERVED_KWARGS = ["messages", "tools", "documents", "add_generation_prompt"]

/** Renders `template` for `messages` exactly as transformers' `apply_chat_template(..., tokenize=False)` would. */
export function renderChatTemplate(template: string, messages: ReadonlyArray<ChatMessage>, opts: RenderOptions = {}): string {
  const source = opts.source ?? INLINE_SOURCE
  const compiledTemplate = compileChatTemplate(template, source)
  const chat = normaliseMessages(messages, source)
  for (const key of Object.keys(opts.extra ?? {})) {
    if (RESERVED_KWARGS.includes(key)) {
      throw new ChatTemplateError({ file: source, reason: "input", message: `${source}: extra kwarg "${key}" clashes with a variable the renderer sets; use the matching option instead` })
    }
  }
  const context: Record<string, unknown> = {}
  const specials: Array<[string, string | undefined]> = [
    ["bos_token", opts.bosToken],
    ["eos_token", opts.eosToken],
    ["unk_token", opts.unkToken],
    ["pad_token", opts.padToken]
  ]
  for (const [k, v] of specials) if (v !== undefined) context[k] = v
  if (opts.enableThinking !== undefined) {
    context.enable_thinking = opts.enableThinking
    context.open_thinking = opts.enableThinking
  }
  for (const [k, v] of Object.entries(opts.extra ?? {})) if (v !== undefined) context[k] = plain(v)
  context.messages = chat
  context.tools = opts.tools === undefined ? null : plain(opts.tools)
  context.documents = null
  context.add_generation_prompt = opts.addGenerationPrompt ?? false
  try {
    return compiledTemplate.render(context)
  } catch (e) {
    throw new ChatTemplateError({
      file: source,
      reason: "render",
      message: `${source}: rendering the chat template failed: ${describe(e)}. Check the messages (roles, content types) against what the template expects.`
    })
  }
}

// ---------------------------------------------------------------------------------------------------------------
// tokenizer_config.json

export interface TokenizerConfig {
  /** The tokenizer_config.json that was read. */
  readonly file: string
  /** The default template (the only one, or the one named "default"). */
  readonly chatTemplate: string
  /** Where the default template came from: tokenizer_config.json or chat_template.jinja. */
  readonly chatTemplateSource: string
  /** Every template by name; a single template is named "default". */
  readonly chatTemplates: Readonly<Record<string, string>>
  /** Where each template came from (tokenizer_config.json or a .jinja file beside it), for error messages. */
  readonly chatTemplateSources: Readonly<Record<string, string>>
  readonly bosToken?: string
  readonly eosToken?: string
  readonly padToken?: string
  readonly unkToken?: string
  readonly addBosToken?: boolean
  readonly addEosToken?: boolean
  readonly modelMaxLength?: number
  readonly tokenizerClass?: string
  /** The parsed JSON as read. */
  readonly raw: Readonly<Record<string, unknown>>
}

function configError(file: string, message: string): ChatTemplateError {
  return new ChatTemplateError({ file, reason: "config", message: `${file}: ${message}` })
}

/** A special token field is a string, or an AddedToken dict with `content`. */
function tokenField(raw: Record<string, unknown>, field: string, file: string): string | undefined {
  const v = raw[field]
  if (v === undefined || v === null) return undefined
  if (typeof v === "string") return v
  if (typeof v === "object" && typeof (v as { content?: unknown }).content === "string") return (v as { content: string }).content
  throw configError(file, `field "${field}" must be a string or {"content": string}, got ${JSON.stringify(v)}`)
}

function readText(file: string, what: string): string {
  try {
    return readFileSync(file, "utf8")
  } catch (e) {
    throw configError(file, `cannot read ${what}: ${describe(e)}`)
  }
}

/**
 * Reads a `tokenizer_config.json` (give the file or its directory). As transformers does, a `chat_template.jinja`
 * beside it (and `additional_chat_templates/<name>.jinja`) take precedence over the `chat_template` field, which may
 * be a string or a list of `{name, template}`. Every template is parsed here, so syntax errors surface at load time.
 */
export function loadTokenizerConfig(dirOrFile: string): TokenizerConfig {
  const isDir = existsSync(dirOrFile) ? statSync(dirOrFile).isDirectory() : !dirOrFile.endsWith(".json")
  const file = isDir ? join(dirOrFile, "tokenizer_config.json") : dirOrFile
  const dir = isDir ? dirOrFile : dirname(dirOrFile)
  if (!existsSync(file)) {
    throw configError(file, `not found. Point at a Hugging Face tokenizer directory holding tokenizer_config.json (bunmind writes one next to every tokenizer.json it trains).`)
  }
  let raw: unknown
  try {
    raw = JSON.parse(readText(file, "tokenizer config"))
  } catch (e) {
    if (e instanceof ChatTemplateError) throw e
    throw configError(file, `is not valid JSON: ${describe(e)}`)
  }
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) throw configError(file, "must hold a JSON object")
  const cfg = raw as Record<string, unknown>

  const templates: Record<string, string> = {}
  const sources: Record<string, string> = {}
  const field = cfg.chat_template
  if (typeof field === "string") {
    templates.default = field
    sources.default = file
  } else if (Array.isArray(field)) {
    field.forEach((entry, i) => {
      const { name, template } = (entry ?? {}) as { name?: unknown; template?: unknown }
      if (typeof name !== "string" || typeof template !== "string") {
        throw configError(file, `chat_template[${i}] must be {"name": string, "template": string}`)
      }
      templates[name] = template
      sources[name] = file
    })
  } else if (field !== undefined && field !== null) {
    throw configError(file, `field "chat_template" must be a string or a list of {"name", "template"}, got ${typeof field}`)
  }
  // transformers ≥ 4.43 saves templates as separate files; when present they win over the JSON field.
  const jinjaFile = join(dir, "chat_template.jinja")
  const extraDir = join(dir, "additional_chat_templates")
  const fromFiles: Record<string, string> = {}
  const fileSources: Record<string, string> = {}
  if (existsSync(jinjaFile)) {
    fromFiles.default = readText(jinjaFile, "chat template")
    fileSources.default = jinjaFile
  }
  if (existsSync(extraDir) && statSync(extraDir).isDirectory()) {
    for (const name of readdirSync(extraDir).filter((n) => n.endsWith(".jinja")).sort()) {
      const p = join(extraDir, name)
      fromFiles[basename(name, ".jinja")] = readText(p, "chat template")
      fileSources[basename(name, ".jinja")] = p
    }
  }
  const useFiles = Object.keys(fromFiles).length > 0
  const chatTemplates = useFiles ? fromFiles : templates
  const chatTemplateSources = useFiles ? fileSources : sources

  const names = Object.keys(chatTemplates)
  if (names.length === 0) {
    throw configError(file, `has no "chat_template" (and there is no chat_template.jinja beside it). Add one, e.g. bunmind's MINIMIND_CHAT_TEMPLATE.`)
  }
  for (const name of names) {
    try {
      compileChatTemplate(chatTemplates[name]!, chatTemplateSources[name]!)
    } catch (e) {
      if (!(e instanceof ChatTemplateError)) throw e
      const where = useFiles ? "" : ` field "chat_template"${name === "default" ? "" : ` (template "${name}")`}`
      throw new ChatTemplateError({ file: chatTemplateSources[name]!, reason: e.reason, message: e.message.replace(`${chatTemplateSources[name]!}:`, `${chatTemplateSources[name]!}:${where}`) })
    }
  }
  const defaultName = "default" in chatTemplates ? "default" : names.length === 1 ? names[0]! : undefined
  if (defaultName === undefined) {
    throw configError(file, `has several chat templates (${names.sort().join(", ")}) and none is named "default"`)
  }
  const bool = (k: string) => (typeof cfg[k] === "boolean" ? (cfg[k] as boolean) : undefined)
  return {
    file,
    chatTemplate: chatTemplates[defaultName]!,
    chatTemplateSource: chatTemplateSources[defaultName]!,
    chatTemplates,
    chatTemplateSources,
    bosToken: tokenField(cfg, "bos_token", file),
    eosToken: tokenField(cfg, "eos_token", file),
    padToken: tokenField(cfg, "pad_token", file),
    unkToken: tokenField(cfg, "unk_token", file),
    addBosToken: bool("add_bos_token"),
    addEosToken: bool("add_eos_token"),
    modelMaxLength: typeof cfg.model_max_length === "number" ? cfg.model_max_length : undefined,
    tokenizerClass: typeof cfg.tokenizer_class === "string" ? cfg.tokenizer_class : undefined,
    raw: cfg
  }
}

/**
 * Renders with a loaded config, as `tokenizer.apply_chat_template` would: its special tokens are passed to the
 * template, and with tools a template named "tool_use" is preferred over the default one.
 */
export function applyChatTemplate(
  config: TokenizerConfig,
  messages: ReadonlyArray<ChatMessage>,
  opts: Omit<RenderOptions, "source"> & { readonly templateName?: string } = {}
): string {
  const name = opts.templateName ?? (opts.tools !== undefined && "tool_use" in config.chatTemplates ? "tool_use" : undefined)
  const template = name === undefined ? config.chatTemplate : config.chatTemplates[name]
  if (template === undefined) {
    throw configError(config.file, `has no chat template named "${name}" (it has: ${Object.keys(config.chatTemplates).join(", ")})`)
  }
  const source = name === undefined ? config.chatTemplateSource : config.chatTemplateSources[name] ?? config.file
  return renderChatTemplate(template, messages, {
    bosToken: config.bosToken,
    eosToken: config.eosToken,
    unkToken: config.unkToken,
    padToken: config.padToken,
    ...opts,
    source
  })
}
