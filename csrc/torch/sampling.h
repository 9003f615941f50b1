// Argument checks of the sampling family, shared by every backend's registration.
#pragma once
#include <ATen/core/Tensor.h>

#include <cmath>

namespace fastar {

// logits (R, V) contiguous float32 / bfloat16 / float16, V >= 1; race (R, V) on logits' device: float32 Exp(1)
// draws, or for the CPU kernel int64 words of the generator that torch's exponential_ turns into them.
// words_ok: the kernel takes int64 words (the CPU kernel's).
inline void check_sample_categorical(const at::Tensor& logits, const at::Tensor& race, double temperature,
                                     int64_t top_k, double top_p, double min_prob, c10::DeviceType device,
                                     bool words_ok) {
  const char* op = "sample_categorical";
  TORCH_CHECK(logits.dim() == 2 && logits.size(1) >= 1, op, ": logits must be (rows, V) with V >= 1, got ",
              logits.sizes());
  TORCH_CHECK(logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kBFloat16 ||
                  logits.scalar_type() == at::kHalf,
              op, ": logits must be float32, bfloat16 or float16, got ", logits.scalar_type());
  TORCH_CHECK(logits.is_contiguous(), op, ": logits must be contiguous");
  TORCH_CHECK(logits.device().type() == device, op, ": logits is on ", logits.device(), ", expected ", device);
  TORCH_CHECK(logits.size(1) <= INT32_MAX, op, ": logits rows must hold at most 2^31 - 1 tokens, got ",
              logits.size(1));
  TORCH_CHECK(race.sizes() == logits.sizes(), op, ": race must be ", logits.sizes(), " like logits, got ",
              race.sizes());
  const bool words = words_ok && race.scalar_type() == at::kLong;
  TORCH_CHECK((race.scalar_type() == at::kFloat || words) && race.is_contiguous(), op, ": race must be contiguous ",
              words_ok ? "float32 or int64" : "float32", ", got ", race.scalar_type(),
              race.is_contiguous() ? "" : " (not contiguous)");
  TORCH_CHECK(race.device() == logits.device(), op, ": race is on ", race.device(), " but logits is on ",
              logits.device());
  TORCH_CHECK(std::isfinite(temperature) && temperature > 0, op, ": temperature must be finite and > 0, got ",
              temperature);
  TORCH_CHECK(top_k >= 0, op, ": top_k must be >= 0 (0: off), got ", top_k);
  TORCH_CHECK(top_p >= 0 && top_p <= 1, op, ": top_p must be in [0, 1] (1: off), got ", top_p);
  TORCH_CHECK(min_prob >= 0 && min_prob <= 1, op, ": min_prob must be in [0, 1] (0: off), got ", min_prob);
}

}  // namespace fastar
