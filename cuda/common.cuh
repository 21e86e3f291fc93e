// Shared helpers of bunmind's kernels: f32/bf16 loads and stores (math is always f32) and
// block-wide reductions. Every reduction has a fixed order for a given launch shape, so results
// are reproducible run to run (not bitwise equal to the CPU reference, whose order differs).
#pragma once
#include <cuda_bf16.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(bf16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_f32<bf16>(float x) { return __float2bfloat16_rn(x); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024). Every thread gets the result.
// `scratch` holds 32 floats of shared memory; the call synchronises the block.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads(); // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < nwarps ? scratch[lane] : 0.f;
    return warp_sum(v);
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < nwarps ? scratch[lane] : -INFINITY;
    return warp_max(v);
}

// Online log-sum-exp state: running max m and sum s of exp(x - m).
struct Lse {
    float m, s;
};

__device__ __forceinline__ Lse lse_push(Lse a, float x) {
    if (x == -INFINITY) return a;
    if (x > a.m) {
        a.s = a.s * __expf(a.m - x) + 1.f;
        a.m = x;
    } else {
        a.s += __expf(x - a.m);
    }
    return a;
}

__device__ __forceinline__ Lse lse_merge(Lse a, Lse b) {
    if (b.m == -INFINITY) return a;
    if (a.m == -INFINITY) return b;
    float m = fmaxf(a.m, b.m);
    return Lse{m, a.s * __expf(a.m - m) + b.s * __expf(b.m - m)};
}

__device__ __forceinline__ Lse warp_lse(Lse v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        Lse w{__shfl_xor_sync(0xffffffffu, v.m, o), __shfl_xor_sync(0xffffffffu, v.s, o)};
        v = lse_merge(v, w);
    }
    return v;
}

// Block-wide merge of online log-sum-exp states; `scratch` holds 64 floats of shared memory.
__device__ __forceinline__ Lse block_lse(Lse v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_lse(v);
    __syncthreads();
    if (lane == 0) {
        scratch[warp] = v.m;
        scratch[32 + warp] = v.s;
    }
    __syncthreads();
    v = lane < nwarps ? Lse{scratch[lane], scratch[32 + lane]} : Lse{-INFINITY, 0.f};
    return warp_lse(v);
}
