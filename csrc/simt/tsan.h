// ThreadSanitizer mode of the emulator (a build with -fsanitize=thread; nothing here costs anything otherwise).
// Every CUDA thread of a block is its own TSan fiber, created for the block and switched to with no implied order,
// so TSan orders two CUDA threads only through the edges CUDA guarantees:
//   - a launch: what the host did before it happens-before every thread (fibers inherit their creator's clock);
//     every thread happens-before the launch's return (each releases the launch at exit, the host acquires it);
//   - __syncthreads: each thread releases the block's barrier on arrival and acquires it on leaving (two objects used
//     in turn, so a thread already at the next barrier adds nothing to one still leaving this one);
//   - __syncwarp(mask): bar.warp.sync, the one warp instruction the PTX ISA says orders memory. Shuffles, votes, mma
//     and ldmatrix synchronise execution only (compute-sanitizer's racecheck agrees): no memory edge.
// Nothing orders two blocks of a launch (they run one after another here, concurrently on a GPU). The emulator's own
// bookkeeping, which every fiber touches, is hidden from TSan (ignore regions); a block's shared memory and its
// threads' stacks start with fresh shadow (remapped), so nothing of an earlier block is seen as a race.
#pragma once
#include <sys/mman.h>

#include <cstddef>
#include <cstdlib>
#include <deque>

#if defined(__SANITIZE_THREAD__)
#define SIMT_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SIMT_TSAN 1
#endif
#endif

#ifdef SIMT_TSAN
#include <sanitizer/tsan_interface.h>
extern "C" {  // exported by the TSan runtime, not declared by its header
void __tsan_ignore_thread_begin(void);
void __tsan_ignore_thread_end(void);
}
#endif

namespace simt::detail {

#ifdef SIMT_TSAN
// The emulator's own accesses in this scope are neither checked nor recorded (synchronisation still is).
struct TsanIgnore {
  TsanIgnore() { __tsan_ignore_thread_begin(); }
  ~TsanIgnore() { __tsan_ignore_thread_end(); }
  TsanIgnore(const TsanIgnore&) = delete;
};
// Inside an ignore region: the accesses of this scope are the CUDA thread's own (seen by TSan).
struct TsanUnignore {
  TsanUnignore() { __tsan_ignore_thread_end(); }
  ~TsanUnignore() { __tsan_ignore_thread_begin(); }
  TsanUnignore(const TsanUnignore&) = delete;
};
#define SIMT_TSAN_IGNORE ::simt::detail::TsanIgnore simt_tsan_ignore_
#define SIMT_TSAN_UNIGNORE ::simt::detail::TsanUnignore simt_tsan_unignore_
inline void tsan_release(const void* p) { __tsan_release(const_cast<void*>(p)); }
inline void tsan_acquire(const void* p) { __tsan_acquire(const_cast<void*>(p)); }
// Gives [p, p + n) (page-aligned) fresh zero pages, and TSan fresh shadow for them.
inline void tsan_fresh_pages(void* p, size_t n) {
  if (mmap(p, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0) == MAP_FAILED)
    std::abort();
}

// A worker's TSan state: the synchronisation objects of its block, in memory allocated for the block and freed after
// it (which drops TSan's clocks of its objects, so no block acquires what an earlier one released; 8 bytes apart,
// TSan's granule), and the fibers of the launch's finished threads. Those are destroyed when the launch ends, not
// with their block: TSan gives a destroyed fiber's id to a later one, which then counts as the same thread, ordered
// after the first. Past kLiveFibers (TSan allows 8128 threads) the oldest go first: blocks that far apart are ordered.
struct TsanState {
  static constexpr int kThreads = 1024;
  static constexpr size_t kLiveFibers = 6000;
  char* objects = nullptr;  // arrival of thread t, inbox of thread t, then the two barrier objects
  unsigned barriers = 0;    // __syncthreads completed in the block
  std::deque<void*> finished;
  size_t max_finished = kLiveFibers;  // this worker's share

  void begin_block() {
    objects = static_cast<char*>(std::calloc(2 * kThreads + 2, 8));
    barriers = 0;
  }
  void end_block() { std::free(objects), objects = nullptr; }
  void retire(void* fiber) {
    finished.push_back(fiber);
    for (; finished.size() > max_finished; finished.pop_front()) __tsan_destroy_fiber(finished.front());
  }
  void end_launch() {
    for (void* f : finished) __tsan_destroy_fiber(f);
    finished.clear();
  }
  const void* arrival(int thread) const { return objects + 8 * thread; }
  const void* inbox(int thread) const { return objects + 8 * (kThreads + thread); }
  const void* barrier(unsigned generation) const { return objects + 8 * (2 * kThreads + (generation & 1)); }
};
#else
#define SIMT_TSAN_IGNORE
#define SIMT_TSAN_UNIGNORE
#endif

}  // namespace simt::detail
