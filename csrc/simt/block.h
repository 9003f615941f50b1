// Runs one thread block: its CUDA threads are fibers on the calling OS thread, `__syncthreads`
// and warp collectives are rendezvous points. A fiber that blocks switches straight to the
// next ready fiber; the scheduler loop only runs when none is ready, and then either releases
// a complete barrier, finishes the block, or reports divergence / deadlock (never hangs).
#pragma once
#include <vector_types.h>

#include <climits>
#include <cstdio>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "config.h"
#include "fiber.h"

namespace simt::detail {

// The next value of a splitmix64 sequence: cheap, and no instrumented library code.
inline uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Where a thread waits. pc (the return address of the call) tells apart two barriers on one line or the inlined
// copies of one helper; without it (warp collectives) file:line decides.
struct Site {
  const char* file;
  int line;
  const void* pc = nullptr;
  bool operator==(const Site& o) const {
    if (pc || o.pc) return pc == o.pc;
    return line == o.line && (file == o.file || std::strcmp(file, o.file) == 0);
  }
  std::string str() const { return std::string(file) + ":" + std::to_string(line); }
};

enum class State : unsigned char { ready, running, barrier, warp, exited };

// A cp.async in flight (async_copy.h): `bytes` to shared dst, the first src_bytes of them read from global memory
// at issue (data), the rest zeros; it lands when its thread waits for its commit group.
struct AsyncCopy {
  void* dst;
  unsigned bytes, src_bytes;
  int group;  // commits the thread had made when it issued the copy
  unsigned char data[16];
};

struct Fiber {
  Context ctx;
  Stack stack;
  uint3 tid;
  int id = 0;              // linear thread index in the block
  State state = State::exited;
  Site site{"", 0};        // where it waits
  int pred = 0;            // __syncthreads_count predicate
  void* warp_data = nullptr;  // this lane's operands of the pending warp collective
  std::vector<AsyncCopy> copies;  // this thread's cp.async in flight, oldest first
  int commits = 0;                // cp.async groups committed
};

// fn runs once, on the last lane to arrive, over the operands of all lanes in `mask`.
using WarpFn = void (*)(Fiber* warp_lanes, unsigned mask);

struct WarpOp {
  unsigned mask = 0, arrived = 0;
  const char* kind = nullptr;
  Site site{"", 0};
};

// Disjoint partial masks may rendezvous at the same time (e.g. two half-warps).
constexpr int kMaxWarpOps = 8;

struct Warp {
  unsigned valid = 0;   // lanes that exist (a partial last warp has fewer)
  unsigned exited = 0;
  int nops = 0;
  WarpOp ops[kMaxWarpOps];
};

struct Worker;
inline thread_local Worker* tl_worker = nullptr;

// What every block of a launch needs; shared by the OS threads of the launch.
struct LaunchInfo {
  dim3 grid, block;
  size_t smem = 0;
  Schedule schedule = Schedule::fwd;
  uint64_t seed = 0;
  size_t stack_bytes = 0;
  void (*body)(const void*) = nullptr;  // calls the kernel with the launch arguments
  const void* bound = nullptr;
  unsigned char fill = 0xFF;  // shared memory's content at block start: depends on the schedule, so reads
                              // before writes give results that differ between schedules
};

// Bytes after every shared memory area: a canary checked when the block ends (plain builds) and poisoned for ASan,
// so a write past the end is reported even where the allocation's rounding would have absorbed it.
constexpr size_t kGuard = 64;
constexpr unsigned char kCanary = 0xA5;
constexpr size_t kStaticSmemMax = 48 * 1024;  // static shared memory per block on every CUDA GPU
constexpr int kMaxStaticVars = 64;

// A STATIC_SHARED variable's place in the block's static shared area, found by its declaration.
struct StaticVar {
  const char* name;
  Site site;
  size_t offset, bytes;
};

inline void poison(void* p, size_t n, bool on) {
#ifdef SIMT_ASAN
  if (on) __asan_poison_memory_region(p, n);
  else __asan_unpoison_memory_region(p, n);
#else
  (void)p, (void)n, (void)on;
#endif
}

// Completes the thread's copies of commit groups before `group` (all when group exceeds its commits): their
// destinations, filled and poisoned since the copy was issued, get the data (for TSan: written by the thread now).
inline void land_copies(Fiber& f, int group) {
  SIMT_TSAN_IGNORE;
  size_t kept = 0;
  for (AsyncCopy& c : f.copies) {
    if (c.group >= group) {
      f.copies[kept++] = c;
      continue;
    }
    poison(c.dst, c.bytes, false);
#ifdef SIMT_TSAN
    unsigned char data[sizeof c.data];  // read here: the copy's record is the emulator's
    std::memcpy(data, c.data, sizeof data);
    SIMT_TSAN_UNIGNORE;
#else
    const unsigned char* data = c.data;
#endif
    std::memcpy(c.dst, data, c.src_bytes);
    std::memset(static_cast<unsigned char*>(c.dst) + c.src_bytes, 0, c.bytes - c.src_bytes);
  }
  f.copies.resize(kept);
}

// [p, p + n) filled with `fill`, then kGuard canary bytes, poisoned.
inline void fill_with_guard(unsigned char* p, size_t n, unsigned char fill) {
  std::memset(p, fill, n);
  std::memset(p + n, kCanary, kGuard);
  poison(p + n, kGuard, true);
}

inline bool guard_intact(unsigned char* guard) {
  poison(guard, kGuard, false);  // the block is over: the emulator itself may read it
  for (size_t i = 0; i < kGuard; ++i)
    if (guard[i] != kCanary) return false;
  return true;
}

[[noreturn]] void fiber_entry();

struct Worker {
  Context sched;
  std::unique_ptr<Fiber[]> fibers{new Fiber[1024]};
  int allocated = 0;             // fibers with a stack of stack_bytes
  size_t stack_bytes = 0;
  int n = 0;                     // threads in the current block
  std::unique_ptr<int[]> queue{new int[1024]};
  int head = 0, count = 0;
  Warp warps[32];
  int exited = 0, at_barrier = 0, barrier_result = 0;
  Fiber* current = nullptr;
  uint64_t rng = 0;
  const LaunchInfo* launch = nullptr;
  uint3 block_idx{0, 0, 0};
  unsigned char* smem = nullptr;  // dynamic shared memory, then its guard
  size_t smem_cap = 0;
  unsigned char* static_smem = nullptr;  // STATIC_SHARED variables, each followed by a guard
  size_t static_used = 0, static_bytes = 0;  // area used with padding and guards; bytes of the variables
  int nvars = 0;
  StaticVar vars[kMaxStaticVars];
  bool failed = false;
  std::string error;
#ifdef SIMT_TSAN
  TsanState tsan;
#endif

  static constexpr size_t kStaticCap = kStaticSmemMax + kMaxStaticVars * (kGuard + 128);

  ~Worker() {
    for (int i = 0; i < allocated; ++i) fibers[i].stack.release();
    poison(smem, smem_cap, false), poison(static_smem, kStaticCap, false);
    free_shared(smem, smem_cap);
    free_shared(static_smem, kStaticCap);
  }

  // Shared memory areas: from the heap, or under TSan whole pages, which get fresh shadow for every block.
  static unsigned char* alloc_shared(size_t bytes) {
#ifdef SIMT_TSAN
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return p == MAP_FAILED ? nullptr : static_cast<unsigned char*>(p);
#else
    return static_cast<unsigned char*>(std::aligned_alloc(128, bytes));
#endif
  }
  static void free_shared(unsigned char* p, size_t bytes) {
#ifdef SIMT_TSAN
    if (p) munmap(p, bytes);
#else
    (void)bytes;
    std::free(p);
#endif
  }

  uint64_t next_random() { return splitmix64(rng); }

  void push(int id) { queue[(head + count++) % 1024] = id; }

  Fiber* pop() {
    if (!count) return nullptr;
    if (launch->schedule == Schedule::shuffle && count > 1) {
      int k = (head + int(next_random() % unsigned(count))) % 1024;
      std::swap(queue[k], queue[head]);
    }
    Fiber* f = &fibers[queue[head]];
    head = (head + 1) % 1024, --count;
    return f;
  }

  // Makes fibers [first, first+len) with the given state ready, in schedule order.
  void wake(int first, int len, State from) {
    bool rev = launch->schedule == Schedule::rev;
    for (int k = 0; k < len; ++k) {
      Fiber& f = fibers[rev ? first + len - 1 - k : first + k];
      if (f.state == from) f.state = State::ready, push(f.id);
    }
  }

  // The current fiber stops running (its state says why) and the next ready one, or the
  // scheduler, takes over. Returns when the fiber is resumed.
  void suspend() {
    Fiber* me = current;
    switch_context(me->ctx, *next_context());
  }

  // The next ready fiber, now current, or the scheduler.
  Context* next_context() {
    Fiber* next = pop();
    if (!next) return &sched;
    next->state = State::running, current = next;
    return &next->ctx;
  }

  // Abandons the block. The message is built by a callable so that no string temporaries are
  // alive on the fiber stack, which is never unwound (they would leak).
  template <class F>
  [[noreturn]] void fail(F&& make_message) {
    SIMT_TSAN_IGNORE;
    failed = true;
    error = make_message();
    switch_context(current->ctx, sched, true);
    __builtin_unreachable();
  }

  bool ensure_fibers(size_t bytes) {
    if (bytes != stack_bytes) {
      for (int i = 0; i < allocated; ++i) fibers[i].stack.release();
      allocated = 0, stack_bytes = bytes;
    }
    for (; allocated < n; ++allocated)
      if (!fibers[allocated].stack.allocate(bytes)) return false;
    return true;
  }

  std::string describe_waiters() const;
  bool resolve();
  void prepare_shared(size_t dynamic_bytes);
  bool shared_guards_intact();
  void* static_shared(size_t bytes, size_t align, const char* name, Site site);
  bool run_block(const LaunchInfo& l, uint3 bidx);
};

// Fresh shared memory for a block: the dynamic area refilled and guarded, the static area emptied.
inline void Worker::prepare_shared(size_t dynamic_bytes) {
#ifdef SIMT_TSAN
  constexpr size_t kRound = 4096;  // whole pages, remapped below
#else
  constexpr size_t kRound = 128;
#endif
  if (dynamic_bytes + kGuard > smem_cap) {
    poison(smem, smem_cap, false);
    free_shared(smem, smem_cap);
    smem_cap = (dynamic_bytes + kGuard + kRound - 1) / kRound * kRound;
    smem = alloc_shared(smem_cap);
  }
  if (!static_smem) static_smem = alloc_shared(kStaticCap);
#ifdef SIMT_TSAN
  tsan_fresh_pages(smem, smem_cap), tsan_fresh_pages(static_smem, kStaticCap);
#endif
  poison(smem, smem_cap, false);
  fill_with_guard(smem, dynamic_bytes, launch->fill);
  poison(smem + dynamic_bytes + kGuard, smem_cap - dynamic_bytes - kGuard, true);
  if (static_used) poison(static_smem, static_used, false);
  static_used = static_bytes = 0, nvars = 0;
}

// The block's STATIC_SHARED variable declared at `site`: placed (filled, guarded) by the first thread that reaches
// the declaration, the same address for the others.
inline void* Worker::static_shared(size_t bytes, size_t align, const char* name, Site site) {
  SIMT_TSAN_IGNORE;
  for (int i = 0; i < nvars; ++i)
    if (vars[i].site == site && !std::strcmp(vars[i].name, name)) return static_smem + vars[i].offset;
  align = align < 16 ? 16 : align;
  const size_t offset = (static_used + align - 1) / align * align;
  if (nvars == kMaxStaticVars || static_bytes + bytes > kStaticSmemMax || offset + bytes + kGuard > kStaticCap)
    fail([&] { return "static shared memory above 48 KB per block (or over 64 variables) at " + site.str(); });
  vars[nvars++] = StaticVar{name, site, offset, bytes};
  fill_with_guard(static_smem + offset, bytes, launch->fill);
  static_used = offset + bytes + kGuard, static_bytes += bytes;
  return static_smem + offset;
}

// Plain builds learn of a write past a shared area only here, from its canary.
inline bool Worker::shared_guards_intact() {
  if (!guard_intact(smem + launch->smem)) {
    error = "a write past the " + std::to_string(launch->smem) + " bytes of dynamic shared memory";
    return false;
  }
  for (int i = 0; i < nvars; ++i)
    if (!guard_intact(static_smem + vars[i].offset + vars[i].bytes)) {
      error = "a write past static shared " + std::string(vars[i].name) + " (" + std::to_string(vars[i].bytes) +
              " bytes, declared at " + vars[i].site.str() + ")";
      return false;
    }
  return true;
}

// Called with no ready fiber. Returns false when the block is done or has failed.
inline bool Worker::resolve() {
  if (exited == n) return false;
  bool waiting_only_at_barrier = at_barrier + exited == n;
  if (!waiting_only_at_barrier) {
    failed = true, error = "warp-collective deadlock: " + describe_waiters();
    return false;
  }
  const Fiber* first = nullptr;
  int count_pred = 0;
  for (int i = 0; i < n; ++i) {
    const Fiber& f = fibers[i];
    if (f.state != State::barrier) continue;
    if (first && !(f.site == first->site)) {
      failed = true, error = "threads wait at different __syncthreads: " + describe_waiters();
      return false;
    }
    first = &f, count_pred += f.pred != 0;
  }
  if (exited) {
    failed = true;
    error = "barrier divergence: " + std::to_string(exited) + " of " + std::to_string(n) +
            " threads exited while " + describe_waiters();
    return false;
  }
  barrier_result = count_pred, at_barrier = 0;
#ifdef SIMT_TSAN
  ++tsan.barriers;
#endif
  wake(0, n, State::barrier);
  return true;
}

// "<k> threads wait at __syncthreads (file:line); ..." grouped by site, then warp ops.
inline std::string Worker::describe_waiters() const {
  std::string out;
  std::unique_ptr<bool[]> done(new bool[n]());
  for (int i = 0; i < n; ++i) {
    if (done[i] || fibers[i].state != State::barrier) continue;
    int k = 0;
    for (int j = i; j < n; ++j)
      if (!done[j] && fibers[j].state == State::barrier && fibers[j].site == fibers[i].site) done[j] = true, ++k;
    out += (out.empty() ? "" : "; ") + std::to_string(k) + " waiting at __syncthreads (" + fibers[i].site.str() + ")";
  }
  char buf[160];
  for (int w = 0; w < (n + 31) / 32; ++w)
    for (int o = 0; o < warps[w].nops; ++o) {
      const WarpOp& op = warps[w].ops[o];
      std::snprintf(buf, sizeof buf, "warp %d: lanes 0x%08x of mask 0x%08x waiting in %s (", w, op.arrived, op.mask,
                    op.kind);
      out += (out.empty() ? "" : "; ") + std::string(buf) + op.site.str() + ")";
      if (op.mask & warps[w].exited) {
        std::snprintf(buf, sizeof buf, ", lanes 0x%08x of the mask have exited", op.mask & warps[w].exited);
        out += buf;
      }
    }
  return out;
}

inline bool Worker::run_block(const LaunchInfo& l, uint3 bidx) {
  SIMT_TSAN_IGNORE;
  launch = &l, block_idx = bidx;
  n = int(l.block.x * l.block.y * l.block.z);
  if (!ensure_fibers(l.stack_bytes)) {
    failed = true, error = "cannot map fiber stacks (lower SIMT_STACK_KB)";
    return false;
  }
  for (int i = 0; i < 1024; ++i) {  // copies an abandoned block left in flight, before shared memory is refilled
    for (const AsyncCopy& c : fibers[i].copies) poison(c.dst, c.bytes, false);
    fibers[i].copies.clear();
  }
  prepare_shared(l.smem);
  uint64_t linear_block = bidx.x + uint64_t(l.grid.x) * (bidx.y + uint64_t(l.grid.y) * bidx.z);
  rng = l.seed ^ (linear_block * 0xd1b54a32d192ed03ull);
  head = count = exited = at_barrier = 0;
  failed = false;
  for (int w = 0; w < (n + 31) / 32; ++w)
    warps[w] = Warp{}, warps[w].valid = n - 32 * w >= 32 ? ~0u : (1u << (n - 32 * w)) - 1;
  for (int i = 0; i < n; ++i) {
    Fiber& f = fibers[i];
    f.commits = 0;
    f.id = i, f.state = State::ready;
    f.tid = uint3{unsigned(i % l.block.x), unsigned(i / l.block.x % l.block.y), unsigned(i / (l.block.x * l.block.y))};
    prepare_context(f.ctx, f.stack, fiber_entry);
  }
  wake(0, n, State::ready);
#ifdef SIMT_TSAN
  tsan.begin_block();
#endif
  while (Fiber* f = pop()) {
    f->state = State::running, current = f;
    switch_context(sched, f->ctx);
    if (failed || !resolve()) break;
  }
#ifdef SIMT_TSAN
  for (int i = 0; i < n; ++i)  // (the fibers of an abandoned block's threads, still in an ignore region, leak)
    if (fibers[i].state == State::exited) tsan.retire(fibers[i].ctx.tsan);
  tsan.end_block();
#endif
  if (!failed && !shared_guards_intact()) failed = true;
  return !failed;
}

// A CUDA thread's life: run the kernel, then leave the block for good.
[[noreturn]] inline void fiber_entry() {
  fiber_started();
  Worker& w = *tl_worker;
  w.launch->body(w.launch->bound);
  Fiber* me = w.current;
  land_copies(*me, INT_MAX);  // copies never waited for still land (the hardware completes them)
#ifdef SIMT_TSAN
  tsan_release(w.launch);  // acquired by the host when the launch returns
#endif
  Context* next;
  {
    SIMT_TSAN_IGNORE;
    int lane = me->id & 31;
    Warp& warp = w.warps[me->id >> 5];
    me->state = State::exited, ++w.exited;
    warp.exited |= 1u << lane;
    for (int o = 0; o < warp.nops; ++o)
      if (warp.ops[o].mask >> lane & 1)
        w.fail([&] {
          return "thread " + std::to_string(me->id) + " (warp " + std::to_string(me->id >> 5) + " lane " +
                 std::to_string(lane) + ") exited while its warp waits for it; " + w.describe_waiters();
        });
    next = w.next_context();
  }
  switch_context(me->ctx, *next, true);  // outside the ignore region: TSan destroys an exited thread's fiber
  __builtin_unreachable();
}

}  // namespace simt::detail
