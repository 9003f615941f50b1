// Dynamic shared memory in templated kernels (two instantiations), __launch_bounds__, 3-D
// grids, bf16 in a kernel, invalid launch configurations, blocks spread over OS threads, and a cp.async pipeline.
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

// A 3-stage cp.async pipeline (two tiles in flight, wait_group 1, an empty group at the end, zeros past n): each
// thread sums its neighbour's 16 bytes of every tile of its block's slice of x, so it reads other threads' copies.
constexpr int kPipe = 64;
__global__ void __launch_bounds__(kPipe) pipelined_neighbour_sums(const float4* x, int n, float4* out) {
  STATIC_SHARED(float4[3][kPipe], s);
  const int t = threadIdx.x, tiles = fastar::kernels::cdiv(n, kPipe);
  x += blockIdx.x * n;
  const auto issue = [&](int j) {
    const int i = j * kPipe + t;
    if (j < tiles) fastar::kernels::cp_async_16(&s[j % 3][t], x + min(i, n - 1), i < n);
    fastar::kernels::cp_async_commit();  // possibly empty: wait_group counts groups
  };
  issue(0), issue(1);
  float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
  for (int j = 0; j < tiles; ++j) {
    fastar::kernels::cp_async_wait<1>();  // this thread's tile j landed, j + 1 may be in flight
    __syncthreads();  // every thread's tile j is visible, and every read of tile j - 1's stage is done
    issue(j + 2);     // into that stage
    const float4 v = s[j % 3][(t + 1) % kPipe];
    acc.x += v.x, acc.y += v.y, acc.z += v.z, acc.w += v.w;
  }
  out[blockIdx.x * kPipe + t] = acc;
}

static void test_cp_async_pipeline(Digest& digest) {
  const int n = 5 * kPipe + 13, blocks = 2;  // 6 tiles, the last one partial
  const std::vector<float> x = random_floats(size_t(4) * n * blocks, 7);
  DeviceBuffer<float> dx(x), dout(size_t(4) * kPipe * blocks);
  LAUNCH(pipelined_neighbour_sums, blocks, kPipe)(reinterpret_cast<const float4*>(dx.ptr), n,
                                                  reinterpret_cast<float4*>(dout.ptr));
  CHECK_CUDA(cudaGetLastError());
  const std::vector<float> out = dout.download();
  for (int b = 0; b < blocks; ++b)
    for (int t = 0; t < kPipe; ++t)
      for (int c = 0; c < 4; ++c) {
        float ref = 0.f;  // the kernel's order of additions
        for (int i = (t + 1) % kPipe; i < n; i += kPipe) ref += x[(size_t(b) * n + i) * 4 + c];
        CHECK(out[(size_t(b) * kPipe + t) * 4 + c] == ref);
      }
  digest.add(out);
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
  test_cp_async_pipeline(digest);
#ifdef SIMT_CPU
  test_os_threads(digest);
#endif
  return finish(digest);
}
