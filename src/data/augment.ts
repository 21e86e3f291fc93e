/**
 * MiniMind's SFT augmentation (upstream `pre_processing_chat` / `post_processing_chat`), seeded:
 * - with probability `systemPromptP` (0.2) a conversation that does not start with a system turn
 *   gets one drawn from `SYSTEM_PROMPTS`; conversations that carry tools are left as they are;
 * - with probability `stripEmptyThinkP` (0.8) every empty think block `<think>\n\n</think>\n\n` is
 *   removed from the rendered text.
 * Each record draws from its own generator seeded by (seed, line), so a sample's augmentation does
 * not depend on which other records were skipped. Upstream re-draws every epoch; we draw once, when
 * shards are prepared (prepare again with another seed for another draw).
 */
import type { ChatTurn } from "./records.ts"
import { rng } from "../util/rng.ts"

/** Upstream's pool, verbatim data (the prompts a MiniMind model was trained with). */
export const SYSTEM_PROMPTS: ReadonlyArray<string> = [
  "你是一个知识丰富的AI，尽力为用户提供准确的信息。",
  "你是minimind，一个小巧但有用的语言模型。",
  "你是一个专业的AI助手，请提供有价值的回答。",
  "你是minimind，请尽力帮助用户解决问题。",
  "你是一个可靠的AI，请给出准确的回答。",
  "You are a helpful AI assistant.",
  "You are minimind, a lightweight intelligent assistant.",
  "You are a friendly chatbot. Please answer the user's questions carefully.",
  "You are a knowledgeable AI. Try your best to provide accurate information.",
  "You are minimind, a small but useful language model.",
]

export const EMPTY_THINK = "<think>\n\n</think>\n\n"

export interface AugmentOptions {
  /** Probability of adding a random system prompt (default 0.2; 0 turns it off). */
  readonly systemPromptP?: number
  /** Probability of stripping empty think blocks (default 0.8; 0 keeps them, 1 always strips). */
  readonly stripEmptyThinkP?: number
  readonly systemPrompts?: ReadonlyArray<string>
  readonly seed?: number
}

/** A generator for one record: seeded by the run seed and the record's line. */
export const recordRng = (seed: number, line: number): (() => number) => rng(seed, `augment/line/${line}`)

export const addSystemPrompt = (
  turns: ReadonlyArray<ChatTurn>,
  rng: () => number,
  p: number,
  pool: ReadonlyArray<string> = SYSTEM_PROMPTS,
): ChatTurn[] => {
  if (turns.some((t) => t.tools && t.tools.length > 0)) return [...turns]
  if (turns[0]?.role === "system" || pool.length === 0) return [...turns]
  if (rng() >= p) return [...turns]
  const content = pool[Math.floor(rng() * pool.length)]!
  return [{ role: "system", content }, ...turns]
}

export const stripEmptyThink = (rendered: string, rng: () => number, p: number): string =>
  rendered.includes(EMPTY_THINK) && rng() < p ? rendered.replaceAll(EMPTY_THINK, "") : rendered
