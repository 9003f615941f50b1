// The tiny-sequence CPU attention's ATen side: operands, outputs, and sequences split over threads.
#include "cpu/attention_tiny.h"

#include <ATen/Parallel.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>

#include <cstdint>
#include <type_traits>
#include <vector>

#include "cpu/huge_blocks.h"
#include "cpu/isa.h"

namespace fastar::cpu {
namespace {

// Sequences per task at least: each is a few microseconds, so small grains only add scheduling.
constexpr int64_t kGrain = 16;

template <class T>
const AttentionTinyKernels<T>& micro() {
  if constexpr (std::is_same_v<T, float>) return isa().attention_tiny->f32;
  else return isa().attention_tiny->f64;
}

template <class T>
TinyHeads<T> heads(const at::Tensor& t) {  // a single row's stride is arbitrary: D is a valid one
  return {t.data_ptr<T>(), t.stride(0), t.stride(1), t.size(2) == 1 ? t.size(3) : t.stride(2)};
}

TinyDims dims(const at::Tensor& q, const at::Tensor& k) {
  return {q.size(0), q.size(1), k.size(1), int(q.size(2)), int(k.size(2)), int(q.size(3))};
}

}  // namespace

bool attention_tiny_takes(int64_t Lq, int64_t Lk, int64_t D) {
  return Lq >= 1 && Lq <= kTinyMaxLen && Lk >= 1 && Lk <= kTinyMaxLen && D <= kTinyMaxDim;
}

int64_t attention_tiny_query_chunk(int64_t Lq, int64_t Lk, int64_t D) {
  if (Lq <= kTinyMaxLen || !attention_tiny_takes(kTinyMaxLen, Lk, D)) return 0;
  for (int64_t c = kTinyMaxLen; c >= 8; --c)
    if (Lq % c == 0) return c;
  return 0;
}

std::tuple<at::Tensor, at::Tensor> attention_tiny_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                      const kernels::MaskParams& mask, double scale) {
  const TinyDims d = dims(q, k);
  at::Tensor out = empty_huge({d.B, d.H, d.Lq, d.D}, q.options());  // (B, H, Lq, D)
  at::Tensor lse = at::empty({d.B, d.H, d.Lq}, q.options());       // (B, H, Lq)
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "attention_tiny_fwd", [&] {
    const auto q_ = heads<scalar_t>(q), k_ = heads<scalar_t>(k), v_ = heads<scalar_t>(v);
    scalar_t *o = out.data_ptr<scalar_t>(), *l = lse.data_ptr<scalar_t>();
    at::parallel_for(0, d.B * d.H, kGrain, [&](int64_t bh0, int64_t bh1) {
      micro<scalar_t>().forward(q_, k_, v_, d, mask, scalar_t(scale), bh0, bh1, o, l);
    });
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_tiny_bwd(const at::Tensor& dout, const at::Tensor& q,
                                                                  const at::Tensor& k, const at::Tensor& v,
                                                                  const kernels::MaskParams& mask, double scale) {
  const TinyDims d = dims(q, k);
  const auto grads = empty_huge_parts({{d.B, d.H, d.Lq, d.D}, {d.B, d.H, d.Lk, d.D}, {d.B, d.H, d.Lk, d.D}},
                                      q.options());
  const at::Tensor &dq = grads[0], &dk = grads[1], &dv = grads[2];  // (B, H, Lq, D); (B, H, Lk, D) per query head
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "attention_tiny_bwd", [&] {
    const auto q_ = heads<scalar_t>(q), k_ = heads<scalar_t>(k), v_ = heads<scalar_t>(v);
    const scalar_t* dO = dout.data_ptr<scalar_t>();
    scalar_t *dq_ = dq.data_ptr<scalar_t>(), *dk_ = dk.data_ptr<scalar_t>(), *dv_ = dv.data_ptr<scalar_t>();
    at::parallel_for(0, d.B * d.H, kGrain, [&](int64_t bh0, int64_t bh1) {
      micro<scalar_t>().backward(q_, k_, v_, dO, d, mask, scalar_t(scale), bh0, bh1, dq_, dk_, dv_);
    });
  });
  return {dq, dk, dv};
}

}  // namespace fastar::cpu
