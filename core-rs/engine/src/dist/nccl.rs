//! The `nccl` backend: NCCL collectives on the GPU, one GPU per rank — how PyTorch's DDP sums
//! gradients.
//!
//! Join: rank 0 makes NCCL's unique id (`ncclGetUniqueId`: its bootstrap address and a random
//! magic) and publishes it through the rendezvous file; the other ranks read it there; then every
//! rank calls `ncclCommInitRank` with its own GPU. The communicator is bound to the candle
//! device's stream, so each collective is ordered after the kernels that produced its input and
//! before those that read its output, with no extra synchronisation between them.
//!
//! Each operation is one NCCL call on one device buffer:
//! - `all_reduce_tensors`: the tensors are concatenated into one flat buffer (in their common
//!   dtype; a mix of dtypes is summed in f32), summed in place over the ranks, and handed back as
//!   views of that buffer (one extra copy of the gradients, not two);
//! - `broadcast_tensors`: the same buffer, broadcast in place from `root`;
//! - `all_reduce_host`: the f64 values go up to the GPU, are summed there and come back.
//!
//! NCCL waits for a missing rank forever. Here the join (rendezvous + `ncclCommInitRank`) and
//! every operation are bounded by `timeout_s`: after enqueueing, the host polls the stream until
//! the collective has completed; past the limit the communicator is aborted (its kernel exits)
//! and the error says so. NCCL refuses two ranks on the same GPU ("duplicate GPU"): rank r must
//! run on its own `cuda:N`.
use std::ffi::CStr;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaStream, DevicePtrMut};
use candle_core::cuda_backend::cudarc::nccl::result::NcclError;
use candle_core::cuda_backend::cudarc::nccl::{sys, Comm, Id, NcclType, ReduceOp};
use candle_core::cuda_backend::CudaStorageSlice;
use candle_core::{CpuStorage, CudaStorage, DType, Device, InplaceOp1, Layout, Tensor};

use super::{publish, wait_for, Collective, DistConfig};
use crate::{Error, Result};

/// First token of the rendezvous file: `bunmind-nccl-v1 <world size> <id as 256 hex digits>`.
const PREFIX: &str = "bunmind-nccl-v1";
/// Bytes in an `ncclUniqueId`.
const ID_BYTES: usize = 128;

fn other(msg: impl std::fmt::Display) -> Error {
    Error::Other(format!("data-parallel (nccl): {msg}"))
}

/// NCCL's name and text for `e`, its last error message, and a hint for the usual causes.
fn nccl_error(what: &str, e: NcclError) -> Error {
    let code = e.0;
    // SAFETY: ncclGetErrorString returns a static NUL-terminated string for any result code.
    let text = unsafe {
        let p = sys::ncclGetErrorString(code);
        if p.is_null() {
            String::new()
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    };
    // SAFETY: the communicator argument is unused by NCCL and may be null; the string is NCCL's.
    let last = unsafe {
        let p = sys::ncclGetLastError(std::ptr::null_mut());
        if p.is_null() {
            String::new()
        } else {
            CStr::from_ptr(p).to_string_lossy().trim().to_string()
        }
    };
    let hint = match code {
        sys::ncclResult_t::ncclInvalidUsage => {
            " (NCCL refuses two ranks on one GPU: each rank needs its own GPU, rank r on --device cuda:r; also check that every rank has the same world size)"
        }
        sys::ncclResult_t::ncclSystemError | sys::ncclResult_t::ncclRemoteError => {
            " (a rank exited, or the ranks cannot reach each other: NCCL_SOCKET_IFNAME picks the network interface)"
        }
        sys::ncclResult_t::ncclUnhandledCudaError => " (a CUDA error inside NCCL: is the GPU healthy and the driver recent enough?)",
        _ => "",
    };
    let last = if last.is_empty() || last == text { String::new() } else { format!(": {last}") };
    other(format!("{what}: {code:?} ({text}){last}{hint}; NCCL_DEBUG=WARN prints NCCL's own diagnostics"))
}

fn encode(world: usize, id: &Id) -> String {
    let hex: String = id.internal().iter().map(|&b| format!("{:02x}", b as u8)).collect();
    format!("{PREFIX} {world} {hex}\n")
}

fn decode(bytes: &[u8]) -> Option<(usize, Id)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut fields = text.split_whitespace();
    if fields.next()? != PREFIX {
        return None;
    }
    let world: usize = fields.next()?.parse().ok()?;
    let hex = fields.next()?;
    if hex.len() != 2 * ID_BYTES {
        return None;
    }
    let mut internal = [0 as std::ffi::c_char; ID_BYTES];
    for (i, c) in internal.iter_mut().enumerate() {
        *c = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()? as std::ffi::c_char;
    }
    Some((world, Id::uninit(internal)))
}

/// A communicator moving from the thread that created it to the caller's.
struct SendComm(Comm);
// SAFETY: see the `Send` impl of `NcclCollective`.
unsafe impl Send for SendComm {}

pub struct NcclCollective {
    /// None once aborted (after a timeout): every later operation fails.
    comm: Option<Comm>,
    device: Device,
    stream: Arc<CudaStream>,
    rank: usize,
    world: usize,
    ordinal: usize,
    timeout: Duration,
}

// SAFETY: `Comm` holds NCCL's raw `ncclComm_t`, hence not `Send` by default. NCCL communicators
// are not tied to the thread that created them; they only must not be used by two threads at
// once. Every use here goes through `&mut self` (the trainer keeps the collective behind its own
// mutex), so calls never overlap, and each call binds the device's CUDA context to the calling
// thread first. `NcclCollective` is deliberately not `Sync`.
unsafe impl Send for NcclCollective {}

impl NcclCollective {
    /// Joins the job as rank `cfg.rank` on `device` (which must be a CUDA device, a different
    /// GPU for each rank).
    pub fn connect(cfg: &DistConfig, device: &Device) -> Result<NcclCollective> {
        cfg.check()?;
        let Device::Cuda(cuda) = device else {
            return Err(other(format!(
                "the nccl backend needs --device cuda:N (one GPU per rank); this trainer is on {:?}",
                device.location()
            )));
        };
        let stream = cuda.cuda_stream();
        let ordinal = stream.context().ordinal();
        let timeout = cfg.timeout();
        let start = Instant::now();
        let (rank, world) = (cfg.rank, cfg.world_size);
        let id = if rank == 0 {
            let id = Id::new().map_err(|e| nccl_error("rank 0 could not create the NCCL id (ncclGetUniqueId)", e))?;
            if world > 1 {
                publish(&cfg.rendezvous, encode(world, &id).as_bytes())?;
            }
            id
        } else {
            let (w, id) = wait_for(&cfg.rendezvous, timeout, decode)?;
            if w != world {
                return Err(other(format!(
                    "rank {rank} was started with world size {world}, rank 0 with {w} (or {} is left from another job)",
                    cfg.rendezvous.display()
                )));
            }
            id
        };
        // ncclCommInitRank blocks until every rank has called it: on a helper thread, so a rank
        // that never comes is an error after the timeout instead of a hang. (The helper then
        // stays blocked inside NCCL until the process exits.)
        let (tx, rx) = mpsc::channel();
        let s = stream.clone();
        std::thread::Builder::new()
            .name(format!("bunmind-nccl-init-{rank}"))
            .spawn(move || {
                let r = match s.context().bind_to_thread() {
                    Err(e) => Err(other(format!("rank {rank}: cannot use cuda:{ordinal}: {e:?}"))),
                    Ok(()) => Comm::from_rank(s, rank, world, id).map(SendComm).map_err(|e| {
                        nccl_error(&format!("rank {rank} of {world} on cuda:{ordinal} could not join (ncclCommInitRank)"), e)
                    }),
                };
                let _ = tx.send(r);
            })
            .map_err(|e| other(format!("cannot start a thread: {e}")))?;
        let left = timeout.saturating_sub(start.elapsed()).max(Duration::from_secs(1));
        let comm = match rx.recv_timeout(left) {
            Ok(r) => r?.0,
            Err(_) => {
                return Err(other(format!(
                    "rank {rank} of {world} on cuda:{ordinal}: the other ranks did not all join within {:.0} s (did every rank start, each on its own GPU?)",
                    timeout.as_secs_f64()
                )))
            }
        };
        Ok(NcclCollective { comm: Some(comm), device: device.clone(), stream, rank, world, ordinal, timeout })
    }

    fn comm(&self) -> Result<&Comm> {
        self.comm.as_ref().ok_or_else(|| other("the communicator was aborted after an earlier timeout; this job cannot continue"))
    }

    /// Runs `kind` in place on `buf` (a fresh contiguous tensor on this rank's device), then waits
    /// (bounded) until it has completed on the GPU.
    fn run(&mut self, buf: &Tensor, kind: Kind, what: &str) -> Result<()> {
        if !buf.device().same_device(&self.device) {
            return Err(other(format!("{what}: a tensor is on {:?}, this rank's device is cuda:{}", buf.device().location(), self.ordinal)));
        }
        self.stream.context().bind_to_thread().map_err(|e| other(format!("cannot use cuda:{}: {e:?}", self.ordinal)))?;
        let op = NcclOp { comm: self.comm()?, kind, failure: std::cell::RefCell::new(None) };
        if let Err(e) = buf.inplace_op1(&op) {
            return Err(op.failure.into_inner().unwrap_or(Error::Candle(e)));
        }
        self.wait(what)
    }

    /// Polls the stream until the work enqueued so far is done, or aborts after the timeout.
    fn wait(&mut self, what: &str) -> Result<()> {
        let done = self.stream.record_event(None).map_err(|e| other(format!("{what}: CUDA event: {e:?}")))?;
        let start = Instant::now();
        let mut polls = 0u32;
        loop {
            match done.try_is_complete() {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => return Err(other(format!("{what}: CUDA error while waiting for the collective: {e:?}"))),
            }
            if start.elapsed() > self.timeout {
                // Dropping the communicator aborts it (ncclCommAbort), which ends its kernel.
                self.comm = None;
                return Err(other(format!(
                    "{what}: rank {} waited more than {:.0} s for the other ranks (one exited, hangs, or is far behind); the communicator was aborted",
                    self.rank,
                    self.timeout.as_secs_f64()
                )));
            }
            polls += 1;
            if polls < 2000 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }

    /// One fresh flat buffer holding `tensors` back to back, in `dtype`.
    fn flatten(tensors: &[Tensor], dtype: DType) -> Result<Tensor> {
        let parts = tensors.iter().map(|t| Ok(t.detach().to_dtype(dtype)?.flatten_all()?)).collect::<Result<Vec<Tensor>>>()?;
        // `cat` of one tensor is that tensor itself: copy it, the operation works in place.
        let flat = if parts.len() == 1 { parts[0].force_contiguous()? } else { Tensor::cat(&parts, 0)? };
        Ok(flat.detach())
    }

    /// Views of `flat` shaped (and typed) like `like`.
    fn split(flat: &Tensor, like: &[Tensor]) -> Result<Vec<Tensor>> {
        let mut at = 0;
        like.iter()
            .map(|t| {
                let n = t.elem_count();
                let v = flat.narrow(0, at, n)?.reshape(t.shape())?.to_dtype(t.dtype())?;
                at += n;
                Ok(v)
            })
            .collect()
    }
}

/// The dtype the tensors are reduced in: theirs when they share one NCCL can sum, else f32.
fn common_dtype(tensors: &[Tensor]) -> DType {
    let first = tensors[0].dtype();
    let same = tensors.iter().all(|t| t.dtype() == first);
    if same && matches!(first, DType::F32 | DType::F64 | DType::BF16 | DType::F16) {
        first
    } else {
        DType::F32
    }
}

#[derive(Clone, Copy)]
enum Kind {
    AllReduceSum,
    Broadcast(usize),
}

/// The NCCL call as a candle in-place op, which hands over the tensor's device buffer.
struct NcclOp<'a> {
    comm: &'a Comm,
    kind: Kind,
    /// The NCCL error, kept whole (candle's error type would flatten it).
    failure: std::cell::RefCell<Option<Error>>,
}

impl NcclOp<'_> {
    fn call<T: NcclType, B: DevicePtrMut<T>>(&self, buf: &mut B) -> candle_core::Result<()> {
        let r = match self.kind {
            Kind::AllReduceSum => self.comm.all_reduce_in_place(buf, &ReduceOp::Sum).map_err(|e| nccl_error("all-reduce (ncclAllReduce)", e)),
            Kind::Broadcast(root) => self.comm.broadcast_in_place(buf, root as i32).map_err(|e| nccl_error("broadcast (ncclBroadcast)", e)),
        };
        r.map(|_| ()).map_err(|e| {
            let msg = e.to_string();
            *self.failure.borrow_mut() = Some(e);
            candle_core::Error::Msg(msg)
        })
    }
}

impl InplaceOp1 for NcclOp<'_> {
    fn name(&self) -> &'static str {
        "bunmind-nccl"
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout) -> candle_core::Result<()> {
        candle_core::bail!("data-parallel (nccl): NCCL works on CUDA tensors, not CPU ones")
    }

    fn cuda_fwd(&self, s: &mut CudaStorage, l: &Layout) -> candle_core::Result<()> {
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("data-parallel (nccl): the buffer must be contiguous")
        };
        match &mut s.slice {
            CudaStorageSlice::F32(x) => self.call(&mut x.slice_mut(a..b)),
            CudaStorageSlice::F64(x) => self.call(&mut x.slice_mut(a..b)),
            CudaStorageSlice::BF16(x) => self.call(&mut x.slice_mut(a..b)),
            CudaStorageSlice::F16(x) => self.call(&mut x.slice_mut(a..b)),
            _ => candle_core::bail!("data-parallel (nccl): unsupported dtype {:?}", s.dtype()),
        }
    }
}

impl Collective for NcclCollective {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world
    }
    fn backend(&self) -> &'static str {
        "nccl"
    }

    fn all_reduce_host(&mut self, values: &mut [f64]) -> Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        let buf = Tensor::from_slice(values, values.len(), &self.device)?;
        self.run(&buf, Kind::AllReduceSum, "all-reduce of the step's control values")?;
        values.copy_from_slice(&buf.to_vec1::<f64>()?);
        Ok(())
    }

    fn all_reduce_tensors(&mut self, tensors: &[Tensor]) -> Result<Vec<Tensor>> {
        if tensors.is_empty() {
            return Ok(Vec::new());
        }
        let flat = Self::flatten(tensors, common_dtype(tensors))?;
        self.run(&flat, Kind::AllReduceSum, &format!("all-reduce of {} gradients ({} values)", tensors.len(), flat.elem_count()))?;
        Self::split(&flat, tensors)
    }

    fn broadcast_tensors(&mut self, tensors: &[Tensor], root: usize) -> Result<Vec<Tensor>> {
        if root >= self.world {
            return Err(Error::input(format!("broadcast: root {root} is outside a world of {}", self.world)));
        }
        if tensors.is_empty() {
            return Ok(Vec::new());
        }
        let flat = Self::flatten(tensors, common_dtype(tensors))?;
        self.run(&flat, Kind::Broadcast(root), &format!("broadcast of {} tensors from rank {root}", tensors.len()))?;
        if self.rank == root {
            return Ok(tensors.to_vec());
        }
        Self::split(&flat, tensors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_survives_the_rendezvous_file() {
        let mut internal = [0 as std::ffi::c_char; ID_BYTES];
        for (i, c) in internal.iter_mut().enumerate() {
            *c = (i * 37 % 256) as u8 as std::ffi::c_char;
        }
        let id = Id::uninit(internal);
        let text = encode(3, &id);
        assert!(text.starts_with("bunmind-nccl-v1 3 "));
        let (w, back) = decode(text.as_bytes()).unwrap();
        assert_eq!(w, 3);
        assert_eq!(back.internal(), id.internal());
        // A half-written, foreign or tcp file is not an id.
        assert!(decode(&text.as_bytes()[..text.len() / 2]).is_none());
        assert!(decode(b"bunmind-tcp-v1 127.0.0.1:1234\n").is_none());
    }

    #[test]
    fn a_cpu_device_is_refused_with_the_device_flag() {
        let cfg = DistConfig {
            backend: "nccl".into(),
            rank: 0,
            world_size: 1,
            rendezvous: std::env::temp_dir().join("bunmind-nccl-unused"),
            timeout_s: 1.0,
        };
        let err = NcclCollective::connect(&cfg, &Device::Cpu).err().expect("cpu is refused").to_string();
        assert!(err.contains("data-parallel (nccl)") && err.contains("--device cuda:N"), "{err}");
    }

    #[test]
    fn the_collective_can_move_between_threads() {
        fn is_send<T: Send>() {}
        is_send::<NcclCollective>();
    }
}
