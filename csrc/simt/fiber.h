// Fibers for the SIMT emulator: one per CUDA thread, all fibers of a block on one OS thread.
// x86-64 uses a hand-written switch (~14 ns); ucontext is ~20x slower (a syscall per swap) and
// is the fallback elsewhere or with -DSIMT_UCONTEXT. ASan and TSan (tsan.h) are told about every switch.
#pragma once
#include <pthread.h>
#include <sys/mman.h>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#if !defined(__x86_64__) && !defined(SIMT_UCONTEXT)
#define SIMT_UCONTEXT 1
#endif
#ifdef SIMT_UCONTEXT
#include <ucontext.h>
#endif

#if defined(__SANITIZE_ADDRESS__)
#define SIMT_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SIMT_ASAN 1
#endif
#endif
#ifdef SIMT_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#include "tsan.h"

#ifndef SIMT_UCONTEXT
// simt_switch(save_sp, new_sp): push the SysV callee-saved registers, swap stacks, pop, ret.
// Weak + hidden so every translation unit may emit it and each shared object keeps its own.
asm(R"(
  .pushsection .text.simt_switch,"axG",@progbits,simt_switch,comdat
  .weak simt_switch
  .hidden simt_switch
  .type simt_switch,@function
simt_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size simt_switch, .-simt_switch
  .popsection
)");
extern "C" void simt_switch(void** save_sp, void* new_sp);
#endif

namespace simt::detail {

// A place execution can be switched to: the OS thread's own stack (the scheduler) or a fiber.
struct Context {
#ifdef SIMT_UCONTEXT
  ucontext_t uc;
#else
  void* sp = nullptr;
#endif
  void* fake_stack = nullptr;       // ASan's per-fiber fake-stack handle
  const void* stack_lo = nullptr;   // usable stack bounds, for ASan
  size_t stack_size = 0;
#ifdef SIMT_TSAN
  void* tsan = nullptr;             // TSan's fiber (a CUDA thread) or the OS thread's own state (a scheduler)
#endif
};

// Records the bounds of the calling OS thread's stack so ASan can follow switches back to it.
inline void init_thread_context(Context& c) {
  pthread_attr_t attr;
  void* lo = nullptr;
  size_t size = 0;
  if (pthread_getattr_np(pthread_self(), &attr) == 0) {
    pthread_attr_getstack(&attr, &lo, &size);
    pthread_attr_destroy(&attr);
  }
  c.stack_lo = lo;
  c.stack_size = size;
#ifdef SIMT_TSAN
  c.tsan = __tsan_get_current_fiber();
#endif
}

// A fiber stack with a PROT_NONE guard page below it, so an overflow faults instead of
// silently corrupting the neighbouring fiber. MAP_NORESERVE: only touched pages cost memory.
struct Stack {
  char* base = nullptr;  // start of the mapping (guard page)
  size_t bytes = 0;      // mapping size including the guard page

  static size_t page() { return 4096; }
  bool allocate(size_t usable) {
    bytes = usable + page();
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return false;
    base = static_cast<char*>(p);
    mprotect(base, page(), PROT_NONE);
    return true;
  }
  void release() {
    if (base) munmap(base, bytes);
    base = nullptr;
  }
  char* lo() const { return base + page(); }
  size_t size() const { return bytes - page(); }
};

// Makes `c` start `entry()` on `s` at the next switch to it. entry must never return.
inline void prepare_context(Context& c, Stack& s, void (*entry)()) {
  c.stack_lo = s.lo();
  c.stack_size = s.size();
  c.fake_stack = nullptr;
#ifdef SIMT_ASAN
  // A reused stack still carries the poison of the frames of an abandoned block.
  __asan_unpoison_memory_region(s.lo(), s.size());
#endif
#ifdef SIMT_TSAN
  // A new CUDA thread: a stack without the accesses of the thread that used it in an earlier block, a TSan fiber
  // that starts from its creator's clock (the launch's host side, never an earlier block's threads).
  tsan_fresh_pages(s.lo(), s.size());
  c.tsan = __tsan_create_fiber(0);
#endif
#ifdef SIMT_UCONTEXT
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = s.lo();
  c.uc.uc_stack.ss_size = s.size();
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
#else
  // Frame popped by simt_switch: 6 callee-saved registers, then `ret` into entry with
  // rsp = top - 8, the alignment a called function expects (a fake return address slot).
  auto* top = reinterpret_cast<void**>(reinterpret_cast<uintptr_t>(s.lo() + s.size()) & ~uintptr_t(15));
  top[-1] = nullptr;
  top[-2] = reinterpret_cast<void*>(entry);
  for (int i = 3; i <= 8; ++i) top[-i] = nullptr;
  c.sp = top - 8;
#endif
}

// Switches from `from` to `to`. `from_exits`: `from` will never be resumed (lets ASan free
// its fake stack).
inline void switch_context(Context& from, Context& to, bool from_exits = false) {
#ifdef SIMT_ASAN
  __sanitizer_start_switch_fiber(from_exits ? nullptr : &from.fake_stack, to.stack_lo, to.stack_size);
#endif
  (void)from_exits;
#ifdef SIMT_TSAN
  void* to_fiber;
  {
    TsanIgnore ignore;  // an exiting thread reads nothing after its last release (fiber_entry)
    to_fiber = to.tsan;
  }
  __tsan_switch_to_fiber(to_fiber, __tsan_switch_to_fiber_no_sync);  // no order between CUDA threads from a switch
#endif
#ifdef SIMT_UCONTEXT
  swapcontext(&from.uc, &to.uc);
#else
  simt_switch(&from.sp, to.sp);
#endif
#ifdef SIMT_ASAN
  __sanitizer_finish_switch_fiber(from.fake_stack, nullptr, nullptr);
#endif
}

// First thing a fresh fiber does: completes the switch that started it.
inline void fiber_started() {
#ifdef SIMT_ASAN
  __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
}

}  // namespace simt::detail
