/**
 * Loss masks, MiniMind's rules (upstream `dataset/lm_dataset.py`: `generate_labels` / `generate_loss_mask`).
 *
 * Alignment, for everything stored and returned by this package: `ids` and `mask` have the same
 * length and `mask[t] = 1` means token `ids[t]` is a prediction TARGET (predicted from position
 * t − 1). This is upstream's `labels` (`labels[t] != -100`), which Hugging Face shifts inside the
 * model. A trainer consumes a sample of length L as inputs `ids[0..L-2]`, targets `ids[1..L-1]`,
 * weights `mask[1..L-1]` (see `getBatch` in shards.ts); `mask[0]` is therefore never used.
 *
 * - pretrain: `[bos] + ids(text)[:maxLen-2] + [eos]`; mask 1 on every token (upstream masks only
 *   padding). The text is cut so that eos always survives truncation, as upstream does now.
 * - chat (SFT, DPO chosen/rejected): mask 1 from right after each `<|im_start|>assistant\n` id
 *   sequence through the end of the following `<|im_end|>\n` id sequence, inclusive; 0 elsewhere.
 *   An assistant turn cut by truncation is masked to the end (upstream `generate_labels`).
 */

/** True when `ids[at..]` starts with `seq`. */
const startsAt = (ids: ArrayLike<number>, at: number, seq: ArrayLike<number>): boolean => {
  if (at + seq.length > ids.length) return false
  for (let k = 0; k < seq.length; k++) if (ids[at + k] !== seq[k]) return false
  return true
}

/**
 * The assistant-span mask over already truncated `ids`. `open` is the id sequence of
 * `<|im_start|>assistant\n`, `close` that of `<|im_end|>\n` (tokenized without special-token
 * post-processing).
 */
export const assistantMask = (ids: ArrayLike<number>, open: ArrayLike<number>, close: ArrayLike<number>): Uint8Array => {
  const mask = new Uint8Array(ids.length)
  if (open.length === 0 || close.length === 0) return mask
  let i = 0
  while (i < ids.length) {
    if (!startsAt(ids, i, open)) {
      i++
      continue
    }
    const start = i + open.length
    let end = start
    while (end < ids.length && !startsAt(ids, end, close)) end++
    const stop = Math.min(end + close.length, ids.length)
    mask.fill(1, start, stop)
    i = end < ids.length ? end + close.length : ids.length
  }
  return mask
}

export interface TokenSample {
  readonly ids: Uint32Array
  readonly mask: Uint8Array
}

/** `[bos] + textIds + [eos]`, the text cut to `maxLen - 2` tokens; mask 1 everywhere. */
export const pretrainSample = (textIds: ArrayLike<number>, bos: number, eos: number, maxLen: number): TokenSample => {
  const keep = Math.max(0, Math.min(textIds.length, maxLen - 2))
  const ids = new Uint32Array(keep + 2)
  ids[0] = bos
  for (let k = 0; k < keep; k++) ids[k + 1] = textIds[k]!
  ids[keep + 1] = eos
  return { ids, mask: new Uint8Array(ids.length).fill(1) }
}

/** Number of mask-1 positions that a trainer will use (positions 1..L-1). */
export const targetCount = (mask: ArrayLike<number>): number => {
  let n = 0
  for (let t = 1; t < mask.length; t++) n += mask[t]!
  return n
}
