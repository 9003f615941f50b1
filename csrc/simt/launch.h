// Kernel launch under the emulator: validates the configuration like the CUDA runtime, runs
// the blocks (synchronously, optionally spread over OS threads), and turns a failed block into
// cudaErrorLaunchFailure plus a message naming the kernel, the block and the source lines.
#pragma once
#include <driver_types.h>

#include <atomic>
#include <thread>
#include <tuple>
#include <type_traits>
#include <vector>

#include "block.h"

namespace simt::detail {

inline std::atomic<int>& last_error() {
  static std::atomic<int> e{cudaSuccess};
  return e;
}

// Workers keep their fiber stacks between launches; each is used by one OS thread at a time.
inline std::vector<std::unique_ptr<Worker>>& idle_workers() {
  static std::vector<std::unique_ptr<Worker>> v;
  return v;
}

inline std::unique_ptr<Worker> take_worker() {
  std::lock_guard<std::mutex> lock(state_mutex());
  auto& v = idle_workers();
  if (v.empty()) return std::make_unique<Worker>();
  auto w = std::move(v.back());
  v.pop_back();
  return w;
}

inline void give_worker(std::unique_ptr<Worker> w) {
  std::lock_guard<std::mutex> lock(state_mutex());
  idle_workers().push_back(std::move(w));
}

struct LaunchSite {
  const char* kernel;
  Site site;
};

inline cudaError_t report(cudaError_t e, const std::string& msg) {
  last_error().store(e);
  set_last_message(msg);
  return e;
}

inline const char* config_problem(dim3 g, dim3 b, size_t smem) {
  if (!g.x || !g.y || !g.z || !b.x || !b.y || !b.z) return "zero grid or block dimension";
  if (uint64_t(b.x) * b.y * b.z > 1024 || b.z > 64) return "more than 1024 threads per block (or blockDim.z > 64)";
  if (g.y > 65535 || g.z > 65535) return "gridDim.y or gridDim.z above 65535";
  if (smem > 227 * 1024) return "dynamic shared memory above 227 KB";
  return nullptr;
}

inline cudaError_t run_launch(const LaunchSite& at, dim3 grid, dim3 block, size_t smem, void (*body)(const void*),
                              const void* bound) {
  if (const char* why = config_problem(grid, block, smem))
    return report(cudaErrorInvalidConfiguration, std::string("invalid launch of ") + at.kernel + " at " +
                                                     at.site.str() + ": " + why);
  Config cfg = config();
  LaunchInfo info{grid, block, smem, cfg.schedule, cfg.seed, size_t(cfg.stack_kb) * 1024, body, bound};
  uint64_t total = uint64_t(grid.x) * grid.y * grid.z;
  std::atomic<uint64_t> next{0};
  std::atomic<bool> failed{false};
  std::string error;
  auto work = [&] {
    std::unique_ptr<Worker> w = take_worker();
    Worker* outer = tl_worker;  // launches from inside a kernel are not supported; keep the host's
    tl_worker = w.get();
    init_thread_context(w->sched);
    // relaxed: a stronger order would hide cross-block races from TSan
    for (uint64_t b; !failed.load(std::memory_order_relaxed) && (b = next.fetch_add(1, std::memory_order_relaxed)) < total;) {
      uint3 idx{unsigned(b % grid.x), unsigned(b / grid.x % grid.y), unsigned(b / (uint64_t(grid.x) * grid.y))};
      if (w->run_block(info, idx) || failed.exchange(true)) continue;
      char where[96];
      std::snprintf(where, sizeof where, ", block (%u,%u,%u): ", idx.x, idx.y, idx.z);
      error = std::string("kernel ") + at.kernel + " launched at " + at.site.str() + where + w->error;
    }
    tl_worker = outer;
    give_worker(std::move(w));
  };
  int extra = int(std::min<uint64_t>(uint64_t(cfg.os_threads), total)) - 1;
  std::vector<std::thread> threads;
  for (int i = 0; i < extra; ++i) threads.emplace_back(work);
  work();
  for (auto& t : threads) t.join();
  if (failed) return report(cudaErrorLaunchFailure, error);
  set_last_message("");
  return cudaSuccess;
}

template <class... P>
struct Launch {
  void (*kernel)(P...);
  LaunchSite at;
  dim3 grid, block;
  size_t smem;

  // Each CUDA thread gets its own copies of the arguments, converted to the parameter types.
  template <class... A>
  void operator()(A&&... args) const {
    static_assert(sizeof...(A) == sizeof...(P), "wrong number of kernel arguments");
    struct Bound {
      void (*kernel)(P...);
      std::tuple<std::decay_t<P>...> args;
    } bound{kernel, std::tuple<std::decay_t<P>...>(std::forward<A>(args)...)};
    auto body = [](const void* p) {
      const Bound& b = *static_cast<const Bound*>(p);
      std::apply(b.kernel, b.args);
    };
    run_launch(at, grid, block, smem, body, &bound);
  }
};

}  // namespace simt::detail

namespace simt {

// Backs LAUNCH(kernel, grid, block[, smem[, stream]])(args...) of kernels/common.cuh; name and
// file:line only serve error messages.
template <class... P>
detail::Launch<P...> launcher(void (*kernel)(P...), const char* name, const char* file, int line, dim3 grid,
                              dim3 block, size_t smem = 0, cudaStream_t = nullptr) {
  return {kernel, {name, {file, line}}, grid, block, smem};
}

}  // namespace simt
