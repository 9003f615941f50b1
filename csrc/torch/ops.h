// The one list of fastar's op schemas. TORCH_LIBRARY(fastar) and the test-only
// TORCH_LIBRARY(fastar_simt) both call define_ops, so the backends cannot drift apart.
#pragma once
#include <torch/library.h>

namespace fastar {

inline void define_ops(torch::Library& m) {
  // x (N, D), codebook (K, D) -> indices (N,) int64, squared distances (N,) float32.
  m.def("vq_nearest(Tensor x, Tensor codebook, str metric) -> (Tensor, Tensor)");
  // q (B, H, Lq, D), k and v (B, Hk, Lk, D) with H % Hk == 0; mask_kind a kernels::MaskKind (kernels/attention/mask.h),
  // mask_ints [text_len, grid, conv_kernel], kv_end (Lq,) int32 for block-causal, key_len (B,) int32 or None
  // -> out (B, H, Lq, D) like q, lse (B, H, Lq) float32 (-inf on rows that see no key).
  m.def("attention_fwd(Tensor q, Tensor k, Tensor v, int mask_kind, int[] mask_ints, Tensor? kv_end, "
        "Tensor? key_len, float scale) -> (Tensor out, Tensor lse)");
  // dout (B, H, Lq, D) and the forward's inputs and outputs -> dq like q, dk and dv like k and v.
  m.def("attention_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, int mask_kind, "
        "int[] mask_ints, Tensor? kv_end, Tensor? key_len, float scale) -> (Tensor dq, Tensor dk, Tensor dv)");
  // q (B, H, Lq, D) against the first cache_len keys of k_cache, v_cache (B, Hk, Lmax, D), no mask
  // -> out (B, H, Lq, D) like q, lse (B, H, Lq) float32.
  m.def("attention_decode(Tensor q, Tensor k_cache, Tensor v_cache, int cache_len, float scale) "
        "-> (Tensor out, Tensor lse)");
}

}  // namespace fastar
