// What the attention kernels take, defined once (torch- and CUDA-free): the binding checks read it, the CUDA
// launchers specialise on it, and fastar._C / fastar._simt .capabilities() export it to fastar.ops.attention.
// The mask kinds are numbered in mask.h.
#pragma once

namespace fastar::kernels {

// Head dims the CUDA kernels are compiled for, ascending; a head dim in between runs zero-padded to the next.
constexpr int kAttentionHeadDims[] = {32, 64, 128};
constexpr int kAttentionCudaMaxHeadDim = kAttentionHeadDims[sizeof(kAttentionHeadDims) / sizeof(int) - 1];
// The CPU kernels take any head dim up to this.
constexpr int kAttentionCpuMaxHeadDim = 1024;

}  // namespace fastar::kernels
