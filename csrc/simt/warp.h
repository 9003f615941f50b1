// Block barriers and warp collectives of the emulator. Every warp collective is one rendezvous
// (warp_collective): each lane leaves a pointer to its operands on its own stack and waits; the
// last lane to arrive computes every lane's result and readies the others. Call sites are
// recorded through default arguments (__builtin_FILE/LINE) so reports name file:line.
#pragma once
#include "block.h"

namespace simt::detail {

inline Worker& worker() { return *tl_worker; }

inline int syncthreads_impl(int pred, Site site) {
  SIMT_TSAN_IGNORE;
  Worker& w = worker();
  Fiber* me = w.current;
  me->state = State::barrier, me->site = site, me->pred = pred;
  ++w.at_barrier;
#ifdef SIMT_TSAN
  const unsigned generation = w.tsan.barriers;
  tsan_release(w.tsan.barrier(generation));
#endif
  w.suspend();
#ifdef SIMT_TSAN
  tsan_acquire(w.tsan.barrier(generation));
#endif
  return w.barrier_result;
}

inline std::string lane_str(const Fiber* f) {
  return "thread " + std::to_string(f->id) + " (warp " + std::to_string(f->id >> 5) + " lane " +
         std::to_string(f->id & 31) + ")";
}

// A warp barrier (__syncwarp) may be reached from different statements, and is the one collective that orders the
// memory accesses of its lanes (for TSan: each lane's arrival happens-before every lane's leaving).
inline void warp_collective(unsigned mask, const char* kind, Site site, void* data, WarpFn fn, bool barrier = false) {
  SIMT_TSAN_IGNORE;
  Worker& w = worker();
  Fiber* me = w.current;
  int lane = me->id & 31;
  Warp& warp = w.warps[me->id >> 5];
  auto what = [&] {  // only built on failure: this is the hot path of every shuffle
    char buf[64];
    std::snprintf(buf, sizeof buf, " with mask 0x%08x", mask);
    return std::string(kind) + buf + " at " + site.str();
  };
  if (!(mask >> lane & 1)) w.fail([&] { return what() + ": the mask excludes the calling " + lane_str(me); });
  if (mask & warp.valid & warp.exited) {
    w.fail([&] {
      char buf[64];
      std::snprintf(buf, sizeof buf, ": lanes 0x%08x of the mask have already exited (deadlock)", mask & warp.exited);
      return what() + " by " + lane_str(me) + buf;
    });
  }
  mask &= warp.valid;
  me->warp_data = data;
  WarpOp* op = nullptr;
  for (int o = 0; o < warp.nops; ++o) {
    WarpOp& x = warp.ops[o];
    if (x.mask == mask && (x.kind == kind || !std::strcmp(x.kind, kind)) && (barrier || x.site == site)) {
      op = &x;
    } else if (x.mask & mask) {
      w.fail([&] {
        return what() + " by " + lane_str(me) + " does not match the pending " + x.kind + " at " + x.site.str() +
               " of the same warp";
      });
    }
  }
  if (!op) {
    if (warp.nops == kMaxWarpOps) w.fail([&] { return what() + ": too many concurrent partial-mask warp operations"; });
    op = &warp.ops[warp.nops++];
    *op = WarpOp{mask, 0, kind, site};
  }
  op->arrived |= 1u << lane;
#ifdef SIMT_TSAN
  // The last lane to arrive acquires every lane's arrival, then hands its clock to each waiting lane's inbox; nothing
  // else is released to an inbox before its lane, suspended until then, acquires it.
  if (barrier) tsan_release(w.tsan.arrival(me->id));
#endif
  if (op->arrived != op->mask) {
    me->state = State::warp, me->site = site;
    w.suspend();
#ifdef SIMT_TSAN
    if (barrier) tsan_acquire(w.tsan.inbox(me->id));
#endif
    return;
  }
  Fiber* lanes = me - lane;
#ifdef SIMT_TSAN
  if (barrier) {
    for (int l = 0; l < 32; ++l)
      if (mask >> l & 1) tsan_acquire(w.tsan.arrival(lanes[l].id));
    for (int l = 0; l < 32; ++l)
      if (l != lane && (mask >> l & 1)) tsan_release(w.tsan.inbox(lanes[l].id));
  }
#endif
  fn(lanes, mask);
  *op = warp.ops[--warp.nops];
  bool rev = w.launch->schedule == Schedule::rev;
  for (int k = 0; k < 32; ++k) {
    int l = rev ? 31 - k : k;
    if (l != lane && (mask >> l & 1)) lanes[l].state = State::ready, w.push(lanes[l].id);
  }
}

template <class T>
struct ShflArgs {
  T value;
  int src;  // lane to read; the caller's own lane when out of its segment
};

template <class T>
void shfl_fn(Fiber* lanes, unsigned mask) {
  T out[32];
  for (int l = 0; l < 32; ++l) {
    if (!(mask >> l & 1)) continue;
    auto* me = static_cast<ShflArgs<T>*>(lanes[l].warp_data);
    // reading a lane outside the mask is undefined in CUDA: return the caller's own value
    int src = (mask >> me->src & 1) ? me->src : l;
    out[l] = static_cast<ShflArgs<T>*>(lanes[src].warp_data)->value;
  }
  for (int l = 0; l < 32; ++l)
    if (mask >> l & 1) static_cast<ShflArgs<T>*>(lanes[l].warp_data)->value = out[l];
}

template <class T>
T shfl(unsigned mask, T v, int src, const char* kind, Site site) {
  static_assert(std::is_trivially_copyable<T>::value, "shuffled types must be trivially copyable");
  SIMT_TSAN_IGNORE;
  src &= 31;
  Worker& w = worker();
  // CUDA leaves the value undefined; returning the caller's own would hide the bug. (Lanes past blockDim in a
  // partial last warp do not exist: reading one still gives the caller's own value.)
  if (!(mask >> src & 1) && (w.warps[w.current->id >> 5].valid >> src & 1)) {
    w.fail([&] {
      char buf[96];
      std::snprintf(buf, sizeof buf, " with mask 0x%08x at ", mask);
      return std::string(kind) + buf + site.str() + ": " + lane_str(w.current) + " reads lane " +
             std::to_string(src) + ", outside the mask";
    });
  }
  ShflArgs<T> args{v, src};
  warp_collective(mask, kind, site, &args, shfl_fn<T>);
  return args.value;
}

inline int lane_id() { return worker().current->id & 31; }

// A vector access of `bytes` at p: a GPU faults unless p is aligned to it.
inline void check_aligned(const void* p, size_t bytes, Site site) {
  const auto rest = reinterpret_cast<uintptr_t>(p) % bytes;
  if (rest) {
    Worker& w = worker();
    w.fail([&] {
      return "misaligned " + std::to_string(bytes) + "-byte vector access at " + site.str() + " by " +
             lane_str(w.current) + ": address % " + std::to_string(bytes) + " = " + std::to_string(rest);
    });
  }
}

struct BallotArgs {
  int pred;
  unsigned result;
};

inline void ballot_fn(Fiber* lanes, unsigned mask) {
  unsigned bits = 0;
  for (int l = 0; l < 32; ++l)
    if ((mask >> l & 1) && static_cast<BallotArgs*>(lanes[l].warp_data)->pred) bits |= 1u << l;
  for (int l = 0; l < 32; ++l)
    if (mask >> l & 1) static_cast<BallotArgs*>(lanes[l].warp_data)->result = bits;
}

inline unsigned ballot(unsigned mask, int pred, const char* kind, Site site) {
  SIMT_TSAN_IGNORE;
  BallotArgs args{pred, 0};
  warp_collective(mask, kind, site, &args, ballot_fn);
  return args.result & mask;
}

}  // namespace simt::detail

#define SIMT_SITE_PARAMS const char *file_ = __builtin_FILE(), int line_ = __builtin_LINE()
#define SIMT_SITE ::simt::detail::Site{file_, line_}

// A barrier is its call instruction (noinline: the return address is the call site), so two on one line, or the
// inlined copies of one helper called from both branches, are different barriers as on the GPU.
#define SIMT_BARRIER_SITE ::simt::detail::Site{file_, line_, __builtin_return_address(0)}
__attribute__((noinline)) inline void __syncthreads(SIMT_SITE_PARAMS) {
  ::simt::detail::syncthreads_impl(0, SIMT_BARRIER_SITE);
}
__attribute__((noinline)) inline int __syncthreads_count(int p, SIMT_SITE_PARAMS) {
  return ::simt::detail::syncthreads_impl(p, SIMT_BARRIER_SITE);
}
__attribute__((noinline)) inline int __syncthreads_and(int p, SIMT_SITE_PARAMS) {
  return ::simt::detail::syncthreads_impl(p, SIMT_BARRIER_SITE) == ::simt::detail::worker().n;
}
__attribute__((noinline)) inline int __syncthreads_or(int p, SIMT_SITE_PARAMS) {
  return ::simt::detail::syncthreads_impl(p, SIMT_BARRIER_SITE) > 0;
}

// Segment rules of the CUDA guide: `width` splits the warp into independent segments; a
// source outside the caller's segment yields the caller's own value.
template <class T>
T __shfl_sync(unsigned mask, T v, int src, int width = 32, SIMT_SITE_PARAMS) {
  int lane = ::simt::detail::lane_id();
  return ::simt::detail::shfl(mask, v, (lane & ~(width - 1)) + (src & (width - 1)), "__shfl_sync", SIMT_SITE);
}
template <class T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32, SIMT_SITE_PARAMS) {
  int lane = ::simt::detail::lane_id();
  int src = (lane & (width - 1)) >= int(delta) ? lane - int(delta) : lane;
  return ::simt::detail::shfl(mask, v, src, "__shfl_up_sync", SIMT_SITE);
}
template <class T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32, SIMT_SITE_PARAMS) {
  int lane = ::simt::detail::lane_id();
  int src = (lane & (width - 1)) + int(delta) < width ? lane + int(delta) : lane;
  return ::simt::detail::shfl(mask, v, src, "__shfl_down_sync", SIMT_SITE);
}
template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32, SIMT_SITE_PARAMS) {
  int lane = ::simt::detail::lane_id();
  int src = lane ^ lane_mask;
  if ((src & ~(width - 1)) != (lane & ~(width - 1))) src = lane;
  return ::simt::detail::shfl(mask, v, src, "__shfl_xor_sync", SIMT_SITE);
}
inline unsigned __ballot_sync(unsigned mask, int pred, SIMT_SITE_PARAMS) {
  return ::simt::detail::ballot(mask, pred, "__ballot_sync", SIMT_SITE);
}
inline int __any_sync(unsigned mask, int pred, SIMT_SITE_PARAMS) {
  return ::simt::detail::ballot(mask, pred, "__any_sync", SIMT_SITE) != 0;
}
inline int __all_sync(unsigned mask, int pred, SIMT_SITE_PARAMS) {
  unsigned m = mask & ::simt::detail::worker().warps[::simt::detail::worker().current->id >> 5].valid;
  return ::simt::detail::ballot(mask, pred, "__all_sync", SIMT_SITE) == m;
}
inline void __syncwarp(unsigned mask = 0xffffffffu, SIMT_SITE_PARAMS) {
  ::simt::detail::warp_collective(mask, "__syncwarp", SIMT_SITE, nullptr, [](::simt::detail::Fiber*, unsigned) {},
                                  true);
}
// Not-exited lanes: the emulator runs every lane diverged, so convergence is not modelled.
inline unsigned __activemask() {
  auto& w = ::simt::detail::worker();
  const auto& warp = w.warps[w.current->id >> 5];
  return warp.valid & ~warp.exited;
}
