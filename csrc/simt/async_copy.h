// cp.async (sm_80's asynchronous global -> shared copy) as the GPU orders it: a copy lands only when its thread
// waits for its commit group (cp.async.wait_group N: all but the newest N committed groups), and other threads see
// it only after a __syncthreads that follows that wait. At issue the destination is filled with the schedule's
// byte (and ASan-poisoned until the copy lands), so a read before the wait, or of another thread's copy without
// the barrier after its wait, gives results that differ between schedules (ASan: use-after-poison at the read).
// The source is read at issue (the GPU may read it any time before the wait: a kernel must not change it).
#pragma once
#include <cstring>

#include "block.h"
#include "warp.h"

namespace simt::detail {

inline bool in_shared(const Worker& w, const void* p, size_t bytes) {
  const auto* c = static_cast<const unsigned char*>(p);
  return (c >= w.smem && c + bytes <= w.smem + w.launch->smem) ||
         (c >= w.static_smem && c + bytes <= w.static_smem + w.static_used);
}

// `bytes` (4, 8 or 16) to shared dst from global src, both aligned to `bytes`; only the first src_bytes are read,
// the rest are zeros (cp.async's src-size: 0 for a row past the end).
inline void cp_async(void* dst, const void* src, unsigned bytes, unsigned src_bytes, Site site) {
  SIMT_TSAN_IGNORE;  // TSan sees the source read now, the destination written at the wait (land_copies)
  check_aligned(dst, bytes, site);
  if (src_bytes) check_aligned(src, bytes, site);
  Worker& w = worker();
  if (!in_shared(w, dst, bytes))
    w.fail([&] { return "cp.async at " + site.str() + " by " + lane_str(w.current) + ": destination not in shared memory"; });
  AsyncCopy c{dst, bytes, src_bytes, w.current->commits, {}};
  {
    SIMT_TSAN_UNIGNORE;
    std::memcpy(c.data, src, src_bytes);
  }
  poison(dst, bytes, false);  // a second copy to a destination in flight
  std::memset(dst, w.launch->fill, bytes);
  poison(dst, bytes, true);
  w.current->copies.push_back(c);
}

inline void cp_async_commit() {
  SIMT_TSAN_IGNORE;
  ++worker().current->commits;
}

inline void cp_async_wait(int newest_in_flight) {
  Fiber& f = *worker().current;
  land_copies(f, f.commits - newest_in_flight);
}

}  // namespace simt::detail
