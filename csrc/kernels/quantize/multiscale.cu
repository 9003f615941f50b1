// VAR's multi-scale residual quantization: the fused steps around the Phi convolutions (see multiscale.h).
// msq_up: one thread per output value (coalesced over C), 16 gathered taps; no shared memory, the codebook rows
// of a (pn, pn) map are few and stay in L1/L2. The residual update is elementwise over the whole batch; the area
// downs run after it (bins overlap when pn does not divide H, so no down may start before the update is complete):
// msq_add_down's one thread per output value, msq_residual_search's straight into the search block's shared memory.
#include "kernels/quantize/multiscale.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kernels/common.cuh"
#include "kernels/quantize/vq_nearest_tile.cuh"

namespace fastar::kernels {
namespace {

constexpr int kThreads = 256;

// torch's cubic convolution weights of the 4 taps at fraction t (A = -0.75).
template <class T>
__device__ __forceinline__ void cubic_weights(T t, T w[4]) {
  const T A = T(-0.75);
  auto near = [A](T x) { return ((A + 2) * x - (A + 3)) * x * x + 1; };       // |x| <= 1
  auto far = [A](T x) { return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A; };  // 1 < |x| < 2
  w[0] = far(t + 1), w[1] = near(t), w[2] = near(1 - t), w[3] = far(2 - t);
}

// First tap (unclamped) and fraction of output o from pn inputs to H outputs, as torch (align_corners=False).
template <class T>
__device__ __forceinline__ int source(int o, int pn, int H, T& t) {
  const T real = T(pn) / T(H) * (T(o) + T(0.5)) - T(0.5);
  const int in = min(int(floor(real)), pn - 1);
  t = min(max(real - T(in), T(0)), T(1));
  return in - 1;
}

template <class T>
__global__ void __launch_bounds__(kThreads) msq_up_kernel(const MsqUpParams p) {
  const int64_t per_map = int64_t(p.H) * p.H * p.C;
  const int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= per_map * p.S * p.B) return;
  const int sb = int(i / per_map), s = sb / p.B, b = sb % p.B, pn = p.pn[s];
  const int c = int(i % p.C), ox = int(i / p.C % p.H), oy = int(i / p.C / p.H % p.H);
  const T* src = static_cast<const T*>(p.src);
  const int64_t first = int64_t(b) * p.cells + p.offset[s];
  // The C-vector of cell (iy, ix) of this scale's map; NaN for an out-of-range code.
  auto at = [&](int iy, int ix) -> T {
    const int64_t cell = first + int64_t(iy) * pn + ix;
    if (!p.idx) return src[cell * p.C + c];
    const int64_t k = p.idx[cell];
    return k >= 0 && k < p.V ? src[k * p.C + c] : T(NAN);
  };
  T v;
  if (pn == p.H) {
    v = at(oy, ox);  // VAR's last scale: the codes themselves
  } else {
    T ty, tx, wy[4], wx[4];
    const int y0 = source(oy, pn, p.H, ty), x0 = source(ox, pn, p.H, tx);
    cubic_weights(ty, wy);
    cubic_weights(tx, wx);
    v = T(0);
#pragma unroll
    for (int a = 0; a < 4; ++a) {
      const int iy = min(max(y0 + a, 0), pn - 1);
      T row = T(0);
#pragma unroll
      for (int e = 0; e < 4; ++e) row += wx[e] * at(iy, min(max(x0 + e, 0), pn - 1));
      v += wy[a] * row;
    }
  }
  static_cast<T*>(p.out)[i] = v;
}

// Mean over torch's adaptive average pooling bin [floor(o H / pn), ceil((o + 1) H / pn)) per axis of output cell
// (oy, ox), channel c, of the (H, H, C) image x + h[0] + ... + h[nh - 1] (per pixel in that order; a null h adds
// nothing); `pixel0` is the image's first element in x and h.
__device__ __forceinline__ float area_bin(const float* x, const float* const* h, int nh, int64_t pixel0, int H, int C,
                                          int pn, int oy, int ox, int c) {
  const int y0 = oy * H / pn, y1 = ((oy + 1) * H + pn - 1) / pn;
  const int x0 = ox * H / pn, x1 = ((ox + 1) * H + pn - 1) / pn;
  float sum = 0.f;
  for (int y = y0; y < y1; ++y)
    for (int xx = x0; xx < x1; ++xx) {
      const int64_t i = pixel0 + (int64_t(y) * H + xx) * C + c;
      float v = x[i];
      for (int t = 0; t < nh; ++t)
        if (h[t]) v += h[t][i];
      sum += v;
    }
  return sum / float((y1 - y0) * (x1 - x0));
}

// rows of scale blockIdx.y = area-down(f_hat + h[0] + ... + h[s]): one thread per output value, coalesced over C.
__global__ void __launch_bounds__(kThreads) msq_down_kernel(const MsqAddDownParams p) {
  const int s = blockIdx.y, pn = p.pn[s];
  const int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= int64_t(p.B) * pn * pn * p.C) return;
  const int c = int(i % p.C), cell = int(i / p.C % (pn * pn)), b = int(i / p.C / (pn * pn));
  const float v = area_bin(p.f_hat, p.h, s + 1, int64_t(b) * p.H * p.H * p.C, p.H, p.C, pn, cell / pn, cell % pn, c);
  p.rows[(int64_t(b) * p.cells + p.offset[s] + cell) * p.C + c] = v;
}

// f_hat += h[0] + ... + h[S - 1] and f_rest -= each h (when f_rest), over n values, in order per value.
struct Update {
  float* f_hat;
  float* f_rest;
  const float* h[kMsqMaxScales];
  int S;
  int64_t n;
};

__global__ void __launch_bounds__(kThreads) msq_update_kernel(const Update u) {
  const int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= u.n) return;
  float f = u.f_hat[i], r = u.f_rest ? u.f_rest[i] : 0.f;
  for (int s = 0; s < u.S; ++s) f += u.h[s][i], r -= u.h[s][i];
  u.f_hat[i] = f;
  if (u.f_rest) u.f_rest[i] = r;
}

// The rows of block blockIdx.x (64 cells of area-down(f_rest, pn), images in a row) into shared memory, then
// their nearest codes.
__global__ void __launch_bounds__(vq_tile::kThreads) msq_down_search_kernel(const MsqResidualSearchParams p,
                                                                           const VqNearestParams q) {
  using namespace vq_tile;
  STATIC_SHARED(Smem, s);
  DYNAMIC_SHARED(float, rows_s);  // (ceil(C / kDepth) kDepth, kStride): the block's rows, transposed, 0 past them
  const int depth = (p.C + kDepth - 1) / kDepth * kDepth, cells = p.pn * p.pn;
  const int64_t row0 = int64_t(blockIdx.x) * kRows;
  for (int i = threadIdx.x; i < kRows * depth; i += kThreads) {
    const int r = i / depth, c = i % depth;  // c fastest: a warp reads whole pixels
    const int64_t row = row0 + r;
    float v = 0.f;
    if (row < q.n && c < p.C) {
      const int b = int(row / cells), cell = int(row % cells);
      v = area_bin(p.f_rest, nullptr, 0, int64_t(b) * p.H * p.H * p.C, p.H, p.C, p.pn, cell / p.pn, cell % p.pn, c);
    }
    rows_s[c * kStride + r] = v;
  }
  __syncthreads();  // every row is down before the search reads it
  search<float>(q, SharedRows{reinterpret_cast<Tile>(rows_s)}, row0, 0, q.k, Winners{q.indices, nullptr, nullptr}, s);
}

cudaError_t launch_update(const Update& u, cudaStream_t stream) {
  if (u.n == 0 || u.S == 0) return cudaSuccess;
  if ((u.n + kThreads - 1) / kThreads > INT32_MAX) return cudaErrorInvalidValue;
  LAUNCH(msq_update_kernel, dim3(unsigned((u.n + kThreads - 1) / kThreads)), kThreads, 0, stream)(u);
  return cudaGetLastError();
}

// The downs of p (every scale with pn > 0) from p.f_hat and p.h, without updating f_hat.
cudaError_t launch_down(const MsqAddDownParams& p, cudaStream_t stream) {
  int max_pn = 0;
  for (int s = 0; s < p.S; ++s) max_pn = std::max(max_pn, p.pn[s]);
  const int64_t blocks = (int64_t(p.B) * max_pn * max_pn * p.C + kThreads - 1) / kThreads;
  if (blocks == 0) return cudaSuccess;
  if (blocks > INT32_MAX) return cudaErrorInvalidValue;
  LAUNCH(msq_down_kernel, dim3(unsigned(blocks), unsigned(p.S)), kThreads, 0, stream)(p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t msq_up_launch(const MsqUpParams& p, cudaStream_t stream) {
  if (p.B < 0 || p.C < 0 || p.H < 1 || p.S < 0 || p.S > kMsqMaxScales) return cudaErrorInvalidValue;
  const int64_t total = int64_t(p.S) * p.B * p.H * p.H * p.C;
  if (total == 0) return cudaSuccess;
  if ((total + kThreads - 1) / kThreads > INT32_MAX) return cudaErrorInvalidValue;
  const dim3 grid(unsigned((total + kThreads - 1) / kThreads));
  return dispatch_dtype<float, double>(p.dtype, [&](auto elem) {
    LAUNCH(msq_up_kernel<decltype(elem)>, grid, kThreads, 0, stream)(p);
    return cudaGetLastError();
  });
}

cudaError_t msq_add_down_launch(const MsqAddDownParams& p, cudaStream_t stream) {
  if (p.B < 0 || p.C < 0 || p.H < 1 || p.S < 0 || p.S > kMsqMaxScales) return cudaErrorInvalidValue;
  if (p.B == 0 || p.S == 0) return cudaSuccess;
  if (const cudaError_t e = launch_down(p, stream)) return e;
  Update u{p.f_hat, nullptr, {}, p.S, int64_t(p.B) * p.H * p.H * p.C};
  for (int s = 0; s < p.S; ++s) u.h[s] = p.h[s];
  return launch_update(u, stream);
}

cudaError_t msq_residual_search_launch(const MsqResidualSearchParams& p, cudaStream_t stream) {
  if (p.B < 0 || p.C < 0 || p.H < 1 || p.pn < 1 || p.pn > p.H || p.V < 1) return cudaErrorInvalidValue;
  if (p.B == 0) return cudaSuccess;
  if (p.h) {
    const Update u{p.f_hat, p.f_rest, {p.h}, 1, int64_t(p.B) * p.H * p.H * p.C};
    if (const cudaError_t e = launch_update(u, stream)) return e;
  }
  VqNearestParams q{};
  q.x = p.f_rest, q.codebook = p.codebook, q.indices = p.indices, q.distances = nullptr;
  q.n = int64_t(p.B) * p.pn * p.pn, q.k = p.V, q.d = p.C, q.dtype = Dtype::f32, q.cosine = false;
  if (p.pn == p.H) return vq_nearest_launch(q, stream);  // the rows are f_rest itself (NHWC)
  if (p.C > kMsqFusedMaxC) {  // rows too long for shared memory: down into p.rows, then search them
    MsqAddDownParams d{};
    d.f_hat = p.f_rest, d.rows = p.rows, d.B = p.B, d.C = p.C, d.H = p.H, d.S = 1, d.cells = p.pn * p.pn;
    d.pn[0] = p.pn;
    if (const cudaError_t e = launch_down(d, stream)) return e;
    q.x = p.rows;
    return vq_nearest_launch(q, stream);
  }
  const int64_t blocks = (q.n + vq_tile::kRows - 1) / vq_tile::kRows;
  if (blocks > INT32_MAX) return cudaErrorInvalidValue;
  const size_t smem = size_t((p.C + vq_tile::kDepth - 1) / vq_tile::kDepth * vq_tile::kDepth) * vq_tile::kStride *
                      sizeof(float);
  LAUNCH(msq_down_search_kernel, dim3(unsigned(blocks)), vq_tile::kThreads, smem, stream)(p, q);
  return cudaGetLastError();
}

}  // namespace fastar::kernels
