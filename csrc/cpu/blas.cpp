#include "cpu/blas.h"

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/ones.h>
#include <ATen/record_function.h>
#include <c10/util/Exception.h>
#include <dlfcn.h>
#include <torch/headeronly/version.h>

#include "cpu/isa.h"

#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

namespace fastar::cpu::blas {
namespace {

// Fortran BLAS, column-major, LP64.
template <class T>
using Gemm = void (*)(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                      const T* alpha, const T* a, const int* lda, const T* b, const int* ldb, const T* beta, T* c,
                      const int* ldc);
using SetThreadsLocal = int (*)(int);  // MKL only: OpenBLAS builds lack it, and need no guard

// The library that exports at::get_num_threads (libtorch_cpu): its path names the torch build in messages, its
// handle finds the BLAS linked into it or loaded with it.
struct Torch {
  std::string path = "libtorch_cpu";
  void* handle = RTLD_DEFAULT;
  Torch() {
    Dl_info info{};
    if (dladdr(reinterpret_cast<void*>(&at::get_num_threads), &info) && info.dli_fname) {
      path = info.dli_fname;
      if (void* h = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD)) handle = h;
    }
  }
  void* find(const char* symbol) const { return dlsym(handle, symbol); }
};

const Torch& torch_lib() {
  static const Torch lib;
  return lib;
}

template <class T>
Gemm<T> gemm_symbol() {
  static const Gemm<T> fn = [] {
    const char* name = std::is_same_v<T, float> ? "sgemm_" : "dgemm_";
    auto* f = reinterpret_cast<Gemm<T>>(torch_lib().find(name));
    TORCH_CHECK(f != nullptr, "fastar's CPU kernels multiply tiles with the Fortran BLAS symbol ", name,
                ", which this torch build (", TORCH_VERSION, ", ", torch_lib().path,
                ") does not export; use a torch build with MKL or OpenBLAS (the PyPI wheels have it)");
    return f;
  }();
  return fn;
}

using GemmBf16 = void (*)(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                          const float* alpha, const uint16_t* a, const int* lda, const uint16_t* b, const int* ldb,
                          const float* beta, float* c, const int* ldc);

GemmBf16 gemm_bf16_symbol() {
  static const GemmBf16 fn = [] {
    auto* f = reinterpret_cast<GemmBf16>(torch_lib().find("gemm_bf16bf16f32_"));
    TORCH_CHECK(f != nullptr, "fastar's bfloat16 GEMMs call MKL's gemm_bf16bf16f32_, which this torch build (",
                TORCH_VERSION, ", ", torch_lib().path, ") does not export; use a torch build with MKL (the x86 PyPI "
                "wheels) or precision='fp32'");
    return f;
  }();
  return fn;
}

// at::native::mkldnn_matmul(mat1, mat2, result, beta, alpha): result = beta result + alpha mat1 mat2 on oneDNN;
// exported by libtorch_cpu, not in its installed headers, so found by its mangled name (nullptr if absent).
using MkldnnMatmul = void (*)(const at::Tensor&, const at::Tensor&, const at::Tensor&, float, float);

MkldnnMatmul mkldnn_matmul_symbol() {
  static const auto fn = reinterpret_cast<MkldnnMatmul>(
      torch_lib().find("_ZN2at6native13mkldnn_matmulERKNS_6TensorES3_S3_ff"));
  return fn;
}

SetThreadsLocal set_threads_local() {
  static const auto fn = reinterpret_cast<SetThreadsLocal>(torch_lib().find("MKL_Set_Num_Threads_Local"));
  return fn;
}

}  // namespace

template <class T>
void gemm(bool trans_a, bool trans_b, int M, int N, int K, T alpha, const T* A, int lda, const T* B, int ldb, T beta,
          T* C, int ldc) {
  // Column-major BLAS on the transposes: C^T = op(B)^T op(A)^T.
  const char ta = trans_a ? 'T' : 'N', tb = trans_b ? 'T' : 'N';
  gemm_symbol<T>()(&tb, &ta, &N, &M, &K, &alpha, B, &ldb, A, &lda, &beta, C, &ldc);
}

template void gemm<float>(bool, bool, int, int, int, float, const float*, int, const float*, int, float, float*, int);
template void gemm<double>(bool, bool, int, int, int, double, const double*, int, const double*, int, double, double*,
                           int);

const char* bf16_gemm_library() {
  if (const char* want = std::getenv("FASTAR_BF16_GEMM")) {
    if (std::strcmp(want, "mkl") == 0) return "mkl";
    if (std::strcmp(want, "onednn") == 0) return "onednn";
    TORCH_CHECK(false, "FASTAR_BF16_GEMM must be mkl or onednn, got ", want);
  }
  return std::strcmp(cpu_vendor(), "intel") == 0 ? "mkl" : "onednn";
}

void gemm_bf16(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const uint16_t* A, int lda,
               const uint16_t* B, int ldb, float beta, float* C, int ldc) {
  RECORD_FUNCTION("fastar::blas::gemm_bf16", std::vector<c10::IValue>());
  if (std::strcmp(bf16_gemm_library(), "mkl") == 0) {
    const char ta = trans_a ? 'T' : 'N', tb = trans_b ? 'T' : 'N';
    gemm_bf16_symbol()(&tb, &ta, &N, &M, &K, &alpha, B, &ldb, A, &lda, &beta, C, &ldc);
    return;
  }
  const auto bf = at::TensorOptions().dtype(at::kBFloat16);
  auto view = [&](const uint16_t* p, int rows, int cols, int ld, bool trans) {
    at::Tensor t = at::from_blob(const_cast<uint16_t*>(p), {trans ? cols : rows, trans ? rows : cols}, {ld, 1}, bf);
    return trans ? t.t() : t;
  };
  const at::Tensor product = at::mm(view(A, M, K, lda, trans_a), view(B, K, N, ldb, trans_b));
  at::Tensor c = at::from_blob(C, {M, N}, {ldc, 1}, at::TensorOptions().dtype(at::kFloat));
  if (beta == 0.f) {
    c.copy_(product);
    if (alpha != 1.f) c.mul_(alpha);
  } else {
    c.mul_(beta).add_(product, alpha);
  }
}

// Whether oneDNN's matmul takes float32 products here. torch's mkldnn_matmul runs them only where oneDNN has bf16
// support (AVX-512 BW/VL/DQ or AVX-NE-CONVERT, within ONEDNN_MAX_CPU_ISA) and raises on AVX2-only CPUs, so one 1 x 1
// product is tried, once.
static bool onednn_f32_matmul() {
  static const bool ok = [] {
    if (!at::hasMKLDNN() || mkldnn_matmul_symbol() == nullptr) return false;
    try {
      const at::Tensor a = at::ones({1, 1}), out = at::empty({1, 1});
      mkldnn_matmul_symbol()(a, a, out, 0.f, 1.f);
      return true;
    } catch (const c10::Error&) {
      return false;
    }
  }();
  return ok;
}

const char* fp32_gemm_library() {
  const bool onednn = onednn_f32_matmul();
  if (const char* want = std::getenv("FASTAR_FP32_GEMM")) {
    if (std::strcmp(want, "mkl") == 0) return "mkl";
    if (std::strcmp(want, "onednn") == 0) return onednn ? "onednn" : "mkl";  // the models' Linear layers take it
    TORCH_CHECK(false, "FASTAR_FP32_GEMM must be mkl or onednn, got ", want);
  }
  // oneDNN where it has AVX-512 (its matmul takes float32 only there) and MKL's sgemm would take its AVX2 path
  // (non-Intel CPUs); MKL's AVX2 sgemm on AVX2-only CPUs (fastar._backend.fp32_linear_library follows this).
  return onednn && std::strcmp(cpu_vendor(), "intel") != 0 ? "onednn" : "mkl";
}

void mm_f32(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  RECORD_FUNCTION("fastar::blas::mm_f32", std::vector<c10::IValue>({a, b}));
  if (std::strcmp(fp32_gemm_library(), "onednn") == 0) {
    mkldnn_matmul_symbol()(a, b, out, 0.f, 1.f);
  } else {
    at::Tensor o = out;
    at::mm_out(o, a, b);
  }
}

bool PackedWeight::packs() {
  static const bool ops = c10::Dispatcher::singleton().findSchema({"mkldnn::_reorder_linear_weight", ""}) &&
                          c10::Dispatcher::singleton().findSchema({"mkldnn::_linear_pointwise", ""});
  return ops && std::strcmp(fp32_gemm_library(), "onednn") == 0;
}

// Boxed calls: the ops' C++ signatures are torch's internals; their schemas are stable.
static at::Tensor call_boxed(const c10::OperatorHandle& op, torch::jit::Stack stack) {
  op.callBoxed(&stack);
  return stack.at(0).toTensor();
}

PackedWeight::PackedWeight(const at::Tensor& w) {
  TORCH_CHECK(packs(), "PackedWeight: oneDNN does not run float32 products here (fp32_gemm_library() is ",
              fp32_gemm_library(), ")");
  static const auto reorder = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_reorder_linear_weight", "");
  packed_ = call_boxed(reorder, {w.contiguous(), c10::IValue()});
}

at::Tensor PackedWeight::mm(const at::Tensor& a) const {
  RECORD_FUNCTION("fastar::blas::mm_f32", std::vector<c10::IValue>({a}));
  static const auto linear = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
  return call_boxed(linear, {a, packed_, c10::IValue(), std::string("none"), c10::List<std::optional<at::Scalar>>(),
                             c10::IValue()});
}

SerialScope::SerialScope() : previous_(set_threads_local() ? set_threads_local()(1) : 0) {}
SerialScope::~SerialScope() {
  if (set_threads_local()) set_threads_local()(previous_);
}

}  // namespace fastar::cpu::blas
