/** Pretraining: next-token prediction on `{"text"}` documents, `[bos] + text + [eos]`, from scratch. */
import { runStage, type StageOptions } from "./loop.ts"
import { STAGE_DEFAULTS } from "./stages.ts"

export type PretrainOptions = Omit<StageOptions, "stage" | "objective"> & Partial<Pick<StageOptions, "objective">>

export const pretrain = (o: PretrainOptions) => runStage({ ...o, objective: STAGE_DEFAULTS.pretrain.objective, stage: "pretrain" })
