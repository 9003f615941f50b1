// CPU kernels of the diffusion family (MAR's diffusion head).
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/cos.h>
#include <ATen/ops/div.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/exp.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/sin.h>

#include <cmath>
#include <optional>
#include <tuple>
#include <vector>

#include "kernels/diffusion/loss_math.h"

namespace fastar::cpu {

constexpr int64_t kFreqDim = 256;  // TimestepEmbedder's sinusoid width

// The head's tensors as diffusion_sample's loop multiplies them, built once per call on z's device (the CPU loop
// and the CUDA one of torch/diffusion_device.cpp share it).
struct HeadPlan {
  at::Tensor cond;      // (N, W) cond_embed(z) with its bias
  at::Tensor t_emb;     // (S, W) time embeddings of the spaced steps, contiguous
  at::Tensor ada_w;     // (A, W) all blocks' then the final layer's modulation weights, A = (3 depth + 2) W; only
                        // with concat_ada (the CUDA loop multiplies them at once; the CPU loop one block at a time)
  at::Tensor ada_bias;  // (A,)
  at::Tensor in_wT;     // (C, W) input_proj's weight transposed, contiguous: C rank-1 updates in a row pass
  std::vector<at::Tensor> mlp0T, mlp2T;  // depth x (W, W) views (in, out)
  at::Tensor final_wT;  // (W, 2C) view
};

// (S, 256) sinusoids [cos, sin] of the original timesteps in schedule column 0, in float32 as the official code.
inline at::Tensor timestep_frequencies(const at::Tensor& schedule) {
  const int64_t S = schedule.size(0), half = kFreqDim / 2;
  at::Tensor t_freq = at::empty({S, kFreqDim}, at::kFloat);
  const auto sch = schedule.accessor<double, 2>();
  float* out = t_freq.data_ptr<float>();
  for (int64_t i = 0; i < S; ++i)
    for (int64_t j = 0; j < half; ++j) {
      const float freq = std::exp(float(-std::log(10000.0)) * float(j) / float(half));
      const float arg = float(sch[i][0]) * freq;
      out[i * kFreqDim + j] = std::cos(arg);
      out[i * kFreqDim + half + j] = std::sin(arg);
    }
  return t_freq;
}

// The same sinusoids made on `device` by kernels alone (one fill per step, then vector ops in the host's order), no
// host-to-device copy, so that a CUDA graph can capture the whole call (fastar.ops.diffusion_sample(...,
// cuda_graph=True)); exp, cos and sin are the device's, within an ulp or two of the host's.
inline at::Tensor timestep_frequencies_on(const at::Tensor& schedule, c10::Device device) {
  const int64_t S = schedule.size(0), half = kFreqDim / 2;
  const auto opts = at::TensorOptions().dtype(at::kFloat).device(device);
  at::Tensor t = at::empty({S, 1}, opts);
  const auto sch = schedule.accessor<double, 2>();
  for (int64_t i = 0; i < S; ++i) t[i].fill_(float(sch[i][0]));
  const at::Tensor freq = at::exp(at::div(at::mul(at::arange(half, opts), float(-std::log(10000.0))), float(half)));
  const at::Tensor arg = at::mul(t, freq);  // (S, half)
  return at::cat({at::cos(arg), at::sin(arg)}, 1);
}

inline HeadPlan head_plan(const at::Tensor& z, at::TensorList weights, int64_t depth, const at::Tensor& schedule,
                          bool concat_ada) {
  auto wt = [&](int64_t i) { return weights[i].t(); };  // a Linear's weight (out, in) as (in, out)
  auto block = [&](int64_t b, int64_t i) -> const at::Tensor& { return weights[8 + 8 * b + i]; };
  HeadPlan plan;
  plan.cond = at::addmm(weights[5], z.contiguous(), wt(4));
  const at::Tensor t_freq = z.device().is_cpu() ? timestep_frequencies(schedule)
                                                : timestep_frequencies_on(schedule, z.device());
  plan.t_emb = at::addmm(weights[3], at::silu(at::addmm(weights[1], t_freq, wt(0))), wt(2)).contiguous();
  std::vector<at::Tensor> ada_w, ada_b;
  for (int64_t b = 0; b < depth; ++b) ada_w.push_back(block(b, 6)), ada_b.push_back(block(b, 7));
  ada_w.push_back(block(depth, 0)), ada_b.push_back(block(depth, 1));
  if (concat_ada) plan.ada_w = at::cat(ada_w);
  plan.ada_bias = at::cat(ada_b);
  plan.in_wT = wt(6).contiguous();
  for (int64_t b = 0; b < depth; ++b) plan.mlp0T.push_back(block(b, 2).t()), plan.mlp2T.push_back(block(b, 4).t());
  plan.final_wT = block(depth, 2).t();
  return plan;
}

// The whole p_sample_loop of SimpleMLPAdaLN (schema in torch/ops.h; checked by torch/diffusion.h).
// z (N, Z) float32, weights in head_shapes order, schedule (S, 7) float64 -> tokens (N, C), or (N/2, C) with cfg != 1.
// bf16: the per-step GEMMs in bfloat16 with float32 accumulation (the caller checks the CPU has the instructions).
at::Tensor diffusion_sample(const at::Tensor& z, at::TensorList weights, int64_t depth, const at::Tensor& schedule,
                            double temperature, double cfg, const std::optional<at::Generator>& generator,
                            bool bf16);

// DiffLoss's per-row training loss and its gradient (schema in torch/ops.h; checked in torch/diffusion.cpp).
// model_output (N, 2C) [eps, v], x_start and noise (N, C), t (N,) int64, table (1000, 8) float64
// -> loss (N,), d loss / d model_output (N, 2C); float32 or float64.
std::tuple<at::Tensor, at::Tensor> diffusion_loss(const at::Tensor& model_output, const at::Tensor& x_start,
                                                  const at::Tensor& noise, const at::Tensor& t,
                                                  const at::Tensor& table);

}  // namespace fastar::cpu
