// The BLAS that libtorch_cpu carries and exports (MKL or OpenBLAS; at::native::cpublas::gemm is not exported),
// for CPU kernels that multiply tiles inside their own at::parallel_for: attention today, any family tomorrow.
// The Fortran symbols are resolved at first use, so a torch build without them fails the kernel that needs
// them with a message naming the symbol, not the import of fastar._C.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>

namespace fastar::cpu::blas {

// Row-major C (M, N) = alpha op(A) op(B) + beta C, op(A) (M, K), op(B) (K, N); lda, ldb, ldc are row strides.
// T is float (sgemm_) or double (dgemm_).
template <class T>
void gemm(bool trans_a, bool trans_b, int M, int N, int K, T alpha, const T* A, int lda, const T* B, int ldb, T beta,
          T* C, int ldc);

// Row-major C (M, N) float32 = alpha op(A) op(B) + beta C with A, B bfloat16 (raw uint16 bits), products
// accumulated in float32, by bf16_gemm_library(). torch.profiler sees it as "fastar::blas::gemm_bf16" (mm_f32:
// "fastar::blas::mm_f32"), so a breakdown can count the GEMMs inside fastar's ops.
void gemm_bf16(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const uint16_t* A, int lda,
               const uint16_t* B, int ldb, float beta, float* C, int ldc);

// The library gemm_bf16 calls: "mkl" (MKL's gemm_bf16bf16f32, float32 result) on Intel CPUs; "onednn" (torch's
// bfloat16 at::mm: float32 accumulation, the result rounded to bfloat16, then widened into C) on the others, where
// MKL runs its bf16 GEMM without the bf16 instructions: on an AMD Zen 4 with AVX512-BF16, 2 threads, 512 x 1024 x
// 3072, MKL 129 GFLOP/s (float32's speed) against oneDNN's 372-397. FASTAR_BF16_GEMM=mkl|onednn picks one.
const char* bf16_gemm_library();

// out (M, N) = a (M, K) b (K, N), float32, by fp32_gemm_library(): at::mm_out (MKL's sgemm) or oneDNN's matmul
// (at::native::mkldnn_matmul, writing into out); any strides at::mm_out takes. The same float32 products either way.
void mm_f32(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b);

// The library mm_f32 calls: "mkl" on Intel CPUs, "onednn" on the others where torch has oneDNN: MKL's sgemm takes
// its AVX2 path on CPUs not made by Intel (fastar._backend.fp32_linear_library makes the same choice for the
// models' Linear layers). FASTAR_FP32_GEMM=mkl|onednn picks one. "mkl" wherever torch's oneDNN matmul refuses float32:
// it runs float32 only where oneDNN has bf16 support (AVX-512 BW/VL/DQ or AVX-NE-CONVERT, within ONEDNN_MAX_CPU_ISA),
// so on AVX2-only CPUs (their Linear layers stay on oneDNN's inner product, which has no such limit).
const char* fp32_gemm_library();

// A float32 weight (N, K), (out, in) as nn.Linear's, reordered once into oneDNN's blocked layout (torch's
// mkldnn::_reorder_linear_weight), for products repeated over many calls (the diffusion head's steps): mm(a) is
// a (M, K) w^T through oneDNN's inner product on it (mkldnn::_linear_pointwise), a new tensor. In a diagnostic run
// at 1024 x 3072 on a Zen 4 (2 threads): 218-226 GFLOP/s from 24 to 512 rows, where mm_f32 on the plain weight ran
// 122 (24 rows), 190 (100) and 215 (512). Only where fp32_gemm_library() is "onednn" and torch registers those
// ops (packs()).
class PackedWeight {
 public:
  static bool packs();
  explicit PackedWeight(const at::Tensor& w);
  at::Tensor mm(const at::Tensor& a) const;

 private:
  at::Tensor packed_;
};

// Keeps the BLAS on the calling thread for the scope: inside at::parallel_for each tile product must stay on its
// thread, else MKL fans every small product out over all cores (OpenBLAS does not thread products this small).
class SerialScope {
 public:
  SerialScope();
  ~SerialScope();
  SerialScope(const SerialScope&) = delete;
  SerialScope& operator=(const SerialScope&) = delete;

 private:
  int previous_;
};

}  // namespace fastar::cpu::blas
