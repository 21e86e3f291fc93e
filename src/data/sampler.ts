/**
 * A seeded, resumable batch sampler. Each epoch is a permutation of 0..numSamples-1 drawn from
 * (seed, epoch) alone, so any process can recompute it; the state is just (epoch, position) and a
 * resumed run continues with exactly the batches an uninterrupted run would have seen next
 * (already-consumed batches are skipped, not replayed). Checkpoints store `state()`.
 */
import { shuffle } from "../util/rng.ts"

export interface SamplerState {
  readonly numSamples: number
  readonly batchSize: number
  readonly seed: number
  /** Current epoch (0-based). */
  readonly epoch: number
  /** Batches already consumed in the current epoch. */
  readonly position: number
  readonly shuffle: boolean
  /** Leave out the last, short batch of an epoch (the sampler's default true: fixed shapes; the training stages pass false, as upstream). */
  readonly dropLast: boolean
}

export interface SampledBatch {
  readonly epoch: number
  /** Index of the batch within its epoch. */
  readonly step: number
  readonly indices: Uint32Array
}

/** Fisher–Yates shuffle of 0..n-1 with the stream "sampler/epoch/<epoch>" of `seed` (util/rng.ts). */
export const epochPermutation = (n: number, seed: number, epoch: number): Uint32Array =>
  shuffle(Uint32Array.from({ length: n }, (_, i) => i), seed, `sampler/epoch/${epoch}`)

export class BatchSampler {
  readonly numSamples: number
  readonly batchSize: number
  readonly seed: number
  readonly shuffle: boolean
  readonly dropLast: boolean
  private epochNo: number
  private pos: number
  private perm: Uint32Array | undefined

  constructor(options: {
    numSamples: number
    batchSize: number
    seed?: number
    epoch?: number
    position?: number
    shuffle?: boolean
    dropLast?: boolean
  }) {
    const { numSamples, batchSize } = options
    if (!Number.isInteger(numSamples) || numSamples < 0) throw new RangeError(`numSamples must be a non-negative integer, got ${numSamples}`)
    if (!Number.isInteger(batchSize) || batchSize < 1) throw new RangeError(`batchSize must be a positive integer, got ${batchSize}`)
    this.numSamples = numSamples
    this.batchSize = batchSize
    this.seed = options.seed ?? 42
    this.shuffle = options.shuffle ?? true
    this.dropLast = options.dropLast ?? true
    this.epochNo = options.epoch ?? 0
    this.pos = options.position ?? 0
    if (this.batchesPerEpoch === 0) throw new RangeError(`${numSamples} samples make no batch of ${batchSize}; lower the batch size`)
    if (this.pos < 0 || this.pos > this.batchesPerEpoch) throw new RangeError(`position ${this.pos} outside 0..${this.batchesPerEpoch}`)
  }

  static fromState(state: SamplerState, numSamples?: number): BatchSampler {
    if (numSamples !== undefined && numSamples !== state.numSamples)
      throw new Error(
        `the data has ${numSamples} samples but the checkpoint's sampler was made for ${state.numSamples}: resume with the same prepared shards`,
      )
    return new BatchSampler(state)
  }

  get batchesPerEpoch(): number {
    return this.dropLast ? Math.floor(this.numSamples / this.batchSize) : Math.ceil(this.numSamples / this.batchSize)
  }
  get epoch(): number {
    return this.epochNo
  }
  get position(): number {
    return this.pos
  }

  state(): SamplerState {
    return {
      numSamples: this.numSamples,
      batchSize: this.batchSize,
      seed: this.seed,
      epoch: this.epochNo,
      position: this.pos,
      shuffle: this.shuffle,
      dropLast: this.dropLast,
    }
  }

  /** The next batch; rolls over into the next epoch (with a new permutation) when one ends. */
  next(): SampledBatch {
    if (this.pos >= this.batchesPerEpoch) {
      this.epochNo++
      this.pos = 0
      this.perm = undefined
    }
    const perm = (this.perm ??= this.shuffle
      ? epochPermutation(this.numSamples, this.seed, this.epochNo)
      : Uint32Array.from({ length: this.numSamples }, (_, i) => i))
    const start = this.pos * this.batchSize
    const indices = perm.slice(start, Math.min(start + this.batchSize, this.numSamples))
    const batch = { epoch: this.epochNo, step: this.pos, indices }
    this.pos++
    return batch
  }

  /** The remaining batches of the current epoch. */
  *restOfEpoch(): Generator<SampledBatch> {
    while (this.pos < this.batchesPerEpoch) yield this.next()
  }
}
