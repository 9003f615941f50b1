// transformer_decode: a stack of pre-norm transformer blocks (GPT-2 / DALL-E's: LayerNorm, qkv, attention over a KV
// cache under the layer's mask, proj, residual; LayerNorm, fc1, GELU, fc2, residual) decoding a few new tokens, the
// loop in C++ so that a decode step is one call, not ~15 Python-dispatched torch ops per layer. Every product runs
// fastar's linear and every attention fastar's attention_decode (of the namespace the registration serves: the
// device's kernels), the rest ATen. Shared by the CPU and device registrations.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/add.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/layer_norm.h>

#include <cmath>
#include <optional>
#include <string>
#include <vector>

namespace fastar {

constexpr int64_t kDecodeLayerWeights = 12;  // per layer, in this order (fastar/reference/transformer_decode.py)
constexpr const char* kDecodeWeightNames[kDecodeLayerWeights] = {
    "ln_1.weight", "ln_1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
    "ln_2.weight", "ln_2.bias", "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"};

// Layer i's weights w[0..12) for width C: shapes, dtypes (x's; the four products' weights may be bfloat16 under a
// float32 x) and device, each error naming layers[i][j].
inline void check_decode_layer(const at::Tensor* w, int64_t i, const at::Tensor& x) {
  const int64_t C = x.size(2), F = w[8].dim() == 2 ? w[8].size(0) : -1;
  const std::vector<std::vector<int64_t>> shapes = {{C}, {C}, {3 * C, C}, {3 * C}, {C, C}, {C}, {C}, {C}, {F, C}, {F},
                                                    {C, F}, {C}};
  for (int j = 0; j < kDecodeLayerWeights; ++j) {
    const at::Tensor& t = w[j];
    const bool product = j == 2 || j == 4 || j == 8 || j == 10;
    TORCH_CHECK(t.defined() && t.sizes() == at::IntArrayRef(shapes[j]), "transformer_decode: layers[", i, "][", j,
                "] (", kDecodeWeightNames[j], ") must be ", at::IntArrayRef(shapes[j]), ", got ",
                t.defined() ? t.sizes() : at::IntArrayRef{});
    TORCH_CHECK(t.scalar_type() == x.scalar_type() ||
                    (product && x.scalar_type() == at::kFloat && t.scalar_type() == at::kBFloat16),
                "transformer_decode: layers[", i, "][", j, "] (", kDecodeWeightNames[j], ") is ", t.scalar_type(),
                ", x is ", x.scalar_type(), product ? ": they must match, or float32 x with bfloat16 weights" : "");
    TORCH_CHECK(t.device() == x.device() && t.is_contiguous(), "transformer_decode: layers[", i, "][", j, "] (",
                kDecodeWeightNames[j], ") must be contiguous on ", x.device(), ", got ", t.device());
  }
}

// The kernels a decode step calls, looked up once in namespace `ns` (fastar or fastar_simt).
struct DecodeOps {
  using Linear = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&);
  using AttentionDecode = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                             int64_t, int64_t, at::IntArrayRef,
                                                             const std::optional<at::Tensor>&,
                                                             const std::optional<at::Tensor>&, double);
  c10::TypedOperatorHandle<Linear> linear;
  c10::TypedOperatorHandle<AttentionDecode> attention_decode;

  explicit DecodeOps(const std::string& ns)
      : linear(find(ns + "::linear").typed<Linear>()),
        attention_decode(find(ns + "::attention_decode").typed<AttentionDecode>()) {}

 private:
  static c10::OperatorHandle find(const std::string& name) {
    return c10::Dispatcher::singleton().findSchemaOrThrow(name.c_str(), "");
  }
};

// x (B, L, C) contiguous; weights kDecodeLayerWeights per layer; k_caches, v_caches (B, heads, Lmax, C / heads) per
// layer, positions cache_len .. cache_len + L - 1 written; mask_kinds one per layer, mask_ints three per layer
// (text_len, grid, conv_kernel) -> x after the stack (B, L, C).
inline at::Tensor transformer_decode(const DecodeOps& ops, const at::Tensor& x_in, at::TensorList weights,
                                     at::TensorList k_caches, at::TensorList v_caches, int64_t cache_len,
                                     at::IntArrayRef mask_kinds, at::IntArrayRef mask_ints, int64_t heads, double eps,
                                     c10::string_view approximate) {
  const char* op = "transformer_decode";
  const int64_t layers = int64_t(k_caches.size());
  TORCH_CHECK(x_in.dim() == 3, op, ": x must be (B, L, C), got ", x_in.sizes());
  TORCH_CHECK(x_in.scalar_type() == at::kFloat || x_in.scalar_type() == at::kDouble, op,
              ": x must be float32 or float64, got ", x_in.scalar_type());
  TORCH_CHECK(int64_t(weights.size()) == kDecodeLayerWeights * layers && int64_t(v_caches.size()) == layers &&
                  int64_t(mask_kinds.size()) == layers && int64_t(mask_ints.size()) == 3 * layers,
              op, ": ", layers, " k caches need as many v caches and mask kinds, ", kDecodeLayerWeights * layers,
              " weights and ", 3 * layers, " mask ints; got ", v_caches.size(), ", ", mask_kinds.size(), ", ",
              weights.size(), ", ", mask_ints.size());
  const int64_t B = x_in.size(0), L = x_in.size(1), C = x_in.size(2);
  TORCH_CHECK(heads > 0 && C % heads == 0, op, ": heads must divide C = ", C, ", got ", heads);
  const int64_t D = C / heads, R = B * L;
  const double scale = 1.0 / std::sqrt(double(D));
  at::Tensor x = x_in.contiguous();
  for (int64_t i = 0; i < layers; ++i) {
    const at::Tensor* w = weights.data() + kDecodeLayerWeights * i;
    check_decode_layer(w, i, x);
    const at::Tensor &kc = k_caches[i], &vc = v_caches[i];
    TORCH_CHECK(kc.dim() == 4 && kc.size(0) == B && kc.size(1) == heads && kc.size(3) == D && kc.sizes() == vc.sizes(),
                op, ": k_caches[", i, "] and v_caches[", i, "] must be (", B, ", ", heads, ", Lmax, ", D, "), got ",
                kc.sizes(), " and ", vc.sizes());
    TORCH_CHECK(kc.scalar_type() == x.scalar_type() && vc.scalar_type() == x.scalar_type() &&
                    kc.device() == x.device() && vc.device() == x.device(),
                op, ": k_caches[", i, "] and v_caches[", i, "] must be ", x.scalar_type(), " on ", x.device(),
                " as x, got ", kc.scalar_type(), " on ", kc.device(), " and ", vc.scalar_type(), " on ", vc.device());
    TORCH_CHECK(cache_len + L <= kc.size(2), op, ": cache_len + L = ", cache_len + L, " exceeds the ", kc.size(2),
                " positions of layer ", i, "'s caches");
    at::Tensor h = at::layer_norm(x, {C}, w[0], w[1], eps);
    const at::Tensor qkv = ops.linear.call(h.view({R, C}), w[2], w[3]).view({B, L, 3, heads, D});
    const at::Tensor q = qkv.select(2, 0).transpose(1, 2).contiguous();  // (B, heads, L, D)
    kc.narrow(2, cache_len, L).copy_(qkv.select(2, 1).transpose(1, 2));
    vc.narrow(2, cache_len, L).copy_(qkv.select(2, 2).transpose(1, 2));
    const at::Tensor o = std::get<0>(ops.attention_decode.call(q, kc, vc, cache_len + L, mask_kinds[i],
                                                               mask_ints.slice(3 * i, 3), std::nullopt, std::nullopt,
                                                               scale));
    x = at::add(x, ops.linear.call(o.transpose(1, 2).reshape({R, C}), w[4], w[5]).view({B, L, C}));
    h = at::layer_norm(x, {C}, w[6], w[7], eps);
    h = at::gelu(ops.linear.call(h.view({R, C}), w[8], w[9]), approximate);
    x = at::add(x, ops.linear.call(h, w[10], w[11]).view({B, L, C}));
  }
  return x;
}

}  // namespace fastar
