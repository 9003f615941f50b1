// CUDA (and simt) registrations of the multi_axis family: shared checks, then the params struct of the kernels.
// The glue does the element-wise parts of the backward (the fp32 dq buffer, the sum of dk and dv over the query heads
// of each key head) in ATen; delta is the launch's (kernels/multi_axis/multi_axis.cu).
#include "kernels/multi_axis/capabilities.h"
#include "kernels/multi_axis/multi_axis.h"
#include "torch/device.h"
#include "torch/multi_axis.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <iterator>

namespace fastar {
namespace {

// The kernels read 16-byte vectors: last dim contiguous and every head of every pixel 16-byte aligned, else a copy.
at::Tensor heads_aligned(const at::Tensor& t) {
  const int64_t bytes = t.element_size();
  bool ok = t.stride(4) == 1 && reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
  for (int d = 0; d < 4; ++d) ok = ok && t.stride(d) * bytes % 16 == 0;
  return ok ? t : t.contiguous();
}

void check_head_dim(const char* op, int64_t D) {
  const auto* dims = std::begin(kernels::kMultiAxisHeadDims);
  TORCH_CHECK(std::find(dims, std::end(kernels::kMultiAxisHeadDims), D) != std::end(kernels::kMultiAxisHeadDims),
              op, ": the CUDA kernels take head dims 32 and 64 (kMultiAxisHeadDims), got ", D);
}

kernels::MultiAxisParams params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t block_size,
                                double scale) {
  kernels::MultiAxisParams p{};
  p.q = q.data_ptr(), p.k = k.data_ptr(), p.v = v.data_ptr();
  for (int i = 0; i < 4; ++i) p.q_strides[i] = q.stride(i), p.k_strides[i] = k.stride(i), p.v_strides[i] = v.stride(i);
  p.B = int(q.size(0)), p.heads = int(q.size(3)), p.hk = int(k.size(3)), p.D = int(q.size(4));
  p.geo = {int(q.size(1)), int(q.size(2)), int(block_size)};
  p.scale = float(scale), p.dtype = kernel_dtype(q.scalar_type());
  return p;
}

std::tuple<at::Tensor, at::Tensor> multi_axis_attention_fwd_device(const at::Tensor& q_in, const at::Tensor& k_in,
                                                                   const at::Tensor& v_in, int64_t block_size,
                                                                   double scale) {
  const char* op = "multi_axis_attention_fwd";
  check_multi_axis(op, q_in, k_in, v_in, block_size, kDeviceType, false);
  check_head_dim(op, q_in.size(4));
  DeviceScope scope(q_in);
  const at::Tensor q = heads_aligned(q_in), k = heads_aligned(k_in), v = heads_aligned(v_in);
  at::Tensor out = at::empty(q.sizes(), q.options());                                   // (B, H, W, heads, D)
  at::Tensor lse = at::empty(q.sizes().slice(0, 4), q.options().dtype(at::kFloat));     // (B, H, W, heads)
  kernels::MultiAxisParams p = params(q, k, v, block_size, scale);
  p.out = out.data_ptr(), p.lse = lse.data_ptr<float>();
  check_launch(kernels::multi_axis_attention_fwd_launch(p, scope.stream()), op);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> multi_axis_attention_bwd_device(
    const at::Tensor& dout, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& out, const at::Tensor& lse, int64_t block_size, double scale) {
  const char* op = "multi_axis_attention_bwd";
  check_multi_axis(op, q_in, k_in, v_in, block_size, kDeviceType, false);
  check_multi_axis_bwd(dout, q_in, out, lse);
  check_head_dim(op, q_in.size(4));
  alert_not_deterministic("fastar::multi_axis_attention_bwd (dq is added by fp32 atomics across key tiles)");
  DeviceScope scope(q_in);
  const at::Tensor q = heads_aligned(q_in), k = heads_aligned(k_in), v = heads_aligned(v_in);
  const at::Tensor dout_c = heads_aligned(dout.to(q.scalar_type())), lse_c = lse.to(at::kFloat).contiguous();
  const at::Tensor out_c = out.to(q.scalar_type()).contiguous();
  const auto f32 = q.options().dtype(at::kFloat);
  at::Tensor delta = at::empty(q.sizes().slice(0, 4), f32);  // (B, H, W, heads): rowsum(dout * out), by the launch
  at::Tensor dq = at::zeros(q.sizes(), f32);   // (B, H, W, heads, D), added to by the kernel
  at::Tensor dk = at::empty(q.sizes(), f32);   // (B, H, W, heads, D) per query head
  at::Tensor dv = at::empty(q.sizes(), f32);
  kernels::MultiAxisBwdParams p{};
  static_cast<kernels::MultiAxisParams&>(p) = params(q, k, v, block_size, scale);
  p.out = out_c.data_ptr(), p.lse = lse_c.data_ptr<float>(), p.dout = dout_c.data_ptr();
  p.delta = delta.data_ptr<float>();
  for (int i = 0; i < 4; ++i) p.dout_strides[i] = dout_c.stride(i);
  p.dq = dq.data_ptr<float>(), p.dk = dk.data_ptr<float>(), p.dv = dv.data_ptr<float>();
  check_launch(kernels::multi_axis_attention_bwd_launch(p, scope.stream()), op);
  const int64_t hk = k.size(3), group = q.size(3) / hk;
  auto per_key_head = [&](const at::Tensor& d) {  // (B, H, W, hk, group, D) -> (B, H, W, hk, D)
    return d.view({q.size(0), q.size(1), q.size(2), hk, group, q.size(4)}).sum(4).to(q.scalar_type());
  };
  return {dq.to(q.scalar_type()), per_key_head(dk), per_key_head(dv)};
}

}  // namespace
}  // namespace fastar

TORCH_LIBRARY_IMPL(FASTAR_DEVICE_LIBRARY, FASTAR_DEVICE_KEY, m) {
  m.impl("multi_axis_attention_fwd", &fastar::multi_axis_attention_fwd_device);
  m.impl("multi_axis_attention_bwd", &fastar::multi_axis_attention_bwd_device);
}
