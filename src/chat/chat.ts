/**
 * `bunmind chat`: a terminal chat with streaming output, the settings of MiniMind's web demo, and
 * slash commands. Reads one message per line from any line source (a TTY or a pipe), so a script
 * can drive it. Generation runs on an `InlineEngine` (one decode step per event-loop turn), so a
 * Ctrl-C between tokens stops the answer.
 */
import type { ChatMessage, TokenizerConfig } from "../tokenizer/chat-template.ts"
import type { Tokenizer } from "../tokenizer/tokenizer.ts"
import { renderPrompt, runCompletion } from "../serve/completion.ts"
import type { Engine } from "../serve/engine.ts"

export interface ChatSettings {
  temperature: number
  topK: number
  topP: number
  repetitionPenalty: number
  maxNewTokens: number
  seed: number
  /** Open a `<think>` block (MiniMind's reasoning mode); the thinking is shown apart from the answer. */
  think: boolean
  /** Earlier user/assistant turns sent with each message (MiniMind's "history" setting); 0 = none. */
  historyTurns: number
  system?: string
}

export interface ChatIO {
  readonly lines: AsyncIterable<string>
  readonly out: (s: string) => void
  /** Status lines (token counts, command answers). */
  readonly info: (s: string) => void
  /** Dim the thinking (ANSI), for terminals. */
  readonly color?: boolean
  /** Prints a prompt before each line (interactive use). */
  readonly prompt?: () => void
  /** Aborted (Ctrl-C) while an answer streams: that answer stops. */
  readonly interrupt?: { onInterrupt(f: () => void): () => void }
}

export const HELP = `commands:
  /clear            forget the conversation
  /think on|off     reasoning mode (a <think> block before the answer)
  /temp x           temperature (0 = greedy)
  /topk n, /topp x  sampling cut-offs (0 / 1 = off)
  /max n            max new tokens per answer
  /history n        earlier turns sent with each message
  /system text      system prompt (/system alone clears it)
  /settings         show the settings
  /exit             quit`

type Command = { ok: true; message: string } | { ok: false; message: string } | { exit: true }

/** Applies a slash command to the settings; returns what to print. */
export function applyCommand(line: string, s: ChatSettings, clear: () => void): Command {
  const [cmd, ...rest] = line.trim().split(/\s+/)
  const arg = rest.join(" ")
  const num = (min: number, max: number, int = false): number | undefined => {
    const x = Number(arg)
    return arg !== "" && Number.isFinite(x) && x >= min && x <= max && (!int || Number.isInteger(x)) ? x : undefined
  }
  const bad = (what: string) => ({ ok: false as const, message: `${cmd} ${arg}: expected ${what}` })
  switch (cmd) {
    case "/exit":
    case "/quit":
      return { exit: true }
    case "/clear":
      clear()
      return { ok: true, message: "(conversation cleared)" }
    case "/think":
      if (arg !== "on" && arg !== "off") return bad("on or off")
      s.think = arg === "on"
      return { ok: true, message: `(thinking ${arg})` }
    case "/temp": {
      const x = num(0, 2)
      if (x === undefined) return bad("a number in [0, 2]")
      s.temperature = x
      return { ok: true, message: `(temperature ${x})` }
    }
    case "/topk": {
      const x = num(0, 1e6, true)
      if (x === undefined) return bad("an integer >= 0")
      s.topK = x
      return { ok: true, message: `(top-k ${x})` }
    }
    case "/topp": {
      const x = num(Number.MIN_VALUE, 1)
      if (x === undefined) return bad("a number in (0, 1]")
      s.topP = x
      return { ok: true, message: `(top-p ${x})` }
    }
    case "/max": {
      const x = num(1, 1e7, true)
      if (x === undefined) return bad("an integer >= 1")
      s.maxNewTokens = x
      return { ok: true, message: `(max new tokens ${x})` }
    }
    case "/history": {
      const x = num(0, 1e4, true)
      if (x === undefined) return bad("an integer >= 0")
      s.historyTurns = x
      return { ok: true, message: `(history ${x} turns)` }
    }
    case "/system":
      s.system = arg === "" ? undefined : arg
      return { ok: true, message: arg === "" ? "(no system prompt)" : "(system prompt set)" }
    case "/settings":
      return { ok: true, message: JSON.stringify(s) }
    case "/help":
      return { ok: true, message: HELP }
    default:
      return { ok: false, message: `unknown command ${cmd}; /help lists them` }
  }
}

/** The messages sent for `user`: system prompt, the last `historyTurns` turns, the new message. */
export function conversation(s: ChatSettings, history: ReadonlyArray<ChatMessage>, user: string): ChatMessage[] {
  const turns = s.historyTurns > 0 ? history.slice(-2 * s.historyTurns) : []
  return [...(s.system ? [{ role: "system" as const, content: s.system }] : []), ...turns, { role: "user", content: user }]
}

export async function runChat(engine: Engine, tokenizer: Tokenizer, config: TokenizerConfig, settings: ChatSettings, io: ChatIO): Promise<void> {
  let history: ChatMessage[] = []
  // Each answer samples with its own seed (settings.seed + n), so a run is reproducible end to end.
  let answers = 0
  const ctxLen = engine.config.max_position_embeddings
  const dim = (t: string) => (io.color ? `\x1b[2m${t}\x1b[0m` : t)
  io.prompt?.()
  for await (const raw of io.lines) {
    const line = raw.replace(/\r$/, "")
    if (line.trim() === "") {
      io.prompt?.()
      continue
    }
    if (line.startsWith("/")) {
      const r = applyCommand(line, settings, () => (history = []))
      if ("exit" in r) return
      io.info(r.message)
      io.prompt?.()
      continue
    }
    const messages = conversation(settings, history, line)
    const prompt = renderPrompt(config, tokenizer, messages, { enableThinking: settings.think })
    const left = ctxLen - prompt.ids.length
    if (left < 1) {
      io.info(`(the conversation is ${prompt.ids.length} tokens, more than the model's ${ctxLen}: /clear or lower /history)`)
      io.prompt?.()
      continue
    }
    const abort = new AbortController()
    const off = io.interrupt?.onInterrupt(() => abort.abort())
    let inThink = false
    const t0 = performance.now()
    const r = await runCompletion(
      engine,
      tokenizer,
      {
        prompt,
        options: {
          temperature: settings.temperature,
          topK: settings.topK,
          topP: settings.topP,
          repetitionPenalty: settings.repetitionPenalty,
          maxNewTokens: Math.min(settings.maxNewTokens, left),
          seed: settings.seed + answers++,
          stopTokenIds: [...engine.stopTokenIds],
        },
      },
      (d) => {
        if (d.reasoning !== undefined) {
          if (!inThink) io.out(dim("<think>\n"))
          inThink = true
          io.out(dim(d.reasoning))
        } else if (d.content !== undefined) {
          if (inThink) io.out(dim("\n</think>\n"))
          inThink = false
          io.out(d.content)
        }
      },
      abort.signal,
    ).finally(() => off?.())
    if (inThink) io.out(dim("\n</think>"))
    io.out("\n")
    const secs = (performance.now() - t0) / 1000
    const u = r.usage
    io.info(`[prompt ${u.prompt_tokens} tokens, ${u.completion_tokens} generated, ${r.finishReason}, ${(u.completion_tokens / Math.max(secs, 1e-6)).toFixed(1)} tokens/s]`)
    if (r.finishReason !== "cancelled") {
      history.push({ role: "user", content: line }, { role: "assistant", content: r.content })
    }
    io.prompt?.()
  }
}
