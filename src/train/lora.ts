/**
 * LoRA: chat data like SFT, but only low-rank adapters on the target projections train; the base
 * stays frozen. Publishes the adapters (`<stage>/adapter/`) and a merged model (`<stage>/model/`).
 */
import { runStage, type StageOptions } from "./loop.ts"
import { STAGE_DEFAULTS } from "./stages.ts"

export type LoraStageOptions = Omit<StageOptions, "stage" | "objective"> & { lora: NonNullable<StageOptions["lora"]> }

export const lora = (o: LoraStageOptions) => runStage({ ...o, objective: STAGE_DEFAULTS.lora.objective, stage: "lora" })
