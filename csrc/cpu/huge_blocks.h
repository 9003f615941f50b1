// Large CPU outputs on transparent huge pages, from a bounded cache of blocks the kernels' earlier outputs released
// (a training step's blocks, keep_peak below, on 4 KB pages: see map_block).
//
// A fresh output of tens of MB costs the kernel a page fault per 4 KB (the pages madvise(MADV_HUGEPAGE) makes 2 MB
// cut that 512-fold) and the kernel's zeroing of every page, which glibc repeats on each call: it maps blocks this
// large afresh and unmaps them on free. FractalGen's attention at level 1 (1024 x 8 x 22 x 64: a 46 MB output,
// 138 MB of gradients) spent about a fifth of its forward and backward there. The cache keeps the blocks of freed
// outputs (whole 2 MB pages) up to a limit, oldest evicted first, and serves a request from the smallest block at
// most a quarter larger, so that the next call of the same shape writes warm pages.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace fastar::cpu {

// Outputs of at least this many bytes come from the cache; smaller ones from at::empty (glibc reuses those).
constexpr int64_t kHugeBlockMinBytes = int64_t(4) << 20;
// Inside keep_peak scopes (training steps), by default, tensors of at least this many bytes: glibc's largest mmap
// threshold.
// glibc's heap serves smaller ones again, warm, once one of their size was freed; larger ones it maps afresh and
// unmaps on every free. From the cache those smaller ones were a fresh mapping in a step's first run (VAR-d16's
// single B 2 step 10.5 -> 15.1 s in a main run) and gained nothing after.
constexpr int64_t kKeepPeakMinBytes = int64_t(32) << 20;

// An uninitialized tensor of these sizes; from a cached or fresh huge-page block when it is large enough.
at::Tensor empty_huge(at::IntArrayRef sizes, const at::TensorOptions& options);

// Tensors of the given sizes on one block from empty_huge, each its own storage (no two alias), 64-byte aligned:
// a backward's gradients as one allocation.
std::vector<at::Tensor> empty_huge_parts(const std::vector<std::vector<int64_t>>& sizes,
                                         const at::TensorOptions& options);

struct HugeBlockStats {
  int64_t cached_blocks, cached_bytes, limit_bytes, hits, misses;
  int64_t live_bytes;  // of blocks handed out and not yet freed
  int64_t peak_bytes;  // the limit raised by keep_peak scopes (0: none since the last empty or set_limit)
};

// What the cache holds and has served.
HugeBlockStats huge_block_stats();

// Unmaps every cached block (the blocks of live tensors are untouched; they return to the cache when freed).
void empty_huge_block_cache();

// on: every CPU tensor torch allocates from now on goes through the cache's allocator (c10::SetCPUAllocator): at least
// kHugeBlockMinBytes (keep_peak_min_bytes inside keep_peak scopes) from the cache, smaller ones from the allocator that
// was in place; off restores it. Nests (a
// count of ons). VQVAE decoders allocate activations of ~170 MB per convolution. keep_peak (the same for an on and
// its off): inside, the most bytes of cached blocks live at once raise the limit, and stay its floor after the scope
// until empty_huge_block_cache or set_huge_block_limit, as torch's CUDA caching allocator keeps what it reserved: a
// training step's activations, freed by its backward, serve the next step warm (VAR-d16 at B 4 holds ~1.5 GB).
// keep_peak_min_bytes: the smallest tensor a keep_peak scope takes from the cache (the innermost open scope's holds).
void huge_blocks_for_all_tensors(bool on, bool keep_peak, int64_t keep_peak_min_bytes = kKeepPeakMinBytes);

// The cache's limit in bytes (at first use FASTAR_CPU_CACHE_MB, else 2 GB or an eighth of the memory, whichever is
// less; 0 keeps nothing), raised to the kept peak where one is larger. Past it the oldest blocks are unmapped; a
// block past it alone is unmapped when freed, evicting nothing. Setting it drops the kept peak.
void set_huge_block_limit(int64_t bytes);

}  // namespace fastar::cpu
