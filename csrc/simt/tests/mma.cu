// Tensor-core wrappers of kernels/common.cuh: C = A @ B with mma.m16n8k16 (bf16 and fp16 in,
// fp32 accumulate), fragments built by hand from the PTX ISA layouts or loaded by ldmatrix
// (.x4 for A, .x4.trans for B), against a double matmul of the same rounded inputs.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "check.h"

template <class T>
__device__ uint32_t pack(T lo, T hi) {
  uint16_t l, h;
  memcpy(&l, &lo, 2);
  memcpy(&h, &hi, 2);
  return uint32_t(l) | uint32_t(h) << 16;
}

template <class T>
__device__ void mma(float d[4], const uint32_t a[4], const uint32_t b[2]) {
  if constexpr (std::is_same<T, __half>::value)
    mma_m16n8k16_f16(d, a, b, d);
  else
    mma_m16n8k16_bf16(d, a, b, d);
}

// C (M, N) fp32 = A (M, K) @ B (K, N), both row-major T; one warp per 16x16 tile of C.
template <class T, bool kLdmatrix>
__global__ void mma_matmul(const T* A, const T* B, float* C, int N, int K) {
  __shared__ __align__(16) T As[16][16];
  __shared__ __align__(16) T Bs[16][16];
  int lane = threadIdx.x, g = lane / 4, t = lane % 4;
  int m0 = blockIdx.y * 16, n0 = blockIdx.x * 16;
  float acc[2][4] = {};
  for (int k0 = 0; k0 < K; k0 += 16) {
    for (int e = lane; e < 256; e += 32) {
      As[e / 16][e % 16] = A[(m0 + e / 16) * K + k0 + e % 16];
      Bs[e / 16][e % 16] = B[(k0 + e / 16) * N + n0 + e % 16];
    }
    __syncwarp();
    uint32_t a[4], b[4];  // b: two 16x8 B fragments, n0..n0+7 and n0+8..n0+15
    if (kLdmatrix) {
      ldmatrix_x4(a, &As[lane % 16][8 * (lane / 16)]);
      ldmatrix_x4_trans(b, &Bs[lane % 16][8 * (lane / 16)]);
    } else {
      for (int r = 0; r < 4; ++r) {
        int row = g + 8 * (r & 1), col = 2 * t + 8 * (r >> 1);
        a[r] = pack(As[row][col], As[row][col + 1]);
        int k = 2 * t + 8 * (r & 1), n = g + 8 * (r >> 1);
        b[r] = pack(Bs[k][n], Bs[k + 1][n]);
      }
    }
    mma<T>(acc[0], a, b);
    mma<T>(acc[1], a, b + 2);
    __syncwarp();
  }
  for (int h = 0; h < 2; ++h)
    for (int i = 0; i < 4; ++i) C[(m0 + g + 8 * (i / 2)) * N + n0 + 8 * h + 2 * t + i % 2] = acc[h][i];
}

template <class T, bool kLdmatrix>
static void test_mma(int M, int N, int K, Digest& digest) {
  auto af = random_floats(size_t(M) * K, 5), bf = random_floats(size_t(K) * N, 6);
  std::vector<T> a(af.size()), b(bf.size());
  for (size_t i = 0; i < a.size(); ++i) a[i] = T(af[i]), af[i] = float(a[i]);
  for (size_t i = 0; i < b.size(); ++i) b[i] = T(bf[i]), bf[i] = float(b[i]);
  DeviceBuffer<T> da(a), db(b);
  DeviceBuffer<float> dc(size_t(M) * N);
  LAUNCH((mma_matmul<T, kLdmatrix>), dim3(N / 16, M / 16), 32)(da.ptr, db.ptr, dc.ptr, N, K);
  CHECK_CUDA(cudaGetLastError());
  auto c = dc.download();
  check_matmul(c, af, bf, M, N, K);
  digest.add(c);
}

template <class T>
static void test_all_shapes(Digest& digest) {
  const int shapes[][3] = {{16, 16, 16}, {64, 32, 64}, {48, 48, 272}};
  for (const auto& s : shapes) {
    test_mma<T, false>(s[0], s[1], s[2], digest);
    test_mma<T, true>(s[0], s[1], s[2], digest);
  }
}

int main() {
  Digest digest;
  test_all_shapes<__nv_bfloat16>(digest);
  test_all_shapes<__half>(digest);
  return finish(digest);
}
