// MAR's DiffLoss training loss and its gradient in one pass (diffusion.h), on the per-channel math the CPU kernel
// shares (loss_math.h): per row the iDDPM hybrid loss MSE(eps) + VB (KL of the learned-range posterior in bits; the
// discretized Gaussian NLL at t = 0), the VB term seeing eps through a stop-gradient. A group of G lanes (the power of
// two >= C, at most a warp) per row: each lane does the channels k = lane + j G and writes their gradient, then the
// group's butterfly sums the row's terms, in a fixed order (deterministic). float32 or float64 throughout.
#include "kernels/common.cuh"
#include "kernels/diffusion/diffusion.h"

namespace fastar::kernels {
namespace {

constexpr int kThreads = 128;

template <class T>
__global__ void __launch_bounds__(kThreads) diffusion_loss_kernel(const DiffusionLossParams p, int log2_G) {
  const int G = 1 << log2_G;  // divides kThreads: a row's group never straddles blocks
  const int64_t r = (int64_t(blockIdx.x) * kThreads + threadIdx.x) >> log2_G;
  const int lane = int(threadIdx.x) & (G - 1);
  const bool live = r < p.N;  // lanes past the last row still join the group's shuffles
  const int C = p.C;
  T mse = 0, vb = 0;
  if (live) {
    const int64_t t = p.t[r];
    const LossCoefs<T> c(p.table + t * kDiffusionLossColumns, t == 0);
    const T* o = static_cast<const T*>(p.model_output) + r * 2 * C;
    const T* x0 = static_cast<const T*>(p.x_start) + r * C;
    const T* n = static_cast<const T*>(p.noise) + r * C;
    T* g = static_cast<T*>(p.grad) + r * 2 * C;
    const T inv_C = T(1) / T(C), dv = (c.max_log - c.min_log) / T(2) * inv_C * T(kInvLn2);
    for (int k = lane; k < C; k += G) {
      T dlog_var;
      loss_channel(c, o[k], o[C + k], x0[k], n[k], mse, vb, dlog_var);
      g[k] = T(2) * (o[k] - n[k]) * inv_C;
      g[C + k] = dlog_var * dv;
    }
  }
  // G divides 32 and groups are aligned, so offsets below G stay inside the row's group; every lane ends with the
  // same sum (a + b == b + a).
  for (int s = G / 2; s > 0; s >>= 1) {
    mse += __shfl_xor_sync(0xffffffffu, mse, s);
    vb += __shfl_xor_sync(0xffffffffu, vb, s);
  }
  if (live && lane == 0) static_cast<T*>(p.loss)[r] = (mse + vb * T(kInvLn2)) / T(C);
}

}  // namespace

cudaError_t diffusion_loss_launch(const DiffusionLossParams& p, cudaStream_t stream) {
  if (p.N < 0 || p.C < 1) return cudaErrorInvalidValue;
  if (p.N == 0) return dispatch_dtype<float, double>(p.dtype, [](auto) { return cudaSuccess; });  // still checked
  int log2_G = 0;  // lanes per row: the power of two >= C, at most a warp
  while ((1 << log2_G) < p.C && log2_G < 5) ++log2_G;
  const int64_t blocks = ((p.N << log2_G) + kThreads - 1) / kThreads;
  if (blocks > INT32_MAX) return cudaErrorInvalidValue;
  return dispatch_dtype<float, double>(p.dtype, [&](auto elem) {
    LAUNCH(diffusion_loss_kernel<decltype(elem)>, dim3(unsigned(blocks)), kThreads, 0, stream)(p, log2_G);
    return cudaGetLastError();
  });
}

}  // namespace fastar::kernels
