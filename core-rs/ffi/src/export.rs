//! Export of a loaded model to other runtimes' files: GGUF (llama.cpp, Ollama).
use std::path::Path;

use bunmind_engine::export::{export_gguf, gguf_unsupported, GgufOptions, GgufTokenizer, GgufType};

use crate::model::model;
use crate::*;

fn opt_str<'a>(o: &'a serde_json::Map<String, serde_json::Value>, key: &str) -> FfiResult<Option<&'a str>> {
    match o.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(FfiError::arg(format!("gguf export options: `{key}` must be a string, got {other}"))),
    }
}

/// Writes the model behind `h` as a GGUF file. `opts` is JSON:
/// `{"out": path, "type": "f32"|"f16"|"q8_0", "name": general.name,
///   "tokenizer": path of tokenizer.json or its directory (tokenizer_config.json and
///   chat_template.jinja are read beside it) — or "tokenizer_json" (+ "tokenizer_config_json") texts,
///   "chat_template": optional override, "source": the model's directory (for error messages)}`.
/// The file goes to `<out>.tmp`, then is renamed over `out`. Writes the report as JSON
/// (`architecture`, `type`, `tensors`, `bytes`, `eos_token`, `chat_template`, `warnings`, …) into
/// `buf`; give it 64 KiB: on `BM_BUFFER_TOO_SMALL` the file is written but the report is lost.
///
/// # Safety
/// `opts` must point at `len` bytes; see [`write_bytes`] for the output.
#[no_mangle]
pub unsafe extern "C" fn bm_model_export_gguf(h: u32, opts: *const u8, len: usize, buf: *mut u8, cap: usize, out_len: *mut u32) -> i32 {
    guard(|| {
        let m = model(h)?.get();
        let text = str_arg(opts, len, "opts")?;
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| FfiError::arg(format!("gguf export options: {e}")))?;
        let o = v.as_object().ok_or_else(|| FfiError::arg("gguf export options must be a JSON object"))?;
        let out = opt_str(o, "out")?.ok_or_else(|| FfiError::arg("gguf export options: `out` (the .gguf path) is required"))?;
        let ty = GgufType::parse(opt_str(o, "type")?.unwrap_or("f32"))?;
        let name = opt_str(o, "name")?.unwrap_or("bunmind").to_string();
        let mut tokenizer = match (opt_str(o, "tokenizer")?, opt_str(o, "tokenizer_json")?) {
            (Some(path), None) => GgufTokenizer::from_path(path)?,
            (None, Some(json)) => GgufTokenizer {
                json: json.to_string(),
                config: opt_str(o, "tokenizer_config_json")?.map(str::to_string),
                chat_template: None,
                source: "tokenizer.json".into(),
            },
            (Some(_), Some(_)) => return Err(FfiError::arg("gguf export options: give `tokenizer` (a path) or `tokenizer_json` (text), not both")),
            (None, None) => return Err(FfiError::arg("gguf export options: `tokenizer` (path) or `tokenizer_json` (text) is required: llama.cpp needs the vocabulary")),
        };
        if let Some(t) = opt_str(o, "chat_template")? {
            tokenizer.chat_template = Some(t.to_string());
        }
        let source = opt_str(o, "source")?.unwrap_or("").to_string();
        let report = export_gguf(&m, &GgufOptions { ty, name, tokenizer, source }, Path::new(out))?;
        let json = serde_json::to_string(&report).map_err(|e| FfiError::arg(e.to_string()))?;
        write_bytes(json.as_bytes(), buf, cap, out_len)
    })
}

/// Why the model behind `h` cannot be exported to GGUF: writes `{"unsupported": null}` or
/// `{"unsupported": "reason naming the config field"}`.
///
/// # Safety
/// See [`write_bytes`].
#[no_mangle]
pub unsafe extern "C" fn bm_model_gguf_unsupported(h: u32, buf: *mut u8, cap: usize, out_len: *mut u32) -> i32 {
    guard(|| {
        let m = model(h)?.get();
        let json = serde_json::json!({ "unsupported": gguf_unsupported(m.config()) });
        write_bytes(json.to_string().as_bytes(), buf, cap, out_len)
    })
}
