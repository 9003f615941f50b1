// Kernels with planted bugs the emulator must report (not hang on), each followed by a correct launch that must still
// work. Argument: race | uninit | block_chain | cp_async_early | cp_async_unpublished | exit | two_sites | one_line |
// helper | shfl | shfl_outside | misaligned | cp_async_misaligned | dyn_smem_oob | static_smem_oob | global_oob |
// smem_limit | smem_attribute. The pytest checks the reported file:line against the SITE markers below. global_oob is
// only reported by ASan (which aborts), like the shared-memory overflows under ASan.
#include <string>

#include "check.h"

// Missing __syncthreads between the store and the neighbour's load: the result depends on the
// order threads run in, so fwd / rev / shuffle schedules print different sums.
__global__ void racy_neighbour_sum(int* out) {
  __shared__ int s[256];
  int t = threadIdx.x;
  s[t] = t + 1;
  int v = s[(t + 1) % blockDim.x];  // SITE:race
  atomicAdd(out, v);
}

// Reads half of a shared array nobody wrote: its max looks plausible, but changes with the schedule's fill byte.
__global__ void max_of_uninitialised(int* out) {
  STATIC_SHARED(int[64], s);
  if (threadIdx.x < 32) s[threadIdx.x] = int(threadIdx.x);
  __syncthreads();
  if (threadIdx.x == 0) {
    int m = s[0];
    for (int i = 1; i < 64; ++i) m = max(m, s[i]);  // SITE:uninit
    out[blockIdx.x] = m;
  }
}

// Block b reads what block b - 1 wrote in the same launch: a GPU runs blocks in no set order, the emulator in the
// schedule's, so the end of the chain is the block count forward only.
__global__ void chain_across_blocks(int* chain) {
  if (threadIdx.x == 0) chain[blockIdx.x + 1] = chain[blockIdx.x] + 1;  // SITE:block_chain
}

// Two-stage cp.async pipelines over `tiles` tiles of 64 int4, summing one int of each 16 bytes. The first reads its
// tile before cp.async.wait_group, the second reads a neighbour's copy without the __syncthreads after the wait:
// both read the fill byte of the schedule (ASan: a poisoned destination).
__global__ void cp_async_read_before_wait(const int4* x, int tiles, int* out) {
  STATIC_SHARED(int4[2][64], s);
  const int t = threadIdx.x;
  int acc = 0;
  fastar::kernels::cp_async_16(&s[0][t], x + t);
  fastar::kernels::cp_async_commit();
  for (int j = 0; j < tiles; ++j) {
    if (j + 1 < tiles) fastar::kernels::cp_async_16(&s[(j + 1) % 2][t], x + (j + 1) * 64 + t);
    fastar::kernels::cp_async_commit();
    acc += s[j % 2][t].x;  // SITE:cp_async_early
    fastar::kernels::cp_async_wait<1>();
    __syncthreads();
  }
  atomicAdd(out, acc);
}

__global__ void cp_async_unpublished(const int4* x, int tiles, int* out) {
  STATIC_SHARED(int4[2][64], s);
  const int t = threadIdx.x;
  int acc = 0;
  fastar::kernels::cp_async_16(&s[0][t], x + t);
  fastar::kernels::cp_async_commit();
  for (int j = 0; j < tiles; ++j) {
    fastar::kernels::cp_async_wait<0>();  // this thread's copy landed; no __syncthreads publishes the others'
    if (j + 1 < tiles) fastar::kernels::cp_async_16(&s[(j + 1) % 2][t], x + (j + 1) * 64 + t);
    fastar::kernels::cp_async_commit();
    acc += s[j % 2][(t + 1) % 64].x;  // SITE:cp_async_unpublished
    __syncthreads();  // the reads of stage j % 2 are done before tile j + 2 overwrites it
  }
  atomicAdd(out, acc);
}

// A cp.async from a global address 8 bytes past a 16-byte boundary.
__global__ void cp_async_misaligned(const int4* x, int* out) {
  STATIC_SHARED(int4[64], s);
  fastar::kernels::cp_async_16(&s[threadIdx.x], reinterpret_cast<const int*>(x + threadIdx.x) + 2);  // SITE:cp_async_misaligned
  fastar::kernels::cp_async_commit();
  fastar::kernels::cp_async_wait<0>();
  out[threadIdx.x] = s[threadIdx.x].x;
}

__global__ void barrier_after_exit(int* out) {
  if (threadIdx.x < 100) __syncthreads();  // SITE:exit
  out[threadIdx.x] = 1;
}

__global__ void two_barriers(int* out) {
  if (threadIdx.x % 2)
    __syncthreads();  // SITE:two_a
  else
    __syncthreads();  // SITE:two_b
  out[threadIdx.x] = 1;
}

// Both barriers on one line: file:line alone cannot tell them apart.
__global__ void two_barriers_one_line(int* out) {
  if (threadIdx.x % 2) { out[threadIdx.x] = 2; __syncthreads(); } else { __syncthreads(); }  // SITE:one_line
  out[threadIdx.x] = 1;
}

__device__ __forceinline__ void sync_helper() {
  __syncthreads();  // SITE:helper
}

// One helper with a barrier, called from both branches: two barriers on the GPU.
__global__ void helper_in_both_branches(int* out) {
  if (threadIdx.x % 2) {
    out[threadIdx.x] = 2;
    sync_helper();
  } else {
    sync_helper();
  }
  out[threadIdx.x] = 1;
}

// Lanes 8..15 read lanes 16..23, outside the mask.
__global__ void shfl_source_outside_mask(int* out) {
  int lane = threadIdx.x % 32, v = lane;
  if (lane < 16) v = __shfl_sync(0x0000ffffu, v, lane + 8);  // SITE:shfl_outside
  out[threadIdx.x] = v;
}

// A 16-byte load from a float buffer at an odd element offset.
__global__ void misaligned_vector_load(const float* in, int* out) {
  const uint4 v = fastar::kernels::load_vector<uint4>(in + 1 + 4 * threadIdx.x);  // SITE:misaligned
  out[threadIdx.x] = int(v.x);
}

// Writes one int past the 100 bytes of dynamic shared memory asked for (inside the allocation's 128-byte rounding).
__global__ void past_dynamic_shared(int* out) {
  DYNAMIC_SHARED(int, s);
  s[threadIdx.x] = 1;  // SITE:dyn_smem_oob
  __syncthreads();
  out[threadIdx.x] = s[0];
}

// Thread 64 writes past a 64-int static shared array.
__global__ void past_static_shared(int* out) {
  STATIC_SHARED(int[64], s);  // SITE:static_decl
  int* row = s;  // through a pointer, as kernels index tiles: UBSan's array-bounds check does not see it
  if (threadIdx.x <= 64) row[threadIdx.x] = 1;  // SITE:static_smem_oob
  __syncthreads();
  out[threadIdx.x] = s[0];
}

// Writes one int past a 100-int cudaMalloc buffer (cudaMalloc's 256-byte rounding would absorb it on a GPU).
__global__ void past_global_buffer(int* buf) {
  if (threadIdx.x == 0) buf[100] = 1;  // SITE:global_oob
}

__global__ void half_warp_full_mask_shfl(int* out) {
  int lane = threadIdx.x % 32, v = lane;
  if (lane < 16) v = __shfl_sync(0xffffffffu, v, lane + 1);  // SITE:shfl
  out[threadIdx.x] = v;
}

__global__ void fill(int* out) { out[threadIdx.x] = int(threadIdx.x); }

int main(int argc, char** argv) {
  const char* mode = argc > 1 ? argv[1] : "";
  DeviceBuffer<int> out(128);
  if (!std::strcmp(mode, "race")) {
    LAUNCH(racy_neighbour_sum, 1, 256)(out.ptr);
    CHECK_CUDA(cudaGetLastError());
    std::printf("race result %d\n", out.download()[0]);
    return finish(Digest{});
  }
  if (!std::strcmp(mode, "uninit")) {
    LAUNCH(max_of_uninitialised, 2, 64)(out.ptr);
    CHECK_CUDA(cudaGetLastError());
    auto v = out.download();
    std::printf("uninit result %d %d\n", v[0], v[1]);
    return finish(Digest{});
  }
  if (!std::strcmp(mode, "block_chain")) {
    DeviceBuffer<int> chain(65);
    LAUNCH(chain_across_blocks, 64, 32)(chain.ptr);
    CHECK_CUDA(cudaGetLastError());
    std::printf("block_chain result %d\n", chain.download()[64]);
    return finish(Digest{});
  }
  if (!std::strncmp(mode, "cp_async_", 9) && std::strcmp(mode, "cp_async_misaligned")) {
    const int tiles = 4;
    std::vector<int> x(4 * 64 * tiles);
    for (size_t i = 0; i < x.size(); ++i) x[i] = int(i % 7);
    DeviceBuffer<int> dx(x), sum(1);
    const auto* x4 = reinterpret_cast<const int4*>(dx.ptr);
    if (!std::strcmp(mode, "cp_async_early")) LAUNCH(cp_async_read_before_wait, 1, 64)(x4, tiles, sum.ptr);
    else if (!std::strcmp(mode, "cp_async_unpublished")) LAUNCH(cp_async_unpublished, 1, 64)(x4, tiles, sum.ptr);
    else return 2;
    CHECK_CUDA(cudaGetLastError());
    std::printf("%s result %d\n", mode, sum.download()[0]);
    return finish(Digest{});
  }
  DeviceBuffer<float> in(4 * 128 + 8);
  int* raw = nullptr;
  cudaError_t expected = cudaErrorLaunchFailure;
  if (!std::strcmp(mode, "exit")) LAUNCH(barrier_after_exit, 1, 128)(out.ptr);
  else if (!std::strcmp(mode, "two_sites")) LAUNCH(two_barriers, 1, 128)(out.ptr);
  else if (!std::strcmp(mode, "one_line")) LAUNCH(two_barriers_one_line, 1, 128)(out.ptr);
  else if (!std::strcmp(mode, "helper")) LAUNCH(helper_in_both_branches, 1, 128)(out.ptr);
  else if (!std::strcmp(mode, "shfl")) LAUNCH(half_warp_full_mask_shfl, 2, 64)(out.ptr);
  else if (!std::strcmp(mode, "shfl_outside")) LAUNCH(shfl_source_outside_mask, 1, 64)(out.ptr);
  else if (!std::strcmp(mode, "misaligned")) LAUNCH(misaligned_vector_load, 1, 128)(in.ptr, out.ptr);
  else if (!std::strcmp(mode, "cp_async_misaligned"))
    LAUNCH(cp_async_misaligned, 1, 64)(reinterpret_cast<const int4*>(in.ptr), out.ptr);
  else if (!std::strcmp(mode, "dyn_smem_oob")) LAUNCH(past_dynamic_shared, 1, 26, 100)(out.ptr);
  else if (!std::strcmp(mode, "static_smem_oob")) LAUNCH(past_static_shared, 1, 96)(out.ptr);
  else if (!std::strcmp(mode, "global_oob")) {
    CHECK_CUDA(cudaMalloc(&raw, 100 * sizeof(int)));
    LAUNCH(past_global_buffer, 1, 32)(raw);
  } else if (!std::strcmp(mode, "smem_limit")) {
    // 110 KB: an H100 grants it, an RTX 4090 (99 KB opt-in) refuses it, and so does the emulator by default.
    CHECK(cudaFuncSetAttribute(past_dynamic_shared, cudaFuncAttributeMaxDynamicSharedMemorySize, 110 * 1024) ==
          cudaErrorInvalidValue);
    expected = cudaErrorInvalidValue;
    LAUNCH(past_dynamic_shared, 1, 26, 110 * 1024)(out.ptr);
  } else if (!std::strcmp(mode, "smem_attribute")) {
    expected = cudaErrorInvalidValue;  // above 48 KB without cudaFuncSetAttribute
    LAUNCH(past_dynamic_shared, 1, 26, 60 * 1024)(out.ptr);
  } else {
    return 2;
  }
  CHECK(cudaGetLastError() == expected);
  cudaFree(raw);
#ifdef SIMT_CPU
  std::string msg = simt::last_error_message();
  std::printf("report: %s\n", msg.c_str());
  CHECK(msg.find("negative.cu:") != std::string::npos);
#endif
  // The emulator stays usable after a failed launch.
  LAUNCH(fill, 1, 128)(out.ptr);
  CHECK_CUDA(cudaGetLastError());
#ifdef SIMT_CPU
  CHECK(simt::last_error_message().empty());
#endif
  auto v = out.download();
  for (int i = 0; i < 128; ++i) CHECK(v[i] == i);
  return finish(Digest{});
}
