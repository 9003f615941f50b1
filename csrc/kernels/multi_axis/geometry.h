// Where HiT's multi-axis attention reads its tokens in the image layout (torch- and CUDA-free: shared by the CPU
// kernel, the CUDA kernels and the simt emulator). block_images(x, b) puts pixel (y, x) in block (y / b, x / b)
// at offset (y % b, x % b); axis 0 (regional, the first half of the heads) attends among the b * b pixels of a
// block, axis 1 (dilated, the second half) among the (H / b)(W / b) pixels at one offset of every block.
#pragma once

#include "kernels/host_device.h"

namespace fastar::kernels {

struct MultiAxisGeometry {
  int H, W;  // image height and width, multiples of b
  int b;     // block side

  // Groups of axis (0 regional: blocks; 1 dilated: offsets) and tokens per group.
  FASTAR_HOST_DEVICE int groups(int axis) const { return axis == 0 ? (H / b) * (W / b) : b * b; }
  FASTAR_HOST_DEVICE int tokens(int axis) const { return axis == 0 ? b * b : (H / b) * (W / b); }
  // Row y and column x of token t of group g on axis; both axes enumerate in raster order.
  FASTAR_HOST_DEVICE void pixel(int axis, int g, int t, int& y, int& x) const {
    const int gw = W / b;
    const int block = axis == 0 ? g : t, offset = axis == 0 ? t : g;
    y = block / gw * b + offset / b;
    x = block % gw * b + offset % b;
  }
  // The tokens of a group of axis form a rows x cols grid of pixels `step` apart, token t at (t / cols, t % cols).
  FASTAR_HOST_DEVICE void token_grid(int axis, int& rows, int& cols, int& step) const {
    rows = axis == 0 ? b : H / b, cols = axis == 0 ? b : W / b, step = axis == 0 ? 1 : b;
  }
};

}  // namespace fastar::kernels
