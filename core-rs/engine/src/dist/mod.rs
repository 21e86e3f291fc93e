//! Data-parallel training: the collective operations every rank takes part in.
//!
//! A [`Collective`] connects `world_size` processes (ranks). The trainer uses it once per optimizer
//! step: the control values (summed loss, token weight, stop requests, which parameters received a
//! gradient) and then every gradient are summed over the ranks, so all ranks apply the same clipped
//! AdamW update to identical weights. At join time the trainable weights are broadcast from rank 0.
//!
//! Backends:
//! - `nccl` (CUDA build with the `nccl` feature): NCCL collectives on the GPU, one GPU per rank —
//!   what PyTorch's DDP uses. Rank 0 publishes NCCL's unique id through the rendezvous file.
//! - `tcp`: a plain-socket star (rank 0 sums in rank order and sends the sum back) on host memory.
//!   It lets the data-parallel path (launch, sharding, reduction, stop, resume) run and be tested
//!   on a CPU-only machine; it is not meant to be fast.
//!
//! Rendezvous: rank 0 writes what the others need (the TCP address, or the NCCL id) to a file,
//! atomically; the other ranks poll for it until `timeout_s`. The launcher removes a stale file
//! before it starts the ranks.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use crate::{Error, Result};

#[cfg(feature = "nccl")]
pub mod nccl;
pub mod tcp;

/// Collective operations over the ranks of one training job.
pub trait Collective: Send {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// `"tcp"` or `"nccl"`.
    fn backend(&self) -> &'static str;
    /// Element-wise sum of `values` over all ranks, in place; every rank gets the same result.
    /// For small control values (loss sums, token counts, flags).
    fn all_reduce_host(&mut self, values: &mut [f64]) -> Result<()>;
    /// Element-wise sums over all ranks of f32 tensors (same shapes on every rank, on this rank's
    /// device); every rank gets the same result.
    fn all_reduce_tensors(&mut self, tensors: &[Tensor]) -> Result<Vec<Tensor>>;
    /// Rank `root`'s values of these f32 tensors, on every rank.
    fn broadcast_tensors(&mut self, tensors: &[Tensor], root: usize) -> Result<Vec<Tensor>>;
}

/// How a rank joins its job (JSON from the caller).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistConfig {
    /// `"tcp"` or `"nccl"`.
    pub backend: String,
    pub rank: usize,
    pub world_size: usize,
    /// The rendezvous file (written by rank 0, read by the others).
    pub rendezvous: PathBuf,
    /// How long to wait for the other ranks: at the rendezvous and in each collective (seconds).
    #[serde(default = "default_timeout")]
    pub timeout_s: f64,
}

fn default_timeout() -> f64 {
    600.0
}

impl DistConfig {
    pub fn check(&self) -> Result<()> {
        if self.world_size < 1 {
            return Err(Error::config("world_size", "must be ≥ 1"));
        }
        if self.rank >= self.world_size {
            return Err(Error::config("rank", format!("rank {} is outside a world of {} ranks", self.rank, self.world_size)));
        }
        if !(self.timeout_s.is_finite() && self.timeout_s > 0.0) {
            return Err(Error::config("timeout_s", format!("{}: must be a positive number of seconds", self.timeout_s)));
        }
        Ok(())
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout_s)
    }
}

/// Joins the job described by `cfg` with the backend it names; `device` is this rank's device
/// (NCCL needs the rank's GPU).
pub fn connect(cfg: &DistConfig, device: &Device) -> Result<Box<dyn Collective>> {
    cfg.check()?;
    match cfg.backend.as_str() {
        "tcp" => Ok(Box::new(tcp::TcpCollective::connect(cfg)?)),
        "nccl" => connect_nccl(cfg, device),
        other => Err(Error::config("backend", format!("{other:?}: expected \"nccl\" (GPUs) or \"tcp\" (CPU, for testing)"))),
    }
}

#[cfg(feature = "nccl")]
fn connect_nccl(cfg: &DistConfig, device: &Device) -> Result<Box<dyn Collective>> {
    Ok(Box::new(nccl::NcclCollective::connect(cfg, device)?))
}

#[cfg(not(feature = "nccl"))]
fn connect_nccl(_cfg: &DistConfig, _device: &Device) -> Result<Box<dyn Collective>> {
    Err(Error::config(
        "backend",
        "\"nccl\" needs the CUDA build of the library compiled with NCCL (`bun scripts/build-native.ts --cuda`); this build has no NCCL",
    ))
}

/// Whether this build has the NCCL backend.
pub const fn has_nccl() -> bool {
    cfg!(feature = "nccl")
}

/// Rank 0's side of the rendezvous: writes `payload` to `path` atomically (temp file + rename).
pub fn publish(path: &Path, payload: &[u8]) -> Result<()> {
    crate::train::atomic_write(path, payload)
}

/// A non-zero rank's side: waits until `path` exists and `parse` accepts its contents (a half
/// written file is never seen, but a stale one from an earlier job might be: the launcher removes
/// it first), or until `timeout`.
pub fn wait_for<T>(path: &Path, timeout: Duration, mut parse: impl FnMut(&[u8]) -> Option<T>) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Ok(bytes) = std::fs::read(path) {
            if let Some(v) = parse(&bytes) {
                return Ok(v);
            }
        }
        if start.elapsed() > timeout {
            return Err(Error::Other(format!(
                "data-parallel rendezvous: rank 0 did not publish {} within {:.0} s (did rank 0 start? is the path on a filesystem every rank sees?)",
                path.display(),
                timeout.as_secs_f64()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The f32 values of `tensors`, back to back, on the host.
pub fn flatten_host(tensors: &[Tensor]) -> Result<Vec<f32>> {
    let total: usize = tensors.iter().map(|t| t.elem_count()).sum();
    let mut out = Vec::with_capacity(total);
    for t in tensors {
        if t.dtype() != DType::F32 {
            return Err(Error::input(format!("collective: expected f32 tensors, got {:?}", t.dtype())));
        }
        out.extend(t.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(out)
}

/// Splits `flat` back into tensors shaped like `like`, on `like`'s devices.
pub fn unflatten(flat: &[f32], like: &[Tensor]) -> Result<Vec<Tensor>> {
    let mut at = 0;
    like.iter()
        .map(|t| {
            let n = t.elem_count();
            let v = Tensor::from_slice(&flat[at..at + n], t.shape(), t.device())?;
            at += n;
            Ok(v)
        })
        .collect()
}
