// MAR's diffusion-head sampling (DiffLoss.sample: SimpleMLPAdaLN + iDDPM's p_sample_loop) as one CPU loop.
// What the official loop recomputes every step is hoisted: the condition projection runs once per call, the time
// embedding once per step and per call (one row, shared by all rows); each block's adaLN modulation is one GEMM run
// just before the block (one GEMM of all blocks' measured slower: its 42 MB output at MAR-B's 512 rows left the
// cache before the blocks read it). The GEMMs write into buffers allocated before the loop (float32 on oneDNN:
// into fresh outputs, from weights reordered once a call, blas::PackedWeight: a diagnostic A/B against the
// plain-weight build, MAR-B's head at 24 / 128 / 512 rows, 100 steps, Zen 4, 2 threads: 1.21x / 1.09x / 1.03x;
// benchmarks/bench_diffusion.py times 24 and 512 rows against the official loop), without their bias; one fused
// pass per row between them (cpu/diffusion_isa.h, at the CPU's vector width) adds the bias and does SiLU, the
// gated residual, the next LayerNorm + modulation, or the DDPM update. The noise is drawn by torch's generator in
// the official order.
// bf16: the per-step GEMMs take bfloat16 weights (converted once per call) and inputs (rounded before each
// product) and accumulate in float32 (blas::gemm_bf16); everything else stays float32.
#include "cpu/diffusion.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>

#include "cpu/blas.h"
#include "cpu/isa.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

namespace fastar::cpu {
namespace {

constexpr float kLnEps = 1e-6f;  // SimpleMLPAdaLN's LayerNorms

// Below this many multiply-adds per GEMM (rows x width x width) the loop runs on the calling thread: a step of a
// small head (MAR's digits model: 40 rows x 96 wide, ~0.2 ms a step) is shorter than two threads' hand-offs, and
// on a loaded machine each hand-off waits for a descheduled thread (measured: 10x the 1-thread time at 2 threads).
constexpr int64_t kSerialMacs = int64_t(1) << 22;

// f(r) for rows [0, n), split over the threads unless serial; W: floats a row touches, for the grain.
template <class F>
void for_rows(bool serial, int64_t n, int64_t W, const F& f) {
  if (serial) {
    for (int64_t r = 0; r < n; ++r) f(r);
    return;
  }
  at::parallel_for(0, n, std::max<int64_t>(1, 8192 / W), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) f(r);
  });
}

}  // namespace

at::Tensor diffusion_sample(const at::Tensor& z, at::TensorList weights, int64_t depth, const at::Tensor& schedule,
                            double temperature, double cfg, const std::optional<at::Generator>& generator,
                            bool bf16) {
  const bool guided = cfg != 1.0;
  const int64_t N = z.size(0), W = weights[0].size(0), C = weights[6].size(1), D = depth, S = schedule.size(0);
  const int64_t M = guided ? N / 2 : N;  // rows of x carried: the conditional half under cfg
  at::Tensor x = at::empty({M, C}, z.options());  // x_t, then the tokens
  if (N == 0) return x;
  x.normal_(0, 1, generator);  // x_T: the official code draws N/2 rows under cfg and duplicates them
  auto block = [&](int64_t b, int64_t i) -> const at::Tensor& { return weights[8 + 8 * b + i]; };

  // Once per call: the condition projection and the time embeddings of all steps.
  const HeadPlan plan = head_plan(z, weights, D, schedule, /*concat_ada=*/false);
  const at::Tensor &cond = plan.cond, &t_emb = plan.t_emb, &ada_bias = plan.ada_bias, &in_wT = plan.in_wT;
  const at::Tensor& final_wT = plan.final_wT;
  const std::vector<at::Tensor>&mlp0T = plan.mlp0T, &mlp2T = plan.mlp2T;
  // bf16 copies of the per-step GEMMs' weights, (out, in) row-major, and the rounded input of each product.
  auto bf = [](const at::Tensor& t) { return t.to(at::kBFloat16).contiguous(); };
  // Block b's modulation weight (3W, W); b == D: the final layer's (2W, W).
  auto ada_w = [&](int64_t b) -> const at::Tensor& { return b < D ? block(b, 6) : block(D, 0); };
  at::Tensor final_bf, in_bf, sy_bf;
  std::vector<at::Tensor> ada_bf(D + 1), mlp0_bf(D), mlp2_bf(D);
  if (bf16) {
    final_bf = bf(block(D, 2)), in_bf = at::empty({N, W}, z.options().dtype(at::kBFloat16));
    sy_bf = at::empty_like(in_bf);
    for (int64_t b = 0; b < D; ++b) mlp0_bf[b] = bf(block(b, 2)), mlp2_bf[b] = bf(block(b, 4));
    for (int64_t b = 0; b <= D; ++b) ada_bf[b] = bf(ada_w(b));
  }
  const bool serial = N * W * W < kSerialMacs;
  // float32 on oneDNN: each weight reordered once per call into oneDNN's layout (blas::PackedWeight), whose
  // products return new tensors: gemm() then points `out` at the product, and the loop rereads its row pointers.
  const bool packed = !bf16 && !serial && blas::PackedWeight::packs();
  std::vector<blas::PackedWeight> ada_pk, mlp0_pk, mlp2_pk, final_pk;
  if (packed) {
    for (int64_t b = 0; b <= D; ++b) ada_pk.emplace_back(ada_w(b));
    for (int64_t b = 0; b < D; ++b) mlp0_pk.emplace_back(block(b, 2)), mlp2_pk.emplace_back(block(b, 4));
    final_pk.emplace_back(block(D, 2));
  }
  // out (N, n) = in (N, W) w^T: float32 (the packed weight pk; blas::mm_f32 elsewhere, MKL when serial), or
  // bfloat16 products with float32 accumulation of in rounded to bfloat16 (in_rounded: already rounded, as SiLU(y)
  // once per step for all blocks' modulations).
  auto gemm = [&](at::Tensor& out, const at::Tensor& in, const at::Tensor& wT, const at::Tensor& w_bf,
                  const blas::PackedWeight* pk, const at::Tensor* in_rounded = nullptr) {
    if (!bf16) {
      if (packed) {
        out = pk->mm(in);
      } else if (serial) {
        at::mm_out(out, in, wT);  // MKL under one_thread; oneDNN would take torch's threads
      } else {
        blas::mm_f32(out, in, wT);
      }
      return;
    }
    const at::Tensor& a_bf = in_rounded != nullptr ? *in_rounded : in_bf.copy_(in);
    const int n = int(out.size(1));
    blas::gemm_bf16(false, true, int(N), n, int(W), 1.f, reinterpret_cast<const uint16_t*>(a_bf.data_ptr()), int(W),
                    reinterpret_cast<const uint16_t*>(w_bf.data_ptr()), int(W), 0.f, out.data_ptr<float>(), n);
  };

  // Buffers of the loop: nothing is allocated inside it.
  const auto opts = z.options();
  at::Tensor sy = at::empty({N, W}, opts), hid = at::empty({N, W}, opts);
  at::Tensor h = at::empty({N, W}, opts), a = at::empty({N, W}, opts), out = at::empty({N, 2 * C}, opts);
  at::Tensor noise = at::empty({N, C}, opts);
  float *sy_p = sy.data_ptr<float>(), *hid_p = hid.data_ptr<float>();
  float *h_p = h.data_ptr<float>(), *a_p = a.data_ptr<float>(), *x_p = x.data_ptr<float>();
  const float *cond_p = cond.data_ptr<float>(), *ada_b_p = ada_bias.data_ptr<float>(), *in_w_p = in_wT.data_ptr<float>();
  const float *in_b_p = weights[7].data_ptr<float>(), *out_p = out.data_ptr<float>(), *noise_p = noise.data_ptr<float>();
  const float* final_b_p = block(D, 3).data_ptr<float>();
  auto ln_w = [&](int64_t b) { return b < D ? block(b, 0).data_ptr<float>() : nullptr; };
  auto ln_b = [&](int64_t b) { return b < D ? block(b, 1).data_ptr<float>() : nullptr; };
  const auto sch = schedule.accessor<double, 2>();
  const float cfg_f = float(cfg), temp_f = float(temperature);

  // Block b's modulation [shift, scale, gate] (b == D: the final layer's [shift, scale]), computed just before its
  // rows are read: two (N, 3W) buffers in turn (the gate of block b beside the next block's shift and scale) stay
  // in cache where one (N, (3D + 2) W) product of all blocks did not (42 MB at MAR-B's 512 rows).
  at::Tensor mods[2] = {at::empty({N, 3 * W}, opts), at::empty({N, 3 * W}, opts)}, mod_last = at::empty({N, 2 * W}, opts);
  auto modulation = [&](int64_t b) -> const float* {
    at::Tensor& buf = b < D ? mods[b % 2] : mod_last;
    gemm(buf, sy, ada_w(b).t(), ada_bf[b], packed ? &ada_pk[b] : nullptr, &sy_bf);
    return buf.data_ptr<float>();
  };
  auto mod_stride = [&](int64_t b) { return b < D ? 3 * W : 2 * W; };

  const DiffusionIsa& row = *isa().diffusion;
  // The float32 GEMMs too where MKL runs them; oneDNN's (blas::mm_f32, gemm_bf16) keep torch's threads.
  std::optional<blas::SerialScope> one_thread;
  if (serial) one_thread.emplace();
  for (int64_t i = S - 1; i >= 0; --i) {
    const float* te = t_emb.data_ptr<float>() + i * W;
    // SiLU(y), y = t_emb + cond_embed(z)
    for_rows(serial, N, W, [&](int64_t r) { row.silu_sum(te, cond_p + r * W, sy_p + r * W, W); });
    if (bf16) sy_bf.copy_(sy);
    const float* cur = modulation(0);
    for_rows(serial, N, W, [&](int64_t r) {  // input_proj(x) (both halves see the conditional x under cfg), first LN
      row.project(x_p + (r % M) * C, C, in_w_p, in_b_p, hid_p + r * W, W);
      row.ln_modulate(hid_p + r * W, ln_w(0), ln_b(0), cur + r * mod_stride(0), ada_b_p, h_p + r * W, W, kLnEps);
    });
    for (int64_t b = 0; b < D; ++b) {
      gemm(a, h, mlp0T[b], mlp0_bf[b], packed ? &mlp0_pk[b] : nullptr);
      a_p = a.data_ptr<float>();
      const float* b0 = block(b, 3).data_ptr<float>();
      for_rows(serial, N, W, [&](int64_t r) { row.silu_bias(a_p + r * W, b0, W); });
      gemm(h, a, mlp2T[b], mlp2_bf[b], packed ? &mlp2_pk[b] : nullptr);
      h_p = h.data_ptr<float>();
      const float* b2 = block(b, 5).data_ptr<float>();
      const float* next = modulation(b + 1);
      const int64_t sn = mod_stride(b + 1);
      for_rows(serial, N, W, [&](int64_t r) {  // x += gate * mlp(h), then the next LN + modulation
        float *hr = h_p + r * W, *xr = hid_p + r * W;
        row.gated_residual(xr, cur + r * 3 * W + 2 * W, ada_b_p + 3 * b * W + 2 * W, hr, b2, W);
        row.ln_modulate(xr, ln_w(b + 1), ln_b(b + 1), next + r * sn, ada_b_p + 3 * (b + 1) * W, hr, W, kLnEps);
      });
      cur = next;
    }
    gemm(out, h, final_wT, final_bf, packed ? &final_pk[0] : nullptr);
    out_p = out.data_ptr<float>();
    noise.normal_(0, 1, generator);  // (N, C) every step, as randn_like(x), of which the kept rows read the first M
    const float coef_sqrt_recip = float(sch[i][1]), coef_sqrt_recipm1 = float(sch[i][2]), coef1 = float(sch[i][3]),
                coef2 = float(sch[i][4]), min_log = float(sch[i][5]), max_log = float(sch[i][6]);
    const float noise_scale = i != 0 ? temp_f : 0.f;  // no noise on the last step
    for_rows(serial, M, C, [&](int64_t r) {  // eps (cfg-combined), learned-range variance, posterior mean, noise
      const float *o = out_p + r * 2 * C, *ou = out_p + (r + M) * 2 * C, *n = noise_p + r * C;
      float* xr = x_p + r * C;
      for (int64_t k = 0; k < C; ++k) {
        float eps = o[k] + final_b_p[k];
        if (guided) {
          const float eps_u = ou[k] + final_b_p[k];
          eps = eps_u + cfg_f * (eps - eps_u);
        }
        const float frac = (o[C + k] + final_b_p[C + k] + 1.f) / 2.f;
        const float log_var = frac * max_log + (1.f - frac) * min_log;
        const float x0 = coef_sqrt_recip * xr[k] - coef_sqrt_recipm1 * eps;
        const float mean = coef1 * x0 + coef2 * xr[k];
        xr[k] = mean + std::exp(0.5f * log_var) * n[k] * noise_scale;
      }
    });
  }
  return x;
}

}  // namespace fastar::cpu
