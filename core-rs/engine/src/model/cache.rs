//! KV cache for incremental decoding: one per batch of sequences that decode in lock step.
//! Batches of different-length prompts are left-padded; `left_pad[b]` keys of row b are masked
//! out forever. RoPE is relative, so a left-padded row gives the same logits as decoding it alone.
use candle_core::{Device, Tensor};

use crate::Result;

/// Additive mask value for blocked positions (finite, so fully-masked pad rows stay NaN-free).
pub(crate) const MASKED: f32 = -1e9;

#[derive(Debug, Clone)]
pub struct Cache {
    /// Per layer: (k, v), each [B, n_kv_heads, S, head_dim] with RoPE already applied to k.
    pub(crate) layers: Vec<Option<(Tensor, Tensor)>>,
    seq_len: usize,
    left_pad: Vec<usize>,
}

impl Cache {
    pub fn new(num_layers: usize) -> Self {
        Cache { layers: vec![None; num_layers], seq_len: 0, left_pad: vec![] }
    }

    /// A cache for a left-padded batch: row b's first `left_pad[b]` positions are padding.
    pub fn with_left_padding(num_layers: usize, left_pad: Vec<usize>) -> Self {
        Cache { layers: vec![None; num_layers], seq_len: 0, left_pad }
    }

    /// Number of positions already stored (the next `start_pos`).
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    pub fn left_padding(&self) -> &[usize] {
        &self.left_pad
    }

    pub fn reset(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = None);
        self.seq_len = 0;
    }

    /// Keeps only the first `len` positions, so a conversation whose new prompt diverges from the
    /// cached tokens after `len` of them re-feeds just the rest. A no-op when `len >= seq_len()`.
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        if len >= self.seq_len {
            return Ok(());
        }
        for slot in self.layers.iter_mut() {
            if let Some((k, v)) = slot.take() {
                if len > 0 {
                    *slot = Some((k.narrow(2, 0, len)?, v.narrow(2, 0, len)?));
                }
            }
        }
        self.seq_len = len;
        Ok(())
    }

    pub(crate) fn advance(&mut self, t: usize) {
        self.seq_len += t;
    }

    /// Additive mask for queries at `start..start+t` over keys `0..start+t`:
    /// None (no masking needed), [T, S] (causal only) or [B, 1, T, S] (causal + left padding).
    pub(crate) fn mask(&self, b: usize, t: usize, start: usize, dev: &Device) -> Result<Option<Tensor>> {
        let padded = self.left_pad.iter().any(|&p| p > 0);
        if t == 1 && !padded {
            return Ok(None);
        }
        let s = start + t;
        if !padded {
            return Ok(Some(causal_mask(t, start, dev)?));
        }
        let mut m = vec![0f32; b * t * s];
        for row in 0..b {
            let pad = self.left_pad.get(row).copied().unwrap_or(0);
            for i in 0..t {
                for j in 0..s {
                    if j > start + i || j < pad {
                        m[(row * t + i) * s + j] = MASKED;
                    }
                }
            }
        }
        Ok(Some(Tensor::from_vec(m, (b, 1, t, s), dev)?))
    }
}

/// [T, start+T] additive causal mask: query i sees keys j ≤ start + i.
pub(crate) fn causal_mask(t: usize, start: usize, dev: &Device) -> Result<Tensor> {
    let s = start + t;
    let m: Vec<f32> = (0..t)
        .flat_map(|i| (0..s).map(move |j| if j > start + i { MASKED } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(m, (t, s), dev)?)
}
