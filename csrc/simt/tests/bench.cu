// Emulator timings (not a test): fiber resumes per second at __syncthreads, lane shuffles per
// second, and an argmin kernel (nearest of C codes for Q queries, dim 32) against a plain C++
// loop. Usage: bench [Q C]; the numbers go into csrc/simt/README.md.
#include <chrono>
#include <cmath>

#include "check.h"

constexpr int kDim = 32, kQueries = 64, kCodes = 128;  // per block / per smem tile

__global__ void barrier_loop(int iters, int* out) {
  int v = 0;
  for (int i = 0; i < iters; ++i) __syncthreads(), v += i;
  if (threadIdx.x == 0) out[blockIdx.x] = v;
}

__global__ void shuffle_loop(int iters, int* out) {
  int v = threadIdx.x;
  for (int i = 0; i < iters; ++i) v += __shfl_xor_sync(0xffffffffu, v, 1 + i % 16);
  out[blockIdx.x * blockDim.x + threadIdx.x] = v;
}

// idx[q] = argmin_c |x[q] - code[c]|^2; 4 threads per query split the codes of each tile.
__global__ void argmin(const float* x, const float* code, int* idx, int Q, int C) {
  DYNAMIC_SHARED(float, tile);  // (kCodes, kDim)
  int q = blockIdx.x * kQueries + threadIdx.x / 4, part = threadIdx.x % 4;
  float xq[kDim];
  for (int d = 0; d < kDim; ++d) xq[d] = q < Q ? x[q * kDim + d] : 0.f;
  float best = INFINITY;
  int best_i = 0;
  for (int c0 = 0; c0 < C; c0 += kCodes) {
    for (int e = threadIdx.x; e < kCodes * kDim; e += blockDim.x)
      tile[e] = c0 + e / kDim < C ? code[c0 * kDim + e] : 0.f;
    __syncthreads();
    for (int c = part; c < kCodes && c0 + c < C; c += 4) {
      float dist = 0.f;
      for (int d = 0; d < kDim; ++d) dist += (xq[d] - tile[c * kDim + d]) * (xq[d] - tile[c * kDim + d]);
      if (dist < best) best = dist, best_i = c0 + c;
    }
    __syncthreads();
  }
  for (int o = 1; o < 4; o *= 2) {
    float other = __shfl_xor_sync(0xffffffffu, best, o);
    int other_i = __shfl_xor_sync(0xffffffffu, best_i, o);
    if (other < best || (other == best && other_i < best_i)) best = other, best_i = other_i;
  }
  if (part == 0 && q < Q) idx[q] = best_i;
}

template <class F>
static double seconds(F f) {
  auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

int main(int argc, char** argv) {
  int Q = argc > 2 ? std::atoi(argv[1]) : 4096, C = argc > 2 ? std::atoi(argv[2]) : 4096;
  DeviceBuffer<int> out(1 << 16);
  LAUNCH(barrier_loop, 4, 1024)(1, out.ptr);  // warm-up: maps the fiber stacks
  double t = seconds([&] { LAUNCH(barrier_loop, 4, 1024)(200, out.ptr); });
  std::printf("__syncthreads: %.1f M fiber resumes/s\n", 4 * 1024 * 200 / t / 1e6);
  t = seconds([&] { LAUNCH(shuffle_loop, 64, 256)(100, out.ptr); });
  std::printf("__shfl_xor_sync: %.1f M lane-shuffles/s\n", 64 * 256 * 100 / t / 1e6);

  auto x = random_floats(size_t(Q) * kDim, 7), code = random_floats(size_t(C) * kDim, 8);
  DeviceBuffer<float> dx(x), dcode(code);
  DeviceBuffer<int> didx(Q);
  t = seconds([&] {
    LAUNCH(argmin, (Q + kQueries - 1) / kQueries, kQueries * 4, kCodes * kDim * sizeof(float))(dx.ptr, dcode.ptr, didx.ptr, Q, C);
  });
  CHECK_CUDA(cudaGetLastError());
  std::vector<int> ref(Q);
  double t_ref = seconds([&] {
    for (int q = 0; q < Q; ++q) {
      float best = INFINITY;
      for (int c = 0; c < C; ++c) {
        float dist = 0.f;
        for (int d = 0; d < kDim; ++d) dist += (x[q * kDim + d] - code[c * kDim + d]) * (x[q * kDim + d] - code[c * kDim + d]);
        if (dist < best) best = dist, ref[q] = c;
      }
    }
  });
  auto idx = didx.download();
  for (int q = 0; q < Q; ++q) CHECK(idx[q] == ref[q]);
  std::printf("argmin %dx%d dim %d: %.3f s (%.0f M distances/s); plain C++ loop %.3f s\n", Q, C, kDim, t,
              double(Q) * C / t / 1e6, t_ref);
  return finish(Digest{});
}
