// blur_pool: one thread per output element, 16 taps (forward) or at most 4 (backward, the adjoint: input (h, c)
// reads the outputs (h + 1 - a) / 2 of the taps a of its parity), summed in float32 (float64 for float64). Memory
// bound: each input is read by four threads of neighbouring outputs, from L1 / L2.
#include "kernels/blur_pool/blur_pool.h"
#include "kernels/blur_pool/taps.h"
#include "kernels/common.cuh"

namespace fastar::kernels {
namespace {

constexpr int kThreads = 256;

template <class T>
struct Acc {
  using type = float;
  static __device__ __forceinline__ float load(T v) { return to_float(v); }
  static __device__ __forceinline__ T store(float v) { return from_float<T>(v); }
};
template <>
struct Acc<double> {
  using type = double;
  static __device__ __forceinline__ double load(double v) { return v; }
  static __device__ __forceinline__ double store(double v) { return v; }
};

template <class A>
__device__ __forceinline__ A tap(int a) {  // f[a], a in 0..3
  return (a == 0 || a == 3) ? A(kBlurOuter) : A(kBlurInner);
}

template <class T>
__global__ void __launch_bounds__(kThreads) blur_pool_kernel(const BlurPoolParams p) {
  using A = typename Acc<T>::type;
  const int64_t Ho = p.height / 2, Wo = p.width / 2;
  const int64_t e = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (e >= p.planes * Ho * Wo) return;
  const int64_t j = e % Wo, i = (e / Wo) % Ho, plane = e / (Wo * Ho);
  const T* x = static_cast<const T*>(p.in) + plane * p.height * p.width;
  A sum = A(0);
  for (int a = 0; a < 4; ++a) {
    const int64_t h = 2 * i + a - 1;
    if (h < 0 || h >= p.height) continue;
    A row = A(0);
    for (int b = 0; b < 4; ++b) {
      const int64_t c = 2 * j + b - 1;
      if (c >= 0 && c < p.width) row += tap<A>(b) * Acc<T>::load(x[h * p.width + c]);
    }
    sum += tap<A>(a) * row;
  }
  static_cast<T*>(p.out)[e] = Acc<T>::store(sum);
}

template <class T>
__global__ void __launch_bounds__(kThreads) blur_pool_backward_kernel(const BlurPoolParams p) {
  using A = typename Acc<T>::type;
  const int64_t Ho = p.height / 2, Wo = p.width / 2;
  const int64_t e = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (e >= p.planes * p.height * p.width) return;
  const int64_t c = e % p.width, h = (e / p.width) % p.height, plane = e / (p.width * p.height);
  const T* g = static_cast<const T*>(p.in) + plane * Ho * Wo;
  A sum = A(0);
  for (int a = (h + 1) % 2; a < 4; a += 2) {  // the taps of h's parity: output row (h + 1 - a) / 2
    const int64_t i = (h + 1 - a) / 2;
    if (i < 0 || i >= Ho) continue;
    A row = A(0);
    for (int b = (c + 1) % 2; b < 4; b += 2) {
      const int64_t j = (c + 1 - b) / 2;
      if (j >= 0 && j < Wo) row += tap<A>(b) * Acc<T>::load(g[i * Wo + j]);
    }
    sum += tap<A>(a) * row;
  }
  static_cast<T*>(p.out)[e] = Acc<T>::store(sum);
}

template <template <class> class K>
cudaError_t launch(const BlurPoolParams& p, int64_t elements, cudaStream_t stream) {
  if (p.planes < 0 || p.height < 2 || p.width < 2) return cudaErrorInvalidValue;
  const int64_t blocks = (elements + kThreads - 1) / kThreads;
  if (blocks > INT32_MAX) return cudaErrorInvalidValue;
  return dispatch_dtype<float, __nv_bfloat16, __half, double>(p.dtype, [&](auto elem) {
    if (blocks == 0) return cudaSuccess;
    LAUNCH(K<decltype(elem)>::kernel, dim3(unsigned(blocks)), kThreads, 0, stream)(p);
    return cudaGetLastError();
  });
}

template <class T>
struct Forward {
  static constexpr auto kernel = blur_pool_kernel<T>;
};
template <class T>
struct Backward {
  static constexpr auto kernel = blur_pool_backward_kernel<T>;
};

}  // namespace

cudaError_t blur_pool_launch(const BlurPoolParams& p, cudaStream_t stream) {
  return launch<Forward>(p, p.planes * (p.height / 2) * (p.width / 2), stream);
}

cudaError_t blur_pool_backward_launch(const BlurPoolParams& p, cudaStream_t stream) {
  return launch<Backward>(p, p.planes * p.height * p.width, stream);
}

}  // namespace fastar::kernels
