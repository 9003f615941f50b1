// Multi-axis blocked attention on the CPU (HiT, Zhao et al. 2021), straight from the image layout: one work item is
// one group of one axis (a b x b block for the regional heads, one offset of every block for the dilated heads) and
// one key head, with the query rows of every head that shares the key head (HiT's multi-query K/V: all the heads of
// the axis) stacked. The items run on the per-ISA micro-kernels of cpu/multi_axis_isa.h, which read every row in
// place; this file lays out the items of each axis and splits them over the threads by their cost.
#include "cpu/multi_axis.h"

#include <ATen/Parallel.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "cpu/isa.h"
#include "kernels/multi_axis/geometry.h"

namespace fastar::cpu {
namespace {

using kernels::MultiAxisGeometry;

template <class T>
const MultiAxisKernels<T>& micro() {
  if constexpr (std::is_same_v<T, float>) return isa().multi_axis->f32;
  else return isa().multi_axis->f64;
}

template <class T>
MultiAxisImage<T> image(const at::Tensor& t) {
  return {t.data_ptr<T>(), t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}
template <class T>
MultiAxisImage<const T> cimage(const at::Tensor& t) {
  return {t.data_ptr<T>(), t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// The compute dtype of an input, read in place when its last dim is unit-stride (any other strides: the kernels
// follow them), else a copy.
at::Tensor operand(const at::Tensor& t, at::ScalarType dtype) {
  at::Tensor r = t.to(dtype);
  return r.stride(4) == 1 || r.size(4) == 1 ? r : r.contiguous();
}

at::ScalarType compute_dtype(const at::Tensor& q) { return q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

// Operands read (q, k, v) of this size and more are prefetched item by item (cpu/multi_axis_isa.cpp); smaller ones
// come from L2 / L3, where the prefetch instructions only cost (Zen 4, 2 threads, diagnostic A/B in one process:
// HiT-256's 16 x 16 stage, 5 MB at B 8, 8% slower with them; 32 x 32, 13 MB, 4% faster).
constexpr int64_t kPrefetchBytes = int64_t(8) << 20;

// The items of one axis and the pixel tables they read: token t of group g at pixel(axis, g, 0) + pixel(axis, 0, t)
// (geometry.h: a group's origin plus a token's offset, on either axis). Head h of q reads key head h / (heads /
// heads_kv); with one key head (multi-query) it serves both axes, else each axis has half of the key heads.
struct Axis {
  std::vector<int> group_y, group_x, token_y, token_x;
  MultiAxisItems items;
  int64_t cost;  // of one item, in units of the thread split: query rows x keys

  Axis(const at::Tensor& q, const at::Tensor& k, int64_t block_size, int axis) {
    const MultiAxisGeometry geo{int(q.size(1)), int(q.size(2)), int(block_size)};
    const int heads = int(q.size(3)), hk = int(k.size(3)), groups = geo.groups(axis), n = geo.tokens(axis);
    group_y.resize(groups), group_x.resize(groups), token_y.resize(n), token_x.resize(n);
    for (int g = 0; g < groups; ++g) geo.pixel(axis, g, 0, group_y[g], group_x[g]);
    for (int t = 0; t < n; ++t) geo.pixel(axis, 0, t, token_y[t], token_x[t]);
    const int kv_heads = hk == 1 ? 1 : hk / 2;
    int rows, cols, step;
    geo.token_grid(axis, rows, cols, step);
    items = {q.size(0), groups, n, int(q.size(4)), kv_heads, hk == 1 ? 0 : axis * hk / 2, heads / 2 / kv_heads,
             axis * heads / 2, group_y.data(), group_x.data(), token_y.data(), token_x.data(), rows, cols, step,
             (q.numel() + 2 * k.numel()) * q.element_size() >= kPrefetchBytes};
    cost = int64_t(items.q_per_kv) * n * (n + 8);
  }
};

// f(axis, i0, i1, scratch) over the items of the given axes, split over the threads in equal shares of cost (the
// axes' items differ in cost by their token counts), each thread with its scratch. The items go batch row by batch
// row, every axis's items of a row before the next row: the axes of one image read the same K and V rows (one key
// head serves both), which the second axis then finds in cache.
template <class T, class F>
void for_items(const std::vector<const Axis*>& axes, F f) {
  const int64_t B = axes[0]->items.B;
  int64_t row = 0, bytes = 0;  // row: the cost of one batch row's items
  for (const Axis* a : axes) {
    row += a->items.items() / B * a->cost;
    bytes = std::max(bytes, micro<T>().scratch_bytes(a->items));
  }
  at::parallel_for(0, B * row, 1, [&](int64_t begin, int64_t end) {
    std::vector<char> scratch(bytes + 64);
    void* s = scratch.data() + (64 - reinterpret_cast<uintptr_t>(scratch.data()) % 64) % 64;
    for (int64_t b = begin / row; b < B && b * row < end; ++b) {
      int64_t start = b * row;  // the first cost unit of the axis's items in row b; an item belongs to the chunk
      for (const Axis* a : axes) {  // that holds its first unit
        const int64_t items = a->items.items() / B;
        const int64_t i0 = std::clamp<int64_t>((begin - start + a->cost - 1) / a->cost, 0, items);
        const int64_t i1 = std::clamp<int64_t>((end - start + a->cost - 1) / a->cost, 0, items);
        if (i0 < i1) f(*a, b * items + i0, b * items + i1, s);
        start += items * a->cost;
      }
    }
  });
}

template <class T>
void forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t block_size, T scale,
             const at::Tensor& out, const at::Tensor& lse) {
  const Axis regional(q, k, block_size, 0), dilated(q, k, block_size, 1);
  for_items<T>({&regional, &dilated}, [&](const Axis& a, int64_t i0, int64_t i1, void* s) {
    micro<T>().forward(a.items, cimage<T>(q), cimage<T>(k), cimage<T>(v), scale, i0, i1, image<T>(out),
                       image<T>(lse), s);
  });
}

// Two passes, one per axis: with one key head both axes add to the gradient of every pixel's K and V, so the
// dilated pass adds to what the regional pass wrote.
template <class T>
void backward(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
              int64_t block_size, T scale, const at::Tensor& dq, const at::Tensor& dk, const at::Tensor& dv) {
  const Axis regional(q, k, block_size, 0), dilated(q, k, block_size, 1);
  for (const Axis* axis : {&regional, &dilated}) {
    const bool accumulate_kv = axis == &dilated && k.size(3) == 1;
    for_items<T>({axis}, [&](const Axis& a, int64_t i0, int64_t i1, void* s) {
      micro<T>().backward(a.items, cimage<T>(q), cimage<T>(k), cimage<T>(v), cimage<T>(dout), scale, i0, i1,
                          image<T>(dq), image<T>(dk), image<T>(dv), accumulate_kv, s);
    });
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> multi_axis_attention_fwd(const at::Tensor& q, const at::Tensor& k,
                                                            const at::Tensor& v, int64_t block_size, double scale) {
  const auto dt = compute_dtype(q);
  const at::Tensor qc = operand(q, dt), kc = operand(k, dt), vc = operand(v, dt);
  at::Tensor out = at::empty(q.sizes(), q.options().dtype(dt));              // (B, H, W, heads, D)
  at::Tensor lse = at::empty(q.sizes().slice(0, 4), q.options().dtype(dt));  // (B, H, W, heads)
  if (out.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(dt, "multi_axis_attention_fwd", [&] {
      forward<scalar_t>(qc, kc, vc, block_size, scalar_t(scale), out, lse);
    });
  }
  return {out.to(q.scalar_type()), lse};
}

// out and lse are not read: the kernel makes P again from the scores as the forward does (its max and sum), and
// rowsum(dout * out) as sum_j P dP.
std::tuple<at::Tensor, at::Tensor, at::Tensor> multi_axis_attention_bwd(const at::Tensor& dout, const at::Tensor& q,
                                                                        const at::Tensor& k, const at::Tensor& v,
                                                                        const at::Tensor& out, const at::Tensor& lse,
                                                                        int64_t block_size, double scale) {
  const auto dt = compute_dtype(q);
  const at::Tensor qc = operand(q, dt), kc = operand(k, dt), vc = operand(v, dt), dOc = operand(dout, dt);
  at::Tensor dq = at::empty(q.sizes(), q.options().dtype(dt));  // (B, H, W, heads, D)
  at::Tensor dk = at::empty(k.sizes(), dq.options());          // (B, H, W, heads_kv, D)
  at::Tensor dv = at::empty(v.sizes(), dq.options());
  if (dq.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(dt, "multi_axis_attention_bwd", [&] {
      backward<scalar_t>(dOc, qc, kc, vc, block_size, scalar_t(scale), dq, dk, dv);
    });
  }
  return {dq.to(q.scalar_type()), dk.to(k.scalar_type()), dv.to(v.scalar_type())};
}

}  // namespace fastar::cpu
