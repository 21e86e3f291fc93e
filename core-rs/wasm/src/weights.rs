//! Safetensors from bytes, with the edge export's smaller encodings.
//!
//! - f32 / f16 / bf16 / f64 tensors load as they are (the engine converts them to f32).
//! - int8 per-row symmetric: a 2-D `name` stored as I8 `[out, in]` plus `name_scale` (f32 `[out]`);
//!   `w[r, c] = q[r, c] · scale[r]`, `scale[r] = max|w[r, :]| / 127`. Dequantised to f32 at load,
//!   so compute (and the logits) stay f32; the file shrinks to ~¼.
//!
//! A file that is cut short or corrupt fails with a message saying so (and how many bytes were
//! expected), never with a panic: browsers hand us whatever a half-finished download produced.
use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

/// Suffix of the per-row scale that accompanies an int8 tensor.
pub const SCALE_SUFFIX: &str = "_scale";

/// Encodings `quantize` can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    F32,
    Bf16,
    Int8,
}

impl Encoding {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "none" | "f32" | "fp32" => Ok(Encoding::F32),
            "bf16" => Ok(Encoding::Bf16),
            "int8" | "q8" => Ok(Encoding::Int8),
            other => Err(format!("unknown quantization {other:?}; use none (f32), bf16 or int8")),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Encoding::F32 => "f32",
            Encoding::Bf16 => "bf16",
            Encoding::Int8 => "int8",
        }
    }
}

/// Checks the framing (8-byte header length, JSON header, data extent) before the safetensors
/// parser sees the bytes, so a truncated download says "truncated", with sizes.
fn check_framing(bytes: &[u8], what: &str) -> Result<(), String> {
    if bytes.len() < 8 {
        return Err(format!("{what}: {} bytes is too short for a safetensors file (truncated or empty download?)", bytes.len()));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    if n > 100_000_000 {
        return Err(format!("{what}: not a safetensors file (its first 8 bytes declare a {n}-byte header)"));
    }
    let header_end = 8 + n as usize;
    if bytes.len() < header_end {
        return Err(format!(
            "{what}: truncated: the header needs {header_end} bytes but the file has {}; re-export or re-download it",
            bytes.len()
        ));
    }
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..header_end])
        .map_err(|e| format!("{what}: not a safetensors file (header is not JSON: {e})"))?;
    let mut data_end = 0u64;
    if let Some(obj) = header.as_object() {
        for (name, info) in obj {
            if name == "__metadata__" {
                continue;
            }
            if let Some(end) = info.get("data_offsets").and_then(|o| o.get(1)).and_then(|e| e.as_u64()) {
                data_end = data_end.max(end);
            }
        }
    }
    let have = (bytes.len() - header_end) as u64;
    if have < data_end {
        return Err(format!(
            "{what}: truncated: tensor data needs {} bytes but the file has {} ({:.1}% present); re-export or re-download it",
            header_end as u64 + data_end,
            bytes.len(),
            100.0 * (header_end as u64 + have) as f64 / (header_end as u64 + data_end) as f64
        ));
    }
    Ok(())
}

fn parse<'a>(bytes: &'a [u8], what: &str) -> Result<SafeTensors<'a>, String> {
    check_framing(bytes, what)?;
    SafeTensors::deserialize(bytes).map_err(|e| format!("{what}: not a valid safetensors file: {e}"))
}

fn f32s(view: &TensorView) -> Vec<f32> {
    view.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

fn to_tensor(name: &str, view: &TensorView, dev: &Device) -> Result<Tensor, String> {
    let dtype = match view.dtype() {
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::F64 => DType::F64,
        other => return Err(format!("tensor `{name}`: unsupported dtype {other:?}; expected f32, f16, bf16 or int8 with `{name}{SCALE_SUFFIX}`")),
    };
    Tensor::from_raw_buffer(view.data(), dtype, view.shape(), dev).map_err(|e| format!("tensor `{name}`: {e}"))
}

/// Reads every tensor as name → tensor (int8 tensors dequantised to f32; their scales consumed).
/// Returns the tensors and the encoding of the 2-D tensors (for the model's info).
pub fn load(bytes: &[u8], what: &str, dev: &Device) -> Result<(HashMap<String, Tensor>, &'static str), String> {
    let st = parse(bytes, what)?;
    let mut out = HashMap::new();
    let mut kinds = std::collections::BTreeSet::new();
    for (name, view) in st.tensors() {
        let is_scale = name.strip_suffix(SCALE_SUFFIX).and_then(|base| st.tensor(base).ok()).is_some_and(|v| v.dtype() == Dtype::I8);
        if is_scale {
            continue; // consumed with its int8 tensor
        }
        let t = if view.dtype() == Dtype::I8 {
            kinds.insert("int8");
            let shape = view.shape().to_vec();
            if shape.len() != 2 {
                return Err(format!("tensor `{name}`: int8 tensors must be 2-D (per-row scales), got shape {shape:?}"));
            }
            let scale_name = format!("{name}{SCALE_SUFFIX}");
            let scale = st.tensor(&scale_name).map_err(|_| format!("tensor `{name}` is int8 but `{scale_name}` (its per-row scales) is missing"))?;
            if scale.dtype() != Dtype::F32 || scale.shape() != [shape[0]] {
                return Err(format!("tensor `{scale_name}`: expected f32 [{}], got {:?} {:?}", shape[0], scale.dtype(), scale.shape()));
            }
            let scales = f32s(&scale);
            let cols = shape[1];
            let w: Vec<f32> = view.data().iter().enumerate().map(|(i, &q)| q as i8 as f32 * scales[i / cols]).collect();
            Tensor::from_vec(w, (shape[0], shape[1]), dev).map_err(|e| format!("tensor `{name}`: {e}"))?
        } else {
            // The matrices say how a file is stored; 1-D norm gains stay f32 in every encoding.
            if view.shape().len() >= 2 {
                kinds.insert(match view.dtype() {
                    Dtype::BF16 => "bf16",
                    Dtype::F16 => "f16",
                    _ => "f32",
                });
            }
            to_tensor(&name, &view, dev)?
        };
        out.insert(name, t);
    }
    let encoding = if kinds.contains("int8") {
        "int8"
    } else if kinds.len() == 1 {
        kinds.into_iter().next().unwrap()
    } else {
        "mixed"
    };
    Ok((out, encoding))
}

/// Re-encodes a safetensors file: 2-D tensors (embeddings, projections: nearly all the bytes)
/// become bf16 or int8 per-row; 1-D tensors (norm gains) stay f32. Tensor names are kept.
pub fn quantize(bytes: &[u8], enc: Encoding) -> Result<Vec<u8>, String> {
    let st = parse(bytes, "model.safetensors")?;
    let dev = Device::Cpu;
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    let mut out: Vec<(String, Vec<u8>, Dtype, Vec<usize>)> = Vec::new();
    for name in names {
        let view = st.tensor(&name).map_err(|e| e.to_string())?;
        if view.dtype() == Dtype::I8 {
            return Err(format!("tensor `{name}` is already int8; quantize the f32 (or bf16) checkpoint instead"));
        }
        let t = to_tensor(&name, &view, &dev)?.to_dtype(DType::F32).map_err(|e| e.to_string())?;
        let shape = view.shape().to_vec();
        let vals: Vec<f32> = t.flatten_all().and_then(|t| t.to_vec1()).map_err(|e| e.to_string())?;
        match (enc, shape.len()) {
            (Encoding::Int8, 2) => {
                let cols = shape[1];
                let mut q = Vec::with_capacity(vals.len());
                let mut scales = Vec::with_capacity(shape[0]);
                for row in vals.chunks(cols.max(1)) {
                    let max = row.iter().fold(0f32, |m, x| m.max(x.abs()));
                    let s = if max > 0.0 { max / 127.0 } else { 1.0 };
                    scales.push(s);
                    q.extend(row.iter().map(|x| (x / s).round().clamp(-127.0, 127.0) as i8 as u8));
                }
                out.push((format!("{name}{SCALE_SUFFIX}"), scales.iter().flat_map(|s| s.to_le_bytes()).collect(), Dtype::F32, vec![shape[0]]));
                out.push((name, q, Dtype::I8, shape));
            }
            (Encoding::Bf16, 2) => {
                let b: Vec<u8> = vals.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect();
                out.push((name, b, Dtype::BF16, shape));
            }
            _ => out.push((name, vals.iter().flat_map(|x| x.to_le_bytes()).collect(), Dtype::F32, shape)),
        }
    }
    let views: Vec<(String, TensorView)> = out
        .iter()
        .map(|(n, data, dt, shape)| Ok((n.clone(), TensorView::new(*dt, shape.clone(), data).map_err(|e| e.to_string())?)))
        .collect::<Result<_, String>>()?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string()), ("bunmind.encoding".to_string(), enc.name().to_string())]);
    safetensors::serialize(views, Some(meta)).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(tensors: Vec<(&str, Vec<f32>, Vec<usize>)>) -> Vec<u8> {
        let data: Vec<(String, Vec<u8>, Vec<usize>)> =
            tensors.into_iter().map(|(n, v, s)| (n.to_string(), v.iter().flat_map(|x| x.to_le_bytes()).collect(), s)).collect();
        let views: Vec<(String, TensorView)> = data.iter().map(|(n, d, s)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), d).unwrap())).collect();
        safetensors::serialize(views, None).unwrap()
    }

    #[test]
    fn int8_roundtrip_is_within_half_a_step_per_row() {
        let w: Vec<f32> = (0..24).map(|i| ((i * 37 % 17) as f32 - 8.0) * if i < 12 { 0.01 } else { 3.0 }).collect();
        let bytes = file(vec![("a.weight", w.clone(), vec![2, 12]), ("n.weight", vec![1.0, 2.0], vec![2])]);
        let q = quantize(&bytes, Encoding::Int8).unwrap();
        let (t, enc) = load(&q, "q", &Device::Cpu).unwrap();
        assert_eq!(enc, "int8");
        assert_eq!(t.len(), 2, "the scale is consumed");
        let got: Vec<f32> = t["a.weight"].flatten_all().unwrap().to_vec1().unwrap();
        for (r, (g, x)) in got.chunks(12).zip(w.chunks(12)).enumerate() {
            let step = x.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            for (a, b) in g.iter().zip(x) {
                assert!((a - b).abs() <= step / 2.0 + 1e-7, "row {r}: {a} vs {b}");
            }
        }
        assert_eq!(t["n.weight"].to_vec1::<f32>().unwrap(), vec![1.0, 2.0]);
    }

    #[test]
    fn truncated_files_say_so() {
        let bytes = file(vec![("a.weight", vec![0.5; 64], vec![8, 8])]);
        let e = load(&bytes[..bytes.len() - 10], "m.safetensors", &Device::Cpu).unwrap_err();
        assert!(e.contains("truncated") && e.contains(&bytes.len().to_string()), "{e}");
        let e = load(&bytes[..20], "m.safetensors", &Device::Cpu).unwrap_err();
        assert!(e.contains("truncated"), "{e}");
        let e = load(b"hello world, not a file", "m.safetensors", &Device::Cpu).unwrap_err();
        assert!(e.contains("not a safetensors file"), "{e}");
    }
}
