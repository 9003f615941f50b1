// Block reductions and warp collectives: smem tree + __shfl_down_sync + atomicAdd (partial last
// warp included), xor butterfly, __shfl_up_sync inclusive scan, ballot/any/all, width segments,
// __syncthreads_count/and/or.
#include "check.h"

// Sum of x over the grid: tree in shared memory down to one warp, then shuffles.
__global__ void block_sum(const int* x, int n, int* total, float* ftotal) {
  __shared__ int s[1024];
  int tid = threadIdx.x, i = blockIdx.x * blockDim.x + tid;
  s[tid] = i < n ? x[i] : 0;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride >= 32; stride /= 2) {
    if (tid < stride) s[tid] += s[tid + stride];
    __syncthreads();
  }
  if (tid < 32) {
    int v = tid < (int)blockDim.x ? s[tid] : 0;
    for (int off = 16; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off);
    if (tid == 0) atomicAdd(total, v), atomicAdd(ftotal, float(v));
  }
}

// One output row per thread: butterfly sum, scan, ballot and friends, segment shuffles.
__global__ void warp_ops(const int* x, int n, int* out) {
  int i = blockIdx.x * blockDim.x + threadIdx.x, lane = threadIdx.x % 32;
  int v = i < n ? x[i] : 0;
  unsigned mask = __activemask();
  int sum = v;
  for (int m = 16; m > 0; m /= 2) sum += __shfl_xor_sync(mask, sum, m);
  int scan = v;
  for (int d = 1; d < 32; d *= 2) {
    int up = __shfl_up_sync(mask, scan, d);
    if (lane >= d) scan += up;
  }
  unsigned odd = __ballot_sync(mask, v & 1);
  int any_big = __any_sync(mask, v > 90), all_pos = __all_sync(mask, v >= 0);
  int seg8 = __shfl_sync(mask, v, 3, 8);          // lane 3 of each 8-lane segment
  int down4 = __shfl_down_sync(mask, v, 2, 4);    // stays inside 4-lane segments
  int count = __syncthreads_count(v > 50);
  int all = __syncthreads_and(v >= 0), any = __syncthreads_or(v > 98);
  if (i >= n) return;
  int* o = out + 10 * i;
  o[0] = sum, o[1] = scan, o[2] = int(odd), o[3] = any_big, o[4] = all_pos;
  o[5] = seg8, o[6] = down4, o[7] = count, o[8] = all, o[9] = any;
}

static void test_block_sum(int n, int block) {
  std::vector<int> x(n);
  long long want = 0;
  for (int i = 0; i < n; ++i) x[i] = (i * 37) % 101 - 50, want += x[i];
  DeviceBuffer<int> dx(x), total(1);
  DeviceBuffer<float> ftotal(1);
  LAUNCH(block_sum, (n + block - 1) / block, block)(dx.ptr, n, total.ptr, ftotal.ptr);
  CHECK_CUDA(cudaGetLastError());
  CHECK(total.download()[0] == want);
  CHECK(ftotal.download()[0] == float(want));  // small integers: exact in any order
}

static void test_warp_ops(int n, int block, Digest& digest) {
  std::vector<int> x(n);
  for (int i = 0; i < n; ++i) x[i] = (i * 53) % 100;
  DeviceBuffer<int> dx(x), out(size_t(n) * 10);
  int grid = (n + block - 1) / block;
  LAUNCH(warp_ops, grid, block)(dx.ptr, n, out.ptr);
  CHECK_CUDA(cudaGetLastError());
  std::vector<int> o = out.download();
  auto xv = [&](int j) { return j < n ? x[j] : 0; };  // threads past n take part with 0
  for (int i = 0; i < n; ++i) {
    int b0 = i / block * block, w0 = b0 + (i - b0) / 32 * 32, lane = (i - b0) % 32;
    int wend = std::min(w0 + 32, b0 + block);  // a partial last warp when block % 32 != 0
    int sum = 0, scan = 0, count = 0, all = 1, any = 0;
    unsigned odd = 0;
    bool any_big = false, all_pos = true;
    for (int j = w0; j < wend; ++j) {
      sum += xv(j), odd |= unsigned(xv(j) & 1) << (j - w0);
      any_big |= xv(j) > 90, all_pos &= xv(j) >= 0;
      if (j <= i) scan += xv(j);
    }
    for (int j = b0; j < b0 + block; ++j) count += xv(j) > 50, all &= xv(j) >= 0, any |= xv(j) > 98;
    int seg = w0 + lane / 8 * 8 + 3, dn = lane % 4 + 2 < 4 ? i + 2 : i;
    const int* r = &o[10 * size_t(i)];
    // In a partial warp the butterfly reads missing lanes (undefined): only full warps are checked.
    if (wend - w0 == 32) CHECK(r[0] == sum);
    CHECK(r[1] == scan);
    CHECK(r[2] == int(odd));
    CHECK(r[3] == any_big && r[4] == all_pos);
    if (seg < wend) CHECK(r[5] == xv(seg));
    if (dn < wend) CHECK(r[6] == xv(dn));
    CHECK(r[7] == count && r[8] == all && r[9] == any);
  }
  digest.add(o);
}

int main() {
  Digest digest;
  test_block_sum(100000, 256);
  test_block_sum(1000, 1024);
  test_block_sum(77, 64);
  test_warp_ops(1000, 256, digest);
  test_warp_ops(100, 100, digest);  // 100 threads: the last warp has 4 lanes
  return finish(digest);
}
