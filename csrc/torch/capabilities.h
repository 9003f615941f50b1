// What the kernels of a module take, for Python to read instead of keeping its own copy:
//   fastar._C.capabilities()    {"attention": {"max_head_dim": {"cpu": 1024, "cuda": 128}, "mask_kinds": {...}}}
//   fastar._simt.capabilities() the same with {"simt": 128}
// Every number comes from the kernels' own headers (kernels/attention/capabilities.h, mask.h).
#pragma once
#include <pybind11/pybind11.h>

#include <initializer_list>
#include <utility>

#include "kernels/attention/capabilities.h"
#include "kernels/attention/mask.h"
#include "kernels/multi_axis/capabilities.h"

namespace fastar {

// max_head_dims: (backend, limit) pairs of the module's backends.
inline pybind11::dict capabilities(std::initializer_list<std::pair<const char*, int>> max_head_dims) {
  pybind11::dict dims, kinds, attention, caps;
  for (const auto& [backend, limit] : max_head_dims) dims[backend] = limit;
  for (int kind = 0; kind < kernels::kMaskKinds; ++kind) kinds[kernels::kMaskKindNames[kind]] = kind;
  attention["max_head_dim"] = dims;
  attention["mask_kinds"] = kinds;
  caps["attention"] = attention;
  pybind11::list multi_axis_dims;  // of the CUDA (and simt) kernels; the CPU kernels take any head dim
  for (const int d : kernels::kMultiAxisHeadDims) multi_axis_dims.append(d);
  pybind11::dict multi_axis;
  multi_axis["device_head_dims"] = multi_axis_dims;
  caps["multi_axis"] = multi_axis;
  return caps;
}

}  // namespace fastar
