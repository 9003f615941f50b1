// The taps of BlurPool2D, shared by the CPU and CUDA kernels: f = [1, 3, 3, 1] / 8 in each direction, exact in
// binary; an output reads input rows (columns) 2i - 1 .. 2i + 2 (fastar/reference/blur_pool.py).
#pragma once

namespace fastar::kernels {

constexpr double kBlurOuter = 0.125, kBlurInner = 0.375;  // f[0] = f[3], f[1] = f[2]

}  // namespace fastar::kernels
