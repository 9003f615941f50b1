// fastar._simt: importing it registers torch.ops.fastar_simt.* (the CUDA kernels run by the CPU emulator on CPU
// tensors, a test backend) and gives tests the emulator's schedule, so a race shows as a diff between orders.
#include <pybind11/pybind11.h>

#include "simt/config.h"
#include "torch/attention.h"
#include "torch/capabilities.h"
#include "torch/ops.h"
#include "torch/quantize.h"

TORCH_LIBRARY(fastar_simt, m) { fastar::define_ops(m); }

PYBIND11_MODULE(_simt, m) {
  m.def(
      "set_schedule",
      [](const std::string& mode, uint64_t seed) {
        simt::Config c = simt::config();
        if (mode == "fwd") c.schedule = simt::Schedule::fwd;
        else if (mode == "rev") c.schedule = simt::Schedule::rev;
        else if (mode == "shuffle") c.schedule = simt::Schedule::shuffle;
        else throw pybind11::value_error("set_schedule: mode must be 'fwd', 'rev' or 'shuffle', got '" + mode + "'");
        c.seed = seed;
        simt::set_config(c);
      },
      pybind11::arg("mode"), pybind11::arg("seed") = 0,
      "Order in which the emulator runs the CUDA threads of a block from now on ('fwd', 'rev', 'shuffle').");
  m.def(
      "set_max_smem",
      [](int bytes) {
        if (bytes < 0) throw pybind11::value_error("set_max_smem: bytes must be >= 0, got " + std::to_string(bytes));
        simt::Config c = simt::config();
        const int previous = c.max_dynamic_smem;
        c.max_dynamic_smem = bytes;
        simt::set_config(c);
        return previous;
      },
      pybind11::arg("bytes"),
      "The emulated device's opt-in dynamic shared memory per block from now on; returns the previous limit.");
  m.def("attention_operand_copies", &fastar::attention_operand_copies,
        "Copies of q, k, v (or dout, out) the attention glue made for the kernels since load.");
  m.def("vq_nearest_slices", &fastar::vq_nearest_slices, pybind11::arg("n"), pybind11::arg("k"),
        pybind11::arg("sm_count"),
        "The codebook slices vq_nearest's kernel searches n rows of k codes in (FASTAR_VQ_NEAREST_SLICES or auto).");
  m.def("capabilities", [] { return fastar::capabilities({{"simt", fastar::kernels::kAttentionCudaMaxHeadDim}}); });
}
