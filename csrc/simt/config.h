// Run-time settings of the SIMT emulator and the error report of the latest launch.
// Settings start from the environment (SIMT_SCHED, SIMT_SEED, SIMT_THREADS, SIMT_STACK_KB, SIMT_MAX_SMEM) and
// can be changed by the host program at any time; each launch takes a snapshot.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

namespace simt {

// Order in which blocks and the ready CUDA threads of a block run; results that change with it reveal a race.
enum class Schedule { fwd, rev, shuffle };

struct Config {
  Schedule schedule = Schedule::fwd;
  uint64_t seed = 0;    // shuffle seed; each block derives its own from it and its index
  int os_threads = 1;   // blocks are spread over this many OS threads
  int stack_kb = 128;   // per CUDA thread; raise for kernels with large local arrays
  // Opt-in dynamic shared memory per block (cudaDevAttrMaxSharedMemoryPerBlockOptin): the smallest of the chips
  // fastar supports (sm_86 / sm_89 / sm_120: 99 KB), so a request only an H100 grants fails here as on an RTX 4090.
  int max_dynamic_smem = 101376;
};

namespace detail {

inline std::mutex& state_mutex() {
  static std::mutex m;
  return m;
}

inline Config config_from_env() {
  Config c;
  if (const char* s = std::getenv("SIMT_SCHED")) {
    if (!std::strcmp(s, "rev")) c.schedule = Schedule::rev;
    if (!std::strcmp(s, "shuffle")) c.schedule = Schedule::shuffle;
  }
  if (const char* s = std::getenv("SIMT_SEED")) c.seed = std::strtoull(s, nullptr, 10);
  if (const char* s = std::getenv("SIMT_THREADS")) c.os_threads = std::atoi(s) > 0 ? std::atoi(s) : 1;
  if (const char* s = std::getenv("SIMT_STACK_KB")) c.stack_kb = std::atoi(s) >= 16 ? std::atoi(s) : 16;
  if (const char* s = std::getenv("SIMT_MAX_SMEM")) c.max_dynamic_smem = std::atoi(s) > 0 ? std::atoi(s) : 0;
  return c;
}

inline Config& config_ref() {
  static Config c = config_from_env();
  return c;
}

inline std::string& last_message_ref() {
  static std::string m;
  return m;
}

inline void set_last_message(const std::string& m) {
  std::lock_guard<std::mutex> lock(state_mutex());
  last_message_ref() = m;
}

}  // namespace detail

inline Config config() {
  std::lock_guard<std::mutex> lock(detail::state_mutex());
  return detail::config_ref();
}

inline void set_config(const Config& c) {
  std::lock_guard<std::mutex> lock(detail::state_mutex());
  detail::config_ref() = c;
  if (detail::config_ref().os_threads < 1) detail::config_ref().os_threads = 1;
  if (detail::config_ref().stack_kb < 16) detail::config_ref().stack_kb = 16;
}

// Why the latest launch failed (with file:line of the offending statements); empty after a
// launch that succeeded.
inline std::string last_error_message() {
  std::lock_guard<std::mutex> lock(detail::state_mutex());
  return detail::last_message_ref();
}

}  // namespace simt
