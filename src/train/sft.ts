/** Full SFT: chat conversations, loss on assistant spans only (MiniMind's mask), from a pretrained model. */
import { runStage, type StageOptions } from "./loop.ts"
import { STAGE_DEFAULTS } from "./stages.ts"

export type SftOptions = Omit<StageOptions, "stage" | "objective" | "lora">

export const sft = (o: SftOptions) => runStage({ ...o, objective: STAGE_DEFAULTS.sft.objective, stage: "sft" })
