// CUDA (and simt) registrations of the attention family: shared checks, then the params struct of the kernels.
#include "kernels/attention/attention.h"
#include "kernels/attention/attention_tiny.h"
#include "torch/attention.h"
#include "torch/device.h"

#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <atomic>

namespace fastar {
namespace {

// Copies of q, k, v (or of dout, out) the glue made for the kernels (padding, alignment, layout); the simt build
// exports it so a test sees that decode reads its cache in place.
std::atomic<int64_t> operand_copies{0};

// Contiguous and 16-byte aligned: .contiguous() alone keeps a contiguous view at a storage offset that breaks
// the alignment (x[1:] of a flat buffer), where the kernels' 16-byte loads fault.
at::Tensor contiguous_aligned(const at::Tensor& t) {
  at::Tensor c = t.contiguous();
  if (!c.is_same(t)) ++operand_copies;
  if (reinterpret_cast<uintptr_t>(c.data_ptr()) % 16 == 0) return c;
  ++operand_copies;
  return c.clone();
}

// The kernels read 16-byte vectors: last dim contiguous and every row 16-byte aligned, else an aligned copy.
at::Tensor rows_aligned(const at::Tensor& t) {
  const int64_t bytes = t.element_size();
  const bool ok = t.stride(3) == 1 && t.stride(2) * bytes % 16 == 0 && t.stride(1) * bytes % 16 == 0 &&
                  t.stride(0) * bytes % 16 == 0 && reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
  return ok ? t : contiguous_aligned(t);
}

void check_device_ints(const char* op, const std::optional<at::Tensor>& t, const char* name, const at::Tensor& q) {
  TORCH_CHECK(!t || t->device() == q.device(), op, ": ", name, " is on ", t ? t->device() : q.device(),
              " but q is on ", q.device());
}

// The kernels are built for kernels::kAttentionHeadDims; others run zero-padded to the next one (zeros change no
// dot product and give zero output columns, sliced off).
int64_t kernel_dim(const char* op, int64_t D) {
  TORCH_CHECK(D <= kernels::kAttentionCudaMaxHeadDim, op, ": the CUDA kernels take head dims up to ",
              kernels::kAttentionCudaMaxHeadDim, ", got ", D);
  for (const int built : kernels::kAttentionHeadDims)
    if (D <= built) return built;
  return kernels::kAttentionCudaMaxHeadDim;
}

at::Tensor pad_dim(const at::Tensor& t, int64_t D) {
  if (t.size(3) == D) return t;
  ++operand_copies;
  return at::constant_pad_nd(t, {0, D - t.size(3)});
}

// Last dim contiguous, as every kernel reads it (a copy only for a cache whose head dim is strided).
at::Tensor unit_last_stride(const at::Tensor& t) {
  if (t.stride(3) == 1 || t.size(3) == 1) return t;
  ++operand_copies;
  return t.contiguous();
}
at::Tensor unpad_dim(const at::Tensor& t, int64_t D) { return t.size(3) == D ? t : t.narrow(3, 0, D).contiguous(); }

// The params shared by forward, backward and decode, for kernels built for head dim D; q, k, v padded to D and
// rows_aligned, or (decode) of any head dim <= D and alignment. Fills everything but the outputs and workspace.
kernels::AttentionParams params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t Lk, int64_t D,
                                const kernels::MaskParams& mask, double scale) {
  kernels::AttentionParams p{};
  p.q = q.data_ptr(), p.k = k.data_ptr(), p.v = v.data_ptr();
  for (int i = 0; i < 3; ++i) p.q_strides[i] = q.stride(i), p.k_strides[i] = k.stride(i), p.v_strides[i] = v.stride(i);
  p.B = int(q.size(0)), p.H = int(q.size(1)), p.Hk = int(k.size(1)), p.Lq = int(q.size(2)), p.Lk = int(Lk);
  p.D = int(D), p.D_in = int(q.size(3)), p.scale = float(scale), p.dtype = kernel_dtype(q.scalar_type());
  p.mask = mask;
  p.sm_count = sm_count(q);
  return p;
}

at::Tensor workspace(size_t bytes, const at::Tensor& like) {
  return at::empty({int64_t(bytes)}, like.options().dtype(at::kByte));
}

// in_place (decode): the tiled kernel reads q, k, v as they are, any head dim up to the kernel's and any row
// alignment (kernels/tile.cuh load_tile_cols), so a decode step copies none of its cache; the tiny kernel and the
// forward take them padded and aligned.
std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                                           int64_t Lk, const kernels::MaskParams& mask, double scale, const char* op,
                                           bool in_place) {
  DeviceScope scope(q_in);
  const int64_t D = kernel_dim(op, q_in.size(3));
  kernels::AttentionParams sizes{};
  sizes.Lq = int(q_in.size(2)), sizes.Lk = int(Lk), sizes.D = int(D);
  const bool tiny = kernels::attention_tiny_takes(sizes);  // FractalGen's tiny sequences: kernels/attention_tiny.h
  const bool direct = in_place && !tiny;
  const at::Tensor q = direct ? unit_last_stride(q_in) : rows_aligned(pad_dim(q_in, D));
  const at::Tensor k = direct ? unit_last_stride(k_in) : rows_aligned(pad_dim(k_in, D));
  const at::Tensor v = direct ? unit_last_stride(v_in) : rows_aligned(pad_dim(v_in, D));
  const auto BHL = q.sizes().slice(0, 3);
  at::Tensor out = at::empty({BHL[0], BHL[1], BHL[2], D}, q.options());  // (B, H, Lq, D)
  at::Tensor lse = at::empty(BHL, q.options().dtype(at::kFloat));        // (B, H, Lq)
  kernels::AttentionParams p = params(q, k, v, Lk, D, mask, scale);
  p.out = out.data_ptr(), p.lse = lse.data_ptr<float>();
  const at::Tensor ws = workspace(tiny ? 0 : kernels::attention_fwd_workspace_bytes(p), q);
  p.workspace = ws.data_ptr();
  check_launch(tiny ? kernels::attention_tiny_fwd_launch(p, scope.stream())
                    : kernels::attention_fwd_launch(p, scope.stream()), op);
  return {unpad_dim(out, q_in.size(3)), lse};
}

std::tuple<at::Tensor, at::Tensor> attention_fwd_device(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                        int64_t mask_kind, at::IntArrayRef mask_ints,
                                                        const std::optional<at::Tensor>& kv_end,
                                                        const std::optional<at::Tensor>& key_len, double scale) {
  check_attention_qkv("attention_fwd", q, k, v, kDeviceType, false);
  check_device_ints("attention_fwd", kv_end, "kv_end", q), check_device_ints("attention_fwd", key_len, "key_len", q);
  const auto mask = attention_mask("attention_fwd", mask_kind, mask_ints, kv_end, key_len, q.size(0), q.size(2));
  return forward(q, k, v, k.size(2), mask, scale, "attention_fwd", false);
}

std::tuple<at::Tensor, at::Tensor> attention_decode_device(const at::Tensor& q, const at::Tensor& k_cache,
                                                           const at::Tensor& v_cache, int64_t cache_len,
                                                           int64_t mask_kind, at::IntArrayRef mask_ints,
                                                           const std::optional<at::Tensor>& kv_end,
                                                           const std::optional<at::Tensor>& key_len, double scale) {
  check_attention_qkv("attention_decode", q, k_cache, v_cache, kDeviceType, false);
  check_attention_decode(q, k_cache, cache_len, mask_kind);
  check_device_ints("attention_decode", kv_end, "kv_end", q);
  check_device_ints("attention_decode", key_len, "key_len", q);
  const auto mask = attention_mask("attention_decode", mask_kind, mask_ints, kv_end, key_len, q.size(0), q.size(2));
  // Only the first cache_len rows are read, in place through the cache's strides, whatever its head dim and
  // alignment: no copy of the cache; the tile flags of the mask skip every key tile the new queries do not see.
  return forward(q, k_cache, v_cache, cache_len, mask, scale, "attention_decode", true);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_bwd_device(
    const at::Tensor& dout, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& out, const at::Tensor& lse, int64_t mask_kind, at::IntArrayRef mask_ints,
    const std::optional<at::Tensor>& kv_end, const std::optional<at::Tensor>& key_len, double scale) {
  check_attention_qkv("attention_bwd", q_in, k_in, v_in, kDeviceType, false);
  check_attention_bwd(dout, q_in, out, lse);
  check_device_ints("attention_bwd", kv_end, "kv_end", q_in);
  check_device_ints("attention_bwd", key_len, "key_len", q_in);
  const auto mask = attention_mask("attention_bwd", mask_kind, mask_ints, kv_end, key_len, q_in.size(0),
                                   q_in.size(2));
  DeviceScope scope(q_in);
  const int64_t B = q_in.size(0), H = q_in.size(1), Hk = k_in.size(1), Lk = k_in.size(2), D_in = q_in.size(3);
  const int64_t D = kernel_dim("attention_bwd", D_in);
  kernels::AttentionBwdParams p{};
  p.dtype = kernel_dtype(q_in.scalar_type()), p.D = int(D), p.Lq = int(q_in.size(2)), p.Lk = int(Lk);
  p.max_smem = max_smem_per_block(q_in);
  const std::string unsupported = kernels::attention_bwd_unsupported(p);  // before any copy or allocation
  TORCH_CHECK(unsupported.empty(), "attention_bwd: ", unsupported);
  // The backward indexes q, out, dout, lse as contiguous (B, H, L, ...) rows.
  const at::Tensor q = contiguous_aligned(pad_dim(q_in, D)), k = rows_aligned(pad_dim(k_in, D));
  const at::Tensor v = rows_aligned(pad_dim(v_in, D)), out_c = pad_dim(out, D).contiguous();
  const at::Tensor dout_c = contiguous_aligned(pad_dim(dout.to(q.scalar_type()), D));
  const at::Tensor lse_c = lse.to(at::kFloat).contiguous();
  const bool grouped = H != Hk;  // dk, dv per query head in fp32, summed over each group below
  const auto dkv_options = grouped ? q.options().dtype(at::kFloat) : q.options();
  at::Tensor dq = at::empty(q.sizes(), q.options());                 // (B, H, Lq, D)
  at::Tensor dk = at::empty({B, H, Lk, D}, dkv_options);            // (B, H, Lk, D)
  at::Tensor dv = at::empty({B, H, Lk, D}, dkv_options);            // (B, H, Lk, D)
  static_cast<kernels::AttentionParams&>(p) = params(q, k, v, Lk, D, mask, scale);
  p.out = const_cast<void*>(out_c.data_ptr()), p.lse = lse_c.data_ptr<float>();
  p.dout = dout_c.data_ptr(), p.dq = dq.data_ptr(), p.dk = dk.data_ptr(), p.dv = dv.data_ptr();
  p.dkv_float = grouped;
  const bool tiny = kernels::attention_tiny_takes(p);
  if (!tiny) alert_not_deterministic("fastar::attention_bwd (dq is added by fp32 atomics across key blocks)");
  const at::Tensor ws = workspace(tiny ? kernels::attention_tiny_bwd_workspace_bytes(p)
                                       : kernels::attention_bwd_workspace_bytes(p), q);
  p.workspace = ws.data_ptr();
  check_launch(tiny ? kernels::attention_tiny_bwd_launch(p, scope.stream())
                    : kernels::attention_bwd_launch(p, scope.stream()), "attention_bwd");
  if (grouped) {  // (B, Hk, H / Hk, Lk, D) -> (B, Hk, Lk, D)
    dk = dk.view({B, Hk, H / Hk, Lk, D}).sum(2).to(q.scalar_type());
    dv = dv.view({B, Hk, H / Hk, Lk, D}).sum(2).to(q.scalar_type());
  }
  return {unpad_dim(dq, D_in), unpad_dim(dk, D_in), unpad_dim(dv, D_in)};
}

}  // namespace

int64_t attention_operand_copies() { return operand_copies.load(); }

}  // namespace fastar

TORCH_LIBRARY_IMPL(FASTAR_DEVICE_LIBRARY, FASTAR_DEVICE_KEY, m) {
  m.impl("attention_fwd", &fastar::attention_fwd_device);
  m.impl("attention_bwd", &fastar::attention_bwd_device);
  m.impl("attention_decode", &fastar::attention_decode_device);
}
