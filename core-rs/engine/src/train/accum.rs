//! Gradient accumulation across micro-batches.
//!
//! `backward()` returns a store holding gradients of every intermediate tensor too; the accumulator
//! keeps only the tracked vars' gradients, detached, so the micro-batch graphs can be freed.
use candle_core::{backprop::GradStore, Tensor, Var};

use crate::Result;

/// Running per-var sum of gradients over micro-batches.
pub struct GradAccumulator {
    vars: Vec<Var>,
    sums: Vec<Option<Tensor>>,
    micro_steps: usize,
}

impl GradAccumulator {
    pub fn new(vars: Vec<Var>) -> Self {
        let n = vars.len();
        GradAccumulator { vars, sums: vec![None; n], micro_steps: 0 }
    }

    pub fn vars(&self) -> &[Var] {
        &self.vars
    }

    pub fn micro_steps(&self) -> usize {
        self.micro_steps
    }

    /// Adds one micro-batch's gradients (vars absent from `grads` contribute nothing).
    pub fn add(&mut self, grads: &GradStore) -> Result<()> {
        for (var, sum) in self.vars.iter().zip(self.sums.iter_mut()) {
            if let Some(g) = grads.get(var.as_tensor()) {
                let g = g.detach();
                *sum = Some(match sum.take() {
                    Some(s) => (s + g)?,
                    None => g,
                });
            }
        }
        self.micro_steps += 1;
        Ok(())
    }

    /// Returns the summed gradients multiplied by `scale` (e.g. `1/accum_steps` when each micro
    /// loss is a mean, or `1/total_tokens` when each micro loss is a token sum) and resets.
    /// Vars that never received a gradient are absent from the result.
    pub fn finish(&mut self, scale: f64) -> Result<GradStore> {
        let mut out = GradStore::default();
        for (var, sum) in self.vars.iter().zip(self.sums.iter_mut()) {
            if let Some(s) = sum.take() {
                let s = if scale == 1.0 { s } else { (s * scale)? };
                out.insert(var.as_tensor(), s);
            }
        }
        self.micro_steps = 0;
        Ok(out)
    }

    /// 1.0 for each var that has received a gradient, else 0.0 (in var order).
    pub fn presence(&self) -> Vec<f64> {
        self.sums.iter().map(|s| if s.is_some() { 1.0 } else { 0.0 }).collect()
    }

    /// Replaces the sums with their sums over all ranks of `col`. `global_presence` is
    /// [`presence`](Self::presence) summed over the ranks: a var that some rank has a gradient for
    /// takes part on every rank (with zeros where absent); one no rank has stays absent.
    pub fn all_reduce(&mut self, col: &mut dyn crate::dist::Collective, global_presence: &[f64]) -> Result<()> {
        let idx: Vec<usize> = (0..self.vars.len()).filter(|&i| global_presence.get(i).copied().unwrap_or(0.0) > 0.0).collect();
        let local = idx
            .iter()
            .map(|&i| match self.sums[i].take() {
                Some(s) => Ok(s),
                None => Ok(self.vars[i].as_tensor().zeros_like()?),
            })
            .collect::<Result<Vec<Tensor>>>()?;
        for (i, t) in idx.into_iter().zip(col.all_reduce_tensors(&local)?) {
            self.sums[i] = Some(t);
        }
        Ok(())
    }

    /// Drops what was accumulated (e.g. after a non-finite loss).
    pub fn reset(&mut self) {
        self.sums.iter_mut().for_each(|s| *s = None);
        self.micro_steps = 0;
    }
}
