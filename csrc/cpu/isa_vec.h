// What every per-ISA source (*_isa.cpp, compiled once per instruction set with FASTAR_ISA = base, avx2 or
// avx512 naming its namespace; see CMakeLists.txt) shares: the vector width of the ISA being compiled, and
// GCC vector types of that width. Torch-free and std-container-free, as those sources must be.
#pragma once

namespace fastar::cpu::FASTAR_ISA {

#if defined(__AVX512F__)
constexpr int kVectorBytes = 64;
#elif defined(__AVX2__)
constexpr int kVectorBytes = 32;
#else
constexpr int kVectorBytes = 16;
#endif

// Elements of T per vector register.
template <class T>
constexpr int kLanes = kVectorBytes / int(sizeof(T));

template <class T>
struct VecOf {
  typedef T type __attribute__((vector_size(kVectorBytes), aligned(sizeof(T))));  // unaligned loads allowed
  typedef T aligned_type __attribute__((vector_size(kVectorBytes)));              // loads from aligned memory
};
// A vector register of T, loadable from any T*.
template <class T>
using vec = typename VecOf<T>::type;
// A vector register of T that is loaded only from kVectorBytes-aligned memory (its loads may fold into
// arithmetic on SSE2).
template <class T>
using avec = typename VecOf<T>::aligned_type;

}  // namespace fastar::cpu::FASTAR_ISA
