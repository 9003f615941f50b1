// Kernel launch under the emulator: validates the configuration like the CUDA runtime, runs
// the blocks (synchronously, optionally spread over OS threads), and turns a failed block into
// cudaErrorLaunchFailure plus a message naming the kernel, the block and the source lines.
#pragma once
#include <driver_types.h>

#include <atomic>
#include <thread>
#include <tuple>
#include <type_traits>
#include <unordered_map>
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

inline const char* config_problem(dim3 g, dim3 b) {
  if (!g.x || !g.y || !g.z || !b.x || !b.y || !b.z) return "zero grid or block dimension";
  if (uint64_t(b.x) * b.y * b.z > 1024 || b.z > 64) return "more than 1024 threads per block (or blockDim.z > 64)";
  if (g.y > 65535 || g.z > 65535) return "gridDim.y or gridDim.z above 65535";
  return nullptr;
}

// cudaFuncAttributeMaxDynamicSharedMemorySize of each kernel, as set by cudaFuncSetAttribute.
inline std::unordered_map<const void*, int>& smem_attributes() {
  static std::unordered_map<const void*, int> m;
  return m;
}

// Why a GPU would refuse `smem` bytes of dynamic shared memory for `kernel` (empty when it would not).
inline std::string smem_problem(const void* kernel, size_t smem, const Config& cfg) {
  if (smem > size_t(cfg.max_dynamic_smem))
    return std::to_string(smem) + " bytes of dynamic shared memory, above the device's opt-in limit of " +
           std::to_string(cfg.max_dynamic_smem) + " (simt::Config::max_dynamic_smem, SIMT_MAX_SMEM)";
  if (smem <= 48 * 1024) return "";
  std::lock_guard<std::mutex> lock(state_mutex());
  auto it = smem_attributes().find(kernel);
  if (it == smem_attributes().end() || size_t(it->second) < smem)
    return std::to_string(smem) + " bytes of dynamic shared memory, above 48 KB, without cudaFuncSetAttribute("
           "cudaFuncAttributeMaxDynamicSharedMemorySize) to at least that";
  return "";
}

// The byte shared memory starts as: 0xFF (NaN, -1) forward, 0x7F (3.4e38, a large int) in reverse, from the seed
// when shuffled, so a value read before it is written changes with the schedule.
inline unsigned char fill_byte(const Config& cfg) {
  if (cfg.schedule == Schedule::fwd) return 0xFF;
  if (cfg.schedule == Schedule::rev) return 0x7F;
  return static_cast<unsigned char>((cfg.seed * 0x9e3779b97f4a7c15ull) >> 56 | 1);
}

// A seeded permutation of the blocks [0, total) (Fisher-Yates), the order they run in when shuffled.
inline std::vector<uint64_t> shuffled_blocks(uint64_t total, uint64_t seed) {
  std::vector<uint64_t> order(total);
  for (uint64_t b = 0; b < total; ++b) order[b] = b;
  uint64_t state = seed ^ 0x6a09e667f3bcc909ull;  // a sequence apart from the blocks' own thread shuffles
  for (uint64_t i = total; i > 1; --i) std::swap(order[i - 1], order[splitmix64(state) % i]);
  return order;
}

inline cudaError_t run_launch(const LaunchSite& at, const void* kernel, dim3 grid, dim3 block, size_t smem,
                              void (*body)(const void*), const void* bound) {
  const std::string where = std::string("invalid launch of ") + at.kernel + " at " + at.site.str() + ": ";
  if (const char* why = config_problem(grid, block)) return report(cudaErrorInvalidConfiguration, where + why);
  Config cfg = config();
  const std::string smem_why = smem_problem(kernel, smem, cfg);
  if (!smem_why.empty()) return report(cudaErrorInvalidValue, where + smem_why);
  LaunchInfo info{grid, block, smem, cfg.schedule, cfg.seed, size_t(cfg.stack_kb) * 1024, body, bound, fill_byte(cfg)};
  uint64_t total = uint64_t(grid.x) * grid.y * grid.z;
  // Blocks start in the schedule's order (index order forward, reversed in reverse), as a GPU sets none: a result
  // that depends on it (a block reading what another wrote, fp32 atomics added across blocks) changes with the
  // schedule, on one OS thread too.
  const std::vector<uint64_t> shuffled =
      cfg.schedule == Schedule::shuffle ? shuffled_blocks(total, cfg.seed) : std::vector<uint64_t>();
  auto block_at = [&](uint64_t k) {
    return cfg.schedule == Schedule::fwd ? k : cfg.schedule == Schedule::rev ? total - 1 - k : shuffled[k];
  };
  std::atomic<uint64_t> next{0};
  std::atomic<bool> failed{false};
  std::string error;
  auto work = [&] {
    std::unique_ptr<Worker> w = take_worker();
    Worker* outer = tl_worker;  // launches from inside a kernel are not supported; keep the host's
    tl_worker = w.get();
    init_thread_context(w->sched);
#ifdef SIMT_TSAN
    w->tsan.max_finished = TsanState::kLiveFibers / size_t(cfg.os_threads);
#endif
    // relaxed: a stronger order would hide cross-block races from TSan
    for (uint64_t k; !failed.load(std::memory_order_relaxed) &&
                     (k = next.fetch_add(1, std::memory_order_relaxed)) < total;) {
      const uint64_t b = block_at(k);
      uint3 idx{unsigned(b % grid.x), unsigned(b / grid.x % grid.y), unsigned(b / (uint64_t(grid.x) * grid.y))};
      if (w->run_block(info, idx) || failed.exchange(true)) continue;
      char where[96];
      std::snprintf(where, sizeof where, ", block (%u,%u,%u): ", idx.x, idx.y, idx.z);
      error = std::string("kernel ") + at.kernel + " launched at " + at.site.str() + where + w->error;
    }
#ifdef SIMT_TSAN
    // Every CUDA thread's work happens-before the launch returns (fiber_entry released it); acquired once this OS
    // thread runs no more blocks of the launch, whose threads would otherwise inherit it from their creator.
    tsan_acquire(&info);
    w->tsan.end_launch();
#endif
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
    run_launch(at, reinterpret_cast<const void*>(kernel), grid, block, smem, body, &bound);
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
