/**
 * The C ABI of `core-rs/ffi`, as bun:ffi symbol declarations. Keep in step with the Rust exports;
 * `ABI_VERSION` must equal `bunmind_ffi::ABI_VERSION`.
 */
import { FFIType } from "bun:ffi"

export const ABI_VERSION = 2

const { u8, u32, i32, u64, f64, usize, ptr } = FFIType

export const symbols = {
  bm_abi_version: { args: [], returns: u32 },
  bm_last_error: { args: [ptr, usize], returns: usize },
  bm_build_info: { args: [ptr, usize, ptr], returns: i32 },
  bm_live_handles: { args: [], returns: u32 },
  bm_debug_panic: { args: [], returns: i32 },

  bm_tokenizer_load: { args: [ptr, usize, ptr], returns: i32 },
  bm_tokenizer_from_json: { args: [ptr, usize, ptr], returns: i32 },
  bm_tokenizer_free: { args: [u32], returns: i32 },
  bm_tokenizer_info: { args: [u32, ptr, usize, ptr], returns: i32 },
  bm_tokenizer_encode: { args: [u32, ptr, usize, u8, ptr, usize, ptr], returns: i32 },
  bm_tokenizer_encode_batch: { args: [u32, ptr, usize, ptr, usize, u8, ptr, usize, ptr], returns: i32 },
  bm_tokenizer_decode: { args: [u32, ptr, usize, u8, ptr, usize, ptr], returns: i32 },
  bm_tokenizer_token_to_id: { args: [u32, ptr, usize, ptr], returns: i32 },
  bm_tokenizer_id_to_token: { args: [u32, u32, ptr, usize, ptr], returns: i32 },
  bm_tokenizer_to_json: { args: [u32, ptr, usize, ptr], returns: i32 },
  bm_tokenizer_save: { args: [u32, ptr, usize], returns: i32 },
  bm_tokenizer_train_start: { args: [ptr, usize, ptr], returns: i32 },
  bm_tokenizer_train_poll: { args: [u32, ptr, usize, ptr], returns: i32 },
  bm_tokenizer_train_finish: { args: [u32, ptr], returns: i32 },
  bm_tokenizer_train_cancel: { args: [u32], returns: i32 },
  bm_tokenizer_train_free: { args: [u32], returns: i32 },

  bm_model_init: { args: [ptr, usize, u64, ptr], returns: i32 },
  bm_model_load: { args: [ptr, usize, ptr], returns: i32 },
  bm_model_load_on: { args: [ptr, usize, ptr, usize, ptr], returns: i32 },
  bm_device_info: { args: [ptr, usize, ptr, usize, ptr], returns: i32 },
  bm_model_free: { args: [u32], returns: i32 },
  bm_model_save: { args: [u32, ptr, usize, u8], returns: i32 },
  bm_model_save_hf: { args: [u32, ptr, usize, u8, ptr, usize, ptr, usize, ptr], returns: i32 },
  bm_model_import_pth: { args: [ptr, usize, ptr, usize, ptr], returns: i32 },
  bm_model_info: { args: [u32, ptr, usize, ptr], returns: i32 },
  bm_model_forward: { args: [u32, ptr, usize, usize, u8, ptr, usize], returns: i32 },
  bm_model_loss: { args: [u32, ptr, ptr, ptr, usize, usize, ptr], returns: i32 },
  bm_model_load_lora: { args: [u32, ptr, usize, u8], returns: i32 },
  bm_model_export_gguf: { args: [u32, ptr, usize, ptr, usize, ptr], returns: i32 },
  bm_model_gguf_unsupported: { args: [u32, ptr, usize, ptr], returns: i32 },

  bm_session_new: { args: [u32, ptr, usize, ptr, usize, ptr], returns: i32 },
  bm_session_next: { args: [u32, ptr, ptr], returns: i32 },
  bm_session_info: { args: [u32, ptr, usize, ptr], returns: i32 },
  bm_session_free: { args: [u32], returns: i32 },
  bm_batch_session_new: { args: [u32, ptr, ptr, usize, ptr, usize, ptr], returns: i32 },
  bm_batch_session_next: { args: [u32, ptr, usize, ptr], returns: i32 },
  bm_batch_session_free: { args: [u32], returns: i32 },

  bm_trainer_new: { args: [u32, ptr, usize, u32, u32, ptr], returns: i32 },
  bm_trainer_free: { args: [u32], returns: i32 },
  bm_trainer_step: { args: [u32, ptr, ptr, ptr, usize, usize, usize, f64, ptr, usize, ptr], returns: i32 },
  bm_trainer_step_rows: { args: [u32, ptr, ptr, ptr, usize, ptr, usize, f64, ptr, usize, ptr], returns: i32 },
  bm_trainer_eval: { args: [u32, ptr, ptr, ptr, usize, usize, ptr], returns: i32 },
  bm_trainer_save_checkpoint: { args: [u32, ptr, usize, ptr, usize], returns: i32 },
  bm_trainer_load_checkpoint: { args: [u32, ptr, usize, ptr, usize, ptr], returns: i32 },
  bm_trainer_info: { args: [u32, ptr, usize, ptr], returns: i32 },
  bm_trainer_model: { args: [u32, ptr], returns: i32 },
  bm_trainer_save_adapters: { args: [u32, ptr, usize], returns: i32 },
  bm_trainer_join: { args: [u32, ptr, usize], returns: i32 },
  bm_trainer_request_stop: { args: [u32, i32], returns: i32 },

  // Single engine ops on caller-owned arrays (bench/kernels.ts): (..., out, out_len, op_ns) → status.
  bm_kernel_matmul: { args: [ptr, ptr, usize, usize, usize, ptr, usize, ptr], returns: i32 },
  bm_kernel_rms_norm: { args: [ptr, ptr, usize, usize, f64, u8, ptr, usize, ptr], returns: i32 },
  bm_kernel_rope: { args: [ptr, ptr, usize, usize, usize, usize, usize, f64, u8, ptr, usize, ptr], returns: i32 },
  bm_kernel_attention: { args: [ptr, ptr, ptr, ptr, ptr, usize, usize, usize, usize, usize, usize, f64, ptr, usize, ptr], returns: i32 },
  bm_kernel_cross_entropy: { args: [ptr, ptr, ptr, usize, usize, usize, u8, ptr, usize, ptr], returns: i32 },
  bm_parity_check: { args: [ptr, usize, ptr, usize, ptr], returns: i32 },
  bm_kernel_adamw: { args: [ptr, ptr, ptr, ptr, usize, u64, f64, f64, f64, f64, f64, ptr, usize, ptr], returns: i32 },
} as const

export const Status = {
  OK: 0,
  ERROR: 1,
  BUFFER_TOO_SMALL: 2,
  BAD_HANDLE: 3,
  PANIC: 4,
  INVALID_ARGUMENT: 5,
} as const

export const statusName = (code: number): string =>
  (Object.entries(Status).find(([, v]) => v === code)?.[0] ?? `STATUS_${code}`).toLowerCase()
