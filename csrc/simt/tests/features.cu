// Dynamic shared memory in templated kernels (two instantiations), __launch_bounds__, 3-D
// grids, bf16 in a kernel, invalid launch configurations, and blocks spread over OS threads.
#include <cuda_bf16.h>

#include "check.h"

// Reverses each block's slice of x through dynamic shared memory; T and kBlock are template
// parameters, so LAUNCH needs the parenthesised name.
template <class T, int kBlock>
__global__ void __launch_bounds__(kBlock) reverse_blocks(const T* x, T* y, int n) {
  DYNAMIC_SHARED(T, buf);
  int i = blockIdx.x * kBlock + threadIdx.x;
  buf[threadIdx.x] = i < n ? x[i] : T(0);
  __syncthreads();
  int j = blockIdx.x * kBlock + kBlock - 1 - threadIdx.x;
  if (j < n) y[j] = buf[threadIdx.x];
}

// Every thread of a 3-D grid of 3-D blocks writes its linear global id; bf16 round trip.
__global__ void ids_3d(int* out, __nv_bfloat16* half_ids) {
  int block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  int thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  int id = block * blockDim.x * blockDim.y * blockDim.z + thread;
  out[id] = id;
  half_ids[id] = __float2bfloat16(float(id % 256));
}

// Reads dynamic shared memory before writing it: the emulator fills it with one byte that depends on the schedule.
__global__ void read_poison(int* out) {
  DYNAMIC_SHARED(int, buf);
  out[threadIdx.x] = buf[threadIdx.x];
}

template <class T, int kBlock>
static void test_reverse(int n, Digest& digest) {
  std::vector<T> x(n);
  for (int i = 0; i < n; ++i) x[i] = T(i % 100);
  DeviceBuffer<T> dx(x), dy(n);
  LAUNCH((reverse_blocks<T, kBlock>), (n + kBlock - 1) / kBlock, kBlock, kBlock * sizeof(T), 0)(dx.ptr, dy.ptr, n);
  CHECK_CUDA(cudaGetLastError());
  auto y = dy.download();
  for (int i = 0; i < n; ++i) {
    int b = i / kBlock, src = b * kBlock + kBlock - 1 - i % kBlock;
    CHECK(y[i] == (src < n ? x[src] : T(0)));
  }
  digest.add(y);
}

static void test_ids(Digest& digest) {
  dim3 grid(3, 2, 2), block(4, 5, 3);
  int n = 12 * 60;
  DeviceBuffer<int> out(n);
  DeviceBuffer<__nv_bfloat16> half_ids(n);
  LAUNCH(ids_3d, grid, block)(out.ptr, half_ids.ptr);
  CHECK_CUDA(cudaGetLastError());
  auto o = out.download();
  auto h = half_ids.download();
  for (int i = 0; i < n; ++i) CHECK(o[i] == i && __bfloat162float(h[i]) == float(i % 256));
  digest.add(o);
}

static void test_invalid_configs() {
  DeviceBuffer<int> out(64);
  LAUNCH(read_poison, 1, 1025)(out.ptr);
  CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
  LAUNCH(read_poison, 0, 32)(out.ptr);
  CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
  LAUNCH(read_poison, 1, 32, 228 * 1024)(out.ptr);  // above every GPU's shared memory
  CHECK(cudaGetLastError() == cudaErrorInvalidValue);
  CHECK(cudaGetLastError() == cudaSuccess);  // reading the error clears it
  LAUNCH(read_poison, 1, 64, 64 * sizeof(int))(out.ptr);
  CHECK_CUDA(cudaGetLastError());
  const std::vector<int> v = out.download();
  for (int x : v) CHECK(x == v[0] && unsigned(x & 0xFF) * 0x01010101u == unsigned(x));
}

#ifdef SIMT_CPU
// The same results with blocks on 3 OS threads, set through the emulator's run-time API.
static void test_os_threads(Digest& digest) {
  simt::Config saved = simt::config();
  simt::Config c = saved;
  c.os_threads = 3;
  simt::set_config(c);
  Digest again;
  test_reverse<float, 64>(1000, again);
  simt::set_config(saved);
  Digest once;
  test_reverse<float, 64>(1000, once);
  CHECK(again.h == once.h);
  digest.add(std::vector<uint64_t>{again.h});
}
#endif

int main() {
  Digest digest;
  test_reverse<float, 128>(1000, digest);
  test_reverse<int, 32>(77, digest);
  test_ids(digest);
  test_invalid_configs();
#ifdef SIMT_CPU
  test_os_threads(digest);
#endif
  return finish(digest);
}
