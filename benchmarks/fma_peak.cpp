// The machine's float32 FMA peak: every thread runs 24 independent FMA chains of the widest vector the
// compiler targets (-march=native). Prints GFLOP/s summed over threads. Built and run by benchmarks/conftest.py.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

typedef float vf __attribute__((vector_size(64)));

static double run(long iters) {
  vf a[24], b = vf{} + 1.0000001f, c = vf{} + 1e-7f;
  for (int i = 0; i < 24; ++i) a[i] = vf{} + static_cast<float>(i);
  const auto t0 = std::chrono::steady_clock::now();
  for (long it = 0; it < iters; ++it) {
#pragma GCC unroll 24
    for (int i = 0; i < 24; ++i) a[i] = a[i] * b + c;
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  float sink = 0;
  for (int i = 0; i < 24; ++i) sink += a[i][0];
  if (sink == 42.f) std::puts("");  // the chains' results are used, so they are not optimized away
  return static_cast<double>(iters) * 24 * 16 * 2 / s / 1e9;
}

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 1;
  const long iters = 20000000;
  std::vector<double> gflops(threads);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) pool.emplace_back([&, t] { gflops[t] = run(iters); });
  for (auto& th : pool) th.join();
  double total = 0;
  for (double g : gflops) total += g;
  std::printf("%.1f\n", total);
}
