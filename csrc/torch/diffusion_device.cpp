// CUDA (and simt) registration of the diffusion family: the head loop of csrc/cpu/diffusion.cpp with the GEMMs on
// the device (cuBLAS through at::mm, into buffers allocated before the loop) and the fused row passes of
// kernels/diffusion. No host synchronisation inside the loop: the schedule's coefficients are read on the host.
// The training loss: shared checks, then the one pass of kernels/diffusion/diffusion_loss.cu.
#include "cpu/diffusion.h"
#include "kernels/diffusion/diffusion.h"
#include "torch/device.h"
#include "torch/diffusion.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

namespace fastar {

static at::Tensor diffusion_sample_device(const at::Tensor& z, at::TensorList weights, const at::Tensor& schedule,
                                          double temperature, double cfg, std::optional<at::Generator> generator,
                                          bool bf16) {
  const char* op = "diffusion_sample";
  const int64_t D = check_diffusion_sample(z, weights, schedule, cfg, kDeviceType);
  TORCH_CHECK(!bf16, op, ": precision='bf16' is a CPU mode (bf16 GEMMs through MKL); on this device use 'fp32'");
  DeviceScope scope(z);
  const bool guided = cfg != 1.0;
  const int64_t N = z.size(0), W = weights[0].size(0), C = weights[6].size(1), S = schedule.size(0);
  const int64_t M = guided ? N / 2 : N, A = (3 * D + 2) * W;
  TORCH_CHECK(N * std::max(A, 2 * C) <= INT32_MAX, op, ": ", N, " rows of width ", W, " exceed the kernels' indexing");
  at::Tensor x = at::empty({M, C}, z.options());  // x_t, then the tokens
  if (N == 0) return x;
  x.normal_(0, 1, generator);  // x_T: the official code draws N/2 rows under cfg and duplicates them
  auto block = [&](int64_t b, int64_t i) -> const at::Tensor& { return weights[8 + 8 * b + i]; };
  const cpu::HeadPlan plan = cpu::head_plan(z, weights, D, schedule, /*concat_ada=*/true);
  const at::Tensor ada_wT = plan.ada_w.t();

  const auto opts = z.options();
  at::Tensor sy = at::empty({N, W}, opts), mod = at::empty({N, A}, opts), hid = at::empty({N, W}, opts);
  at::Tensor h = at::empty({N, W}, opts), a = at::empty({N, W}, opts), out = at::empty({N, 2 * C}, opts);
  at::Tensor noise = at::empty({N, C}, opts);
  kernels::DiffusionParams p{};
  p.N = int(N), p.M = int(M), p.W = int(W), p.C = int(C), p.A = int(A);
  p.cond = plan.cond.data_ptr<float>(), p.in_wT = plan.in_wT.data_ptr<float>(), p.in_b = weights[7].data_ptr<float>();
  p.ada_b = plan.ada_bias.data_ptr<float>(), p.final_b = block(D, 3).data_ptr<float>();
  p.sy = sy.data_ptr<float>(), p.mod = mod.data_ptr<float>(), p.hid = hid.data_ptr<float>();
  p.h = h.data_ptr<float>(), p.a = a.data_ptr<float>(), p.out = out.data_ptr<float>(), p.x = x.data_ptr<float>();
  p.noise = noise.data_ptr<float>();
  auto ln = [&](int64_t b, int64_t i) { return b < D ? block(b, i).data_ptr<float>() : nullptr; };
  const auto sch = schedule.accessor<double, 2>();
  const cudaStream_t stream = scope.stream();

  for (int64_t i = S - 1; i >= 0; --i) {
    check_launch(kernels::diffusion_silu_cond_launch(p, plan.t_emb.data_ptr<float>() + i * W, stream), op);
    at::mm_out(mod, sy, ada_wT);
    check_launch(kernels::diffusion_input_ln_launch(p, ln(0, 0), ln(0, 1), stream), op);
    for (int64_t b = 0; b < D; ++b) {
      at::mm_out(a, h, plan.mlp0T[b]);
      check_launch(kernels::diffusion_bias_silu_launch(p, block(b, 3).data_ptr<float>(), stream), op);
      at::mm_out(h, a, plan.mlp2T[b]);
      check_launch(kernels::diffusion_residual_ln_launch(p, int(b), block(b, 5).data_ptr<float>(), ln(b + 1, 0),
                                                         ln(b + 1, 1), stream), op);
    }
    at::mm_out(out, h, plan.final_wT);
    noise.normal_(0, 1, generator);  // (N, C) every step, as randn_like(x), of which the kept rows read the first M
    const kernels::DiffusionStep step{float(sch[i][1]), float(sch[i][2]), float(sch[i][3]), float(sch[i][4]),
                                      float(sch[i][5]), float(sch[i][6]), float(cfg),
                                      i != 0 ? float(temperature) : 0.f};
    check_launch(kernels::diffusion_update_launch(p, step, stream), op);
  }
  return x;
}

static std::tuple<at::Tensor, at::Tensor> diffusion_loss_device(const at::Tensor& model_output,
                                                                const at::Tensor& x_start, const at::Tensor& noise,
                                                                const at::Tensor& t, const at::Tensor& table) {
  const char* op = "diffusion_loss";
  check_diffusion_loss(model_output, x_start, noise, t, table, kDeviceType);
  TORCH_CHECK(x_start.size(1) <= INT32_MAX / 2, op, ": x_start has ", x_start.size(1), " channels, over the "
              "kernel's 2^30");
  DeviceScope scope(x_start);
  const at::Tensor out = model_output.contiguous(), x = x_start.contiguous(), n = noise.contiguous();
  const at::Tensor tt = t.contiguous();
  at::Tensor loss = at::empty({x.size(0)}, x.options()), grad = at::empty_like(out);  // (N,), (N, 2C)
  kernels::DiffusionLossParams p{};
  p.model_output = out.data_ptr(), p.x_start = x.data_ptr(), p.noise = n.data_ptr();
  p.t = tt.data_ptr<int64_t>(), p.table = table.data_ptr<double>(), p.loss = loss.data_ptr(), p.grad = grad.data_ptr();
  p.N = x.size(0), p.C = int(x.size(1)), p.dtype = kernel_dtype(x.scalar_type());
  check_launch(kernels::diffusion_loss_launch(p, scope.stream()), op);
  return {loss, grad};
}

}  // namespace fastar

TORCH_LIBRARY_IMPL(FASTAR_DEVICE_LIBRARY, FASTAR_DEVICE_KEY, m) {
  m.impl("diffusion_sample", &fastar::diffusion_sample_device);
  m.impl("diffusion_loss", &fastar::diffusion_loss_device);
}
