// The device check every op's check function shares.
#pragma once
#include <ATen/core/Tensor.h>

namespace fastar {

// t is on a device of the kernels' type and on the very device of `anchor` (tensors on two GPUs never reach one
// kernel: comparing the device type alone would let them).
inline void check_device(const char* op, const char* name, const at::Tensor& t, c10::DeviceType type,
                         const char* anchor_name, const at::Tensor& anchor) {
  TORCH_CHECK(t.device().type() == type, op, ": ", name, " is on ", t.device(), ", expected ", type);
  TORCH_CHECK(t.device() == anchor.device(), op, ": ", name, " is on ", t.device(), " but ", anchor_name, " is on ",
              anchor.device());
}

}  // namespace fastar
