// Argument checks of the quantize family, shared by every backend's registration (cpu, cuda, simt).
#pragma once
#include <ATen/core/Tensor.h>

#include "torch/checks.h"

namespace fastar {

inline bool is_cosine(c10::string_view metric) {
  TORCH_CHECK(metric == "l2" || metric == "cosine", "vq_nearest: metric must be 'l2' or 'cosine', got '",
              std::string(metric), "'");
  return metric == "cosine";
}

// The codebook slices vq_nearest's CUDA kernel searches n rows of k codes in on a device of sm_count
// multiprocessors: enough to fill it (kernels::vq_nearest_auto_slices), or FASTAR_VQ_NEAREST_SLICES when set (tests
// reach the split and unsplit searches on any device). Defined by the CUDA and simt builds (quantize_device.cpp).
int vq_nearest_slices(int64_t n, int64_t k, int sm_count);

inline void check_vq_nearest(const at::Tensor& x, const at::Tensor& codebook, c10::DeviceType device) {
  TORCH_CHECK(x.dim() == 2, "vq_nearest: x must be (N, D), got ", x.dim(), " dims");
  TORCH_CHECK(codebook.dim() == 2, "vq_nearest: codebook must be (K, D), got ", codebook.dim(), " dims");
  TORCH_CHECK(codebook.size(1) == x.size(1), "vq_nearest: codebook has D=", codebook.size(1), " but x has D=",
              x.size(1));
  TORCH_CHECK(codebook.size(0) > 0, "vq_nearest: codebook must hold at least one code");
  TORCH_CHECK(codebook.size(0) <= INT32_MAX, "vq_nearest: codebook holds ", codebook.size(0),
              " codes, more than the 2^31-1 the kernels index");
  for (const auto& [name, t] : {std::pair{"x", &x}, std::pair{"codebook", &codebook}}) {
    const auto dt = t->scalar_type();
    TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf, "vq_nearest: ", name,
                " must be float32, bfloat16 or float16, got ", dt);
    check_device("vq_nearest", name, *t, device, "x", x);
  }
}

// A feature map of the multi-scale ops: float32 (B, C, H, H), channels_last contiguous, of the shape of `like`.
inline void check_msq_map(const char* op, const char* name, const at::Tensor& t, c10::DeviceType device,
                          const at::Tensor* like = nullptr) {
  TORCH_CHECK(t.dim() == 4 && t.size(2) == t.size(3), op, ": ", name, " must be (B, C, H, H), got ", t.sizes());
  if (like)
    TORCH_CHECK(t.sizes() == like->sizes(), op, ": ", name, " has shape ", t.sizes(), ", expected ", like->sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(at::MemoryFormat::ChannelsLast), op, ": ", name, " must be channels_last contiguous");
  check_device(op, name, t, device, like ? "f_hat" : name, like ? *like : t);
}

// 1 <= pn <= H for every scale (0 also allowed where `zero_ok`: no output for that scale).
inline int64_t check_patch_nums(const char* op, c10::IntArrayRef patch_nums, int64_t H, bool zero_ok) {
  int64_t cells = 0;
  for (int64_t pn : patch_nums) {
    TORCH_CHECK((zero_ok ? pn >= 0 : pn >= 1) && pn <= H, op, ": patch_nums must lie in [", zero_ok ? 0 : 1, ", ",
                H, "], got ", pn);
    cells += pn * pn;
  }
  return cells;
}

// anchor: the op's first tensor (the codebook itself when it is the first).
inline void check_msq_codebook(const char* op, const at::Tensor& codebook, int64_t C, c10::DeviceType device,
                               const char* anchor_name, const at::Tensor& anchor) {
  TORCH_CHECK(codebook.dim() == 2 && codebook.size(0) > 0 && codebook.size(0) <= INT32_MAX, op,
              ": codebook must be (V, C) with 1 <= V < 2^31, got ", codebook.sizes());
  TORCH_CHECK(codebook.size(1) == C, op, ": codebook has C=", codebook.size(1), " but the maps have C=", C);
  check_device(op, "codebook", codebook, device, anchor_name, anchor);
}

inline void check_msq_residual_search(const at::Tensor& f_hat, const at::Tensor& f_rest,
                                      const std::optional<at::Tensor>& h, const at::Tensor& codebook, int64_t pn,
                                      c10::DeviceType device) {
  const char* op = "msq_residual_search";
  check_msq_map(op, "f_hat", f_hat, device);
  check_msq_map(op, "f_rest", f_rest, device, &f_hat);
  if (h) check_msq_map(op, "h", *h, device, &f_hat);
  check_msq_codebook(op, codebook, f_hat.size(1), device, "f_hat", f_hat);
  TORCH_CHECK(codebook.scalar_type() == at::kFloat, op, ": codebook must be float32, got ", codebook.scalar_type());
  check_patch_nums(op, {pn}, f_hat.size(2), false);
}

// Returns B.
inline int64_t check_msq_up(const at::Tensor& src, const std::optional<at::Tensor>& idx, c10::IntArrayRef patch_nums,
                            int64_t H, c10::DeviceType device) {
  const char* op = "msq_up";
  TORCH_CHECK(src.scalar_type() == at::kFloat || src.scalar_type() == at::kDouble, op,
              ": src must be float32 or float64, got ", src.scalar_type());
  TORCH_CHECK(src.is_contiguous(), op, ": src must be contiguous");
  check_device(op, "src", src, device, "src", src);
  TORCH_CHECK(H >= 1, op, ": H must be >= 1, got ", H);
  const int64_t cells = check_patch_nums(op, patch_nums, H, false);
  const at::Tensor& rows = idx ? *idx : src;  // what carries (B, sum pn^2)
  TORCH_CHECK(rows.dim() == (idx ? 2 : 3) && rows.size(1) == cells, op, ": ", idx ? "idx" : "src", " must be (B, ",
              cells, idx ? ")" : ", C)", " for patch_nums ", patch_nums, ", got ", rows.sizes());
  if (idx) {
    check_msq_codebook(op, src, src.size(1), device, "src", src);
    TORCH_CHECK(idx->scalar_type() == at::kLong && idx->is_contiguous(), op, ": idx must be contiguous int64, got ",
                idx->scalar_type());
    check_device(op, "idx", *idx, device, "src", src);
  }
  return rows.size(0);
}

inline int64_t check_msq_add_down(const at::Tensor& f_hat, at::TensorList h, c10::IntArrayRef patch_nums,
                                  c10::DeviceType device) {
  const char* op = "msq_add_down";
  check_msq_map(op, "f_hat", f_hat, device);
  TORCH_CHECK(h.size() == patch_nums.size(), op, ": h holds ", h.size(), " maps but patch_nums ", patch_nums.size());
  for (const at::Tensor& t : h) check_msq_map(op, "h[s]", t, device, &f_hat);
  return check_patch_nums(op, patch_nums, f_hat.size(2), true);
}

}  // namespace fastar
