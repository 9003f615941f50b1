// Argument checks of the attention family and the MaskParams they build, shared by every backend's
// registration (cpu, cuda, simt).
#pragma once
#include <ATen/core/Tensor.h>

#include "kernels/attention/capabilities.h"
#include "kernels/attention/mask.h"
#include "torch/checks.h"

namespace fastar {

// float64 is a CPU-kernel dtype (gradcheck); the CUDA kernels take float32, bfloat16 and float16.
// Copies of q, k, v (or dout, out) the CUDA and simt glue made for the kernels since load (padding to a built
// head dim, alignment, layout); defined by those builds (attention_device.cpp).
int64_t attention_operand_copies();

inline void check_attention_qkv(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                c10::DeviceType device, bool allow_float64) {
  for (const auto& [name, t] : {std::pair{"q", &q}, std::pair{"k", &k}, std::pair{"v", &v}}) {
    TORCH_CHECK(t->dim() == 4, op, ": ", name, " must be (B, H, L, D), got ", t->dim(), " dims");
    const auto dt = t->scalar_type();
    TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf || (allow_float64 && dt == at::kDouble),
                op, ": ", name, " must be float32, bfloat16 or float16", allow_float64 ? " (or float64)" : "",
                ", got ", dt);
    TORCH_CHECK(dt == q.scalar_type(), op, ": ", name, " is ", dt, " but q is ", q.scalar_type());
    check_device(op, name, *t, device, "q", q);
  }
  TORCH_CHECK(k.sizes() == v.sizes(), op, ": k ", k.sizes(), " and v ", v.sizes(), " must have the same shape");
  TORCH_CHECK(k.size(0) == q.size(0), op, ": k has batch ", k.size(0), " but q has ", q.size(0));
  TORCH_CHECK(k.size(1) > 0 && q.size(1) % k.size(1) == 0, op, ": q's ", q.size(1),
              " heads must be a multiple of k's ", k.size(1));
  TORCH_CHECK(k.size(3) == q.size(3), op, ": k has head dim ", k.size(3), " but q has ", q.size(3));
  TORCH_CHECK(q.size(3) >= 1 && q.size(3) <= kernels::kAttentionCpuMaxHeadDim, op, ": head dim must be in [1, ",
              kernels::kAttentionCpuMaxHeadDim, "], got ", q.size(3));
}

// mask_ints = [text_len, grid, conv_kernel]; kv_end (Lq,) and key_len (B,) int32, kept alive by the caller.
inline kernels::MaskParams attention_mask(const char* op, int64_t kind, at::IntArrayRef ints,
                                          const std::optional<at::Tensor>& kv_end,
                                          const std::optional<at::Tensor>& key_len, int64_t B, int64_t Lq) {
  TORCH_CHECK(kind >= 0 && kind < kernels::kMaskKinds, op, ": mask_kind must be in [0, ", kernels::kMaskKinds - 1,
              "], got ", kind);
  TORCH_CHECK(ints.size() == 3, op, ": mask_ints must be [text_len, grid, conv_kernel], got ", ints.size(), " ints");
  const bool dalle = kind >= kernels::kDalleRow;
  TORCH_CHECK(!dalle || (ints[0] >= 0 && ints[1] >= 1 && ints[2] >= 1 && ints[2] % 2 == 1), op,
              ": DALL-E masks need text_len >= 0, grid >= 1 and an odd conv_kernel, got ", ints);
  for (const auto& [name, t, n] : {std::tuple{"kv_end", &kv_end, Lq}, std::tuple{"key_len", &key_len, B}}) {
    if (!t->has_value()) continue;
    const at::Tensor& x = **t;
    TORCH_CHECK(x.scalar_type() == at::kInt && x.dim() == 1 && x.size(0) == n && x.is_contiguous(), op, ": ", name,
                " must be a contiguous int32 tensor of ", n, " entries, got ", x.scalar_type(), " ", x.sizes());
  }
  TORCH_CHECK((kind == kernels::kBlockCausal) == kv_end.has_value(), op,
              ": kv_end must be given for the block-causal mask (mask_kind 2) and only for it");
  return {int32_t(kind), int32_t(dalle ? ints[0] : 0), int32_t(dalle ? ints[1] : 0), int32_t(dalle ? ints[2] : 0),
          kv_end ? kv_end->data_ptr<int32_t>() : nullptr, key_len ? key_len->data_ptr<int32_t>() : nullptr};
}

inline void check_attention_bwd(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& out,
                                const at::Tensor& lse) {
  for (const auto& [name, t] : {std::pair{"dout", &dout}, std::pair{"out", &out}, std::pair{"lse", &lse}})
    check_device("attention_bwd", name, *t, q.device().type(), "q", q);
  TORCH_CHECK(dout.sizes() == q.sizes() && out.sizes() == q.sizes(), "attention_bwd: dout ", dout.sizes(), " and out ",
              out.sizes(), " must be shaped like q ", q.sizes());
  TORCH_CHECK(lse.dim() == 3 && lse.sizes() == q.sizes().slice(0, 3), "attention_bwd: lse must be (B, H, Lq) = ",
              q.sizes().slice(0, 3), ", got ", lse.sizes());
}

// cache_len in [0, Lmax]; under a mask the Lq queries are the last of the cache_len keys.
inline void check_attention_decode(const at::Tensor& q, const at::Tensor& k_cache, int64_t cache_len,
                                   int64_t mask_kind) {
  TORCH_CHECK(cache_len >= 0 && cache_len <= k_cache.size(2), "attention_decode: cache_len must be in [0, ",
              k_cache.size(2), "], got ", cache_len);
  TORCH_CHECK(mask_kind == kernels::kFull || q.size(2) <= cache_len, "attention_decode: the ", q.size(2),
              " queries of a masked decode are the last of the cache_len keys, so cache_len must be >= ", q.size(2),
              ", got ", cache_len);
}

}  // namespace fastar
