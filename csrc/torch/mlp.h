// Argument checks of the mlp family.
#pragma once
#include <ATen/core/Tensor.h>

#include <optional>
#include <utility>
#include <vector>

namespace fastar {

inline void check_mlp_tensor(const char* name, const at::Tensor& t, int64_t dim, c10::DeviceType device) {
  TORCH_CHECK(t.dim() == dim, "mlp: ", name, " must have ", dim, " dims, got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat, "mlp: ", name, " must be float32, got ", t.scalar_type());
  TORCH_CHECK(t.device().type() == device, "mlp: ", name, " is on ", t.device(), ", expected ", device);
  TORCH_CHECK(dim == 1 || t.stride(1) == 1 || t.size(1) <= 1, "mlp: ", name, " must have unit column stride, got ",
              t.strides());
}

// x (N, C) and residual (N, Co) with unit column stride; w1 (Hd, C), b1 (Hd,), w2 (Co, Hd), b2 (Co,) contiguous; all
// float32 on `device`; softmax_group 0 or a divisor of Hd.
inline void check_mlp(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                      const at::Tensor& b2, const std::optional<at::Tensor>& residual, int64_t softmax_group,
                      c10::DeviceType device) {
  check_mlp_tensor("x", x, 2, device);
  check_mlp_tensor("w1", w1, 2, device);
  check_mlp_tensor("b1", b1, 1, device);
  check_mlp_tensor("w2", w2, 2, device);
  check_mlp_tensor("b2", b2, 1, device);
  const int64_t C = x.size(1), Hd = w1.size(0), Co = w2.size(0);
  TORCH_CHECK(C >= 1 && Hd >= 1 && Co >= 1, "mlp: widths must be at least 1, got C ", C, ", hidden ", Hd,
              ", out ", Co);
  TORCH_CHECK(w1.size(1) == C, "mlp: w1 must be (hidden, ", C, ") for x's ", C, " columns, got ", w1.sizes());
  TORCH_CHECK(b1.size(0) == Hd, "mlp: b1 must be (", Hd, ",), got ", b1.sizes());
  TORCH_CHECK(w2.size(1) == Hd, "mlp: w2 must be (out, ", Hd, ") for w1's ", Hd, " rows, got ", w2.sizes());
  TORCH_CHECK(b2.size(0) == Co, "mlp: b2 must be (", Co, ",), got ", b2.sizes());
  TORCH_CHECK(softmax_group >= 0 && (softmax_group == 0 || Hd % softmax_group == 0), "mlp: softmax_group must be 0 "
              "(GELU) or divide the ", Hd, " hidden units, got ", softmax_group);
  for (const auto* t : {&w1, &b1, &w2, &b2})
    TORCH_CHECK(t->is_contiguous(), "mlp: the weights and biases must be contiguous");
  if (residual.has_value() && residual->defined()) {
    check_mlp_tensor("residual", *residual, 2, device);
    TORCH_CHECK(residual->size(0) == x.size(0) && residual->size(1) == Co, "mlp: residual must be (", x.size(0),
                ", ", Co, "), got ", residual->sizes());
  }
}

// out (N, Co) float32 with unit column stride on `device`: x's or residual's own rows (the same first element and row
// stride), or apart from both.
inline void check_mlp_out(const at::Tensor& x, const std::optional<at::Tensor>& residual, int64_t Co,
                          const at::Tensor& out, c10::DeviceType device) {
  check_mlp_tensor("out", out, 2, device);
  TORCH_CHECK(out.size(0) == x.size(0) && out.size(1) == Co, "mlp: out must be (", x.size(0), ", ", Co, "), got ",
              out.sizes());
  auto span = [](const at::Tensor& t) {  // [first, last] byte
    const char* p = static_cast<const char*>(t.data_ptr());
    return std::pair<const char*, const char*>(
        p, p + ((t.size(0) - 1) * t.stride(0) + (t.size(1) - 1) * t.stride(1)) * int64_t(t.element_size()));
  };
  std::vector<const at::Tensor*> inputs{&x};
  if (residual.has_value() && residual->defined()) inputs.push_back(&*residual);
  if (out.numel() == 0) return;
  for (const at::Tensor* t : inputs) {
    if (t->numel() == 0) continue;
    const auto a = span(out), b = span(*t);
    const bool same_rows = t->data_ptr() == out.data_ptr() && (t->size(0) <= 1 || t->stride(0) == out.stride(0));
    TORCH_CHECK(same_rows || a.second < b.first || b.second < a.first,
                "mlp: out overlaps ", t == &x ? "x" : "residual", " without being its own rows");
  }
}

}  // namespace fastar
