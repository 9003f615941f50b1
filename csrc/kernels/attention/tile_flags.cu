// Tile flags: for every (query tile, key tile) pair, whether the mask hides it all (the attention kernels skip
// it without reading k/v), shows it all (no per-element mask) or a mix. One block per pair evaluates visible()
// on each element: O(Lq Lk) cheap predicates, a few microseconds on a GPU even at L = 2240, and general over
// every mask kind, so the masks need no closed-form tile rules.
#include "kernels/attention/flash_tile.cuh"

namespace fastar::kernels {
namespace {

using namespace attn;

// Grid (n_kt, n_qt); flags (n_qt, n_kt). Only queries < Lq count; keys >= Lk count as hidden.
__global__ void __launch_bounds__(kThreads) attention_tile_flags_kernel(MaskParams mask, int Lq, int Lk,
                                                                        int tile_q, int tile_k, uint8_t* flags) {
  mask.key_len = nullptr;  // batch-dependent: the kernels apply it per batch row (tile_with_key_len)
  const int q0 = blockIdx.y * tile_q, k0 = blockIdx.x * tile_k, rows = min(tile_q, Lq - q0);
  bool any = false, all = true;
  for (int e = threadIdx.x; e < rows * tile_k; e += kThreads) {
    const int q = q0 + e / tile_k, k = k0 + e % tile_k;
    const bool v = k < Lk && visible(mask, 0, q, k, Lq, Lk);
    any |= v, all &= v;
  }
  any = __syncthreads_or(any);
  all = !__syncthreads_or(!all);
  if (threadIdx.x == 0) flags[blockIdx.y * gridDim.x + blockIdx.x] = all ? kTileFull : any ? kTilePartial : kTileSkip;
}

}  // namespace

cudaError_t attention_tile_flags_launch(const MaskParams& mask, int Lq, int Lk, int tile_q, int tile_k,
                                        uint8_t* flags, cudaStream_t stream) {
  if (Lq <= 0 || Lk <= 0) return cudaSuccess;
  if (cdiv(Lq, tile_q) > 65535) return cudaErrorInvalidValue;  // gridDim.y
  const dim3 grid(cdiv(Lk, tile_k), cdiv(Lq, tile_q));
  LAUNCH(attention_tile_flags_kernel, grid, kThreads, 0, stream)(mask, Lq, Lk, tile_q, tile_k, flags);
  return cudaGetLastError();
}

}  // namespace fastar::kernels
