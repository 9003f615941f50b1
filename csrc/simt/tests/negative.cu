// Kernels with planted bugs the emulator must report (not hang on), each followed by a correct
// launch that must still work. Argument: race | exit | two_sites | shfl. The pytest checks the
// reported file:line against the SITE markers below.
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
  if (!std::strcmp(mode, "exit")) LAUNCH(barrier_after_exit, 1, 128)(out.ptr);
  else if (!std::strcmp(mode, "two_sites")) LAUNCH(two_barriers, 1, 128)(out.ptr);
  else if (!std::strcmp(mode, "shfl")) LAUNCH(half_warp_full_mask_shfl, 2, 64)(out.ptr);
  else return 2;
  CHECK(cudaGetLastError() == cudaErrorLaunchFailure);
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
