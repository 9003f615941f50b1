// transformer_decode: a stack of pre-norm transformer blocks (gpt2: GPT-2 / DALL-E's LayerNorm, qkv, attention over a
// KV cache under the layer's mask, proj, residual, LayerNorm, fc1, GELU, fc2, residual; llama: RMSNorm, RoPE and
// SwiGLU in their places, no biases) decoding a few new tokens, the loop in C++ so that a decode step is one call,
// not ~15-25 Python-dispatched torch ops per layer. Every product runs
// fastar's linear and every attention fastar's attention_decode (of the namespace the registration serves: the
// device's kernels), the rest ATen. Shared by the CPU and device registrations.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/ops/add.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/layer_norm.h>
#include <ATen/ops/mean.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/pow.h>
#include <ATen/ops/rsqrt.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/sub.h>

#include <cmath>
#include <optional>
#include <string>
#include <vector>

namespace fastar {

// The two block kinds and their tensors per layer, in this order (fastar/reference/transformer_decode.py BLOCKS):
// gpt2 (GPT-2's, DALL-E's, timm's pre-norm block): LayerNorm, qkv and proj with biases, a GELU MLP;
// llama (LlamaGen's, FractalGen's AR levels): RMSNorm, qkv and proj without biases, RoPE on q and k, a SwiGLU MLP.
constexpr const char* kGpt2Weights[] = {"ln_1.weight", "ln_1.bias", "attn.qkv.weight", "attn.qkv.bias",
                                        "attn.proj.weight", "attn.proj.bias", "ln_2.weight", "ln_2.bias",
                                        "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"};
constexpr const char* kLlamaWeights[] = {"attention_norm.weight", "attention.wqkv.weight", "attention.wo.weight",
                                         "ffn_norm.weight", "feed_forward.w1.weight", "feed_forward.w3.weight",
                                         "feed_forward.w2.weight"};

// Layer i's weights w[0..n) of block kind `llama` or not, for width C: shapes, dtypes (x's; the products' weights may
// be bfloat16 under a float32 x) and device, each error naming layers[i][j].
inline void check_decode_layer(const at::Tensor* w, int64_t i, const at::Tensor& x, bool llama) {
  const int64_t C = x.size(2), f = llama ? 4 : 8, F = w[f].dim() == 2 ? w[f].size(0) : -1;
  const std::vector<std::vector<int64_t>> shapes =
      llama ? std::vector<std::vector<int64_t>>{{C}, {3 * C, C}, {C, C}, {C}, {F, C}, {F, C}, {C, F}}
            : std::vector<std::vector<int64_t>>{{C}, {C}, {3 * C, C}, {3 * C}, {C, C}, {C}, {C}, {C}, {F, C}, {F},
                                                {C, F}, {C}};
  const char* const* names = llama ? kLlamaWeights : kGpt2Weights;
  for (size_t j = 0; j < shapes.size(); ++j) {
    const at::Tensor& t = w[j];
    const bool product = shapes[j].size() == 2;
    TORCH_CHECK(t.defined() && t.sizes() == at::IntArrayRef(shapes[j]), "transformer_decode: layers[", i, "][", j,
                "] (", names[j], ") must be ", at::IntArrayRef(shapes[j]), ", got ",
                t.defined() ? t.sizes() : at::IntArrayRef{});
    TORCH_CHECK(t.scalar_type() == x.scalar_type() ||
                    (product && x.scalar_type() == at::kFloat && t.scalar_type() == at::kBFloat16),
                "transformer_decode: layers[", i, "][", j, "] (", names[j], ") is ", t.scalar_type(), ", x is ",
                x.scalar_type(), product ? ": they must match, or float32 x with bfloat16 weights" : "");
    TORCH_CHECK(t.device() == x.device() && t.is_contiguous(), "transformer_decode: layers[", i, "][", j, "] (",
                names[j], ") must be contiguous on ", x.device(), ", got ", t.device());
  }
}

// RMSNorm as FractalGen's (LlamaGen's): x rsqrt(mean(x^2) + eps) w, in x's dtype.
inline at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, double eps) {
  return at::mul(at::mul(x, at::rsqrt(at::add(at::mean(at::pow(x, 2), {-1}, true), eps))), w);
}

// Interleaved pairs (t[2i], t[2i+1]) of each head of t (B, L, heads, D) turned by rope (L, D / 2, 2) [cos, sin].
inline at::Tensor rotate(const at::Tensor& t, const at::Tensor& rope) {
  const at::Tensor p = t.unflatten(-1, {-1, 2}), x0 = p.select(-1, 0), x1 = p.select(-1, 1);
  const at::Tensor c = rope.select(-1, 0).unsqueeze(1), s = rope.select(-1, 1).unsqueeze(1);  // (L, 1, D / 2)
  return at::stack({at::sub(at::mul(x0, c), at::mul(x1, s)), at::add(at::mul(x1, c), at::mul(x0, s))}, -1)
      .flatten(3);
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

// x (B, L, C) contiguous; weights per layer as `block` orders them (gpt2: 12, llama: 7); k_caches, v_caches
// (B, heads, Lmax, C / heads) per layer, x's dtype or (float32 x) bfloat16 / float16, positions cache_len ..
// cache_len + L - 1 written; mask_kinds one per layer, mask_ints three per layer (text_len, grid, conv_kernel); rope
// (L, D / 2, 2) for llama blocks (or none)
// -> x after the stack (B, L, C).
inline at::Tensor transformer_decode(const DecodeOps& ops, const at::Tensor& x_in, at::TensorList weights,
                                     at::TensorList k_caches, at::TensorList v_caches, int64_t cache_len,
                                     at::IntArrayRef mask_kinds, at::IntArrayRef mask_ints, int64_t heads, double eps,
                                     c10::string_view approximate, c10::string_view block,
                                     const std::optional<at::Tensor>& rope) {
  const char* op = "transformer_decode";
  TORCH_CHECK(block == "gpt2" || block == "llama", op, ": block must be 'gpt2' or 'llama', got '", block, "'");
  const bool llama = block == "llama";
  const int64_t n = llama ? 7 : 12, layers = int64_t(k_caches.size());
  TORCH_CHECK(x_in.dim() == 3, op, ": x must be (B, L, C), got ", x_in.sizes());
  TORCH_CHECK(x_in.scalar_type() == at::kFloat || x_in.scalar_type() == at::kDouble, op,
              ": x must be float32 or float64, got ", x_in.scalar_type());
  TORCH_CHECK(int64_t(weights.size()) == n * layers && int64_t(v_caches.size()) == layers &&
                  int64_t(mask_kinds.size()) == layers && int64_t(mask_ints.size()) == 3 * layers,
              op, ": ", layers, " k caches need as many v caches and mask kinds, ", n * layers, " weights and ",
              3 * layers, " mask ints; got ", v_caches.size(), ", ", mask_kinds.size(), ", ", weights.size(), ", ",
              mask_ints.size());
  const int64_t B = x_in.size(0), L = x_in.size(1), C = x_in.size(2);
  TORCH_CHECK(heads > 0 && C % heads == 0, op, ": heads must divide C = ", C, ", got ", heads);
  const int64_t D = C / heads, R = B * L;
  const bool rotary = rope.has_value() && rope->defined();
  TORCH_CHECK(!rotary || (llama && D % 2 == 0 && rope->dim() == 3 && rope->size(0) == L && rope->size(1) == D / 2 &&
                          rope->size(2) == 2 && rope->scalar_type() == x_in.scalar_type() &&
                          rope->device() == x_in.device()),
              op, ": rope must be (L, D / 2, 2) = (", L, ", ", D / 2, ", 2) ", x_in.scalar_type(), " on ",
              x_in.device(), " with llama blocks, got ", rotary ? rope->sizes() : at::IntArrayRef{});
  const double scale = 1.0 / std::sqrt(double(D));
  const std::optional<at::Tensor> none;
  // fastar's kernels below autograd: the op has no backward (fastar/ops/transformer_decode.py declines under
  // autograd), and their autograd layer is Python (torch.library.register_autograd): 48 round trips into Python per
  // DALL-E decode step otherwise. Only those calls: the caches' copy_ keeps its autograd layer, which counts the
  // caches' versions (a tensor saved for a backward and then overwritten here must still be caught).
  auto linear = [&](const at::Tensor& a, const at::Tensor& w, const std::optional<at::Tensor>& b) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    return ops.linear.call(a, w, b);
  };
  at::Tensor x = x_in.contiguous();
  for (int64_t i = 0; i < layers; ++i) {  // every layer checked before any cache is written
    check_decode_layer(weights.data() + n * i, i, x, llama);
    const at::Tensor &kc = k_caches[i], &vc = v_caches[i];
    TORCH_CHECK(kc.dim() == 4 && kc.size(0) == B && kc.size(1) == heads && kc.size(3) == D && kc.sizes() == vc.sizes(),
                op, ": k_caches[", i, "] and v_caches[", i, "] must be (", B, ", ", heads, ", Lmax, ", D, "), got ",
                kc.sizes(), " and ", vc.sizes());
    const auto c = kc.scalar_type();
    TORCH_CHECK((c == x.scalar_type() || (x.scalar_type() == at::kFloat && (c == at::kBFloat16 || c == at::kHalf))) &&
                    vc.scalar_type() == c && kc.device() == x.device() && vc.device() == x.device(),
                op, ": k_caches[", i, "] and v_caches[", i, "] must be ", x.scalar_type(),
                x.scalar_type() == at::kFloat ? " (or both bfloat16, or both float16)" : "", " on ", x.device(),
                " as x, got ", kc.scalar_type(), " on ", kc.device(), " and ", vc.scalar_type(), " on ", vc.device());
    TORCH_CHECK(cache_len + L <= kc.size(2), op, ": cache_len + L = ", cache_len + L, " exceeds the ", kc.size(2),
                " positions of layer ", i, "'s caches");
  }
  for (int64_t i = 0; i < layers; ++i) {
    const at::Tensor* w = weights.data() + n * i;
    const at::Tensor &kc = k_caches[i], &vc = v_caches[i];
    // attention: the normed x's q, k, v (B, L, heads, D); k, v into the caches, q (B, heads, L, D) to the kernel
    at::Tensor h = llama ? rms_norm(x, w[0], eps) : at::layer_norm(x, {C}, w[0], w[1], eps);
    const at::Tensor qkv = linear(h.view({R, C}), w[llama ? 1 : 2], llama ? none : w[3])
                               .view({B, L, 3, heads, D});
    at::Tensor q = qkv.select(2, 0), k = qkv.select(2, 1);
    if (rotary) q = rotate(q, *rope), k = rotate(k, *rope);
    kc.narrow(2, cache_len, L).copy_(k.transpose(1, 2));
    vc.narrow(2, cache_len, L).copy_(qkv.select(2, 2).transpose(1, 2));
    const at::Tensor o = [&] {
      const at::AutoDispatchBelowADInplaceOrView below_autograd;
      // 16-bit caches: the queries in the caches' dtype (a few rows), the output back in x's
      return std::get<0>(ops.attention_decode.call(q.transpose(1, 2).to(kc.scalar_type()).contiguous(), kc, vc,
                                                   cache_len + L, mask_kinds[i], mask_ints.slice(3 * i, 3),
                                                   std::nullopt, std::nullopt, scale))
          .to(x.scalar_type());
    }();
    const at::Tensor o2 = o.transpose(1, 2).reshape({R, C});
    x = at::add(x, (llama ? linear(o2, w[2], none) : linear(o2, w[4], w[5])).view({B, L, C}));
    // MLP
    if (llama) {
      h = rms_norm(x, w[3], eps).view({R, C});
      h = at::mul(at::silu(linear(h, w[4], none)), linear(h, w[5], none));
      x = at::add(x, linear(h, w[6], none).view({B, L, C}));
    } else {
      h = at::layer_norm(x, {C}, w[6], w[7], eps);
      h = at::gelu(linear(h.view({R, C}), w[8], w[9]), approximate);
      x = at::add(x, linear(h, w[10], w[11]).view({B, L, C}));
    }
  }
  return x;
}

}  // namespace fastar
