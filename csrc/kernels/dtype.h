// The element type a kernel's params struct names for its tensors: one enum for every kernel family. Torch-free
// and CUDA-free, so the torch glue includes it; kernels/common.cuh maps it to C++ types (dispatch_dtype).
#pragma once

namespace fastar::kernels {

enum class Dtype : int { f32, bf16, f16, f64 };

}  // namespace fastar::kernels
