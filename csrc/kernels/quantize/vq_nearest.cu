// vq_nearest: one block per 64 rows of x, each searched against the whole codebook by the tile code of
// vq_nearest_tile.cuh, rows staged from global memory.
#include "kernels/quantize/vq_nearest.h"

#include "kernels/quantize/vq_nearest_tile.cuh"

namespace fastar::kernels {
namespace {

using vq_tile::kRows;
using vq_tile::kThreads;

template <class T>
__global__ void __launch_bounds__(kThreads) vq_nearest_kernel(const VqNearestParams p) {
  STATIC_SHARED(vq_tile::Smem, s);
  vq_tile::search<T>(p, vq_tile::GlobalRows<T>{static_cast<const T*>(p.x)}, int64_t(blockIdx.x) * kRows, s);
}

}  // namespace

cudaError_t vq_nearest_launch(const VqNearestParams& p, cudaStream_t stream) {
  if (p.n < 0 || p.k < 1 || p.d < 0 || (p.n + kRows - 1) / kRows > INT32_MAX) return cudaErrorInvalidValue;
  if (p.n == 0) return cudaSuccess;
  const dim3 grid(unsigned((p.n + kRows - 1) / kRows));
  return dispatch_dtype<float, __nv_bfloat16, __half>(p.dtype, [&](auto elem) {
    LAUNCH(vq_nearest_kernel<decltype(elem)>, grid, kThreads, 0, stream)(p);
    return cudaGetLastError();
  });
}

}  // namespace fastar::kernels
