/**
 * `bunmind export gguf`: a checkpoint as one GGUF file for llama.cpp / Ollama, plus an Ollama `Modelfile` beside it.
 *
 * The GGUF itself (weights, architecture and tokenizer metadata) is written by the native library
 * (`bm_model_export_gguf`, core-rs/engine/src/export/gguf.rs), which refuses configs and tokenizers llama.cpp would
 * run but compute differently. This module resolves the files, writes the Modelfile and formats the report.
 *
 * The Modelfile's TEMPLATE is a Go template (Ollama's syntax) derived from the Hugging Face chat template by
 * rendering it: each role's text before and after the message content, and the generation prompt. It is written
 * only when these pieces reproduce the Jinja renders of a few conversations exactly (role-wrapped templates such
 * as ChatML / MiniMind's); otherwise the Modelfile has no TEMPLATE and Ollama reads `tokenizer.chat_template`.
 * Tools and reasoning fields are not carried over (Ollama's `.Tools` / `.Thinking` stay unused).
 */
import { existsSync, statSync } from "node:fs"
import { writeFileAtomic } from "../util/fs.ts"
import { basename, dirname, join, resolve } from "node:path"
import { Data } from "effect"
import { loadNativeSync, utf8, ptrOf } from "../native/library.ts"
import { openModelSync } from "../model/model.ts"
import { loadTokenizerConfig, renderChatTemplate, type ChatMessage, type TokenizerConfig } from "../tokenizer/chat-template.ts"

export class GgufExportError extends Data.TaggedError("GgufExportError")<{ readonly message: string }> {}

export const GGUF_TYPES = ["f32", "f16", "q8_0"] as const
export type GgufType = (typeof GGUF_TYPES)[number]

export interface GgufExportOptions {
  /** Checkpoint directory: config.json + model.safetensors. */
  readonly model: string
  /** The .gguf file to write. */
  readonly out: string
  readonly type?: GgufType
  /** tokenizer.json or its directory (tokenizer_config.json / chat_template.jinja beside it). */
  readonly tokenizer: string
  /** `general.name`; default: the model directory's name. */
  readonly name?: string
  /** Write `Modelfile` beside the .gguf (default true). */
  readonly modelfile?: boolean
}

/** What the native exporter reports (core-rs/engine/src/export/gguf.rs `GgufReport`). */
export interface GgufReport {
  readonly path: string
  readonly architecture: "llama" | "qwen3" | "qwen3moe"
  readonly type: GgufType
  readonly tensors: number
  readonly metadata_keys: number
  readonly bytes: number
  readonly vocab_size: number
  readonly merges: number
  readonly tokenizer_pre: string
  readonly add_bos_token: boolean
  readonly bos_token_id: number | null
  readonly eos_token_id: number | null
  readonly eos_token: string | null
  readonly chat_template: string | null
  readonly rope_permuted: boolean
  readonly rope_scaling: string | null
  readonly warnings: string[]
}

export interface GgufExportResult {
  readonly report: GgufReport
  readonly modelfile?: string
  /** Why the Modelfile has no TEMPLATE, when it has none. */
  readonly templateNote?: string
  readonly seconds: number
}

const fail = (message: string): never => {
  throw new GgufExportError({ message })
}

/** tokenizer_config.json beside the tokenizer, if there is one (its chat template feeds the Modelfile). */
function tokenizerConfigOf(tokenizer: string): TokenizerConfig | undefined {
  const dir = existsSync(tokenizer) && statSync(tokenizer).isDirectory() ? tokenizer : dirname(tokenizer)
  if (!existsSync(join(dir, "tokenizer_config.json"))) return undefined
  return loadTokenizerConfig(dir)
}

/** Runs the native exporter on a loaded copy of `opts.model`. */
export function exportGguf(opts: GgufExportOptions): GgufExportResult {
  const started = performance.now()
  const out = resolve(opts.out)
  if (!existsSync(dirname(out))) fail(`${dirname(out)}: no such directory for --out`)
  if (existsSync(out) && statSync(out).isDirectory()) fail(`${out}: is a directory; --out names the .gguf file`)
  const tokFile = existsSync(opts.tokenizer) && statSync(opts.tokenizer).isDirectory() ? join(opts.tokenizer, "tokenizer.json") : opts.tokenizer
  if (!existsSync(tokFile)) fail(`${tokFile}: not found; pass --tokenizer <tokenizer.json or dir>`)
  let tcfg: TokenizerConfig | undefined
  try {
    tcfg = tokenizerConfigOf(opts.tokenizer)
  } catch (e) {
    fail((e as Error).message)
  }
  const native = loadNativeSync("cpu")
  const model = openModelSync(opts.model, native, "cpu")
  let report: GgufReport
  try {
    const args = utf8(
      JSON.stringify({
        out,
        type: opts.type ?? "f32",
        name: opts.name ?? basename(resolve(opts.model)),
        tokenizer: tokFile,
        source: opts.model,
        // transformers' precedence (chat_template.jinja over the JSON field), as bunmind's chat uses it.
        ...(tcfg ? { chat_template: tcfg.chatTemplate } : {}),
      }),
    )
    report = JSON.parse(
      native.readString("bm_model_export_gguf", (b, c, l) => native.sym.bm_model_export_gguf(model.handle, ptrOf(args), args.byteLength, b, c, l), 1 << 20),
    )
  } finally {
    model.free()
  }
  let modelfile: string | undefined
  let templateNote: string | undefined
  if (opts.modelfile !== false) {
    const m = ollamaModelfile(basename(out), report, tcfg)
    modelfile = join(dirname(out), "Modelfile")
    writeFileAtomic(modelfile, m.text)
    templateNote = m.note
  }
  return { report, modelfile, templateNote, seconds: (performance.now() - started) / 1000 }
}

// ------------------------------------------------------------------------------ Ollama Modelfile

/** The text a role-wrapped chat template puts around each message, and its generation prompt. */
export interface RolePieces {
  readonly systemPre: string
  readonly systemPost: string
  readonly userPre: string
  readonly userPost: string
  readonly assistantPre: string
  readonly assistantPost: string
  readonly generation: string
}

const MARK = { s: "QZSYSTEMQZ", u1: "QZUSERONEQZ", a1: "QZASSISTANTQZ", u2: "QZUSERTWOQZ", a2: "QZASSISTANTTWOQZ" }

/**
 * Splits a chat template into per-role pieces by rendering it with marker contents, then checks that plain
 * concatenation of the pieces reproduces every probe render. Throws (with the reason) when it does not.
 */
export function derivePieces(template: string, special: Partial<Pick<TokenizerConfig, "bosToken" | "eosToken" | "unkToken" | "padToken">> = {}): RolePieces {
  const tokens = { bosToken: special.bosToken, eosToken: special.eosToken, unkToken: special.unkToken, padToken: special.padToken }
  const render = (messages: ChatMessage[], gen: boolean) => renderChatTemplate(template, messages, { ...tokens, addGenerationPrompt: gen })
  const around = (text: string, mark: string, what: string): [string, string] => {
    const i = text.indexOf(mark)
    if (i < 0 || text.indexOf(mark, i + 1) >= 0) throw new Error(`the ${what} content does not appear exactly once in the rendered prompt`)
    return [text.slice(0, i), text.slice(i + mark.length)]
  }
  const u = render([{ role: "user", content: MARK.u1 }], false)
  const [userPre, userPost] = around(u, MARK.u1, "user")
  const su = render([{ role: "system", content: MARK.s }, { role: "user", content: MARK.u1 }], false)
  if (!su.endsWith(u)) throw new Error("a system message changes how the user turn is rendered")
  const [systemPre, systemPost] = around(su.slice(0, su.length - u.length), MARK.s, "system")
  const ua = render([{ role: "user", content: MARK.u1 }, { role: "assistant", content: MARK.a1 }], false)
  if (!ua.startsWith(u)) throw new Error("an assistant reply changes how the user turn before it is rendered")
  const [assistantPre, assistantPost] = around(ua.slice(u.length), MARK.a1, "assistant")
  const ug = render([{ role: "user", content: MARK.u1 }], true)
  if (!ug.startsWith(u)) throw new Error("the generation prompt is not appended after the last turn")
  const generation = ug.slice(u.length)
  const p: RolePieces = { systemPre, systemPost, userPre, userPost, assistantPre, assistantPost, generation }
  // Check conversations the pieces must reproduce.
  const turn = (role: "user" | "assistant", c: string) => (role === "user" ? p.userPre + c + p.userPost : p.assistantPre + c + p.assistantPost)
  const probes: [ChatMessage[], boolean, string][] = [
    [[{ role: "system", content: MARK.s }, { role: "user", content: MARK.u1 }], true, p.systemPre + MARK.s + p.systemPost + turn("user", MARK.u1) + p.generation],
    [
      [{ role: "user", content: MARK.u1 }, { role: "assistant", content: MARK.a1 }, { role: "user", content: MARK.u2 }],
      true,
      turn("user", MARK.u1) + turn("assistant", MARK.a1) + turn("user", MARK.u2) + p.generation,
    ],
    [
      [{ role: "system", content: MARK.s }, { role: "user", content: MARK.u1 }, { role: "assistant", content: MARK.a1 }, { role: "user", content: MARK.u2 }, { role: "assistant", content: MARK.a2 }],
      false,
      p.systemPre + MARK.s + p.systemPost + turn("user", MARK.u1) + turn("assistant", MARK.a1) + turn("user", MARK.u2) + turn("assistant", MARK.a2),
    ],
  ]
  for (const [messages, gen, want] of probes) {
    const got = render(messages, gen)
    if (got !== want) throw new Error(`the template is not a plain per-role wrapper (a ${messages.length}-message conversation renders differently)`)
  }
  for (const [k, v] of Object.entries(p)) {
    if (v.includes("{{") || v.includes("}}") || v.includes('"""')) throw new Error(`the ${k} text contains "{{", "}}" or '"""', which a Modelfile TEMPLATE cannot hold literally`)
  }
  return p
}

/**
 * An Ollama Go template from the pieces. Ollama passes every message in `.Messages` and the joined system
 * messages in `.System`; the range below skips system (and tool) messages. A last assistant message is left open
 * (continuation), as Ollama's own templates do. No `{{-` trimming: every literal byte is a piece's.
 */
export function goTemplate(p: RolePieces): string {
  return (
    `{{ if .Messages }}` +
    `{{ if .System }}${p.systemPre}{{ .System }}${p.systemPost}{{ end }}` +
    `{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}` +
    `{{ if eq .Role "user" }}${p.userPre}{{ .Content }}${p.userPost}{{ if $last }}${p.generation}{{ end }}` +
    `{{ else if eq .Role "assistant" }}${p.assistantPre}{{ .Content }}{{ if not $last }}${p.assistantPost}{{ end }}` +
    `{{ end }}{{ end }}` +
    `{{ else }}` +
    `{{ if .System }}${p.systemPre}{{ .System }}${p.systemPost}{{ end }}` +
    `{{ if .Prompt }}${p.userPre}{{ .Prompt }}${p.userPost}{{ end }}${p.generation}` +
    `{{ end }}`
  )
}

const quote = (s: string) => JSON.stringify(s)

export function ollamaModelfile(ggufName: string, report: GgufReport, tcfg: TokenizerConfig | undefined): { text: string; note?: string } {
  const lines = [`# Written by bunmind export gguf (${report.architecture}, ${report.type}).`, `FROM ./${ggufName}`, ""]
  let note: string | undefined
  const template = report.chat_template
  if (template) {
    try {
      const p = derivePieces(template, tcfg ?? {})
      lines.push(`TEMPLATE """${goTemplate(p)}"""`, "")
    } catch (e) {
      note = `no TEMPLATE in the Modelfile: ${(e as Error).message}; Ollama falls back to the GGUF's tokenizer.chat_template`
    }
  } else {
    note = "no TEMPLATE in the Modelfile: the tokenizer has no chat template"
  }
  const stops = new Set<string>()
  if (report.eos_token) stops.add(report.eos_token)
  if (tcfg?.eosToken) stops.add(tcfg.eosToken)
  for (const s of stops) lines.push(`PARAMETER stop ${quote(s)}`)
  return { text: lines.join("\n") + "\n", note }
}

const mb = (n: number) => `${(n / 1e6).toFixed(2)} MB`

export function formatGgufReport(r: GgufExportResult): string {
  const g = r.report
  const lines = [
    `${g.path}: GGUF ${g.architecture}, ${g.type}, ${g.tensors} tensors, ${g.metadata_keys} metadata keys, ${mb(g.bytes)} (${r.seconds.toFixed(1)} s)`,
    `  tokenizer: gpt2 BPE, pre "${g.tokenizer_pre}", ${g.vocab_size} tokens, ${g.merges} merges, add_bos ${g.add_bos_token}, eos ${g.eos_token_id}${g.eos_token ? ` ${quote(g.eos_token)}` : ""}`,
    `  rope: ${g.rope_permuted ? "q/k rows permuted to the arch's pairing" : "as stored"}${g.rope_scaling ? `; ${g.rope_scaling}` : ""}`,
    `  chat template: ${g.chat_template ? "yes" : "none"}`,
  ]
  if (r.modelfile) lines.push(`${r.modelfile}: Ollama Modelfile (ollama create <name> -f ${r.modelfile})`)
  if (r.templateNote) lines.push(`  note: ${r.templateNote}`)
  for (const w of g.warnings) lines.push(`  warning: ${w}`)
  return lines.join("\n")
}
