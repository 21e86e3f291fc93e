/**
 * DPO: preference pairs `{"chosen", "rejected"}`; the policy starts from the SFT model and a frozen
 * copy of it is the reference. Loss: −log σ(β·((πc − πr) − (rc − rr))) on assistant-masked log-probs.
 */
import { runStage, type StageOptions } from "./loop.ts"

export type DpoOptions = Omit<StageOptions, "stage" | "objective"> & { beta: number }

export const dpo = ({ beta, ...o }: DpoOptions) => runStage({ ...o, objective: { kind: "dpo", beta }, stage: "dpo" })
