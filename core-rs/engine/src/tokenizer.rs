//! Byte-level BPE tokenizers on the Hugging Face `tokenizers` crate: train, load, encode, decode.
//!
//! What we train matches MiniMind's published tokenizer structurally: no normaliser, a ByteLevel
//! pre-tokenizer (regex on, no prefix space), a ByteLevel decoder, BPE without unk/dropout, and the
//! special tokens of one of two schemes at ids 0..n in order. The file we save is a plain HF
//! `tokenizer.json`, so Python `tokenizers` / `transformers` load it unchanged.
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use serde::Deserialize;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, TokenizerBuilder};

use crate::{Error, Result};

/// Special-token schemes. `Minimind` is upstream's current ChatML layout (ids 0–35); `V1` is the
/// seed's `<unk>`, `<s>`, `</s>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Minimind,
    V1,
}

impl Scheme {
    pub fn parse(name: &str) -> Result<Scheme> {
        match name {
            "minimind" | "chatml" => Ok(Scheme::Minimind),
            "v1" => Ok(Scheme::V1),
            other => Err(Error::config(
                "scheme",
                format!("unknown special-token scheme {other:?}; expected \"minimind\" or \"v1\""),
            )),
        }
    }

    /// `(content, special)` in id order. In MiniMind's file the tool/think/buffer tokens (21–35)
    /// are added tokens that are *not* special: they survive `skip_special_tokens` decoding.
    pub fn tokens(self) -> Vec<(&'static str, bool)> {
        match self {
            Scheme::V1 => vec![("<unk>", true), ("<s>", true), ("</s>", true)],
            Scheme::Minimind => {
                let special = [
                    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
                    "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>",
                    "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
                    "<|image_pad|>", "<|video_pad|>", "<|audio_start|>", "<|audio_end|>",
                    "<|audio_pad|>", "<tts_pad>", "<tts_text_bos>", "<tts_text_eod>",
                    "<tts_text_bos_single>",
                ];
                let plain = [
                    "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>",
                    "</think>", "<|buffer1|>", "<|buffer2|>", "<|buffer3|>", "<|buffer4|>",
                    "<|buffer5|>", "<|buffer6|>", "<|buffer7|>", "<|buffer8|>", "<|buffer9|>",
                ];
                special.iter().map(|t| (*t, true)).chain(plain.iter().map(|t| (*t, false))).collect()
            }
        }
    }
}

/// Options for training a tokenizer. Field names are the JSON keys accepted over the C ABI.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainOptions {
    /// Text (`.txt`, one document per line or free text) or JSONL files (`text` field, or chat
    /// `conversations` whose contents are all used).
    pub files: Vec<PathBuf>,
    #[serde(default = "default_vocab")]
    pub vocab_size: usize,
    #[serde(default = "default_min_freq")]
    pub min_frequency: u64,
    #[serde(default = "default_scheme")]
    pub scheme: String,
    /// Longest token (in characters of the byte-level alphabet) the trainer may create.
    #[serde(default)]
    pub max_token_length: Option<usize>,
}

fn default_vocab() -> usize {
    6400
}
fn default_min_freq() -> u64 {
    2
}
fn default_scheme() -> String {
    "minimind".into()
}

/// Shared, lock-free progress of a training run (polled from another thread).
#[derive(Debug, Default)]
pub struct TrainProgress {
    pub bytes_total: AtomicU64,
    pub bytes_read: AtomicU64,
    pub documents: AtomicU64,
    /// 0 = reading, 1 = merging, 2 = done
    pub phase: AtomicU64,
    pub cancel: AtomicBool,
}

/// A loaded tokenizer. Cheap to share across threads (`encode_batch` runs on rayon).
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl Tokenizer {
    /// Load a HF `tokenizer.json`, or the one inside a directory.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Tokenizer> {
        let path = path.as_ref();
        let file = if path.is_dir() { path.join("tokenizer.json") } else { path.to_path_buf() };
        let bytes = std::fs::read(&file).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::Tokenizer(format!("{}: file not found (expected a HF tokenizer.json)", file.display()))
            } else {
                Error::io(&file, e)
            }
        })?;
        Self::from_bytes(&bytes).map_err(|e| Error::Tokenizer(format!("{}: {}", file.display(), strip_prefix(&e))))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Tokenizer> {
        let inner = tokenizers::Tokenizer::from_bytes(bytes)
            .map_err(|e| Error::Tokenizer(format!("not a valid tokenizer.json: {e}")))?;
        Ok(Tokenizer { inner })
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode_fast(text, add_special_tokens).map_err(tok_err)?;
        Ok(enc.get_ids().to_vec())
    }

    /// Encode many texts in parallel (rayon, inside `tokenizers`).
    pub fn encode_batch(&self, texts: Vec<&str>, add_special_tokens: bool) -> Result<Vec<Vec<u32>>> {
        let encs = self.inner.encode_batch_fast(texts, add_special_tokens).map_err(tok_err)?;
        Ok(encs.into_iter().map(|e| e.get_ids().to_vec()).collect())
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let vocab = self.vocab_size() as u32;
        if let Some((pos, id)) = ids.iter().enumerate().find(|(_, &id)| id >= vocab) {
            return Err(Error::input(format!(
                "token id {id} at position {pos} is out of range for a vocabulary of {vocab}"
            )));
        }
        self.inner.decode(ids, skip_special_tokens).map_err(tok_err)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The tokenizer as `tokenizer.json` text (pretty-printed, as HF saves it).
    pub fn to_json(&self) -> Result<String> {
        self.inner.to_string(true).map_err(tok_err)
    }

    /// Write `tokenizer.json` into `dir` atomically.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<PathBuf> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join("tokenizer.json");
        write_atomic(&path, self.to_json()?.as_bytes())?;
        Ok(path)
    }

    /// Train a byte-level BPE. `progress` is updated while the files are read; set its `cancel`
    /// flag to stop early (the call then returns an error and writes nothing).
    pub fn train(opts: &TrainOptions, progress: &TrainProgress) -> Result<Tokenizer> {
        let scheme = Scheme::parse(&opts.scheme)?;
        let specials = scheme.tokens();
        if opts.files.is_empty() {
            return Err(Error::config("files", "no training files given"));
        }
        if opts.vocab_size < 256 + specials.len() {
            return Err(Error::config(
                "vocab_size",
                format!("{} is too small: a byte-level BPE needs at least 256 + {} special tokens", opts.vocab_size, specials.len()),
            ));
        }
        let mut total = 0u64;
        for f in &opts.files {
            let meta = std::fs::metadata(f).map_err(|e| Error::io(f, e))?;
            if meta.is_dir() {
                return Err(Error::input(format!("{}: is a directory, expected a text or JSONL file", f.display())));
            }
            total += meta.len();
        }
        progress.bytes_total.store(total, Ordering::Relaxed);

        let mut builder = BpeTrainerBuilder::new()
            .vocab_size(opts.vocab_size)
            .min_frequency(opts.min_frequency)
            .show_progress(false)
            .special_tokens(specials.iter().map(|(t, _)| AddedToken::from(t.to_string(), true)).collect())
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect());
        if let Some(n) = opts.max_token_length {
            builder = builder.max_token_length(Some(n));
        }
        let mut trainer = builder.build();

        let mut tk = TokenizerBuilder::new()
            .with_model(BPE::default())
            .with_normalizer(None::<tokenizers::NormalizerWrapper>)
            .with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
            .with_post_processor(None::<tokenizers::PostProcessorWrapper>)
            .with_decoder(Some(ByteLevelDecoder::new(true, true, true)))
            .build()
            .map_err(tok_err)?;

        // Documents stream from disk; errors (bad JSON line, bad UTF-8) stop training and are
        // reported with file and line.
        let failure: std::sync::Mutex<Option<Error>> = std::sync::Mutex::new(None);
        {
            let docs = DocumentStream::new(&opts.files, progress, &failure);
            tk.train(&mut trainer, docs).map_err(tok_err)?;
        }
        if let Some(e) = failure.into_inner().unwrap() {
            return Err(e);
        }
        if progress.cancel.load(Ordering::Relaxed) {
            return Err(Error::Other("tokenizer training cancelled".into()));
        }
        progress.phase.store(1, Ordering::Relaxed);

        // The trainer registered every scheme token as special; re-register the ones that are
        // plain added tokens upstream (same ids, `special: false`).
        let mut json: serde_json::Value = serde_json::from_str(&tk.to_string(false).map_err(tok_err)?)?;
        let plain: Vec<AddedToken> = specials
            .iter()
            .filter(|(_, special)| !special)
            .map(|(t, _)| AddedToken::from(t.to_string(), false).normalized(false))
            .collect();
        if !plain.is_empty() {
            if let Some(added) = json.get_mut("added_tokens").and_then(|a| a.as_array_mut()) {
                for tok in added.iter_mut() {
                    let content = tok["content"].as_str().unwrap_or_default().to_string();
                    if plain.iter().any(|p| p.content == content) {
                        tok["special"] = serde_json::Value::Bool(false);
                    }
                }
            }
        }
        let tk = tokenizers::Tokenizer::from_bytes(serde_json::to_vec(&json)?).map_err(tok_err)?;
        for (id, (content, _)) in specials.iter().enumerate() {
            let got = tk.token_to_id(content);
            if got != Some(id as u32) {
                return Err(Error::Tokenizer(format!("special token {content} got id {got:?}, expected {id}")));
            }
        }
        if tk.get_vocab_size(false) < 256 + specials.len() {
            return Err(Error::Tokenizer("training produced a vocabulary smaller than the byte alphabet".into()));
        }
        progress.phase.store(2, Ordering::Relaxed);
        Ok(Tokenizer { inner: tk })
    }
}

fn tok_err(e: tokenizers::Error) -> Error {
    Error::Tokenizer(e.to_string())
}

fn strip_prefix(e: &Error) -> String {
    match e {
        Error::Tokenizer(m) => m.clone(),
        other => other.to_string(),
    }
}

/// Write a file through a temp file + fsync + rename, so readers never see half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
    f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Iterator over the documents of several files. `.jsonl` lines contribute their `text` field or
/// every `content` (and `reasoning_content`) of `conversations`; `chosen`/`rejected` DPO pairs too.
/// Other files contribute one document per line.
struct DocumentStream<'a> {
    files: std::slice::Iter<'a, PathBuf>,
    current: Option<(PathBuf, bool, BufReader<CountingReader<'a>>, usize)>,
    progress: &'a TrainProgress,
    failure: &'a std::sync::Mutex<Option<Error>>,
    pending: std::collections::VecDeque<String>,
}

struct CountingReader<'a> {
    inner: File,
    progress: &'a TrainProgress,
}

impl Read for CountingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl<'a> DocumentStream<'a> {
    fn new(files: &'a [PathBuf], progress: &'a TrainProgress, failure: &'a std::sync::Mutex<Option<Error>>) -> Self {
        DocumentStream { files: files.iter(), current: None, progress, failure, pending: Default::default() }
    }

    fn fail(&mut self, e: Error) -> Option<String> {
        *self.failure.lock().unwrap() = Some(e);
        self.current = None;
        self.files = [].iter();
        None
    }
}

impl Iterator for DocumentStream<'_> {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        loop {
            if let Some(doc) = self.pending.pop_front() {
                return Some(doc);
            }
            if self.progress.cancel.load(Ordering::Relaxed) {
                return None;
            }
            if self.current.is_none() {
                let path = self.files.next()?.clone();
                let file = match File::open(&path) {
                    Ok(f) => f,
                    Err(e) => return self.fail(Error::io(&path, e)),
                };
                let is_jsonl = matches!(path.extension().and_then(|e| e.to_str()), Some("jsonl") | Some("json"));
                let reader = BufReader::with_capacity(1 << 20, CountingReader { inner: file, progress: self.progress });
                self.current = Some((path, is_jsonl, reader, 0));
            }
            let (path, is_jsonl, reader, line_no) = self.current.as_mut().unwrap();
            let mut buf = Vec::new();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) => {
                    self.current = None;
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    let e = Error::io(path.clone(), e);
                    return self.fail(e);
                }
            }
            *line_no += 1;
            let line = match String::from_utf8(buf) {
                Ok(s) => s,
                Err(e) => {
                    let msg = format!("{}:{}: invalid UTF-8 at byte {} of the line", path.display(), line_no, e.utf8_error().valid_up_to());
                    return self.fail(Error::input(msg));
                }
            };
            if *is_jsonl {
                let trimmed = line.trim();
                if trimmed.is_empty() {
                    continue;
                }
                let value: serde_json::Value = match serde_json::from_str(trimmed) {
                    Ok(v) => v,
                    Err(e) => {
                        let msg = format!("{}:{}: malformed JSON: {e}", path.display(), line_no);
                        return self.fail(Error::input(msg));
                    }
                };
                let before = self.pending.len();
                collect_texts(&value, &mut self.pending);
                if self.pending.len() == before {
                    let msg = format!(
                        "{}:{}: no `text`, `conversations`, `chosen` or `rejected` field to train on",
                        path.display(),
                        line_no
                    );
                    return self.fail(Error::input(msg));
                }
            } else {
                let doc = line.trim_end_matches(['\n', '\r']);
                if !doc.is_empty() {
                    self.pending.push_back(doc.to_string());
                }
            }
            self.progress.documents.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn collect_texts(v: &serde_json::Value, out: &mut std::collections::VecDeque<String>) {
    if let Some(t) = v.get("text").and_then(|t| t.as_str()) {
        out.push_back(t.to_string());
    }
    for key in ["conversations", "chosen", "rejected"] {
        if let Some(turns) = v.get(key).and_then(|c| c.as_array()) {
            for turn in turns {
                for field in ["content", "reasoning_content"] {
                    if let Some(c) = turn.get(field).and_then(|c| c.as_str()) {
                        if !c.is_empty() {
                            out.push_back(c.to_string());
                        }
                    }
                }
            }
        }
    }
}

/// Shared handle to a cancellable training progress, for callers running `train` on a thread.
pub type SharedProgress = Arc<TrainProgress>;

#[cfg(test)]
mod tests {
    use super::*;

    fn minimind() -> Option<Tokenizer> {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/minimind/tokenizer.json");
        p.exists().then(|| Tokenizer::from_path(p).unwrap())
    }

    #[test]
    fn scheme_ids_match_published_tokenizer() {
        let Some(tk) = minimind() else { return };
        for (id, (content, _)) in Scheme::Minimind.tokens().iter().enumerate() {
            assert_eq!(tk.token_to_id(content), Some(id as u32), "{content}");
        }
        assert_eq!(tk.vocab_size(), 6400);
    }

    #[test]
    fn unknown_scheme_is_an_error_naming_the_field() {
        let e = Scheme::parse("gpt2").unwrap_err().to_string();
        assert!(e.contains("scheme") && e.contains("gpt2"), "{e}");
    }

    #[test]
    fn missing_and_malformed_files_are_clear_errors() {
        let e = Tokenizer::from_path("/nonexistent/tokenizer.json").err().unwrap().to_string();
        assert!(e.contains("/nonexistent/tokenizer.json") && e.contains("not found"), "{e}");
        let dir = std::env::temp_dir().join(format!("bm-tok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("tokenizer.json"), b"{\"version\": ").unwrap();
        let e = Tokenizer::from_path(&dir).err().unwrap().to_string();
        assert!(e.contains("tokenizer.json") && e.contains("not a valid"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn train_small_then_round_trip() {
        let dir = std::env::temp_dir().join(format!("bm-train-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let corpus = dir.join("c.jsonl");
        let mut s = String::new();
        for i in 0..300 {
            s.push_str(&format!("{{\"text\": \"the cat sat on the mat {i} 小猫坐在垫子上\"}}\n"));
        }
        s.push_str("{\"conversations\":[{\"role\":\"user\",\"content\":\"hello there\"},{\"role\":\"assistant\",\"content\":\"general kenobi\"}]}\n");
        std::fs::write(&corpus, s).unwrap();
        for scheme in ["minimind", "v1"] {
            let opts = TrainOptions {
                files: vec![corpus.clone()],
                vocab_size: 400,
                min_frequency: 2,
                scheme: scheme.into(),
                max_token_length: Some(16),
            };
            let progress = TrainProgress::default();
            let tk = Tokenizer::train(&opts, &progress).unwrap();
            assert_eq!(progress.phase.load(Ordering::Relaxed), 2);
            assert_eq!(progress.bytes_read.load(Ordering::Relaxed), progress.bytes_total.load(Ordering::Relaxed));
            assert!(tk.vocab_size() <= 400 && tk.vocab_size() > 300, "vocab {}", tk.vocab_size());
            let text = "the cat sat 小猫 🐱 unseen Ωmega\r\n\0";
            let ids = tk.encode(text, false).unwrap();
            assert_eq!(tk.decode(&ids, false).unwrap(), text);
            // Merges were learned: the common word is one token, fewer than its bytes.
            assert!(tk.encode("the cat", false).unwrap().len() < 7);
            let path = tk.save(dir.join(scheme)).unwrap();
            let again = Tokenizer::from_path(&path).unwrap();
            assert_eq!(again.encode(text, false).unwrap(), ids);
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn bad_jsonl_line_names_file_and_line() {
        let dir = std::env::temp_dir().join(format!("bm-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let corpus = dir.join("bad.jsonl");
        std::fs::write(&corpus, "{\"text\":\"ok\"}\n{\"text\": oops}\n").unwrap();
        let opts = TrainOptions { files: vec![corpus], vocab_size: 400, min_frequency: 1, scheme: "v1".into(), max_token_length: None };
        let e = Tokenizer::train(&opts, &TrainProgress::default()).err().unwrap().to_string();
        assert!(e.contains("bad.jsonl:2") && e.contains("malformed JSON"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
