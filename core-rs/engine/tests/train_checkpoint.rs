//! Checkpoint directories: round trip, crash states at every stage of a save, corrupt files, and an
//! exact training resume.
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use bunmind_engine::train::checkpoint::{old_path, tmp_path, MODEL_FILE, OPTIMIZER_FILE, TRAINER_STATE_FILE};
use bunmind_engine::train::{
    atomic_write, load_checkpoint, masked_cross_entropy, save_checkpoint, AdamW, AdamWConfig, CheckpointParts, Param, Rng,
    RngState,
};
use candle_core::{DType, Device, Tensor, Var};
use serde_json::json;

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bunmind-ckpt-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

fn parts(tag: f32) -> CheckpointParts {
    let dev = Device::Cpu;
    let w = Tensor::new(&[[tag, 2.0], [3.0, 4.0]], &dev).unwrap();
    CheckpointParts {
        weights: HashMap::from([
            ("model.embed_tokens.weight".to_string(), w.clone()),
            ("model.norm.weight".to_string(), Tensor::new(&[1.0f32, tag], &dev).unwrap().to_dtype(DType::BF16).unwrap()),
        ]),
        config_json: format!("{{\"hidden_size\": 2, \"tag\": {tag}}}"),
        optimizer: HashMap::from([("model.embed_tokens.weight.exp_avg".to_string(), (w * 0.5).unwrap())]),
        optimizer_meta: json!({"format": "test", "steps": tag as u64}),
        trainer_state: json!({"step": tag as u64, "epoch": 1, "rng": Rng::new(tag as u64).state()}),
    }
}

fn tag_of(dir: &Path) -> f32 {
    let c = load_checkpoint(dir, &Device::Cpu).unwrap();
    let w = c.weights["model.embed_tokens.weight"].flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let cfg: serde_json::Value = serde_json::from_str(&c.config_json).unwrap();
    assert_eq!(cfg["tag"].as_f64().unwrap() as f32, w[0], "files from different saves mixed");
    assert_eq!(c.trainer_state["step"].as_u64().unwrap() as f32, w[0]);
    w[0]
}

fn siblings(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[test]
fn roundtrip_preserves_everything_and_leaves_no_debris() {
    let root = scratch("roundtrip");
    let dir = root.join("step_000100");
    let p = parts(7.0);
    save_checkpoint(&dir, &p).unwrap();
    assert_eq!(siblings(&dir), ["step_000100"]);
    let mut files: Vec<String> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    files.sort();
    assert_eq!(files, ["config.json", "model.safetensors", "optimizer.safetensors", "trainer_state.json"]);

    let c = load_checkpoint(&dir, &Device::Cpu).unwrap();
    assert!(!c.recovered);
    assert_eq!(c.config_json, p.config_json);
    assert_eq!(c.optimizer_meta, p.optimizer_meta);
    assert_eq!(c.trainer_state, p.trainer_state);
    for (k, t) in &p.weights {
        let got = &c.weights[k];
        assert_eq!(got.dtype(), t.dtype(), "{k}");
        assert_eq!(got.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                   t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }
    assert_eq!(c.optimizer.len(), 1);
    let rng: RngState = serde_json::from_value(c.trainer_state["rng"].clone()).unwrap();
    assert_eq!(rng, Rng::new(7).state());
    // standard safetensors: candle's plain loader reads the weights
    assert_eq!(candle_core::safetensors::load(dir.join(MODEL_FILE), &Device::Cpu).unwrap().len(), 2);

    save_checkpoint(&dir, &parts(8.0)).unwrap();
    assert_eq!(tag_of(&dir), 8.0);
    assert_eq!(siblings(&dir), ["step_000100"]);
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn crash_while_writing_the_new_checkpoint_keeps_the_old_one() {
    let root = scratch("crash-tmp");
    let dir = root.join("ckpt");
    save_checkpoint(&dir, &parts(1.0)).unwrap();
    // another process died half-way through writing its tmp dir
    let stale = PathBuf::from(format!("{}.tmp-999999", dir.display()));
    fs::create_dir(&stale).unwrap();
    fs::write(stale.join(MODEL_FILE), b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":").unwrap();
    // and this process too (same pid: save must replace it)
    fs::create_dir(tmp_path(&dir)).unwrap();
    fs::write(tmp_path(&dir).join(TRAINER_STATE_FILE), b"{\"step\":").unwrap();
    assert_eq!(tag_of(&dir), 1.0);
    save_checkpoint(&dir, &parts(2.0)).unwrap();
    assert_eq!(tag_of(&dir), 2.0);
    assert!(!tmp_path(&dir).exists());
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn crash_between_the_two_renames_recovers_the_old_checkpoint() {
    let root = scratch("crash-rename");
    let dir = root.join("ckpt");
    save_checkpoint(&dir, &parts(1.0)).unwrap();
    // state right after `dir → dir.old`, with the new one still in tmp (complete or not)
    fs::rename(&dir, old_path(&dir)).unwrap();
    fs::create_dir(tmp_path(&dir)).unwrap();
    fs::write(tmp_path(&dir).join(MODEL_FILE), b"garbage").unwrap();
    let c = load_checkpoint(&dir, &Device::Cpu).unwrap();
    assert!(c.recovered);
    assert!(dir.is_dir() && !old_path(&dir).exists());
    assert_eq!(tag_of(&dir), 1.0);

    // same crash, but the next thing that happens is another save
    fs::rename(&dir, old_path(&dir)).unwrap();
    save_checkpoint(&dir, &parts(3.0)).unwrap();
    assert_eq!(tag_of(&dir), 3.0);
    assert!(!old_path(&dir).exists() && !tmp_path(&dir).exists());
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn crash_before_removing_old_loads_the_new_one() {
    let root = scratch("crash-cleanup");
    let dir = root.join("ckpt");
    let other = root.join("other");
    save_checkpoint(&dir, &parts(1.0)).unwrap();
    save_checkpoint(&other, &parts(2.0)).unwrap();
    fs::rename(&dir, old_path(&dir)).unwrap();
    fs::rename(&other, &dir).unwrap();
    // a half-deleted .old
    fs::remove_file(old_path(&dir).join(MODEL_FILE)).unwrap();
    assert_eq!(tag_of(&dir), 2.0);
    save_checkpoint(&dir, &parts(4.0)).unwrap();
    assert_eq!(tag_of(&dir), 4.0);
    assert_eq!(siblings(&dir), ["ckpt"]);
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn load_names_the_missing_or_corrupt_file() {
    let root = scratch("corrupt");
    let dir = root.join("ckpt");
    let err = |dir: &Path| load_checkpoint(dir, &Device::Cpu).unwrap_err().to_string();
    assert!(err(&dir).contains("no such directory"));

    save_checkpoint(&dir, &parts(1.0)).unwrap();
    fs::remove_file(dir.join(OPTIMIZER_FILE)).unwrap();
    let e = err(&dir);
    assert!(e.contains("optimizer.safetensors") && e.contains("missing"), "{e}");

    save_checkpoint(&dir, &parts(1.0)).unwrap();
    let bytes = fs::read(dir.join(MODEL_FILE)).unwrap();
    fs::write(dir.join(MODEL_FILE), &bytes[..bytes.len() - 3]).unwrap(); // truncated
    let e = err(&dir);
    assert!(e.contains("model.safetensors") && e.contains("corrupt"), "{e}");

    save_checkpoint(&dir, &parts(1.0)).unwrap();
    fs::write(dir.join(TRAINER_STATE_FILE), b"{\"step\": 3").unwrap();
    let e = err(&dir);
    assert!(e.contains("trainer_state.json") && e.contains("corrupt"), "{e}");

    save_checkpoint(&dir, &parts(1.0)).unwrap();
    candle_core::safetensors::save(&parts(1.0).optimizer, dir.join(OPTIMIZER_FILE)).unwrap(); // no metadata
    let e = err(&dir);
    assert!(e.contains("optimizer.safetensors") && e.contains("bunmind.optimizer"), "{e}");

    let mut bad = parts(1.0);
    bad.config_json = "{hidden".into();
    assert!(save_checkpoint(&dir, &bad).unwrap_err().to_string().contains("config_json"));
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn atomic_write_replaces_whole_files() {
    let root = scratch("atomic");
    let f = root.join("a.json");
    atomic_write(&f, b"first, long content").unwrap();
    atomic_write(&f, b"second").unwrap();
    assert_eq!(fs::read(&f).unwrap(), b"second");
    assert_eq!(fs::read_dir(&root).unwrap().count(), 1, "temp file left behind");
    fs::remove_dir_all(&root).unwrap();
}

// ---- exact resume of a small training run ----

const D: usize = 4;
const V: usize = 6;

struct Run {
    w: Var,
    opt: AdamW,
    rng: Rng,
    step: u64,
}

fn new_run() -> Run {
    let mut rng = Rng::new(42);
    let w = Var::from_tensor(&rng.normal_tensor((D, V), 0.0, 0.3, &Device::Cpu).unwrap()).unwrap();
    let opt = AdamW::new(vec![Param::new("lm_head.weight", w.clone())], AdamWConfig::default()).unwrap();
    Run { w, opt, rng, step: 0 }
}

fn train_one(r: &mut Run, data: &[(Tensor, Tensor)]) {
    let order = r.rng.permutation(data.len()); // sampler state lives in the rng
    let (x, y) = &data[order[0]];
    let keep = r.rng.bernoulli_mask((1, 3, D), 0.9, &Device::Cpu).unwrap(); // dropout
    let logits = (x * keep).unwrap().broadcast_matmul(r.w.as_tensor()).unwrap();
    let mask = Tensor::ones((1, 3), DType::F32, &Device::Cpu).unwrap();
    let g = masked_cross_entropy(&logits, y, &mask).unwrap().backward().unwrap();
    r.opt.step(&g, 1e-2).unwrap();
    r.step += 1;
}

fn save_run(r: &Run, dir: &Path) {
    let (optimizer, optimizer_meta) = r.opt.export_state().unwrap();
    save_checkpoint(
        dir,
        &CheckpointParts {
            weights: HashMap::from([("lm_head.weight".to_string(), r.w.as_tensor().clone())]),
            config_json: "{}".into(),
            optimizer,
            optimizer_meta,
            trainer_state: json!({"step": r.step, "rng": r.rng.state()}),
        },
    )
    .unwrap();
}

fn load_run(dir: &Path) -> Run {
    let c = load_checkpoint(dir, &Device::Cpu).unwrap();
    let w = Var::from_tensor(&c.weights["lm_head.weight"]).unwrap();
    let mut opt = AdamW::new(vec![Param::new("lm_head.weight", w.clone())], AdamWConfig::default()).unwrap();
    opt.load_state(&c.optimizer, &c.optimizer_meta).unwrap();
    let rng = Rng::from_state(serde_json::from_value(c.trainer_state["rng"].clone()).unwrap()).unwrap();
    Run { w, opt, rng, step: c.trainer_state["step"].as_u64().unwrap() }
}

#[test]
fn resume_from_checkpoint_is_bit_exact() {
    let root = scratch("resume");
    let mut drng = Rng::new(1);
    let data: Vec<(Tensor, Tensor)> = (0..5)
        .map(|_| {
            let x = drng.normal_tensor((1, 3, D), 0.0, 1.0, &Device::Cpu).unwrap();
            let y = Tensor::from_vec((0..3).map(|_| drng.below(V as u64) as u32).collect::<Vec<_>>(), (1, 3), &Device::Cpu).unwrap();
            (x, y)
        })
        .collect();
    let mut straight = new_run();
    for _ in 0..8 {
        train_one(&mut straight, &data);
    }

    let mut first = new_run();
    for _ in 0..3 {
        train_one(&mut first, &data);
    }
    save_run(&first, &root.join("ckpt"));
    drop(first);
    let mut resumed = load_run(&root.join("ckpt"));
    assert_eq!((resumed.step, resumed.opt.steps()), (3, 3));
    for _ in 3..8 {
        train_one(&mut resumed, &data);
    }
    let a = straight.w.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = resumed.w.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(a, b);
    assert_ne!(a, new_run().w.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap());
    fs::remove_dir_all(&root).unwrap();
}
