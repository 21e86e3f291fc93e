// Rotary embedding of x [B, T, H, D] by cos/sin [T, D/2] (f32 tables), forward and backward:
// the backward is the same rotation by −θ (`sgn` = −1). Pairs are (x_i, x_{i+D/2}) (rotate-half,
// `interleaved` = 0) or (x_{2i}, x_{2i+1}). One thread per pair; the same kernel serves q and k
// (their head counts differ, H is a parameter). CPU reference: core-rs/engine/src/ops/rope.rs.
#include "common.cuh"

template <typename T>
__device__ void rope(const T* __restrict__ x, const float* __restrict__ cos, const float* __restrict__ sin,
                     T* __restrict__ y, int rows, int t, int h, int d, int interleaved, float sgn) {
    const int half = d / 2;
    const size_t n = (size_t)rows * half;
    for (size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += (size_t)gridDim.x * blockDim.x) {
        const size_t row = k / half;
        const int i = (int)(k % half);
        const int pos = (int)((row / h) % t);
        const float c = cos[pos * half + i], s = sgn * sin[pos * half + i];
        const size_t base = row * d;
        const size_t a = interleaved ? base + 2 * i : base + i;
        const size_t b = interleaved ? base + 2 * i + 1 : base + i + half;
        const float x1 = to_f32(x[a]), x2 = to_f32(x[b]);
        y[a] = from_f32<T>(x1 * c - x2 * s);
        y[b] = from_f32<T>(x2 * c + x1 * s);
    }
}

extern "C" __global__ void rope_f32(const float* x, const float* cos, const float* sin, float* y, int rows, int t, int h,
                                    int d, int interleaved, float sgn) {
    rope<float>(x, cos, sin, y, rows, t, h, d, interleaved, sgn);
}

extern "C" __global__ void rope_bf16(const bf16* x, const float* cos, const float* sin, bf16* y, int rows, int t, int h,
                                     int d, int interleaved, float sgn) {
    rope<bf16>(x, cos, sin, y, rows, t, h, d, interleaved, sgn);
}
