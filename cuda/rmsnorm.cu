// RMSNorm over the last dim: y = w ⊙ x · inv, inv = 1/sqrt(mean(x²) + eps), with its backward
// (the CPU reference and the formulas: core-rs/engine/src/ops/rmsnorm.rs):
//   dx = inv · (dy⊙w − x̂ · Σ(dy⊙w⊙x̂) / n),  x̂ = x·inv
//   dw = Σ_rows dy ⊙ x̂   (row statistics first, then fixed row blocks, then the blocks in order)
// One block per row for the row kernels; x, w, dy, y of one dtype T (f32 or bf16), math in f32.
#include "common.cuh"

template <typename T>
__device__ void rmsnorm_fwd(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y, int d, float eps) {
    __shared__ float scratch[32];
    const T* xr = x + (size_t)blockIdx.x * d;
    T* yr = y + (size_t)blockIdx.x * d;
    float ss = 0.f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float v = to_f32(xr[i]);
        ss += v * v;
    }
    const float inv = rsqrtf(block_sum(ss, scratch) / d + eps);
    for (int i = threadIdx.x; i < d; i += blockDim.x) yr[i] = from_f32<T>(to_f32(xr[i]) * inv * to_f32(w[i]));
}

template <typename T>
__device__ void rmsnorm_bwd_x(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ g,
                              T* __restrict__ dx, int d, float eps) {
    __shared__ float scratch[32];
    const size_t off = (size_t)blockIdx.x * d;
    float ss = 0.f, dot = 0.f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float v = to_f32(x[off + i]);
        ss += v * v;
        dot += to_f32(g[off + i]) * to_f32(w[i]) * v;
    }
    const float inv = rsqrtf(block_sum(ss, scratch) / d + eps);
    const float c = block_sum(dot, scratch) * inv / d; // Σ dy·w·x̂ / n
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float xi = to_f32(x[off + i]);
        dx[off + i] = from_f32<T>(inv * (to_f32(g[off + i]) * to_f32(w[i]) - xi * inv * c));
    }
}

// inv[r] for every row (the first pass of the weight gradient).
template <typename T>
__device__ void rmsnorm_inv(const T* __restrict__ x, float* __restrict__ inv, int d, float eps) {
    __shared__ float scratch[32];
    const T* xr = x + (size_t)blockIdx.x * d;
    float ss = 0.f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float v = to_f32(xr[i]);
        ss += v * v;
    }
    ss = block_sum(ss, scratch);
    if (threadIdx.x == 0) inv[blockIdx.x] = rsqrtf(ss / d + eps);
}

// partial[b, j] = Σ_{rows r of block b} dy[r, j] · x[r, j] · inv[r];  grid (ceil(d/blockDim), nblocks)
template <typename T>
__device__ void rmsnorm_dw_partial(const T* __restrict__ x, const T* __restrict__ g, const float* __restrict__ inv,
                                   float* __restrict__ partial, int rows, int d, int rows_per_block) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= d) return;
    const int r0 = blockIdx.y * rows_per_block;
    const int r1 = min(rows, r0 + rows_per_block);
    float acc = 0.f;
    for (int r = r0; r < r1; r++) {
        const size_t k = (size_t)r * d + j;
        acc += to_f32(g[k]) * to_f32(x[k]) * inv[r];
    }
    partial[(size_t)blockIdx.y * d + j] = acc;
}

// dw[j] = Σ_b partial[b, j], blocks summed in order.
template <typename T>
__device__ void rmsnorm_dw_sum(const float* __restrict__ partial, T* __restrict__ dw, int nblocks, int d) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= d) return;
    float acc = 0.f;
    for (int b = 0; b < nblocks; b++) acc += partial[(size_t)b * d + j];
    dw[j] = from_f32<T>(acc);
}

#define RMSNORM_KERNELS(T, S)                                                                                         \
    extern "C" __global__ void rmsnorm_fwd_##S(const T* x, const T* w, T* y, int d, float eps) {                    \
        rmsnorm_fwd<T>(x, w, y, d, eps);                                                                              \
    }                                                                                                                 \
    extern "C" __global__ void rmsnorm_bwd_x_##S(const T* x, const T* w, const T* g, T* dx, int d, float eps) {     \
        rmsnorm_bwd_x<T>(x, w, g, dx, d, eps);                                                                        \
    }                                                                                                                 \
    extern "C" __global__ void rmsnorm_inv_##S(const T* x, float* inv, int d, float eps) {                          \
        rmsnorm_inv<T>(x, inv, d, eps);                                                                               \
    }                                                                                                                 \
    extern "C" __global__ void rmsnorm_dw_partial_##S(const T* x, const T* g, const float* inv, float* partial,     \
                                                      int rows, int d, int rows_per_block) {                         \
        rmsnorm_dw_partial<T>(x, g, inv, partial, rows, d, rows_per_block);                                           \
    }                                                                                                                 \
    extern "C" __global__ void rmsnorm_dw_sum_##S(const float* partial, T* dw, int nblocks, int d) {                 \
        rmsnorm_dw_sum<T>(partial, dw, nblocks, d);                                                                   \
    }

RMSNORM_KERNELS(float, f32)
RMSNORM_KERNELS(bf16, bf16)
