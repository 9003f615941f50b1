// Data races only a ThreadSanitizer build of the emulator reports (csrc/simt/tsan.h), each beside its fix, which
// must run clean. Argument: <kind>_race | <kind>_fixed (and warp_shfl); kinds: warp (a lane reads what another lane
// of its warp wrote: no __syncwarp; a shuffle is no fix, it orders no memory), block (a warp overwrites what another
// warp still reads after the same __syncthreads), grid (blocks add to one global without atomics), cp_async (a thread
// reads another's cp.async destination after its own wait, without the __syncthreads after the other's). The pytest
// checks the reported file:line against the SITE markers.
#include <string>

#include "check.h"

// One warp: each lane stores its value, then reads its neighbour's. sync: 0 none, 1 __shfl_sync, 2 __syncwarp.
__global__ void warp_neighbour(int sync, int* out) {
  STATIC_SHARED(int[32], s);
  const int lane = threadIdx.x;
  s[lane] = lane + 1;
  int v = 0;
  if (sync == 1) v = __shfl_sync(0xffffffffu, lane, (lane + 1) % 32) - lane - 1;
  if (sync == 2) __syncwarp();
  out[lane] = v + s[(lane + 1) % 32];  // SITE:warp
}

// Two warps, a few rounds: store, __syncthreads, read the other warp's value. Without the second barrier a warp
// stores the next round's value while the other warp may still read this round's (the schedule orders them here).
__global__ void block_rounds(int fixed, int* out) {
  STATIC_SHARED(int[64], s);
  const int t = threadIdx.x;
  int acc = 0;
  for (int round = 0; round < 3; ++round) {
    s[t] = round * 64 + t;  // SITE:block
    __syncthreads();
    acc += s[(t + 32) % 64];
    if (fixed) __syncthreads();
  }
  out[t] = acc;
}

// Every block adds its thread 0's count to one global: a non-atomic read-modify-write races between blocks.
__global__ void grid_sum(int fixed, int* total) {
  __syncthreads();  // a barrier in every block: its clocks must not carry over to the next block
  if (threadIdx.x == 0) {
    if (fixed) atomicAdd(total, 1);
    else *total += 1;  // SITE:grid
  }
}

// A later launch reads what every block of the previous one wrote: ordered by the launches.
__global__ void read_total(const int* total, int* copies) { copies[blockIdx.x * blockDim.x + threadIdx.x] = *total; }

// Each thread copies 16 bytes to shared memory with cp.async, waits, and reads its neighbour's copy.
__global__ void cp_async_neighbour(int fixed, const int4* x, int* out) {
  STATIC_SHARED(int4[64], s);
  const int t = threadIdx.x;
  fastar::kernels::cp_async_16(&s[t], x + t);
  fastar::kernels::cp_async_commit();
  fastar::kernels::cp_async_wait<0>();
  if (fixed) __syncthreads();
  out[t] = s[(t + 1) % 64].x;  // SITE:cp_async
}

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  const bool fixed = mode.size() > 6 && mode.compare(mode.size() - 6, 6, "_fixed") == 0;
  DeviceBuffer<int> out(64 * 4);
  if (mode == "warp_race" || mode == "warp_shfl" || mode == "warp_fixed") {
    LAUNCH(warp_neighbour, 1, 32)(mode == "warp_race" ? 0 : mode == "warp_shfl" ? 1 : 2, out.ptr);
  } else if (mode == "block_race" || mode == "block_fixed") {
    LAUNCH(block_rounds, 1, 64)(int(fixed), out.ptr);
  } else if (mode == "grid_race" || mode == "grid_fixed") {
    DeviceBuffer<int> total(1);
    LAUNCH(grid_sum, 4, 64)(int(fixed), total.ptr);
    LAUNCH(read_total, 4, 64)(total.ptr, out.ptr);
    CHECK(!fixed || out.download()[255] == 4);
  } else if (mode == "cp_async_race" || mode == "cp_async_fixed") {
    std::vector<int> x(64 * 4);
    for (size_t i = 0; i < x.size(); ++i) x[i] = int(i);
    DeviceBuffer<int> xd(x);
    LAUNCH(cp_async_neighbour, 1, 64)(int(fixed), reinterpret_cast<const int4*>(xd.ptr), out.ptr);
  } else {
    std::fprintf(stderr, "unknown mode %s\n", mode.c_str());
    return 2;
  }
  CHECK_CUDA(cudaGetLastError());
  std::printf("%s done\n", mode.c_str());
  return g_failures ? 1 : 0;
}
