/**
 * What a finished stage leaves behind in `<stage>/`: `model/` (the folder a user pushes to the
 * Hub: weights, tokenizer, generation_config.json, a model card), `adapter/` for LoRA stages
 * (PEFT's layout), and `summary.json`.
 */
import { join } from "node:path"
import { publishHf } from "../export/hf.ts"
import type { Model } from "../model/model.ts"
import type { Trainer } from "../model/trainer.ts"
import { writeJsonAtomic } from "../util/fs.ts"
import type { StageOptions, StageSummary } from "./options.ts"
import { STAGES } from "./stages.ts"

/**
 * Saves the stage's model (and adapters) by its publish rule (stages.ts), then `summary` (written
 * between the weights and the card: the model card reads the stage's summary.json), then the
 * tokenizer, generation_config.json and the model card.
 */
export function publishStage(o: StageOptions, stageDir: string, model: Model, trainer: Trainer, summary: StageSummary): string {
  const modelDir = join(stageDir, "model")
  if (STAGES[o.stage].publish === "adapters+merged" || o.lora) {
    trainer.saveAdapters(join(stageDir, "adapter"))
    // The trainer's live model carries the adapters; saving it folds them into the base weights.
    const adapted = trainer.liveModel()
    try {
      adapted.save(modelDir)
    } finally {
      adapted.free()
    }
  } else {
    model.save(modelDir)
  }
  writeSummary(stageDir, summary)
  publishHf(modelDir, o.tokenizer)
  return modelDir
}

export const writeSummary = (stageDir: string, s: StageSummary): void => writeJsonAtomic(join(stageDir, "summary.json"), s)
