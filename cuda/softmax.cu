// softmax(scale · x) over the last dim (length s), optionally causal, and its backward
// dx = scale · y ⊙ (dy − Σ dy ⊙ y). Causal: row r is query i = r % t at absolute position
// offset + i and sees columns j ≤ offset + i; the others get exactly 0 (CPU reference and the
// row layout: core-rs/engine/src/ops/softmax.rs). `t` = 0 means not causal. One block per row.
#include "common.cuh"

__device__ __forceinline__ int valid_cols(int row, int s, int t, int offset) {
    return t == 0 ? s : min(offset + row % t + 1, s);
}

template <typename T>
__device__ void softmax_fwd(const T* __restrict__ x, T* __restrict__ y, int s, float scale, int t, int offset) {
    __shared__ float scratch[32];
    const size_t off = (size_t)blockIdx.x * s;
    const int n = valid_cols(blockIdx.x, s, t, offset);
    float m = -INFINITY;
    for (int j = threadIdx.x; j < n; j += blockDim.x) m = fmaxf(m, to_f32(x[off + j]) * scale);
    m = block_max(m, scratch);
    float sum = 0.f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) sum += __expf(to_f32(x[off + j]) * scale - m);
    const float inv = 1.f / block_sum(sum, scratch);
    for (int j = threadIdx.x; j < s; j += blockDim.x)
        y[off + j] = from_f32<T>(j < n ? __expf(to_f32(x[off + j]) * scale - m) * inv : 0.f);
}

template <typename T>
__device__ void softmax_bwd(const T* __restrict__ y, const T* __restrict__ g, T* __restrict__ dx, int s, float scale, int t,
                            int offset) {
    __shared__ float scratch[32];
    const size_t off = (size_t)blockIdx.x * s;
    const int n = valid_cols(blockIdx.x, s, t, offset);
    float dot = 0.f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) dot += to_f32(y[off + j]) * to_f32(g[off + j]);
    dot = block_sum(dot, scratch);
    for (int j = threadIdx.x; j < s; j += blockDim.x)
        dx[off + j] = from_f32<T>(j < n ? scale * to_f32(y[off + j]) * (to_f32(g[off + j]) - dot) : 0.f);
}

extern "C" __global__ void softmax_fwd_f32(const float* x, float* y, int s, float scale, int t, int offset) {
    softmax_fwd<float>(x, y, s, scale, t, offset);
}
extern "C" __global__ void softmax_fwd_bf16(const bf16* x, bf16* y, int s, float scale, int t, int offset) {
    softmax_fwd<bf16>(x, y, s, scale, t, offset);
}
extern "C" __global__ void softmax_bwd_f32(const float* y, const float* g, float* dx, int s, float scale, int t, int offset) {
    softmax_bwd<float>(y, g, dx, s, scale, t, offset);
}
extern "C" __global__ void softmax_bwd_bf16(const bf16* y, const bf16* g, bf16* dx, int s, float scale, int t, int offset) {
    softmax_bwd<bf16>(y, g, dx, s, scale, t, offset);
}
