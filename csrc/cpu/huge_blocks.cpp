// The huge-page block cache of cpu/huge_blocks.h: a c10::Allocator whose large blocks are mmap'd on 2 MB
// boundaries, advised MADV_HUGEPAGE, and kept by size when their tensors are freed.
#include "cpu/huge_blocks.h"

#include <ATen/EmptyTensor.h>
#include <ATen/ops/from_blob.h>
#include <c10/core/CPUAllocator.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <memory>
#include <unordered_map>
#include <mutex>
#include <utility>
#include <vector>

namespace fastar::cpu {
namespace {

constexpr size_t kHuge = size_t(2) << 20;

size_t round_up(size_t n) { return (n + kHuge - 1) / kHuge * kHuge; }

// n bytes (a multiple of 2 MB) mapped at a 2 MB boundary, or nullptr; advised huge (a no-op where THP is off), or
// not huge: a training step's blocks (keep_peak scopes). VAR-d16's steps at B 4 (Zen 4, interleaved in one process,
// min of 3; a diagnostic script) took 22.4 s on warm 2 MB pages against 20.2 s on torch's allocator, and in another run 19.5 s on warm
// 4 KB pages against 21.6 s; the VQVAE decoder at B 4 ran faster on 2 MB ones (4.34 against 4.55 s).
void* map_block(size_t n, bool huge) {
  void* raw = mmap(nullptr, n + kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(raw), aligned = (begin + kHuge - 1) & ~(kHuge - 1);
  if (aligned > begin) munmap(raw, aligned - begin);
  if (begin + kHuge > aligned) munmap(reinterpret_cast<void*>(aligned + n), begin + kHuge - aligned);
#ifdef MADV_HUGEPAGE
  madvise(reinterpret_cast<void*>(aligned), n, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
#endif
  return reinterpret_cast<void*>(aligned);
}

// FASTAR_CPU_CACHE_MB, else 2 GB or an eighth of the memory, whichever is less (VAR's VQVAE decoder at B 4 cycles
// through ~1.8 GB of blocks).
int64_t limit_from_env() {
  const char* mb = std::getenv("FASTAR_CPU_CACHE_MB");
  if (mb == nullptr || *mb == '\0') {
    const int64_t memory = int64_t(sysconf(_SC_PHYS_PAGES)) * int64_t(sysconf(_SC_PAGESIZE));
    return std::min(int64_t(2048) << 20, std::max(memory, int64_t(0)) / 8);
  }
  char* end = nullptr;
  const long long v = std::strtoll(mb, &end, 10);
  TORCH_CHECK(*end == '\0' && v >= 0, "FASTAR_CPU_CACHE_MB must be a whole number of MB >= 0, got '", mb, "'");
  return int64_t(v) << 20;
}

// Freed blocks, served best fit (at most a quarter larger than asked) and evicted oldest first past the limit.
class Cache {
 public:
  // A block of at least n bytes (n a multiple of 2 MB) on pages of its kind and its size, or {nullptr, 0} when out
  // of memory.
  std::pair<void*, size_t> take(size_t n, bool huge) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      size_t best = free_.size();
      for (size_t i = 0; i < free_.size(); ++i)
        if (free_[i].huge == huge && free_[i].n >= n && free_[i].n <= n + n / 4 &&
            (best == free_.size() || free_[i].n < free_[best].n))
          best = i;
      if (best < free_.size()) {
        const Entry e = free_[best];
        free_.erase(free_.begin() + std::ptrdiff_t(best));
        cached_ -= int64_t(e.n), ++hits_;
        lend(e.n);
        return {e.p, e.n};
      }
      ++misses_;
    }
    void* p = map_block(n, huge);
    if (p == nullptr) {  // out of memory: unmap what is cached and try once more
      empty();
      p = map_block(n, huge);
    }
    if (p == nullptr) return {nullptr, 0};
    std::lock_guard<std::mutex> lock(mu_);
    lend(n);
    return {p, n};
  }

  void give(void* p, size_t n, bool huge) {
    std::vector<Entry> unmap;
    {
      std::lock_guard<std::mutex> lock(mu_);
      live_ -= int64_t(n);
      const int64_t limit = std::max(limit_, peak_);
      if (int64_t(n) > limit) {
        unmap.push_back({p, n, 0, huge});  // past the limit alone: the cached blocks stay
      } else {
        free_.push_back({p, n, ++clock_, huge});
        cached_ += int64_t(n);
        while (cached_ > limit) {  // the oldest first
          auto oldest = std::min_element(free_.begin(), free_.end(),
                                         [](const Entry& a, const Entry& b) { return a.stamp < b.stamp; });
          unmap.push_back(*oldest);
          cached_ -= int64_t(oldest->n);
          free_.erase(oldest);
        }
      }
    }
    for (const Entry& e : unmap) munmap(e.p, e.n);
  }

  void empty() {
    std::vector<Entry> blocks;
    {
      std::lock_guard<std::mutex> lock(mu_);
      blocks.swap(free_);
      cached_ = 0, peak_ = 0;
    }
    for (const Entry& e : blocks) munmap(e.p, e.n);
  }

  void set_limit(int64_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      limit_ = bytes, peak_ = 0;
      if (cached_ <= limit_) return;
    }
    empty();
  }

  HugeBlockStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return {int64_t(free_.size()), cached_, limit_, hits_, misses_, live_, peak_};
  }

  // Scopes that keep their peak (huge_blocks_for_all_tensors' keep_peak) open and close; the innermost one's
  // min_bytes holds.
  void keep_peak(bool on, int64_t min_bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    if (on)
      keep_min_bytes_.push_back(min_bytes);
    else
      keep_min_bytes_.pop_back();
  }

  // The smallest tensor the innermost open keep_peak scope takes from the cache; 0 outside them.
  int64_t keep_peak_min_bytes() {
    std::lock_guard<std::mutex> lock(mu_);
    return keep_min_bytes_.empty() ? 0 : keep_min_bytes_.back();
  }

 private:
  struct Entry {
    void* p;
    size_t n;
    int64_t stamp;  // when it was freed
    bool huge;      // on 2 MB pages (else advised not)
  };
  // n bytes handed out (mu_ held): inside a keep_peak scope the peak of live bytes raises the limit.
  void lend(size_t n) {
    live_ += int64_t(n);
    if (!keep_min_bytes_.empty()) peak_ = std::max(peak_, live_);
  }

  std::mutex mu_;
  std::vector<Entry> free_;
  int64_t cached_ = 0, limit_ = limit_from_env(), hits_ = 0, misses_ = 0, clock_ = 0;
  int64_t live_ = 0;     // bytes of blocks handed out and not yet returned
  int64_t peak_ = 0;     // the most of them live at once inside keep_peak scopes, since the last empty or set_limit
  std::vector<int64_t> keep_min_bytes_;  // of the open keep_peak scopes, innermost last
};

Cache& cache() {
  static Cache* c = new Cache();  // never destroyed: tensors freed at exit still return their blocks
  return *c;
}

// The size and page kind of each cached block handed out (by its address, the DataPtr's context: raw_allocate needs
// context == pointer), and the allocator small requests go to.
std::mutex g_mu;
std::unordered_map<void*, std::pair<size_t, bool>> g_blocks;
c10::Allocator* g_previous = nullptr;  // the CPU allocator replaced while every tensor goes through the cache
int g_all_depth = 0;

c10::Allocator* small_allocator() { return g_previous != nullptr ? g_previous : c10::GetCPUAllocator(); }

void release(void* p) {
  std::pair<size_t, bool> block{0, false};
  {
    std::lock_guard<std::mutex> lock(g_mu);
    const auto it = g_blocks.find(p);
    if (it != g_blocks.end()) block = it->second, g_blocks.erase(it);
  }
  if (block.first > 0) return cache().give(p, block.first, block.second);
  // Not a cached block: raw_deallocate of a small request, made by the allocator that was in place.
  c10::DeleterFnPtr d = small_allocator()->raw_deleter();
  TORCH_CHECK(d != nullptr, "fastar: freeing a small CPU block through an allocator without a raw deleter");
  d(p);
}

// Large requests from the cache, small ones from torch's CPU allocator. kernel_outputs (empty_huge): always on huge
// pages; else (every tensor, huge_blocks_for_all_tensors) on 4 KB pages, from the innermost keep_peak scope's
// min_bytes, inside keep_peak scopes.
struct HugeBlockAllocator final : c10::Allocator {
  explicit HugeBlockAllocator(bool kernel_outputs) : kernel_outputs_(kernel_outputs) {}

  c10::DataPtr allocate(size_t n) override {
    const int64_t keep_min = cache().keep_peak_min_bytes();
    const bool huge = kernel_outputs_ || keep_min == 0;
    if (int64_t(n) < (huge ? kHugeBlockMinBytes : keep_min)) return small_allocator()->allocate(n);
    const auto [p, size] = cache().take(round_up(n), huge);
    TORCH_CHECK(p != nullptr, "fastar: out of memory mapping a ", round_up(n) >> 20, " MB output block");
    {
      std::lock_guard<std::mutex> lock(g_mu);
      g_blocks[p] = {size, huge};
    }
    return {p, p, &release, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &release; }
  void copy_data(void* dest, const void* src, std::size_t count) const override { std::memcpy(dest, src, count); }

 private:
  bool kernel_outputs_;
};

HugeBlockAllocator& output_allocator() {
  static HugeBlockAllocator a(true);
  return a;
}

HugeBlockAllocator& all_tensors_allocator() {
  static HugeBlockAllocator a(false);
  return a;
}

}  // namespace

at::Tensor empty_huge(at::IntArrayRef sizes, const at::TensorOptions& options) {
  TORCH_CHECK(options.device().is_cpu(), "empty_huge: CPU tensors only");
  return at::detail::empty_generic(sizes, &output_allocator(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   c10::typeMetaToScalarType(options.dtype()), std::nullopt);
}

std::vector<at::Tensor> empty_huge_parts(const std::vector<std::vector<int64_t>>& sizes,
                                         const at::TensorOptions& options) {
  std::vector<int64_t> offsets;
  int64_t total = 0;
  for (const auto& s : sizes) {
    offsets.push_back(total);
    total += (c10::multiply_integers(s) + 15) / 16 * 16;  // each part 64-byte aligned
  }
  auto block = std::make_shared<at::Tensor>(empty_huge({total}, options));
  std::vector<at::Tensor> parts;
  for (size_t i = 0; i < sizes.size(); ++i) {
    void* p = static_cast<char*>(block->data_ptr()) + offsets[i] * block->element_size();
    parts.push_back(at::from_blob(p, sizes[i], [block](void*) {}, options));
  }
  return parts;
}

HugeBlockStats huge_block_stats() { return cache().stats(); }

void empty_huge_block_cache() { cache().empty(); }

void huge_blocks_for_all_tensors(bool on, bool keep_peak, int64_t keep_peak_min_bytes) {
  std::lock_guard<std::mutex> lock(g_mu);
  TORCH_CHECK(on || g_all_depth > 0, "fastar: the CPU cache is not serving every tensor");
  TORCH_CHECK(keep_peak_min_bytes >= 1, "cpu_cache_all_tensors: keep_peak_min_bytes must be at least 1, got ",
              keep_peak_min_bytes);
  if (keep_peak) cache().keep_peak(on, keep_peak_min_bytes);
  if (on && g_all_depth++ == 0) {
    g_previous = c10::GetCPUAllocator();
    c10::SetCPUAllocator(&all_tensors_allocator());
    TORCH_CHECK(c10::GetCPUAllocator() == &all_tensors_allocator(),
                "fastar: another CPU allocator of higher priority is in place; the cache cannot serve every tensor");
  } else if (!on) {
    if (--g_all_depth == 0) {
      c10::SetCPUAllocator(g_previous);
      g_previous = nullptr;
    }
  }
}

void set_huge_block_limit(int64_t bytes) {
  TORCH_CHECK(bytes >= 0, "the cache limit must be >= 0 bytes, got ", bytes);
  cache().set_limit(bytes);
}

}  // namespace fastar::cpu
