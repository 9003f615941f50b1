// The next work unit's operands (a tiny sequence, a multi-axis item), prefetched a few cache lines per call between
// the register blocks of this unit's products, so that their misses overlap its arithmetic. The hardware
// prefetchers stop at every 4 KB page, and a unit's rows span several or lie apart; asked for all at once, the
// prefetches queue on the core's few miss buffers and the loads wait behind them (tiny attention's level 1: 20%
// slower; a multi-axis item of HiT-256's 64 x 64 stage, 512 lines: as if not asked for). Spread, they took
// bench_tiny_attention's level-1 forward from 15.9 to 11.7 ms (AMD Zen 4, 2 threads). Per-ISA, like the kernels
// that include it (cpu/isa.h).
#pragma once
#include <cstdint>

namespace fastar::cpu::FASTAR_ISA {

// kLocality: __builtin_prefetch's, 3 into L1 (tiny attention), 2 into L2 (multi-axis, whose items fill L1 with
// their scratch and rows: spread into L1, its prefetches gained nothing; into L2, ~10%).
template <int kLocality = 3>
struct LinePrefetch {
  static constexpr int kMaxStreams = 8;  // the backwards' 7: q, dO, k, v read; dq, dk, dv written
  struct Stream {
    const char* p;
    int count[3];   // rows: level 0 innermost, levels 1 and 2 repeat it
    int64_t up[3];  // bytes from the last row of a level's pass to the first row of its next step
    int lines;      // cache lines per row
    bool write;
  };
  Stream s[kMaxStreams];
  int n = 0;
  int per = 0;  // lines per call; 0 on a task's first unit, which counts the calls
  int calls = 0, total = 0;
  int i = 0, r[3] = {}, c = 0;  // next line: stream, row at each level, line
  const char* row = nullptr;    // the next line's row

  // rows x count1 x count2 rows of row_len elements: row (j, j1, j2) at p + j row_stride + j1 stride1 + j2 stride2
  // (strides in elements).
  template <class T>
  void add(const T* p, int64_t row_stride, int rows, int row_len, bool write, int count1 = 1, int64_t stride1 = 0,
           int count2 = 1, int64_t stride2 = 0) {
    const int lines = (row_len * int(sizeof(T)) + 63) / 64;
    if (n == kMaxStreams || rows <= 0 || count1 <= 0 || count2 <= 0 || lines <= 0) return;  // a 9th, or empty: no
    const int64_t e = sizeof(T), s0 = row_stride * e, s1 = stride1 * e, s2 = stride2 * e;
    s[n] = {reinterpret_cast<const char*>(p), {rows, count1, count2},
            {s0, s1 - (rows - 1) * s0, s2 - (count1 - 1) * s1 - (rows - 1) * s0}, lines, write};
    if (n++ == 0) row = s[0].p;
    total += rows * count1 * count2 * lines;
  }
  void step(int m) {
    for (; m > 0 && i < n; --m) {
      const Stream& st = s[i];
      if (st.write) __builtin_prefetch(row + c * 64, 1, kLocality);
      else __builtin_prefetch(row + c * 64, 0, kLocality);
      if (++c < st.lines) continue;
      c = 0;
      int level = 0;
      while (level < 3 && ++r[level] == st.count[level]) r[level++] = 0;
      if (level < 3) row += st.up[level];
      else if (++i < n) row = s[i].p;
    }
  }
  void operator()() { ++calls, step(per); }
  // The lines not yet prefetched, then the next unit's streams from empty (set by add); per from this unit's calls.
  void next() {
    step(total);
    if (per == 0 && calls > 0) per = (total + calls - 1) / calls;
    n = total = calls = i = c = 0;
    r[0] = r[1] = r[2] = 0;
  }
};

}  // namespace fastar::cpu::FASTAR_ISA
