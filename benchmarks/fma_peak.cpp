// The float32 FMA peak of the instruction set fastar's CPU kernels run (build_info()["cpu_isa"]), for the
// report's "share of peak". Every thread runs kChains independent FMA chains, one vector register each: enough to
// cover FMA latency x FMA units (4-5 cycles x 1-2 units on x86 cores: 4-10 chains), and no more than the register
// file holds besides the two operands (16 ymm for AVX2, 32 zmm for AVX-512), so nothing spills to memory.
// Built per ISA by benchmarks/conftest.py (-mavx2 -mfma, -mavx512f, or plain x86-64 for base: SSE mul + add).
// Each thread's rate is over its own CPU time (CLOCK_THREAD_CPUTIME_ID), not wall time: a machine shared with
// other work (a CI run, a second benchmark) takes cores away for part of the wall time, and wall time then read a
// peak half the real one (seen here: 102 GFLOP/s on 2 Zen 3 cores whose GEMMs ran at 155 GFLOP/s; the CPU-time
// rate is 96 per core, 2 FMA units x 8 floats x 2 x ~3 GHz). The loop runs ~0.2 s per thread, long enough for
// the clock's resolution and a frequency ramp not to matter.
// Built with -mavx512bf16 it measures the bfloat16 dot-product peak instead (the bf16 modes' GEMMs on CPUs with
// AVX512-BF16 and no AMX): chains of vdpbf16ps, each 16 lanes x 2 products x 2 FLOP.
// Usage: fma_peak THREADS. Prints "GFLOP/s isa floats_per_vector chains threads", GFLOP/s summed over threads.
#include <time.h>

#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

#if defined(__AVX512BF16__)
#include <immintrin.h>
constexpr int kBytes = 64, kRegisters = 32, kChains = 24;
constexpr const char* kIsa = "avx512bf16";
#elif defined(__AVX512F__)
constexpr int kBytes = 64, kRegisters = 32, kChains = 24;
constexpr const char* kIsa = "avx512";
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int kBytes = 32, kRegisters = 16, kChains = 12;
constexpr const char* kIsa = "avx2";
#else
constexpr int kBytes = 16, kRegisters = 16, kChains = 12;
constexpr const char* kIsa = "base";
#endif
static_assert(kChains + 2 <= kRegisters, "the chains and the two operands must fit the vector register file");

#if defined(__AVX512BF16__)
constexpr int kFloats = kBytes / 2;  // bfloat16 operands per vector

static double run(long iters) {
  __m512 a[kChains];
  const __m512bh b = (__m512bh)_mm512_set1_epi16(0x3f80), c = (__m512bh)_mm512_set1_epi16(0x33d6);  // 1, ~1e-7
  for (int i = 0; i < kChains; ++i) a[i] = _mm512_set1_ps(static_cast<float>(i));
  timespec t0, t1;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
  for (long it = 0; it < iters; ++it) {
#pragma GCC unroll 32
    for (int i = 0; i < kChains; ++i) a[i] = _mm512_dpbf16_ps(a[i], b, c);
  }
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t1);
  const double s = double(t1.tv_sec - t0.tv_sec) + 1e-9 * double(t1.tv_nsec - t0.tv_nsec);
  float sink = 0;
  for (int i = 0; i < kChains; ++i) sink += _mm512_cvtss_f32(a[i]);
  if (sink == 42.f) std::puts("");
  return static_cast<double>(iters) * kChains * kFloats * 2 / s / 1e9;
}
#else
constexpr int kFloats = kBytes / 4;

typedef float vf __attribute__((vector_size(kBytes)));

static double run(long iters) {
  vf a[kChains], b = vf{} + 1.0000001f, c = vf{} + 1e-7f;
  for (int i = 0; i < kChains; ++i) a[i] = vf{} + static_cast<float>(i);
  timespec t0, t1;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
  for (long it = 0; it < iters; ++it) {
#pragma GCC unroll 32
    for (int i = 0; i < kChains; ++i) a[i] = a[i] * b + c;
  }
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t1);
  const double s = double(t1.tv_sec - t0.tv_sec) + 1e-9 * double(t1.tv_nsec - t0.tv_nsec);
  float sink = 0;
  for (int i = 0; i < kChains; ++i) sink += a[i][0];
  if (sink == 42.f) std::puts("");  // the chains' results are used, so they are not optimized away
  return static_cast<double>(iters) * kChains * kFloats * 2 / s / 1e9;
}
#endif

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 1;
  const long iters = 2000000000 / kChains;
  std::vector<double> gflops(threads);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) pool.emplace_back([&, t] { gflops[t] = run(iters); });
  for (auto& th : pool) th.join();
  double total = 0;
  for (double g : gflops) total += g;
  std::printf("%.1f %s %d %d %d\n", total, kIsa, kFloats, kChains, threads);
}
