// CPU kernels of the quantize family (ATen side: dtype policy, threading, scratch memory).
#pragma once
#include <ATen/ATen.h>

namespace fastar::cpu {

// x (N, D), codebook (K, D), any float dtype -> (indices (N,) int64, distances (N,) float32).
std::tuple<at::Tensor, at::Tensor> vq_nearest(const at::Tensor& x, const at::Tensor& codebook, bool cosine);

}  // namespace fastar::cpu
