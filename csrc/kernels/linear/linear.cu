// linear for few rows: one warp per weight row n, its lanes striding over k (coalesced loads of the row), the dot
// products with up to kRows rows of x accumulated per lane and summed across the warp. A block's warps take
// consecutive n; grid.y walks the rows of x in groups of kRows, so M <= kRows reads the weight once. bfloat16 weights
// (with float32 x) are widened to float32 as they are read; float32 x with 16-byte rows reads 16 bytes per lane.
#include <algorithm>
#include <cstdint>

#include "kernels/common.cuh"
#include "kernels/linear/linear.h"

namespace fastar::kernels {
namespace {

constexpr int kWarps = 8, kRows = 4;

__device__ __forceinline__ float widen(__nv_bfloat16 v) { return __bfloat162float(v); }
template <class T>
__device__ __forceinline__ T widen(T v) { return v; }

// The 16 bytes at w as float32: 4 floats, or 8 bfloat16 widened exactly (each the high half of a 32-bit word).
__device__ __forceinline__ void widen16(const float* w, float out[4]) {
  const float4 v = load_vector<float4>(w);
  out[0] = v.x, out[1] = v.y, out[2] = v.z, out[3] = v.w;
}
__device__ __forceinline__ void widen16(const __nv_bfloat16* w, float out[8]) {
  const uint4 v = load_vector<uint4>(w);
  const unsigned words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    out[2 * i] = __uint_as_float(words[i] << 16);
    out[2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);
  }
}

// y[m0 + r, n] for the up to kRows rows of x from m0, by the warp of weight row w (lane `lane`). kVec (float32 x,
// K a multiple of the 16-byte vector, x and the weight 16-byte aligned): each lane reads 16 bytes of the row at a
// time, so a warp's load is 512 contiguous bytes.
template <class T, class TW, bool kVec>
__device__ __forceinline__ void rows_of(const LinearParams& p, const TW* w, int64_t n, int64_t m0, int lane) {
  const T* x = static_cast<const T*>(p.x) + m0 * p.K;
  const int rows = int(p.M - m0 < kRows ? p.M - m0 : kRows);
  T acc[kRows] = {};  // every index below is a constant after unrolling: registers, no stack frame
  if constexpr (kVec) {
    constexpr int V = 16 / int(sizeof(TW));  // weights per lane and step
    for (int64_t k = int64_t(lane) * V; k < p.K; k += 32 * V) {
      float wv[V];
      widen16(w + k, wv);
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        if (r >= rows) continue;
#pragma unroll
        for (int j = 0; j < V; j += 4) {
          const float4 xv = load_vector<float4>(x + r * p.K + k + j);
          acc[r] += xv.x * wv[j] + xv.y * wv[j + 1] + xv.z * wv[j + 2] + xv.w * wv[j + 3];
        }
      }
    }
  } else {
    for (int64_t k = lane; k < p.K; k += 32) {
      const T wk = widen(w[k]);
#pragma unroll
      for (int r = 0; r < kRows; ++r)
        if (r < rows) acc[r] += x[r * p.K + k] * wk;
    }
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r)
    for (int off = 16; off > 0; off /= 2) acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], off);
  if (lane != 0) return;
  const T b = p.bias ? static_cast<const T*>(p.bias)[n] : T(0);
  T* y = static_cast<T*>(p.y) + m0 * p.N + n;
#pragma unroll
  for (int r = 0; r < kRows; ++r)
    if (r < rows) y[r * p.N] = acc[r] + b;
}

template <class T, class TW, bool kVec>
__global__ void __launch_bounds__(kWarps * 32) linear_kernel(const LinearParams p) {
  const int lane = threadIdx.x % 32;
  const int64_t n = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (n >= p.N) return;  // whole warps leave together: no shuffle sees a missing lane
  const TW* w = static_cast<const TW*>(p.weight) + n * p.K;
  for (int64_t m0 = int64_t(blockIdx.y) * kRows; m0 < p.M; m0 += int64_t(gridDim.y) * kRows)
    rows_of<T, TW, kVec>(p, w, n, m0, lane);
}

}  // namespace

cudaError_t linear_launch(const LinearParams& p, cudaStream_t stream) {
  if (p.M < 0 || p.N < 0 || p.K < 0) return cudaErrorInvalidValue;
  const int64_t gx = (p.N + kWarps - 1) / kWarps, gy = std::min<int64_t>((p.M + kRows - 1) / kRows, 65535);
  if (gx > INT32_MAX) return cudaErrorInvalidValue;
  const dim3 grid = dim3(unsigned(gx), unsigned(gy));
  const auto aligned = [&](int per_vector) {  // 16-byte rows: K a multiple of the vector, both bases aligned
    return p.K % per_vector == 0 && reinterpret_cast<uintptr_t>(p.x) % 16 == 0 &&
           reinterpret_cast<uintptr_t>(p.weight) % 16 == 0;
  };
  const bool bf16_weights = p.dtype == Dtype::f32 && p.weight_dtype == Dtype::bf16;
  if ((p.dtype != Dtype::f32 && p.dtype != Dtype::f64) || (!bf16_weights && p.weight_dtype != p.dtype))
    return cudaErrorInvalidValue;
  if (gx == 0 || gy == 0) return cudaSuccess;
  if (bf16_weights) {
    if (aligned(8)) {
      LAUNCH((linear_kernel<float, __nv_bfloat16, true>), grid, kWarps * 32, 0, stream)(p);
    } else {
      LAUNCH((linear_kernel<float, __nv_bfloat16, false>), grid, kWarps * 32, 0, stream)(p);
    }
    return cudaGetLastError();
  }
  if (p.dtype == Dtype::f32 && aligned(4)) {
    LAUNCH((linear_kernel<float, float, true>), grid, kWarps * 32, 0, stream)(p);
    return cudaGetLastError();
  }
  return dispatch_dtype<float, double>(p.dtype, [&](auto elem) {
    LAUNCH((linear_kernel<decltype(elem), decltype(elem), false>), grid, kWarps * 32, 0, stream)(p);
    return cudaGetLastError();
  });
}

}  // namespace fastar::kernels
