// VAR's multi-scale residual quantization on the CPU. Maps are NHWC (channels_last), so each pixel is a C-vector
// and every inner loop runs over C (vectorized by the compiler); the nearest-code search is vq_nearest's.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "cpu/quantize.h"

namespace fastar::cpu {
namespace {

// Bins of torch's adaptive average pooling (F.interpolate mode='area'): cell i covers [floor(iH/pn), ceil((i+1)H/pn)).
inline int64_t bin_lo(int64_t i, int64_t H, int64_t pn) { return i * H / pn; }
inline int64_t bin_hi(int64_t i, int64_t H, int64_t pn) { return ((i + 1) * H + pn - 1) / pn; }

// z (pn, pn, C) = area-down of x (H, H, C), one image.
void area_down(const float* x, int64_t H, int64_t C, int64_t pn, float* z) {
  for (int64_t oy = 0; oy < pn; ++oy) {
    const int64_t y0 = bin_lo(oy, H, pn), y1 = bin_hi(oy, H, pn);
    for (int64_t ox = 0; ox < pn; ++ox) {
      const int64_t x0 = bin_lo(ox, H, pn), x1 = bin_hi(ox, H, pn);
      float* o = z + (oy * pn + ox) * C;
      for (int64_t c = 0; c < C; ++c) o[c] = 0.f;
      for (int64_t y = y0; y < y1; ++y)
        for (int64_t xx = x0; xx < x1; ++xx)
          for (int64_t c = 0; c < C; ++c) o[c] += x[(y * H + xx) * C + c];
      const float count = float((y1 - y0) * (x1 - x0));
      for (int64_t c = 0; c < C; ++c) o[c] /= count;
    }
  }
}

// f_hat += h and f_rest -= h (when f_rest is not null) over n floats.
void update(float* f_hat, float* f_rest, const float* h, int64_t n) {
  for (int64_t i = 0; i < n; ++i) f_hat[i] += h[i];
  if (f_rest)
    for (int64_t i = 0; i < n; ++i) f_rest[i] -= h[i];
}

// The 4 taps of torch's bicubic (A = -0.75, align_corners=False, border clamped) for each of H outputs from pn inputs.
template <class T>
struct Taps {
  int64_t i[4];
  T w[4];
};

template <class T>
std::vector<Taps<T>> bicubic_taps(int64_t pn, int64_t H) {
  const T A = T(-0.75), scale = T(pn) / T(H);
  auto near = [A](T x) { return ((A + 2) * x - (A + 3)) * x * x + 1; };           // |x| <= 1
  auto far = [A](T x) { return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A; };      // 1 < |x| < 2
  std::vector<Taps<T>> taps(H);
  for (int64_t o = 0; o < H; ++o) {
    const T real = scale * (T(o) + T(0.5)) - T(0.5);
    const int64_t in = std::min<int64_t>(int64_t(std::floor(real)), pn - 1);
    const T t = std::min<T>(std::max<T>(real - T(in), T(0)), T(1));
    const T w[4] = {far(t + 1), near(t), near(1 - t), far(2 - t)};
    for (int k = 0; k < 4; ++k) {
      taps[o].i[k] = std::min<int64_t>(std::max<int64_t>(in - 1 + k, 0), pn - 1);
      taps[o].w[k] = w[k];
    }
  }
  return taps;
}

// out (H, H, C) = bicubic-up of the (pn, pn) map whose pixel p is the C-vector row(p); tmp holds (pn, H, C).
template <class T, class Row>
void up_image(const Row& row, int64_t pn, int64_t H, int64_t C, const std::vector<Taps<T>>& taps, T* tmp, T* out) {
  if (pn == H) {  // VAR's last scale: the codes themselves
    for (int64_t p = 0; p < H * H; ++p) std::copy_n(row(p), C, out + p * C);
    return;
  }
  for (int64_t iy = 0; iy < pn; ++iy)  // along x first: (pn, pn) -> (pn, H)
    for (int64_t ox = 0; ox < H; ++ox) {
      T* o = tmp + (iy * H + ox) * C;
      const Taps<T>& t = taps[ox];
      const T *r0 = row(iy * pn + t.i[0]), *r1 = row(iy * pn + t.i[1]), *r2 = row(iy * pn + t.i[2]),
              *r3 = row(iy * pn + t.i[3]);
      for (int64_t c = 0; c < C; ++c) o[c] = t.w[0] * r0[c] + t.w[1] * r1[c] + t.w[2] * r2[c] + t.w[3] * r3[c];
    }
  for (int64_t oy = 0; oy < H; ++oy)  // then along y: (pn, H) -> (H, H)
    for (int64_t ox = 0; ox < H; ++ox) {
      const Taps<T>& t = taps[oy];
      const T *r0 = tmp + (t.i[0] * H + ox) * C, *r1 = tmp + (t.i[1] * H + ox) * C, *r2 = tmp + (t.i[2] * H + ox) * C,
              *r3 = tmp + (t.i[3] * H + ox) * C;
      T* o = out + (oy * H + ox) * C;
      for (int64_t c = 0; c < C; ++c) o[c] = t.w[0] * r0[c] + t.w[1] * r1[c] + t.w[2] * r2[c] + t.w[3] * r3[c];
    }
}

template <class T>
void up(const at::Tensor& src, const std::optional<at::Tensor>& idx, c10::IntArrayRef patch_nums, int64_t H,
        int64_t B, at::Tensor& out) {
  const int64_t S = int64_t(patch_nums.size()), C = src.size(-1), V = idx ? src.size(0) : 0;
  int64_t cells = 0;
  std::vector<int64_t> offset(S);  // first cell of scale s in idx / src rows
  std::vector<std::vector<Taps<T>>> taps(S);
  for (int64_t s = 0; s < S; ++s) {
    offset[s] = cells;
    cells += patch_nums[s] * patch_nums[s];
    taps[s] = bicubic_taps<T>(patch_nums[s], H);
  }
  const T* src_p = src.data_ptr<T>();
  const int64_t* idx_p = idx ? idx->data_ptr<int64_t>() : nullptr;
  T* out_p = out.data_ptr<T>();
  std::atomic<bool> out_of_range{false};
  at::parallel_for(0, S * B, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> tmp(H * H * C);  // (pn, H, C) for any pn <= H
    for (int64_t sb = begin; sb < end; ++sb) {
      const int64_t s = sb / B, b = sb % B, pn = patch_nums[s], first = b * cells + offset[s];
      auto row = [&](int64_t p) -> const T* {
        if (!idx_p) return src_p + (first + p) * C;
        const int64_t k = idx_p[first + p];
        if (k >= 0 && k < V) return src_p + k * C;
        out_of_range = true;
        return src_p;
      };
      up_image<T>(row, pn, H, C, taps[s], tmp.data(), out_p + sb * H * H * C);
    }
  });
  TORCH_CHECK(!out_of_range, "msq_up: idx holds a code index outside [0, ", V, ")");
}

}  // namespace

at::Tensor msq_residual_search(at::Tensor& f_hat, at::Tensor& f_rest, const std::optional<at::Tensor>& h,
                               const at::Tensor& codebook, int64_t pn) {
  const int64_t B = f_hat.size(0), C = f_hat.size(1), H = f_hat.size(2), n = H * H * C;
  // At pn == H the rows to search are f_rest itself (NHWC): no copy.
  at::Tensor z = pn == H ? f_rest.permute({0, 2, 3, 1}) : at::empty({B, pn, pn, C}, f_hat.options());  // (B, pn, pn, C)
  float *fh = f_hat.data_ptr<float>(), *fr = f_rest.data_ptr<float>(), *zp = z.data_ptr<float>();
  const float* hp = h ? h->data_ptr<float>() : nullptr;
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      if (hp) update(fh + b * n, fr + b * n, hp + b * n, n);
      if (pn != H) area_down(fr + b * n, H, C, pn, zp + b * pn * pn * C);
    }
  });
  return std::get<0>(vq_nearest(z.view({B * pn * pn, C}), codebook, false)).view({B, pn * pn});
}

at::Tensor msq_up(const at::Tensor& src, const std::optional<at::Tensor>& idx, c10::IntArrayRef patch_nums,
                  int64_t H, int64_t B) {
  const int64_t S = int64_t(patch_nums.size()), C = src.size(-1);
  at::Tensor out = at::empty({S * B, C, H, H}, src.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (src.scalar_type() == at::kDouble) up<double>(src, idx, patch_nums, H, B, out);
  else up<float>(src, idx, patch_nums, H, B, out);
  return out;
}

at::Tensor msq_add_down(at::Tensor& f_hat, at::TensorList h, c10::IntArrayRef patch_nums, int64_t cells) {
  const int64_t B = f_hat.size(0), C = f_hat.size(1), H = f_hat.size(2), n = H * H * C;
  at::Tensor rows = at::empty({B, cells, C}, f_hat.options());  // (B, sum pn_s^2, C)
  float *fh = f_hat.data_ptr<float>(), *rp = rows.data_ptr<float>();
  // Each image runs through all scales while its f_hat is in cache.
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      int64_t offset = 0;
      for (size_t s = 0; s < h.size(); ++s) {
        const int64_t pn = patch_nums[s];
        update(fh + b * n, nullptr, h[s].data_ptr<float>() + b * n, n);
        if (pn > 0) area_down(fh + b * n, H, C, pn, rp + (b * cells + offset) * C);
        offset += pn * pn;
      }
    }
  });
  return rows;
}

}  // namespace fastar::cpu
