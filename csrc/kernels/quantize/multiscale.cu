// VAR's multi-scale residual quantization: the fused steps around the Phi convolutions (see multiscale.h).
// msq_up: one thread per output value (coalesced over C), 16 gathered taps; no shared memory, the codebook rows
// of a (pn, pn) map are few and stay in L1/L2. msq_update_down: one block per image, a barrier between the update
// and each scale's down, because area bins overlap when pn does not divide H.
#include "kernels/quantize/multiscale.h"

#include <cmath>
#include <cstdint>

#include "kernels/common.cuh"

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

// No __launch_bounds__: with it, ptxas 13.0 spills 20 bytes at 32 registers; without, 32 registers, no spill.
__global__ void msq_update_down_kernel(const MsqUpdateDownParams p) {
  const int64_t n = int64_t(p.H) * p.H * p.C;
  float* f_hat = p.f_hat + blockIdx.x * n;
  float* f_rest = p.f_rest ? p.f_rest + blockIdx.x * n : nullptr;
  const float* down_src = f_rest ? f_rest : f_hat;
  for (int s = 0; s < p.S; ++s) {
    if (const float* h = p.h[s]) {
      h += blockIdx.x * n;
      for (int64_t i = threadIdx.x; i < n; i += kThreads) {
        f_hat[i] += h[i];
        if (f_rest) f_rest[i] -= h[i];
      }
    }
    const int pn = p.pn[s];
    __syncthreads();  // the whole image is updated before any bin reads it
    float* rows = p.rows + (int64_t(blockIdx.x) * p.cells + p.offset[s]) * p.C;
    for (int i = threadIdx.x; i < pn * pn * p.C; i += kThreads) {
      const int c = i % p.C, cell = i / p.C, oy = cell / pn, ox = cell % pn;
      // torch's adaptive average pooling bins: [floor(o H / pn), ceil((o + 1) H / pn)).
      const int y0 = oy * p.H / pn, y1 = ((oy + 1) * p.H + pn - 1) / pn;
      const int x0 = ox * p.H / pn, x1 = ((ox + 1) * p.H + pn - 1) / pn;
      float sum = 0.f;
      for (int y = y0; y < y1; ++y)
        for (int x = x0; x < x1; ++x) sum += down_src[(int64_t(y) * p.H + x) * p.C + c];
      rows[i] = sum / float((y1 - y0) * (x1 - x0));
    }
    __syncthreads();  // the down has read the image before the next scale updates it
  }
}

}  // namespace

cudaError_t msq_up_launch(const MsqUpParams& p, cudaStream_t stream) {
  if (p.B < 0 || p.C < 0 || p.H < 1 || p.S < 0 || p.S > kMsqMaxScales) return cudaErrorInvalidValue;
  const int64_t total = int64_t(p.S) * p.B * p.H * p.H * p.C;
  if (total == 0) return cudaSuccess;
  if ((total + kThreads - 1) / kThreads > INT32_MAX) return cudaErrorInvalidValue;
  const dim3 grid(unsigned((total + kThreads - 1) / kThreads));
  if (p.f64) LAUNCH(msq_up_kernel<double>, grid, kThreads, 0, stream)(p);
  else LAUNCH(msq_up_kernel<float>, grid, kThreads, 0, stream)(p);
  return cudaGetLastError();
}

cudaError_t msq_update_down_launch(const MsqUpdateDownParams& p, cudaStream_t stream) {
  if (p.B < 0 || p.C < 0 || p.H < 1 || p.S < 0 || p.S > kMsqMaxScales) return cudaErrorInvalidValue;
  if (p.B == 0 || p.S == 0) return cudaSuccess;
  LAUNCH(msq_update_down_kernel, dim3(unsigned(p.B)), kThreads, 0, stream)(p);
  return cudaGetLastError();
}

}  // namespace fastar::kernels
