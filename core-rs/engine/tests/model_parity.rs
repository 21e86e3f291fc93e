//! Parity of the Rust model with the independent numpy reference (tests/reference/minimind_ref.py):
//! full inference forward, last-position forward, KV-cache incremental decode, batched forward and
//! the training forward (logits + MoE aux loss), for every fixture in tests/fixtures/model.
use std::path::PathBuf;

use bunmind_engine::model::Model;
use candle_core::{Device, Tensor};

const TOL: f32 = 1e-4;

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/model")
}

struct Seq {
    ids: Vec<u32>,
    logits_all: Vec<Vec<f32>>,
    train_logits_all: Vec<Vec<f32>>,
    aux_loss: f64,
}

fn read_expected(name: &str) -> Vec<Seq> {
    let text = std::fs::read_to_string(fixtures_dir().join(name).join("expected.json")).expect("expected.json");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mat = |x: &serde_json::Value| -> Vec<Vec<f32>> {
        x.as_array().unwrap().iter().map(|r| r.as_array().unwrap().iter().map(|f| f.as_f64().unwrap() as f32).collect()).collect()
    };
    v["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| Seq {
            ids: s["ids"].as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect(),
            logits_all: mat(&s["logits_all"]),
            train_logits_all: mat(&s["train_logits_all"]),
            aux_loss: s["aux_loss"].as_f64().unwrap(),
        })
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    let d = max_diff(got, want);
    assert!(d <= TOL, "{what}: max abs diff {d} > {TOL}");
}

fn ids_tensor(ids: &[u32]) -> Tensor {
    Tensor::new(ids, &Device::Cpu).unwrap().unsqueeze(0).unwrap()
}

fn check_fixture(name: &str) {
    let dev = Device::Cpu;
    let (model, warnings) = Model::load_dir(fixtures_dir().join(name), &dev).unwrap_or_else(|e| panic!("{name}: {e}"));
    // f16/bf16 fixtures get the conversion note, nothing else.
    let stored_f32 = !matches!(name, "dense_qknorm_lmhead" | "moe_top1_qknorm");
    let others: Vec<&String> = warnings.iter().filter(|w| !w.contains("were converted to f32")).collect();
    assert!(others.is_empty(), "{name}: unexpected warnings {others:?}");
    assert_eq!(warnings.len(), usize::from(!stored_f32), "{name}: {warnings:?}");
    let seqs = read_expected(name);
    for (si, s) in seqs.iter().enumerate() {
        let t = s.ids.len();
        let tag = format!("{name} seq {si}");
        // Full inference forward, all positions.
        let mut cache = model.new_cache();
        let all = model.forward_all(&ids_tensor(&s.ids), 0, &mut cache).unwrap().squeeze(0).unwrap().to_vec2::<f32>().unwrap();
        for p in 0..t {
            assert_close(&format!("{tag} forward_all pos {p}"), &all[p], &s.logits_all[p]);
        }
        // Last-position forward.
        let mut cache = model.new_cache();
        let last = model.forward(&ids_tensor(&s.ids), 0, &mut cache).unwrap().squeeze(0).unwrap().to_vec1::<f32>().unwrap();
        assert_close(&format!("{tag} forward last"), &last, &s.logits_all[t - 1]);
        // Incremental decode: prefill half, then one token at a time.
        let mut cache = model.new_cache();
        let pre = t.div_ceil(2);
        let out = model.forward(&ids_tensor(&s.ids[..pre]), 0, &mut cache).unwrap().squeeze(0).unwrap().to_vec1::<f32>().unwrap();
        assert_close(&format!("{tag} prefill"), &out, &s.logits_all[pre - 1]);
        for p in pre..t {
            let out = model.forward(&ids_tensor(&s.ids[p..p + 1]), p, &mut cache).unwrap().squeeze(0).unwrap().to_vec1::<f32>().unwrap();
            assert_close(&format!("{tag} incremental pos {p}"), &out, &s.logits_all[p]);
        }
        assert_eq!(cache.seq_len(), t);
        // Training forward (differentiable ops, YaRN off).
        let (logits, aux) = model.forward_train(&ids_tensor(&s.ids)).unwrap();
        let logits = logits.squeeze(0).unwrap().to_vec2::<f32>().unwrap();
        for p in 0..t {
            assert_close(&format!("{tag} forward_train pos {p}"), &logits[p], &s.train_logits_all[p]);
        }
        let aux = aux.to_scalar::<f32>().unwrap() as f64;
        assert!((aux - s.aux_loss).abs() <= 1e-6 + 1e-4 * s.aux_loss.abs(), "{tag} aux loss {aux} vs {}", s.aux_loss);
    }
    // Batched: the two equal-length sequences together.
    let (a, b) = (&seqs[1], &seqs[2]);
    let ids = Tensor::new(vec![a.ids.clone(), b.ids.clone()], &dev).unwrap();
    let mut cache = model.new_cache();
    let all = model.forward_all(&ids, 0, &mut cache).unwrap().to_vec3::<f32>().unwrap();
    for (row, s) in [a, b].iter().enumerate() {
        for p in 0..s.ids.len() {
            assert_close(&format!("{name} batch row {row} pos {p}"), &all[row][p], &s.logits_all[p]);
        }
    }
    let (tl, _) = model.forward_train(&ids).unwrap();
    let tl = tl.to_vec3::<f32>().unwrap();
    for (row, s) in [a, b].iter().enumerate() {
        for p in 0..s.ids.len() {
            assert_close(&format!("{name} train batch row {row} pos {p}"), &tl[row][p], &s.train_logits_all[p]);
        }
    }
}

#[test]
fn parity_dense_gqa() {
    check_fixture("dense_gqa");
}

#[test]
fn parity_dense_qknorm_lmhead_f16() {
    check_fixture("dense_qknorm_lmhead");
}

#[test]
fn parity_v1_interleaved_rope() {
    check_fixture("v1_interleaved");
}

#[test]
fn parity_moe_top2_shared() {
    check_fixture("moe_top2_shared");
}

#[test]
fn parity_moe_top1_qknorm_bf16() {
    check_fixture("moe_top1_qknorm");
}

#[test]
fn parity_yarn_inference_only() {
    check_fixture("dense_yarn");
    // The fixture must really exercise YaRN: scaled and unscaled logits differ.
    let s = &read_expected("dense_yarn")[1];
    let last = s.ids.len() - 1;
    assert!(max_diff(&s.logits_all[last], &s.train_logits_all[last]) > 1e-3);
}
