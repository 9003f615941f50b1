// vq_nearest: a grid of (64-row blocks of x) x (codebook slices). Each block searches its rows against its
// slice's codes with the tile code of vq_nearest_tile.cuh, its rows staged once in shared memory (D <= 160) or
// re-read per code tile (longer rows); with several slices each block writes a candidate per row and a second
// kernel keeps the best, lowest index on ties, as one slice would.
#include "kernels/quantize/vq_nearest.h"

#include <algorithm>

#include "kernels/quantize/vq_nearest_tile.cuh"

namespace fastar::kernels {
namespace {

using vq_tile::kCodes;
using vq_tile::kRows;
using vq_tile::kThreads;

int64_t code_tiles(int k) { return (int64_t(k) + kCodes - 1) / kCodes; }

// Slice s's candidates: distances (slices, n) then codes (slices, n) in the workspace.
__device__ __forceinline__ vq_tile::Winners candidates(const VqNearestParams& p, int slice, int slices) {
  float* d = static_cast<float*>(p.workspace);
  int* k = reinterpret_cast<int*>(d + int64_t(slices) * p.n);
  return {nullptr, k + slice * p.n, d + slice * p.n};
}

template <class T, bool kSharedRows>
__global__ void __launch_bounds__(kThreads) vq_nearest_kernel(const VqNearestParams p, int tiles_per_slice) {
  using namespace vq_tile;
  STATIC_SHARED(Smem, s);
  const int64_t row0 = int64_t(blockIdx.x) * kRows;
  const int64_t k_begin = int64_t(blockIdx.y) * tiles_per_slice * kCodes;
  const int64_t k_end = k_begin + int64_t(tiles_per_slice) * kCodes < p.k ? k_begin + tiles_per_slice * kCodes : p.k;
  const Winners out = gridDim.y > 1 ? candidates(p, blockIdx.y, gridDim.y) : Winners{p.indices, nullptr, p.distances};
  const T* x = static_cast<const T*>(p.x);
  if constexpr (kSharedRows) {
    DYNAMIC_SHARED(float, rows_s);  // (ceil(d / kDepth) kDepth, kStride): the block's rows, transposed
    const Tile rows = reinterpret_cast<Tile>(rows_s);
    for (int d0 = 0; d0 < p.d; d0 += kDepth) stage(rows + d0, x, row0, p.n, p.d, d0, nullptr);
    __syncthreads();
    search<T>(p, SharedRows{rows}, row0, k_begin, k_end, out, s);
  } else {
    search<T>(p, GlobalRows<T>{x}, row0, k_begin, k_end, out, s);
  }
}

// One thread per row: the best of its slices' candidates, in slice order so that ties keep the lowest index.
__global__ void __launch_bounds__(kThreads) vq_nearest_merge_kernel(const VqNearestParams p, int slices) {
  const int64_t row = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (row >= p.n) return;
  const vq_tile::Winners first = candidates(p, 0, slices);
  float best_d = first.distances[row];
  int best_k = first.codes[row];
  for (int s = 1; s < slices; ++s) {
    const float d = first.distances[s * p.n + row];
    const int k = first.codes[s * p.n + row];
    if (vq_tile::better(d, k, best_d, best_k)) best_d = d, best_k = k;
  }
  p.indices[row] = best_k;
  if (p.distances) p.distances[row] = best_d;
}

}  // namespace

int vq_nearest_slices(const VqNearestParams& p) {
  const int64_t tiles = code_tiles(p.k);
  const int64_t asked = std::clamp<int64_t>(p.slices, 1, std::min<int64_t>(tiles, 65535));
  const int64_t per = (tiles + asked - 1) / asked;
  return int((tiles + per - 1) / per);
}

int vq_nearest_auto_slices(int64_t n, int k, int sm_count) {
  const int64_t row_blocks = (n + kRows - 1) / kRows;
  if (row_blocks == 0 || row_blocks >= sm_count) return 1;
  return int(std::min<int64_t>(code_tiles(k), (sm_count + row_blocks - 1) / row_blocks));
}

size_t vq_nearest_workspace_bytes(const VqNearestParams& p) {
  const int slices = vq_nearest_slices(p);
  return slices > 1 ? size_t(slices) * size_t(p.n) * (sizeof(float) + sizeof(int)) : 0;
}

cudaError_t vq_nearest_launch(const VqNearestParams& p, cudaStream_t stream) {
  if (p.n < 0 || p.k < 1 || p.d < 0 || (p.n + kRows - 1) / kRows > INT32_MAX) return cudaErrorInvalidValue;
  if (p.n == 0) return cudaSuccess;
  const int slices = vq_nearest_slices(p);
  if (slices > 1 && !p.workspace) return cudaErrorInvalidValue;
  const int tiles_per_slice = int((code_tiles(p.k) + slices - 1) / slices);
  const dim3 grid(unsigned((p.n + kRows - 1) / kRows), unsigned(slices));
  const bool shared_rows = p.d <= vq_tile::kMaxSharedD;
  const size_t smem = shared_rows ? vq_tile::shared_rows_bytes(p.d) : 0;
  const cudaError_t e = dispatch_dtype<float, __nv_bfloat16, __half>(p.dtype, [&](auto elem) {
    using T = decltype(elem);
    if (shared_rows) LAUNCH((vq_nearest_kernel<T, true>), grid, kThreads, smem, stream)(p, tiles_per_slice);
    else LAUNCH((vq_nearest_kernel<T, false>), grid, kThreads, 0, stream)(p, tiles_per_slice);
    return cudaGetLastError();
  });
  if (e != cudaSuccess || slices == 1) return e;
  LAUNCH(vq_nearest_merge_kernel, dim3(unsigned((p.n + kThreads - 1) / kThreads)), kThreads, 0, stream)(p, slices);
  return cudaGetLastError();
}

}  // namespace fastar::kernels
