// Tiled matmul with 16x16 shared-memory tiles on a 2-D grid, ragged sizes, and a warp-per-row
// softmax (xor-shuffle max and sum, __expf, __fdividef), both against double references.
#include <cmath>

#include "check.h"

constexpr int kTile = 16;

// C (M, N) = A (M, K) @ B (K, N), row-major.
__global__ void matmul(const float* A, const float* B, float* C, int M, int N, int K) {
  __shared__ float a[kTile][kTile], b[kTile][kTile + 1];
  int tx = threadIdx.x, ty = threadIdx.y;
  int row = blockIdx.y * kTile + ty, col = blockIdx.x * kTile + tx;
  float acc = 0.f;
  for (int k0 = 0; k0 < K; k0 += kTile) {
    a[ty][tx] = row < M && k0 + tx < K ? A[row * K + k0 + tx] : 0.f;
    b[ty][tx] = k0 + ty < K && col < N ? B[(k0 + ty) * N + col] : 0.f;
    __syncthreads();
    for (int k = 0; k < kTile; ++k) acc += a[ty][k] * b[k][tx];
    __syncthreads();
  }
  if (row < M && col < N) C[row * N + col] = acc;
}

// y = softmax(x) row-wise, x (rows, cols); one warp per row, 4 warps per block.
__global__ void softmax(const float* x, float* y, int rows, int cols) {
  int row = blockIdx.x * 4 + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= rows) return;  // whole warps leave together
  const float* xr = x + size_t(row) * cols;
  float m = -INFINITY;
  for (int c = lane; c < cols; c += 32) m = fmaxf(m, xr[c]);
  for (int o = 16; o > 0; o /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  float s = 0.f;
  for (int c = lane; c < cols; c += 32) s += __expf(xr[c] - m);
  for (int o = 16; o > 0; o /= 2) s += __shfl_xor_sync(0xffffffffu, s, o);
  for (int c = lane; c < cols; c += 32) y[size_t(row) * cols + c] = __fdividef(__expf(xr[c] - m), s);
}

static void test_matmul(int M, int N, int K, Digest& digest) {
  auto a = random_floats(size_t(M) * K, 1), b = random_floats(size_t(K) * N, 2);
  DeviceBuffer<float> da(a), db(b), dc(size_t(M) * N);
  LAUNCH(matmul, dim3((N + kTile - 1) / kTile, (M + kTile - 1) / kTile), dim3(kTile, kTile))(da.ptr, db.ptr, dc.ptr, M, N, K);
  CHECK_CUDA(cudaGetLastError());
  auto c = dc.download();
  check_matmul(c, a, b, M, N, K);
  digest.add(c);
}

static void test_softmax(int rows, int cols, Digest& digest) {
  auto x = random_floats(size_t(rows) * cols, 3);
  for (auto& v : x) v *= 8;
  DeviceBuffer<float> dx(x), dy(x.size());
  LAUNCH(softmax, (rows + 3) / 4, 128)(dx.ptr, dy.ptr, rows, cols);
  CHECK_CUDA(cudaGetLastError());
  auto y = dy.download();
  for (int r = 0; r < rows; ++r) {
    double m = -1e300, s = 0;
    for (int c = 0; c < cols; ++c) m = std::fmax(m, x[r * cols + c]);
    for (int c = 0; c < cols; ++c) s += std::exp(x[r * cols + c] - m);
    for (int c = 0; c < cols; ++c) CHECK(std::fabs(y[r * cols + c] - std::exp(x[r * cols + c] - m) / s) <= 1e-6);
  }
  digest.add(y);
}

int main() {
  Digest digest;
  test_matmul(77, 65, 50, digest);
  test_matmul(128, 128, 128, digest);
  test_matmul(1, 33, 17, digest);
  test_softmax(100, 1000, digest);
  test_softmax(37, 7, digest);
  test_softmax(5, 4096, digest);
  return finish(digest);
}
