// FASTAR_HOST_DEVICE marks the torch-free helpers shared by the CPU kernels, the CUDA kernels and the simt
// emulator: __host__ __device__ under nvcc and the emulator, nothing in a plain C++ build.
#pragma once

#if defined(__CUDACC__) || defined(SIMT_CPU)
#define FASTAR_HOST_DEVICE __host__ __device__
#else
#define FASTAR_HOST_DEVICE
#endif
