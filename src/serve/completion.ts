/**
 * One chat completion: render the conversation with the model's chat template, run it on an engine,
 * and turn the tokens into deltas (content / reasoning), tool calls, a finish reason and usage.
 * Shared by the HTTP server and the terminal chat.
 */
import type { GenerationOptions } from "../model/generate.ts"
import { applyChatTemplate, type ChatMessage, type TokenizerConfig } from "../tokenizer/chat-template.ts"
import type { Tokenizer } from "../tokenizer/tokenizer.ts"
import type { Engine, Handle } from "./engine.ts"
import { IncrementalDecoder, OutputParser, type Delta, type FinishReason, type ToolCallOut } from "./output.ts"

export interface PromptOptions {
  readonly tools?: ReadonlyArray<unknown>
  readonly enableThinking?: boolean
}

export interface Prompt {
  readonly text: string
  readonly ids: Uint32Array
  /** The prompt ends inside an open `<think>` block: the output starts as reasoning. */
  readonly startInThink: boolean
}

export function renderPrompt(config: TokenizerConfig, tokenizer: Tokenizer, messages: ReadonlyArray<ChatMessage>, opts: PromptOptions = {}): Prompt {
  const text = applyChatTemplate(config, messages, { addGenerationPrompt: true, enableThinking: opts.enableThinking ?? false, tools: opts.tools })
  const lastOpen = text.lastIndexOf("<think>")
  return { text, ids: tokenizer.encode(text), startInThink: lastOpen >= 0 && !text.slice(lastOpen).includes("</think>") }
}

export interface CompletionSpec {
  readonly prompt: Prompt
  readonly options: GenerationOptions
  readonly stop?: ReadonlyArray<string>
  readonly parseTools?: boolean
}

export interface CompletionResult {
  readonly content: string
  readonly reasoning: string
  readonly toolCalls: ToolCallOut[]
  /** `cancelled`: the caller aborted (client went away). */
  readonly finishReason: FinishReason | "cancelled"
  readonly usage: { prompt_tokens: number; completion_tokens: number; total_tokens: number }
}

/**
 * Runs a completion, calling `onDelta` as text becomes certain. Aborting `signal` stops generation
 * and frees the session; the promise then resolves with finish reason `cancelled`.
 */
export function runCompletion(
  engine: Engine,
  tokenizer: Tokenizer,
  spec: CompletionSpec,
  onDelta: (d: Delta) => void = () => {},
  signal?: AbortSignal,
): Promise<CompletionResult> {
  return new Promise((resolve, reject) => {
    const decoder = new IncrementalDecoder(tokenizer)
    const parser = new OutputParser({ stop: spec.stop, startInThink: spec.prompt.startInThink, parseTools: spec.parseTools })
    let generated = 0
    let stopped = false
    let aborted = false
    const emit = (ds: Delta[]) => ds.forEach(onDelta)
    const onAbort = () => {
      aborted = true
      handle.cancel()
    }
    const handle: Handle = engine.submit(spec.prompt.ids, spec.options, {
      token(id) {
        if (stopped) return
        generated++
        emit(parser.push(decoder.push(id)))
        if (parser.stopped) {
          stopped = true
          handle.cancel()
        }
      },
      end(r) {
        signal?.removeEventListener("abort", onAbort)
        if (r.error !== undefined) return reject(new Error(r.error))
        if (!stopped) {
          emit(parser.push(decoder.flush()))
          stopped = parser.stopped
        }
        emit(parser.finish())
        const native = r.info?.finish_reason
        let finishReason: CompletionResult["finishReason"] =
          aborted && !stopped ? "cancelled" : stopped || native === "stop" ? "stop" : "length"
        if (parser.toolCalls.length > 0 && finishReason !== "cancelled") finishReason = "tool_calls"
        const completion = stopped || r.info === undefined ? generated : r.info.generated_tokens
        const promptTokens = spec.prompt.ids.length
        resolve({
          content: parser.content,
          reasoning: parser.reasoning,
          toolCalls: parser.toolCalls,
          finishReason,
          usage: { prompt_tokens: promptTokens, completion_tokens: completion, total_tokens: promptTokens + completion },
        })
      },
    })
    if (signal?.aborted) onAbort()
    else signal?.addEventListener("abort", onAbort, { once: true })
  })
}
