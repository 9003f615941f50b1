// Argument checks of the multi_axis family, shared by every backend's registration (cpu, cuda, simt).
#pragma once
#include <ATen/core/Tensor.h>

namespace fastar {

// q (B, H, W, heads, D), k and v (B, H, W, heads_kv, D); heads even, heads_kv 1 (multi-query) or an even divisor
// of heads; H and W multiples of block_size. float64 is a CPU-kernel dtype (gradcheck).
inline void check_multi_axis(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             int64_t block_size, c10::DeviceType device, bool allow_float64) {
  for (const auto& [name, t] : {std::pair{"q", &q}, std::pair{"k", &k}, std::pair{"v", &v}}) {
    TORCH_CHECK(t->dim() == 5, op, ": ", name, " must be (B, H, W, heads, D), got ", t->dim(), " dims");
    const auto dt = t->scalar_type();
    TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf || (allow_float64 && dt == at::kDouble),
                op, ": ", name, " must be float32, bfloat16 or float16", allow_float64 ? " (or float64)" : "",
                ", got ", dt);
    TORCH_CHECK(dt == q.scalar_type(), op, ": ", name, " is ", dt, " but q is ", q.scalar_type());
    TORCH_CHECK(t->device().type() == device, op, ": ", name, " is on ", t->device(), ", expected ", device);
  }
  TORCH_CHECK(k.sizes() == v.sizes(), op, ": k ", k.sizes(), " and v ", v.sizes(), " must have the same shape");
  for (const int d : {0, 1, 2, 4})
    TORCH_CHECK(k.size(d) == q.size(d), op, ": k ", k.sizes(), " must match q ", q.sizes(), " in dim ", d);
  const int64_t heads = q.size(3), hk = k.size(3);
  TORCH_CHECK(heads >= 2 && heads % 2 == 0, op, ": q needs an even number of heads (regional, dilated), got ", heads);
  TORCH_CHECK(hk == 1 || (hk % 2 == 0 && heads % hk == 0), op,
              ": k needs 1 head (multi-query) or an even divisor of q's ", heads, " heads, got ", hk);
  TORCH_CHECK(q.size(4) >= 1, op, ": head dim (dim 4) must be at least 1, got ", q.size(4));
  TORCH_CHECK(block_size >= 1 && q.size(1) >= 1 && q.size(2) >= 1 && q.size(1) % block_size == 0 &&
                  q.size(2) % block_size == 0,
              op, ": the image ", q.size(1), " x ", q.size(2), " must be a nonzero multiple of block_size ", block_size);
}

inline void check_multi_axis_bwd(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& out,
                                 const at::Tensor& lse) {
  const char* op = "multi_axis_attention_bwd";
  TORCH_CHECK(dout.sizes() == q.sizes() && out.sizes() == q.sizes(), op, ": dout ", dout.sizes(), " and out ",
              out.sizes(), " must be shaped like q ", q.sizes());
  TORCH_CHECK(lse.sizes() == q.sizes().slice(0, 4), op, ": lse must be (B, H, W, heads) = ", q.sizes().slice(0, 4),
              ", got ", lse.sizes());
}

}  // namespace fastar
