// The one list of fastar's op schemas. TORCH_LIBRARY(fastar) and the test-only
// TORCH_LIBRARY(fastar_simt) both call define_ops, so the backends cannot drift apart.
#pragma once
#include <torch/library.h>

namespace fastar {

inline void define_ops(torch::Library& m) {
  // x (N, D), codebook (K, D) -> indices (N,) int64, squared distances (N,) float32.
  m.def("vq_nearest(Tensor x, Tensor codebook, str metric) -> (Tensor, Tensor)");
  // VAR's multi-scale residual quantization; maps are (B, C, H, W) float32 in channels_last memory.
  // f_hat += h, f_rest -= h (skipped when h is None), then the nearest code of every cell of
  // area-down(f_rest, pn) -> indices (B, pn * pn) int64.
  m.def("msq_residual_search(Tensor(a!) f_hat, Tensor(b!) f_rest, Tensor? h, Tensor codebook, int pn) -> Tensor");
  // Per scale s, the codes codebook (V, C)[idx (B, sum pn_s^2)], or the rows src (B, sum pn_s^2, C) when idx is
  // None, bicubic-upsampled to H x H -> (S * B, C, H, H) channels_last, scale-major.
  m.def("msq_up(Tensor src, Tensor? idx, int[] patch_nums, int H) -> Tensor");
  // Per scale s: f_hat += h[s], then area-down(f_hat, patch_nums[s]) unless 0 -> rows (B, sum pn_s^2, C).
  m.def("msq_add_down(Tensor(a!) f_hat, Tensor[] h, int[] patch_nums) -> Tensor");
  // q (B, H, Lq, D), k and v (B, Hk, Lk, D) with H % Hk == 0; mask_kind a kernels::MaskKind (kernels/attention/mask.h),
  // mask_ints [text_len, grid, conv_kernel], kv_end (Lq,) int32 for block-causal, key_len (B,) int32 or None
  // -> out (B, H, Lq, D) like q, lse (B, H, Lq) float32 (-inf on rows that see no key).
  m.def("attention_fwd(Tensor q, Tensor k, Tensor v, int mask_kind, int[] mask_ints, Tensor? kv_end, "
        "Tensor? key_len, float scale) -> (Tensor out, Tensor lse)");
  // dout (B, H, Lq, D) and the forward's inputs and outputs -> dq like q, dk and dv like k and v.
  m.def("attention_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, int mask_kind, "
        "int[] mask_ints, Tensor? kv_end, Tensor? key_len, float scale) -> (Tensor dq, Tensor dk, Tensor dv)");
  // q (B, H, Lq, D) against the first cache_len keys of k_cache, v_cache (B, Hk, Lmax, D), the queries the last
  // Lq of them; the mask as attention_fwd's (kv_end over the cache_len keys) -> out like q, lse (B, H, Lq) float32.
  m.def("attention_decode(Tensor q, Tensor k_cache, Tensor v_cache, int cache_len, int mask_kind, int[] mask_ints, "
        "Tensor? kv_end, Tensor? key_len, float scale) -> (Tensor out, Tensor lse)");
  // HiT's multi-axis attention: q (B, H, W, heads, D), k and v (B, H, W, heads_kv, D), heads_kv 1 or an even divisor
  // of heads; the first half of the heads attends inside each block_size x block_size block (regional), the second
  // half among the pixels at one offset of every block (dilated) -> out (B, H, W, heads, D) like q,
  // lse (B, H, W, heads) float32 (float64 for float64 inputs).
  m.def("multi_axis_attention_fwd(Tensor q, Tensor k, Tensor v, int block_size, float scale) -> (Tensor out, Tensor lse)");
  // dout (B, H, W, heads, D) and the forward's inputs and outputs -> dq like q, dk and dv like k and v.
  m.def("multi_axis_attention_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, int block_size, "
        "float scale) -> (Tensor dq, Tensor dk, Tensor dv)");
  // MAR's diffusion-head p_sample_loop: z (N, Z), the head's weights in head_shapes order, schedule (S, 7) float64
  // (fastar/reference/diffusion.py) -> tokens (N, C), or the conditional half (N/2, C) when cfg != 1.
  // bf16: the per-step GEMMs in bfloat16 with float32 accumulation.
  m.def("diffusion_sample(Tensor z, Tensor[] weights, Tensor schedule, float temperature, float cfg, "
        "Generator? generator, bool bf16=False) -> Tensor", {at::Tag::nondeterministic_seeded});
  // logits (R, V), race (R, V) float32 Exp(1) draws (on the CPU also int64: the generator's words, made into
  // those draws as torch's exponential_ makes them, fastar/reference/sampling.py exponentials): one draw per row from softmax(logits / temperature) after
  // min_prob, top_k, top_p, the kept token with the largest p / race (fastar/reference/sampling.py) -> indices (R,)
  // int64, -1 on rows without a finite logit.
  m.def("sample_categorical(Tensor logits, Tensor race, float temperature, int top_k, float top_p, "
        "float min_prob) -> Tensor");
  // MAR's DiffLoss training loss: model_output (N, 2C) [eps, v], x_start, noise (N, C), t (N,) int64, table
  // (1000, 8) float64 (fastar/reference/diffusion.py loss_table), all on one device -> loss (N,),
  // d loss / d model_output (N, 2C).
  m.def("diffusion_loss(Tensor model_output, Tensor x_start, Tensor noise, Tensor t, Tensor table) "
        "-> (Tensor loss, Tensor grad_output)");
  // x contiguous -> x with the elements Philox4x32-10 drops under seed zeroed, the others times 1 / (1 - p)
  // (fastar/reference/dropout.py; one mask on every device). Its own backward with the same seed.
  m.def("dropout(Tensor x, int seed, float p) -> Tensor");
  // x (B, C, H, W) contiguous, H and W >= 2 -> (B, C, H / 2, W / 2): BlurPool2D, the [1, 3, 3, 1] / 8 binomial in
  // both directions on x zero padded by 1, at stride 2 (fastar/reference/blur_pool.py). blur_pool_backward: its
  // adjoint, grad (B, C, height / 2, width / 2) -> (B, C, height, width); each is the other's backward.
  m.def("blur_pool(Tensor x) -> Tensor");
  m.def("blur_pool_backward(Tensor grad, int height, int width) -> Tensor");
  // x (M, K), weight (N, K), bias (N,) or None, contiguous, float32 / float64 (bfloat16 weights with float32 x)
  // -> x weight^T + bias (M, N) in x's dtype: kernels for few rows (decoding), each weight row read once per 4 rows.
  m.def("linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  // grad (M, N), x (M, K) float32, each with a unit stride -> grad^T x (N, K): a Linear's weight gradient, on the CPU
  // by the float32 GEMM library blas::fp32_gemm_library() names (oneDNN's matmul reading grad transposed in place).
  m.def("linear_weight_grad(Tensor grad, Tensor x) -> Tensor");
  // A stride-1, padding-1 3x3 convolution by Winograd F(2x2, 3x3) (cpu/conv_isa.h), float32 contiguous: weight
  // (C_out, C_in, 3, 3) -> u (16, ceil(C_out / 12), C_in, 12), its transform; x (B, C_in, H, W), u, bias (c_out,) or
  // None -> (B, c_out, H, W).
  m.def("conv3x3_weights(Tensor weight) -> Tensor");
  m.def("conv3x3(Tensor x, Tensor u, Tensor? bias, int c_out) -> Tensor");
  // x (N, C), w1 (Hd, C), b1 (Hd,), w2 (Co, Hd), b2 (Co,), residual (N, Co) or None, float32, rows of x and residual
  // at any stride -> [residual +] act(x w1^T + b1) w2^T + b2 (N, Co), act the exact GELU or, with softmax_group g > 0,
  // a softmax over each g hidden units (cpu/mlp_isa.h): the hidden activations stay in cache. mlp.out writes into
  // out (N, Co) with unit column stride, which may be x or residual itself (the same rows: a block of rows is read
  // before it is written), else must not overlap them.
  m.def("mlp(Tensor x, Tensor w1, Tensor b1, Tensor w2, Tensor b2, Tensor? residual, int softmax_group=0) -> Tensor");
  m.def("mlp.out(Tensor x, Tensor w1, Tensor b1, Tensor w2, Tensor b2, Tensor? residual, int softmax_group=0, *, "
        "Tensor(a!) out) -> ()");
  // x float32, any shape and strides -> (gelu(x), gelu'(x)), contiguous: the exact GELU, or its tanh approximation
  // with approximate "tanh" (cpu/mlp_isa.h): a GELU under autograd saves d for its backward, dy d.
  m.def("gelu_with_derivative(Tensor x, str approximate='none') -> (Tensor, Tensor)");
  // A stack of pre-norm transformer blocks decoding new tokens (torch/transformer_decode.h): x (B, L, C), weights per
  // layer as block ("gpt2": 12, "llama": 7) orders them (fastar/reference/transformer_decode.py BLOCKS), k_caches,
  // v_caches (B, heads, Lmax, C / heads) per layer, written at cache_len .. cache_len + L - 1; one mask kind and three
  // mask ints per layer; rope (L, D / 2, 2) for llama blocks or None -> x (B, L, C).
  m.def("transformer_decode(Tensor x, Tensor[] weights, Tensor(a!)[] k_caches, Tensor(b!)[] v_caches, int cache_len, "
        "int[] mask_kinds, int[] mask_ints, int heads, float eps, str approximate, str block, Tensor? rope) -> Tensor");
}

}  // namespace fastar
