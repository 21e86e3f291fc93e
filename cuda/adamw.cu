// Fused AdamW step over one f32 parameter tensor, in place: p, m, v read and written once each
// (PyTorch's torch.optim.AdamW arithmetic, as the CPU path in core-rs/engine/src/train/optim.rs):
//   p ← p · decay                      (decay = 1 − lr·wd, or 1 without weight decay)
//   m ← β1·m + (1 − β1)·g ;  v ← β2·v + (1 − β2)·g²
//   p ← p − step · m / (√v · inv_sqrt_bc2 + eps)     (step = lr / (1 − β1^t), inv_sqrt_bc2 = 1/√(1 − β2^t))
// Everything is f32: the master weights, their gradient (bf16 autocast casts back to f32 in the
// backward) and the moments.
#include "common.cuh"

template <typename G>
__device__ void adamw(float* __restrict__ p, const G* __restrict__ g, float* __restrict__ m, float* __restrict__ v, size_t n,
                      float beta1, float beta2, float decay, float step, float inv_sqrt_bc2, float eps) {
    for (size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += (size_t)gridDim.x * blockDim.x) {
        const float gi = to_f32(g[k]);
        const float mi = beta1 * m[k] + (1.f - beta1) * gi;
        const float vi = beta2 * v[k] + (1.f - beta2) * gi * gi;
        m[k] = mi;
        v[k] = vi;
        p[k] = p[k] * decay - step * mi / (sqrtf(vi) * inv_sqrt_bc2 + eps);
    }
}

extern "C" __global__ void adamw_f32(float* p, const float* g, float* m, float* v, size_t n, float beta1, float beta2,
                                     float decay, float step, float inv_sqrt_bc2, float eps) {
    adamw<float>(p, g, m, v, n, beta1, beta2, decay, step, inv_sqrt_bc2, eps);
}
