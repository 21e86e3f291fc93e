// log p(target) per row of logits [N, V] without materialising the probabilities, and its backward
// (CPU reference: core-rs/engine/src/ops/xent.rs). The masked mean cross-entropy of the loss is
// −Σ mask·logp / Σ mask on top of this, in the engine; a masked row gets dy = 0 and a zero gradient.
//   forward:  logp[r] = x[r, t_r] − lse(x[r, :])       (one pass: online max / sum of exp)
//   backward: dx[r, j] = dy_r · (1[j = t_r] − exp(x[r, j] − lse_r)),  lse_r = x[r, t_r] − logp[r]
// One block per row. Logits f32 or bf16; logp and [logp, dy] are f32; dx has the logits' dtype.
// A target outside 0..V−1 gives logp = NaN (the loss then says so) instead of reading out of bounds.
#include "common.cuh"

template <typename T>
__device__ void xent_fwd(const T* __restrict__ x, const uint32_t* __restrict__ targets, float* __restrict__ logp, int v) {
    __shared__ float scratch[64];
    const T* xr = x + (size_t)blockIdx.x * v;
    Lse st{-INFINITY, 0.f};
    for (int j = threadIdx.x; j < v; j += blockDim.x) st = lse_push(st, to_f32(xr[j]));
    st = block_lse(st, scratch);
    if (threadIdx.x == 0) {
        const uint32_t t = targets[blockIdx.x];
        logp[blockIdx.x] = t < (uint32_t)v ? to_f32(xr[t]) - (logf(st.s) + st.m) : NAN;
    }
}

template <typename T>
__device__ void xent_bwd(const T* __restrict__ x, const uint32_t* __restrict__ targets, const float* __restrict__ lp_dy,
                         T* __restrict__ dx, int v) {
    const size_t off = (size_t)blockIdx.x * v;
    const float lp = lp_dy[2 * blockIdx.x], gi = lp_dy[2 * blockIdx.x + 1];
    const uint32_t t = targets[blockIdx.x];
    if (gi == 0.f || t >= (uint32_t)v) {
        for (int j = threadIdx.x; j < v; j += blockDim.x) dx[off + j] = from_f32<T>(0.f);
        return;
    }
    const float lse = to_f32(x[off + t]) - lp;
    for (int j = threadIdx.x; j < v; j += blockDim.x) {
        float d = -gi * __expf(to_f32(x[off + j]) - lse);
        if (j == (int)t) d += gi;
        dx[off + j] = from_f32<T>(d);
    }
}

extern "C" __global__ void xent_fwd_f32(const float* x, const uint32_t* t, float* logp, int v) { xent_fwd<float>(x, t, logp, v); }
extern "C" __global__ void xent_fwd_bf16(const bf16* x, const uint32_t* t, float* logp, int v) { xent_fwd<bf16>(x, t, logp, v); }
extern "C" __global__ void xent_bwd_f32(const float* x, const uint32_t* t, const float* lp_dy, float* dx, int v) {
    xent_bwd<float>(x, t, lp_dy, dx, v);
}
extern "C" __global__ void xent_bwd_bf16(const bf16* x, const uint32_t* t, const float* lp_dy, bf16* dx, int v) {
    xent_bwd<bf16>(x, t, lp_dy, dx, v);
}
