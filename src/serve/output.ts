/**
 * From generated token ids to what a chat client sees: incremental UTF-8-safe detokenizing, stop
 * sequences (the output is cut before the first one, which is never emitted), the `<think>` block
 * split into `reasoning_content`, and MiniMind's `<tool_call>\n{json}\n</tool_call>` blocks turned
 * into OpenAI tool calls. Pure and synchronous: the server, the terminal chat and the tests share it.
 */
import type { Tokenizer } from "../tokenizer/tokenizer.ts"

/**
 * Decodes a growing id sequence into text pieces, vLLM-style: only a short window of ids is decoded per
 * token, and a piece is held back while it ends inside a multi-byte character.
 */
export class IncrementalDecoder {
  readonly ids: number[] = []
  #prefix = 0
  #read = 0

  constructor(readonly tokenizer: Tokenizer) {}

  push(id: number): string {
    this.ids.push(id)
    const before = this.tokenizer.decode(this.ids.slice(this.#prefix, this.#read), true)
    const after = this.tokenizer.decode(this.ids.slice(this.#prefix), true)
    if (after.length > before.length && !after.endsWith("\uFFFD")) {
      this.#prefix = this.#read
      this.#read = this.ids.length
      return after.slice(before.length)
    }
    return ""
  }

  /** What is still held back (an incomplete character at the very end decodes as U+FFFD). */
  flush(): string {
    const before = this.tokenizer.decode(this.ids.slice(this.#prefix, this.#read), true)
    const after = this.tokenizer.decode(this.ids.slice(this.#prefix), true)
    this.#prefix = this.#read = this.ids.length
    return after.length > before.length ? after.slice(before.length) : ""
  }
}

export interface ToolCallOut {
  readonly id: string
  readonly type: "function"
  readonly function: { readonly name: string; readonly arguments: string }
}

/** A piece of output for the client; `reasoning` belongs in `reasoning_content`. */
export interface Delta {
  readonly content?: string
  readonly reasoning?: string
}

export type FinishReason = "stop" | "length" | "tool_calls"

export interface ParseOptions {
  /** Stop sequences; the output ends before the first occurrence of any of them. */
  readonly stop?: ReadonlyArray<string>
  /** The prompt opened a `<think>` block (thinking on): output starts as reasoning. */
  readonly startInThink?: boolean
  /** Turn `<tool_call>` blocks into tool calls (the request offered tools). */
  readonly parseTools?: boolean
}

const THINK_OPEN = "<think>"
const THINK_CLOSE = "</think>"
const TOOL_OPEN = "<tool_call>"
const TOOL_BLOCK = /<tool_call>\s*([\s\S]*?)\s*<\/tool_call>/g

/** Length of the longest suffix of `text` that is a proper prefix of one of `needles`. */
function partialSuffix(text: string, needles: ReadonlyArray<string>): number {
  let best = 0
  for (const n of needles) {
    for (let k = Math.min(n.length - 1, text.length); k > best; k--) {
      if (text.endsWith(n.slice(0, k))) {
        best = k
        break
      }
    }
  }
  return best
}

let callCounter = 0
const callId = () => `call_${Date.now().toString(36)}${(callCounter++).toString(36)}${Math.random().toString(36).slice(2, 8)}`

/** Parses the `<tool_call>` blocks of `text`; calls that are not `{"name": string, "arguments"?: ...}` JSON are skipped. */
export function parseToolCalls(text: string): ToolCallOut[] {
  const calls: ToolCallOut[] = []
  for (const m of text.matchAll(TOOL_BLOCK)) {
    try {
      const v = JSON.parse(m[1]!) as { name?: unknown; arguments?: unknown }
      if (v === null || typeof v !== "object" || typeof v.name !== "string") continue
      const args = v.arguments === undefined ? {} : v.arguments
      calls.push({ id: callId(), type: "function", function: { name: v.name, arguments: typeof args === "string" ? args : JSON.stringify(args) } })
    } catch {
      // Not JSON: left as text.
    }
  }
  return calls
}

/**
 * Splits raw generated text, fed piece by piece, into content / reasoning deltas. Text that might be the
 * start of a stop sequence or of a tag is held back until it is decided.
 */
export class OutputParser {
  /** Raw text received and not yet routed (a possible stop-sequence prefix). */
  #pending = ""
  /** Stop-free text not yet routed (a possible tag prefix). */
  #buffer = ""
  #mode: "start" | "think" | "content" | "tool"
  #reasoningStarted = false
  #contentStarted = false
  /** Trailing whitespace held until more text follows (see #emitReasoning / #emitContent). */
  #heldSpace = ""
  /** Content follows a `</think>` of the output: its leading blank lines are the template's separator. */
  #afterThink = false
  #toolText = ""
  #toolLead = ""
  #stopped = false
  content = ""
  reasoning = ""
  toolCalls: ToolCallOut[] = []

  constructor(readonly opts: ParseOptions = {}) {
    this.#mode = opts.startInThink ? "think" : "start"
  }

  /** True once a stop sequence was seen: the caller stops generating. */
  get stopped(): boolean {
    return this.#stopped
  }

  /** Feeds raw text; returns the deltas that are now certain. */
  push(text: string): Delta[] {
    if (this.#stopped || text === "") return []
    let raw = this.#pending + text
    const stops = (this.opts.stop ?? []).filter((s) => s.length > 0)
    let hold = 0
    if (stops.length > 0) {
      let cut = -1
      for (const s of stops) {
        const i = raw.indexOf(s)
        if (i >= 0 && (cut < 0 || i < cut)) cut = i
      }
      if (cut >= 0) {
        raw = raw.slice(0, cut)
        this.#stopped = true
      } else {
        hold = partialSuffix(raw, stops)
      }
    }
    this.#pending = raw.slice(raw.length - hold)
    const out: Delta[] = []
    this.#route(raw.slice(0, raw.length - hold), out, this.#stopped)
    return out
  }

  /** Ends the output: returns the held-back deltas. Tool calls are in `toolCalls` afterwards. */
  finish(): Delta[] {
    const out: Delta[] = []
    const rest = this.#pending
    this.#pending = ""
    this.#route(rest, out, true)
    if (this.#mode === "tool") {
      this.toolCalls = parseToolCalls(this.#toolText)
      if (this.toolCalls.length === 0) this.#emitContent(this.#toolLead + this.#toolText, out, "end")
    }
    return out
  }

  /** Routes stop-free text through the think / content / tool state machine. `final`: no more text follows. */
  #route(text: string, out: Delta[], final: boolean): void {
    let s = this.#buffer + text
    this.#buffer = ""
    for (;;) {
      if (this.#mode === "start") {
        const lead = s.replace(/^\s+/, "")
        if (lead.startsWith(THINK_OPEN)) {
          this.#mode = "think"
          s = lead.slice(THINK_OPEN.length)
          continue
        }
        if (!final && THINK_OPEN.startsWith(lead)) {
          this.#buffer = s
          return
        }
        this.#mode = "content"
        continue
      }
      if (this.#mode === "think") {
        const i = s.indexOf(THINK_CLOSE)
        if (i >= 0) {
          this.#emitReasoning(s.slice(0, i), out, true)
          this.#mode = "content"
          this.#afterThink = true
          s = s.slice(i + THINK_CLOSE.length)
          continue
        }
        const hold = final ? 0 : partialSuffix(s, [THINK_CLOSE])
        this.#buffer = s.slice(s.length - hold)
        this.#emitReasoning(s.slice(0, s.length - hold), out, final)
        return
      }
      if (this.#mode === "content") {
        if (this.opts.parseTools) {
          const i = s.indexOf(TOOL_OPEN)
          if (i >= 0) {
            this.#emitContent(s.slice(0, i), out, "beforeTool")
            this.#mode = "tool"
            s = s.slice(i)
            continue
          }
        }
        const hold = final || !this.opts.parseTools ? 0 : partialSuffix(s, [TOOL_OPEN])
        this.#buffer = s.slice(s.length - hold)
        this.#emitContent(s.slice(0, s.length - hold), out, final ? "end" : "more")
        return
      }
      // tool: everything up to the end is kept for parsing.
      this.#toolText += s
      return
    }
  }

  /** Reasoning without the newlines that frame it inside `<think>\n...\n</think>`. */
  #emitReasoning(text: string, out: Delta[], closing: boolean): void {
    let t = this.#heldSpace + text
    this.#heldSpace = ""
    if (!this.#reasoningStarted) t = t.replace(/^\n+/, "")
    if (closing) t = t.replace(/\n+$/, "")
    else {
      const m = /\n+$/.exec(t)
      if (m) {
        this.#heldSpace = m[0]
        t = t.slice(0, m.index)
      }
    }
    if (t === "") return
    this.#reasoningStarted = true
    this.reasoning += t
    out.push({ reasoning: t })
  }

  /**
   * Content without the blank lines that follow `</think>`. With tools on, trailing whitespace is held
   * back until more text follows, so the newline that separates text from a `<tool_call>` is not sent.
   */
  #emitContent(text: string, out: Delta[], how: "more" | "beforeTool" | "end"): void {
    let t = this.#heldSpace + text
    this.#heldSpace = ""
    if (!this.#contentStarted && this.#afterThink) t = t.replace(/^\s+/, "")
    if (how !== "end" && this.opts.parseTools) {
      const m = /\s+$/.exec(t)
      if (m) {
        // Before a tool call it is kept aside, and given back if the call turns out not to parse.
        if (how === "beforeTool") this.#toolLead = m[0]
        else this.#heldSpace = m[0]
        t = t.slice(0, m.index)
      }
    }
    if (t === "") return
    this.#contentStarted = true
    this.content += t
    out.push({ content: t })
  }
}
