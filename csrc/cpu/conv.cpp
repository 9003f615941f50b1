// conv3x3 on the CPU: the weights' Winograd transform G g G^T (packed for the ISA kernels; made once per weight by
// fastar/ops/conv.py), then threads over work items of 2x2 output tiles (cpu/conv_isa.cpp), each with its own
// scratch for the transformed input and products.
// Semantics: fastar/reference/conv.py.
#include "cpu/conv.h"

#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/core/CPUAllocator.h>

#include <vector>

#include "cpu/isa.h"

namespace fastar::cpu {
namespace {

// u (16, co_pad / kConvPack, Ci, kConvPack) from weight (Co, Ci, 3, 3): G g G^T per (co, ci), G = [1 0 0; .5 .5 .5;
// .5 -.5 .5; 0 0 1], in double and rounded once; rows past Co are zero. A block of kConvPack output channels at a
// time, so that each (block, ci) writes 16 runs of kConvPack consecutive floats, one per xi, every run following the
// previous ci's: writing u a float at a time over 16 planes took 25 ms for 512 x 512 channels (a training step makes
// it anew each time the weight changes).
void transform_weights(const float* w, int64_t Co, int64_t Ci, int64_t co_pad, float* u) {
  const int64_t blocks = co_pad / kConvPack;
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t cob = b0; cob < b1; ++cob)
      for (int64_t ci = 0; ci < Ci; ++ci) {
        double gg[16][kConvPack] = {};
        for (int r = 0; r < kConvPack; ++r) {
          const int64_t co = cob * kConvPack + r;
          if (co >= Co) break;
          const float* g = w + (co * Ci + ci) * 9;
          double t[4][3];  // G g
          for (int k = 0; k < 3; ++k) {
            t[0][k] = g[k];
            t[1][k] = 0.5 * (double(g[k]) + g[3 + k] + g[6 + k]);
            t[2][k] = 0.5 * (double(g[k]) - g[3 + k] + g[6 + k]);
            t[3][k] = g[6 + k];
          }
          for (int row = 0; row < 4; ++row) {  // (G g) G^T
            gg[4 * row][r] = t[row][0];
            gg[4 * row + 1][r] = 0.5 * (t[row][0] + t[row][1] + t[row][2]);
            gg[4 * row + 2][r] = 0.5 * (t[row][0] - t[row][1] + t[row][2]);
            gg[4 * row + 3][r] = t[row][2];
          }
        }
        for (int xi = 0; xi < 16; ++xi) {
          float* dst = u + ((xi * blocks + cob) * Ci + ci) * kConvPack;
          for (int r = 0; r < kConvPack; ++r) dst[r] = float(gg[xi][r]);
        }
      }
  });
}

}  // namespace

at::Tensor conv3x3_weights(const at::Tensor& weight) {
  const int64_t Co = weight.size(0), Ci = weight.size(1), co_pad = (Co + kConvPack - 1) / kConvPack * kConvPack;
  // torch's default allocator, not the one in place: u is kept with its weight (fastar/ops/conv.py), and inside
  // cpu_cache_all_tensors (the decoders' fast path) it would pin the activation cache's blocks, each a fresh
  // huge-page mapping (in a diagnostic profile of d16's first decode: 1.35 s for its 417 MB of transforms there,
  // 0.18 s here).
  at::Tensor u = at::detail::empty_generic({16, co_pad / kConvPack, Ci, kConvPack}, c10::GetDefaultCPUAllocator(),
                                           c10::DispatchKeySet(c10::DispatchKey::CPU), at::kFloat, std::nullopt);
  if (u.numel()) transform_weights(weight.data_ptr<float>(), Co, Ci, co_pad, u.data_ptr<float>());
  return u;
}

at::Tensor conv3x3(const at::Tensor& x, const at::Tensor& u, const std::optional<at::Tensor>& bias, int64_t c_out) {
  const int64_t B = x.size(0), Ci = x.size(1), H = x.size(2), W = x.size(3);
  at::Tensor y = at::empty({B, c_out, H, W}, x.options());
  if (y.numel() == 0) return y;
  const ConvIsa& k = *isa().conv;
  const int64_t co_pad = u.size(1) * kConvPack;
  const bool has_bias = bias.has_value() && bias->defined();
  const Conv3x3 c{x.data_ptr<float>(), u.data_ptr<float>(), has_bias ? bias->data_ptr<float>() : nullptr,
                  y.data_ptr<float>(), B, Ci, c_out, H, W, co_pad};
  const int64_t items = conv_work_items(B, H, W, k.tiles);
  const size_t scratch = size_t(16 * (Ci + co_pad) * k.tiles) + 16;  // + 16: room to align to 64 bytes
  at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
    // Each pool thread keeps its scratch (2.6 MB at 640 channels on AVX-512) between calls: a fresh one per call was
    // a fresh mapping, page-faulted and zeroed, on the first decodes.
    static thread_local std::vector<float> buf;
    if (buf.size() < scratch) buf.resize(scratch);
    float* p = buf.data();
    p += (64 - reinterpret_cast<uintptr_t>(p) % 64) % 64 / sizeof(float);
    k.winograd(c, begin, end, p);
  });
  return y;
}

}  // namespace fastar::cpu
