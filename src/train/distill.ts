/** Distillation: α·CE + (1−α)·T²·KL(teacher ‖ student) on the assistant-masked positions. */
import { runStage, type StageOptions } from "./loop.ts"

export type DistillOptions = Omit<StageOptions, "stage" | "objective"> & { alpha: number; temperature: number; teacher: string }

export const distill = ({ alpha, temperature, ...o }: DistillOptions) =>
  runStage({ ...o, objective: { kind: "distill", alpha, temperature }, stage: "distill" })
