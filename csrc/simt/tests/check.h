// Helpers of the emulator's self-checking test programs (portable CUDA: nvcc and the emulator).
#pragma once
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "kernels/common.cuh"

inline int g_failures = 0;

#define CHECK(cond)                                                          \
  do {                                                                       \
    if (!(cond)) {                                                           \
      std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      ++g_failures;                                                          \
    }                                                                        \
  } while (0)

#define CHECK_CUDA(expr) CHECK((expr) == cudaSuccess)

// A device copy of a host vector, copied back by download().
template <class T>
struct DeviceBuffer {
  T* ptr = nullptr;
  size_t n = 0;
  explicit DeviceBuffer(const std::vector<T>& host) : n(host.size()) {
    CHECK_CUDA(cudaMalloc(&ptr, n * sizeof(T) + 1));
    CHECK_CUDA(cudaMemcpy(ptr, host.data(), n * sizeof(T), cudaMemcpyHostToDevice));
  }
  explicit DeviceBuffer(size_t count, int byte = 0) : n(count) {
    CHECK_CUDA(cudaMalloc(&ptr, n * sizeof(T) + 1));
    CHECK_CUDA(cudaMemset(ptr, byte, n * sizeof(T)));
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { cudaFree(ptr); }
  std::vector<T> download() const {
    std::vector<T> host(n);
    CHECK_CUDA(cudaMemcpy(host.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost));
    return host;
  }
};

// FNV-1a of the bytes of every output: printed, so runs under different schedules can be
// compared bit for bit.
struct Digest {
  uint64_t h = 1469598103934665603ull;
  template <class T>
  void add(const std::vector<T>& v) {
    const auto* p = reinterpret_cast<const unsigned char*>(v.data());
    for (size_t i = 0; i < v.size() * sizeof(T); ++i) h = (h ^ p[i]) * 1099511628211ull;
  }
};

// Deterministic inputs in [-1, 1).
inline std::vector<float> random_floats(size_t n, uint32_t seed) {
  std::vector<float> v(n);
  for (auto& x : v) {
    seed = seed * 1664525u + 1013904223u;
    x = float(seed >> 8) / float(1 << 23) - 1.0f;
  }
  return v;
}

// Checks c (M, N) against a double matmul of a (M, K) and b (K, N), all row-major: the fp32
// error may reach ~1e-6 of the sum of |terms|, whatever the summation order.
inline void check_matmul(const std::vector<float>& c, const std::vector<float>& a, const std::vector<float>& b, int M,
                         int N, int K) {
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      double ref = 0, mag = 0;
      for (int k = 0; k < K; ++k) {
        double term = double(a[size_t(i) * K + k]) * b[size_t(k) * N + j];
        ref += term, mag += term < 0 ? -term : term;
      }
      double err = c[size_t(i) * N + j] - ref;
      CHECK((err < 0 ? -err : err) <= 1e-6 * mag + 1e-7);
    }
}

inline int finish(const Digest& d) {
  std::printf("digest %016llx\n", (unsigned long long)d.h);
  if (g_failures) std::fprintf(stderr, "%d checks failed\n", g_failures);
  return g_failures ? 1 : 0;
}
