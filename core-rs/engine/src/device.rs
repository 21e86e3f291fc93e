//! Device selection by name: `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
//!
//! candle only combines tensors that live on the *same* device instance (each `Device::new_cuda`
//! is a new context handle with its own id), so a process keeps one `Device` per CUDA ordinal and
//! every model, reference model, teacher and trainer of that ordinal shares it.
//! In a build without the `cuda` feature, asking for CUDA is an error that says how to get it.
use candle_core::Device;

use crate::{Error, Result};

/// A parsed device name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

impl DeviceSpec {
    /// `cpu`, `cuda`, `cuda:N` (whitespace around is ignored; anything else is an error).
    pub fn parse(spec: &str) -> Result<Self> {
        let s = spec.trim();
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(|n| n.parse::<usize>()) {
                Some(Ok(n)) => Ok(DeviceSpec::Cuda(n)),
                _ => Err(Error::input(format!("device {spec:?}: expected cpu, cuda or cuda:N"))),
            },
        }
    }

    pub fn name(&self) -> String {
        match self {
            DeviceSpec::Cpu => "cpu".into(),
            DeviceSpec::Cuda(n) => format!("cuda:{n}"),
        }
    }
}

/// Whether this build of the engine has the CUDA backend compiled in.
pub const CUDA_BUILD: bool = cfg!(feature = "cuda");

/// The process-wide device for `spec` (created on first use, then shared).
pub fn device(spec: DeviceSpec) -> Result<Device> {
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Cuda(n) => cuda_device(n),
    }
}

/// [`device`] of a device name.
pub fn device_by_name(spec: &str) -> Result<Device> {
    device(DeviceSpec::parse(spec)?)
}

/// The name of a device as [`DeviceSpec::parse`] reads it (`cpu`, `cuda:N`).
pub fn device_name(d: &Device) -> String {
    match d.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(n: usize) -> Result<Device> {
    Err(Error::input(format!(
        "device cuda:{n}: this is the CPU build of the bunmind engine (built without the `cuda` feature); \
         build the CUDA library with `bun scripts/build-native.ts --cuda` and run on a machine with an NVIDIA GPU, \
         or use the cpu device"
    )))
}

#[cfg(feature = "cuda")]
fn cuda_device(n: usize) -> Result<Device> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static DEVICES: OnceLock<Mutex<HashMap<usize, Device>>> = OnceLock::new();
    let mut map = DEVICES.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    if let Some(d) = map.get(&n) {
        return Ok(d.clone());
    }
    let count = cuda_device_count()?;
    if n >= count {
        return Err(Error::input(if count == 0 {
            format!("device cuda:{n}: the NVIDIA driver reports no CUDA GPU; use the cpu device")
        } else {
            format!("device cuda:{n}: this machine has {count} CUDA GPU(s) (cuda:0..cuda:{})", count - 1)
        }));
    }
    let d = Device::new_cuda(n).map_err(|e| Error::input(format!("device cuda:{n}: could not open it: {e}")))?;
    map.insert(n, d.clone());
    Ok(d)
}

/// Number of CUDA GPUs the driver reports (0 in the CPU build). An error when the driver itself
/// cannot be initialised (no NVIDIA driver, or one older than the CUDA 13.0 the build targets).
pub fn cuda_device_count() -> Result<usize> {
    #[cfg(feature = "cuda")]
    {
        use candle_core::cuda_backend::cudarc::driver::{result, CudaContext};
        // cuInit first so that a missing / too-old driver gives its own message.
        result::init().map_err(|e| {
            Error::input(format!(
                "the CUDA driver could not be initialised ({e}): is an NVIDIA driver for CUDA 13.0 or newer installed and a GPU visible (CUDA_VISIBLE_DEVICES)?"
            ))
        })?;
        let n = CudaContext::device_count().map_err(|e| Error::input(format!("counting CUDA GPUs: {e}")))?;
        Ok(n.max(0) as usize)
    }
    #[cfg(not(feature = "cuda"))]
    Ok(0)
}

/// `{"cuda_build", "gpus": [{"ordinal", "name", "compute_capability", "memory_bytes"}]}` or an
/// error from the driver. Used by the CLI to explain what is (not) available.
pub fn cuda_info() -> Result<serde_json::Value> {
    #[cfg(feature = "cuda")]
    {
        use candle_core::cuda_backend::cudarc::driver::CudaContext;
        let n = cuda_device_count()?;
        let mut gpus = Vec::with_capacity(n);
        for i in 0..n {
            let ctx = CudaContext::new(i).map_err(|e| Error::input(format!("cuda:{i}: {e}")))?;
            let (ma, mi) = ctx.compute_capability().unwrap_or((0, 0));
            gpus.push(serde_json::json!({
                "ordinal": i,
                "name": ctx.name().unwrap_or_default(),
                "compute_capability": format!("{ma}.{mi}"),
                "memory_bytes": ctx.total_mem().unwrap_or(0),
            }));
        }
        Ok(serde_json::json!({ "cuda_build": true, "gpus": gpus }))
    }
    #[cfg(not(feature = "cuda"))]
    Ok(serde_json::json!({ "cuda_build": false, "gpus": [] }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names() {
        assert_eq!(DeviceSpec::parse("cpu").unwrap(), DeviceSpec::Cpu);
        assert_eq!(DeviceSpec::parse("cuda").unwrap(), DeviceSpec::Cuda(0));
        assert_eq!(DeviceSpec::parse(" cuda:3 ").unwrap(), DeviceSpec::Cuda(3));
        for bad in ["", "cuda:", "cuda:x", "cuda:-1", "tpu", "CPU0"] {
            assert!(DeviceSpec::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(DeviceSpec::Cuda(2).name(), "cuda:2");
        assert_eq!(device_name(&Device::Cpu), "cpu");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cpu_build_explains_cuda() {
        let e = device_by_name("cuda:1").unwrap_err().to_string();
        assert!(e.contains("CPU build") && e.contains("--cuda"), "{e}");
        assert_eq!(cuda_device_count().unwrap(), 0);
    }
}
