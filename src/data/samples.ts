/**
 * Validated records → token samples with loss masks (see masks.ts for the alignment rule).
 * Chat records are rendered with the tokenizer's chat template (no generation prompt, tools taken
 * from the system turn as upstream does), augmented (augment.ts), tokenized without special-token
 * post-processing (the template already wrote the special tokens), truncated to `maxLen`, masked.
 *
 * A chat sample with no assistant (loss) token — truncated before the first reply, or rendered
 * without the `<|im_start|>assistant\n` marker — is kept by default, as upstream keeps it (all
 * labels -100: it fills a batch row and adds no loss token), and marked `unlabeled`; with
 * `unlabeled: "skip"` it is dropped instead. DPO: a pair counts as unlabeled when either side is.
 */
import { applyChatTemplate, type ChatMessage, type TokenizerConfig } from "../tokenizer/chat-template.ts"
import { addSystemPrompt, recordRng, stripEmptyThink, type AugmentOptions } from "./augment.ts"
import { assistantMask, pretrainSample, targetCount, type TokenSample } from "./masks.ts"
import type { ChatTurn, DataKind, DpoRecord, PretrainRecord, SftRecord, Validated } from "./records.ts"

/** What sample building needs from a tokenizer (the native `Tokenizer` has all of it). */
export interface SampleTokenizer {
  readonly vocabSize: number
  encode(text: string, addSpecialTokens?: boolean): Uint32Array
  encodeBatch?(texts: string[], addSpecialTokens?: boolean): Uint32Array[]
  tokenToId(token: string): number | undefined
}

export type OverLong = "truncate" | "skip"
/** Chat samples with no assistant token within `maxLen`: keep them (upstream) or skip them. */
export type Unlabeled = "keep" | "skip"

export interface SampleOptions {
  readonly kind: DataKind
  /** Longest stored sample in tokens (upstream max_seq_len: 340 pretrain, 768 SFT, 1024 DPO). */
  readonly maxLen: number
  /** What to do with a sample longer than `maxLen` (default: truncate, with a warning). */
  readonly overLong?: OverLong
  /** What to do with a chat sample that has no assistant token within `maxLen` (default: keep, as upstream). */
  readonly unlabeled?: Unlabeled
  readonly augment?: AugmentOptions
}

/** The chat side of a tokenizer: template and the bos/eos strings that delimit turns. */
export interface ChatSpec {
  readonly config: Pick<TokenizerConfig, "chatTemplate" | "chatTemplates" | "chatTemplateSource" | "chatTemplateSources" | "file" | "bosToken" | "eosToken" | "unkToken" | "padToken">
}

/**
 * What became of one record. `unlabeled`: a chat sample (DPO: either side) has no loss token —
 * kept (`Sample`) or, under `unlabeled: "skip"`, dropped (`Drop`, not bad).
 */
export type Outcome =
  | { readonly _tag: "Sample"; readonly file: string; readonly line: number; readonly samples: TokenSample[]; readonly truncatedFrom?: number; readonly unlabeled?: true }
  | { readonly _tag: "Drop"; readonly file: string; readonly line: number; readonly reason: string; readonly bad: boolean; readonly unlabeled?: true }

/** Special ids and the assistant-span delimiters, resolved once per tokenizer. */
export interface Specials {
  readonly bos: number
  readonly eos: number
  readonly bosToken: string
  readonly eosToken: string
  readonly open: Uint32Array
  readonly close: Uint32Array
}

export const resolveSpecials = (tokenizer: SampleTokenizer, chat?: ChatSpec): Specials => {
  const bosToken = chat?.config.bosToken ?? (tokenizer.tokenToId("<|im_start|>") !== undefined ? "<|im_start|>" : "<s>")
  const eosToken = chat?.config.eosToken ?? (tokenizer.tokenToId("<|im_end|>") !== undefined ? "<|im_end|>" : "</s>")
  const bos = tokenizer.tokenToId(bosToken)
  const eos = tokenizer.tokenToId(eosToken)
  if (bos === undefined || eos === undefined)
    throw new Error(`the tokenizer has no id for its bos/eos token (${bosToken} / ${eosToken}); check tokenizer_config.json`)
  return {
    bos,
    eos,
    bosToken,
    eosToken,
    open: tokenizer.encode(`${bosToken}assistant\n`, false),
    close: tokenizer.encode(`${eosToken}\n`, false),
  }
}

const toMessages = (turns: ReadonlyArray<ChatTurn>): { messages: ChatMessage[]; tools?: unknown[] } => {
  let tools: unknown[] | undefined
  const messages = turns.map((t): ChatMessage => {
    if (t.role === "system" && t.tools) tools = t.tools
    return {
      role: t.role,
      ...(t.content !== undefined ? { content: t.content } : {}),
      ...(t.reasoning_content !== undefined ? { reasoning_content: t.reasoning_content } : {}),
      ...(t.tool_calls ? { tool_calls: t.tool_calls as ChatMessage["tool_calls"] } : {}),
      ...(t.tools ? { tools: t.tools } : {}),
    }
  })
  return tools ? { messages, tools } : { messages }
}

/** Renders a conversation as training text (no generation prompt). Throws ChatTemplateError. */
export const renderConversation = (chat: ChatSpec, turns: ReadonlyArray<ChatTurn>): string => {
  const { messages, tools } = toMessages(turns)
  return applyChatTemplate(chat.config as TokenizerConfig, messages, { addGenerationPrompt: false, ...(tools ? { tools } : {}) })
}

export interface SampleBuilder {
  readonly specials: Specials
  /** Builds the samples of a batch of records; one outcome per record, in order. */
  build(records: ReadonlyArray<Validated>): Outcome[]
}

export const makeSampleBuilder = (tokenizer: SampleTokenizer, chat: ChatSpec | undefined, options: SampleOptions): SampleBuilder => {
  const { kind, maxLen } = options
  if (!Number.isInteger(maxLen) || maxLen < 3) throw new Error(`maxLen must be an integer ≥ 3, got ${maxLen}`)
  if (kind !== "pretrain" && chat === undefined) throw new Error(`${kind} data needs a chat template (tokenizer_config.json)`)
  const specials = resolveSpecials(tokenizer, chat)
  const overLong = options.overLong ?? "truncate"
  const unlabeled = options.unlabeled ?? "keep"
  const seed = options.augment?.seed ?? 42
  const systemP = options.augment?.systemPromptP ?? 0.2
  const stripP = options.augment?.stripEmptyThinkP ?? 0.8
  const encodeAll = (texts: string[], special: boolean): Uint32Array[] =>
    tokenizer.encodeBatch ? tokenizer.encodeBatch(texts, special) : texts.map((t) => tokenizer.encode(t, special))

  const chatSample = (ids: Uint32Array): TokenSample => {
    const kept = ids.length > maxLen ? ids.slice(0, maxLen) : ids
    return { ids: kept, mask: assistantMask(kept, specials.open, specials.close) }
  }

  const build = (records: ReadonlyArray<Validated>): Outcome[] => {
    // 1. texts to tokenize (chat: rendered + augmented; per record 1 text, DPO 2)
    const texts: string[] = []
    const failed = new Map<number, string>()
    records.forEach((v, r) => {
      if (kind === "pretrain") {
        texts.push((v.record as PretrainRecord).text)
        return
      }
      const rng = recordRng(seed, v.line)
      try {
        if (kind === "sft") {
          const conversations = addSystemPrompt((v.record as SftRecord).conversations, rng, systemP, options.augment?.systemPrompts)
          texts.push(stripEmptyThink(renderConversation(chat!, conversations), rng, stripP))
        } else {
          const { chosen, rejected } = v.record as DpoRecord
          // one draw for the pair: chosen and rejected keep an identical prompt
          const strip = rng() < stripP
          const post = (s: string) => stripEmptyThink(s, () => (strip ? 0 : 1), 1)
          texts.push(post(renderConversation(chat!, chosen)), post(renderConversation(chat!, rejected)))
        }
      } catch (e) {
        // A turn without content is the likely cause (MiniMind's template needs one in a leading system turn).
        const empty = Object.entries(v.record).flatMap(([at, ts]) =>
          (ts as ChatTurn[]).flatMap((t, i) => (t.content === undefined ? [`${at}[${i}]`] : [])),
        )
        const hint = empty.length ? ` (${empty.join(", ")} ${empty.length === 1 ? "has" : "have"} no content: null or absent)` : ""
        failed.set(r, `chat template: ${e instanceof Error ? e.message : String(e)}${hint}`)
        texts.push(...(kind === "dpo" ? ["", ""] : [""]))
      }
    })
    // 2. tokenize in one batch
    const encoded = encodeAll(texts, false)
    // 3. truncate + mask
    const per = kind === "dpo" ? 2 : 1
    return records.map((v, r): Outcome => {
      const where = { file: v.file, line: v.line }
      const bad = failed.get(r)
      if (bad) return { _tag: "Drop", ...where, reason: bad, bad: true }
      const ids = encoded.slice(r * per, r * per + per)
      const fullLen = Math.max(...ids.map((x) => x.length + (kind === "pretrain" ? 2 : 0)))
      if (fullLen > maxLen && overLong === "skip")
        return { _tag: "Drop", ...where, reason: `${fullLen} tokens > max_len ${maxLen}`, bad: false }
      const samples =
        kind === "pretrain" ? [pretrainSample(ids[0]!, specials.bos, specials.eos, maxLen)] : ids.map(chatSample)
      const noLoss = kind !== "pretrain" && samples.some((s) => targetCount(s.mask) === 0)
      if (noLoss && unlabeled === "skip")
        return { _tag: "Drop", ...where, reason: `no assistant tokens within max_len ${maxLen}`, bad: false, unlabeled: true }
      return {
        _tag: "Sample",
        ...where,
        samples,
        ...(fullLen > maxLen ? { truncatedFrom: fullLen } : {}),
        ...(noLoss ? { unlabeled: true as const } : {}),
      }
    })
  }
  return { specials, build }
}
