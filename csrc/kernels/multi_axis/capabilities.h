// What the multi-axis attention kernels take, defined once (torch- and CUDA-free): the launchers specialise on it
// and fastar._C / fastar._simt .capabilities() export it to fastar.ops.multi_axis.
#pragma once

namespace fastar::kernels {

// Head dims the CUDA kernels are compiled for: HiT's (C / heads = 32 or 64 at every attention stage). Another
// head dim runs the torch backend (fastar.ops warns); the CPU kernels take any.
constexpr int kMultiAxisHeadDims[] = {32, 64};

}  // namespace fastar::kernels
