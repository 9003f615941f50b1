// sample_categorical: one warp per row, the row re-read from global memory (L1) by every pass. Passes: the max,
// the full mass (min_prob), the k-th largest logit by a bitwise search over order-preserving keys (top_k), the
// top-p cut by the same search on the kept mass above a key, then the exponential race: the kept token with the
// largest mass / q (q the row's Exp(1) draws; torch.multinomial's algorithm), the first on ties, by a warp argmax.
// Every sum is a fixed shuffle tree: no order-dependent result.
#include "kernels/sampling/sampling.h"

#include <cfloat>
#include <cmath>

#include "kernels/common.cuh"

namespace fastar::kernels {
namespace {

constexpr int kWarps = 4;  // rows per block
constexpr unsigned kFull = 0xffffffffu;

// The float order as unsigned order (negatives flipped): the key space the top-k and top-p searches bisect. -0 and
// +0 are one logit (equal as floats: ties at a cut stay together), so -0 takes +0's key.
__device__ __forceinline__ unsigned order_key(float x) {
  const unsigned b = x == 0.f ? 0u : __float_as_uint(x);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

template <class T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFull, v, o));
  return v;
}

template <class T>
struct Row {
  const T* x;       // (V,)
  int V;
  float m;          // the largest logit
  float inv_t;      // 1 / temperature
  float min_mass;   // min_prob * (full mass): lighter tokens are dropped
  int64_t min_key;  // tokens with a smaller order_key are dropped (top_k, top_p)

  __device__ float at(int i) const { return to_float(x[i]); }
  __device__ float mass(float xi) const { return expf((xi - m) * inv_t); }
  // The largest logit always stays.
  __device__ bool kept(float xi) const {
    return xi == m || (mass(xi) >= min_mass && int64_t(order_key(xi)) >= min_key);
  }
  // This lane's share of the kept mass with a key above `above` (-1: all).
  __device__ float kept_mass(int lane, int64_t above) const {
    float s = 0.f;
    for (int i = lane; i < V; i += 32) {
      const float xi = at(i);
      if (kept(xi) && int64_t(order_key(xi)) > above) s += mass(xi);
    }
    return warp_sum(s);
  }
};

template <class T>
__global__ void __launch_bounds__(kWarps * 32) sample_categorical_kernel(const SampleCategoricalParams p) {
  const int lane = threadIdx.x & 31;
  const int64_t row = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (row >= p.rows) return;  // the whole warp
  Row<T> r{static_cast<const T*>(p.logits) + row * p.V, p.V, -INFINITY, p.inv_temperature, 0.f, 0};
  bool nan = false;  // a NaN logit: the row draws -1 (fmaxf would drop it)
  for (int i = lane; i < r.V; i += 32) {
    const float xi = r.at(i);
    r.m = fmaxf(r.m, xi), nan |= xi != xi;
  }
  r.m = warp_max(r.m);
  if (__any_sync(kFull, nan) || !(fabsf(r.m) <= FLT_MAX)) {
    if (lane == 0) p.indices[row] = -1;
    return;
  }
  if (p.min_prob > 0.f) r.min_mass = p.min_prob * r.kept_mass(lane, -1);
  if (p.top_k > 0 && p.top_k < r.V) {  // the largest key K with at least top_k keys >= K: the k-th largest
    unsigned K = 0;
    for (int bit = 31; bit >= 0; --bit) {
      const unsigned cand = K | (1u << bit);
      int c = 0;
      for (int i = lane; i < r.V; i += 32) c += order_key(r.at(i)) >= cand;
      if (warp_sum(c) >= p.top_k) K = cand;
    }
    r.min_key = K;
  }
  if (p.top_p < 1.f) {  // the largest key K whose kept mass above is >= top_p of the kept mass: keys > K stay
    const float P = p.top_p * r.kept_mass(lane, -1);
    if (r.kept_mass(lane, 0) >= P) {
      unsigned K = 0;
      for (int bit = 31; bit >= 0; --bit) {
        const unsigned cand = K | (1u << bit);
        if (r.kept_mass(lane, cand) >= P) K = cand;
      }
      r.min_key = r.min_key > int64_t(K) + 1 ? r.min_key : int64_t(K) + 1;
    }
  }
  const float* q = p.race + row * p.V;
  float top = -1.f;  // this lane's largest mass / q over its kept tokens, at index `best` (its first on ties)
  int best = -1;
  for (int i = lane; i < r.V; i += 32) {
    const float xi = r.at(i);
    if (!r.kept(xi)) continue;
    const float ratio = r.mass(xi) / q[i];
    if (ratio > top) top = ratio, best = i;
  }
  for (int o = 16; o; o >>= 1) {  // the larger ratio, then the smaller index (-1: no kept token in that lane)
    const float t = __shfl_xor_sync(kFull, top, o);
    const int b = __shfl_xor_sync(kFull, best, o);
    if (t > top || (t == top && b >= 0 && (best < 0 || b < best))) top = t, best = b;
  }
  if (lane == 0) p.indices[row] = best;
}

}  // namespace

cudaError_t sample_categorical_launch(const SampleCategoricalParams& p, cudaStream_t stream) {
  if (p.rows < 0 || p.V < 1 || (p.rows + kWarps - 1) / kWarps > INT32_MAX) return cudaErrorInvalidValue;
  if (p.rows == 0) return cudaSuccess;
  const dim3 grid(unsigned((p.rows + kWarps - 1) / kWarps));
  return dispatch_dtype<float, __nv_bfloat16, __half>(p.dtype, [&](auto elem) {
    LAUNCH(sample_categorical_kernel<decltype(elem)>, grid, kWarps * 32, 0, stream)(p);
    return cudaGetLastError();
  });
}

}  // namespace fastar::kernels
