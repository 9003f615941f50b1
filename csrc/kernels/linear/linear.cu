// linear for few rows: one warp per weight row n, its lanes striding over k (coalesced loads of the row), the dot
// products with up to kRows rows of x accumulated per lane and summed across the warp. A block's warps take
// consecutive n; grid.y walks the rows of x in groups of kRows, so M <= kRows reads the weight once. bfloat16 weights
// (with float32 x) are widened to float32 as they are read.
#include <algorithm>

#include "kernels/common.cuh"
#include "kernels/linear/linear.h"

namespace fastar::kernels {
namespace {

constexpr int kWarps = 8, kRows = 4;

__device__ __forceinline__ float widen(__nv_bfloat16 v) { return __bfloat162float(v); }
template <class T>
__device__ __forceinline__ T widen(T v) { return v; }

// y[m0 + r, n] for the up to kRows rows of x from m0, by the warp of weight row w (lane `lane`).
template <class T, class TW>
__device__ __forceinline__ void rows_of(const LinearParams& p, const TW* w, int64_t n, int64_t m0, int lane) {
  const T* x = static_cast<const T*>(p.x) + m0 * p.K;
  const int rows = int(p.M - m0 < kRows ? p.M - m0 : kRows);
  T acc[kRows] = {};  // every index below is a constant after unrolling: registers, no stack frame
  for (int64_t k = lane; k < p.K; k += 32) {
    const T wk = widen(w[k]);
#pragma unroll
    for (int r = 0; r < kRows; ++r)
      if (r < rows) acc[r] += x[r * p.K + k] * wk;
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

template <class T, class TW>
__global__ void __launch_bounds__(kWarps * 32) linear_kernel(const LinearParams p) {
  const int lane = threadIdx.x % 32;
  const int64_t n = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (n >= p.N) return;  // whole warps leave together: no shuffle sees a missing lane
  const TW* w = static_cast<const TW*>(p.weight) + n * p.K;
  for (int64_t m0 = int64_t(blockIdx.y) * kRows; m0 < p.M; m0 += int64_t(gridDim.y) * kRows)
    rows_of<T>(p, w, n, m0, lane);
}

}  // namespace

cudaError_t linear_launch(const LinearParams& p, cudaStream_t stream) {
  if (p.M < 0 || p.N < 0 || p.K < 0) return cudaErrorInvalidValue;
  const int64_t gx = (p.N + kWarps - 1) / kWarps, gy = std::min<int64_t>((p.M + kRows - 1) / kRows, 65535);
  if (gx > INT32_MAX) return cudaErrorInvalidValue;
  const dim3 grid = dim3(unsigned(gx), unsigned(gy));
  if (p.dtype == Dtype::f32 && p.weight_dtype == Dtype::bf16) {
    if (gx == 0 || gy == 0) return cudaSuccess;
    LAUNCH((linear_kernel<float, __nv_bfloat16>), grid, kWarps * 32, 0, stream)(p);
    return cudaGetLastError();
  }
  if (p.weight_dtype != p.dtype) return cudaErrorInvalidValue;
  return dispatch_dtype<float, double>(p.dtype, [&](auto elem) {
    if (gx == 0 || gy == 0) return cudaSuccess;
    LAUNCH((linear_kernel<decltype(elem), decltype(elem)>), grid, kWarps * 32, 0, stream)(p);
    return cudaGetLastError();
  });
}

}  // namespace fastar::kernels
