// SwiGLU gate silu(g) ⊙ u and its backward (σ recomputed from g):
//   dg = dy ⊙ u ⊙ σ(g)(1 + g(1 − σ(g))),  du = dy ⊙ silu(g)
// Elementwise, grid-stride; T is f32 or bf16, math in f32. CPU reference: ops/swiglu.rs.
#include "common.cuh"

__device__ __forceinline__ float sigmoidf_(float x) { return 1.f / (1.f + __expf(-x)); }

template <typename T>
__device__ void swiglu_fwd(const T* __restrict__ g, const T* __restrict__ u, T* __restrict__ y, size_t n) {
    for (size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += (size_t)gridDim.x * blockDim.x) {
        const float gi = to_f32(g[k]);
        y[k] = from_f32<T>(gi * sigmoidf_(gi) * to_f32(u[k]));
    }
}

// wrt_gate = 1: dg; 0: du
template <typename T>
__device__ void swiglu_bwd(const T* __restrict__ g, const T* __restrict__ u, const T* __restrict__ dy, T* __restrict__ out,
                           size_t n, int wrt_gate) {
    for (size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += (size_t)gridDim.x * blockDim.x) {
        const float gi = to_f32(g[k]), di = to_f32(dy[k]), s = sigmoidf_(gi);
        out[k] = from_f32<T>(wrt_gate ? di * to_f32(u[k]) * (s * (1.f + gi * (1.f - s))) : di * gi * s);
    }
}

extern "C" __global__ void swiglu_fwd_f32(const float* g, const float* u, float* y, size_t n) { swiglu_fwd<float>(g, u, y, n); }
extern "C" __global__ void swiglu_fwd_bf16(const bf16* g, const bf16* u, bf16* y, size_t n) { swiglu_fwd<bf16>(g, u, y, n); }
extern "C" __global__ void swiglu_bwd_f32(const float* g, const float* u, const float* dy, float* out, size_t n, int wrt_gate) {
    swiglu_bwd<float>(g, u, dy, out, n, wrt_gate);
}
extern "C" __global__ void swiglu_bwd_bf16(const bf16* g, const bf16* u, const bf16* dy, bf16* out, size_t n, int wrt_gate) {
    swiglu_bwd<bf16>(g, u, dy, out, n, wrt_gate);
}
