// CPU registrations of the attention family.
#include "torch/attention.h"

#include <torch/library.h>

#include "cpu/attention.h"

namespace fastar {

static std::tuple<at::Tensor, at::Tensor> attention_fwd_cpu(const at::Tensor& q, const at::Tensor& k,
                                                            const at::Tensor& v, int64_t mask_kind,
                                                            at::IntArrayRef mask_ints,
                                                            const std::optional<at::Tensor>& kv_end,
                                                            const std::optional<at::Tensor>& key_len, double scale) {
  check_attention_qkv("attention_fwd", q, k, v, at::kCPU, true);
  const auto mask = attention_mask("attention_fwd", mask_kind, mask_ints, kv_end, key_len, q.size(0), q.size(2));
  return cpu::attention_fwd(q, k, v, mask, scale);
}

static std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_bwd_cpu(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, int64_t mask_kind, at::IntArrayRef mask_ints, const std::optional<at::Tensor>& kv_end,
    const std::optional<at::Tensor>& key_len, double scale) {
  check_attention_qkv("attention_bwd", q, k, v, at::kCPU, true);
  check_attention_bwd(dout, q, out, lse);
  const auto mask = attention_mask("attention_bwd", mask_kind, mask_ints, kv_end, key_len, q.size(0), q.size(2));
  return cpu::attention_bwd(dout, q, k, v, out, lse, mask, scale);
}

static std::tuple<at::Tensor, at::Tensor> attention_decode_cpu(const at::Tensor& q, const at::Tensor& k_cache,
                                                               const at::Tensor& v_cache, int64_t cache_len,
                                                               int64_t mask_kind, at::IntArrayRef mask_ints,
                                                               const std::optional<at::Tensor>& kv_end,
                                                               const std::optional<at::Tensor>& key_len,
                                                               double scale) {
  check_attention_qkv("attention_decode", q, k_cache, v_cache, at::kCPU, true);
  check_attention_decode(q, k_cache, cache_len, mask_kind);
  const auto mask = attention_mask("attention_decode", mask_kind, mask_ints, kv_end, key_len, q.size(0), q.size(2));
  return cpu::attention_decode(q, k_cache, v_cache, cache_len, mask, scale);
}

}  // namespace fastar

TORCH_LIBRARY_IMPL(fastar, CPU, m) {
  m.impl("attention_fwd", &fastar::attention_fwd_cpu);
  m.impl("attention_bwd", &fastar::attention_bwd_cpu);
  m.impl("attention_decode", &fastar::attention_decode_cpu);
}
