# fastar._simt: the same csrc/kernels sources compiled by the host compiler under the CPU emulator
# (csrc/simt/simt.h), registered as torch.ops.fastar_simt.* for CPU tensors. Test infrastructure only.
message(STATUS "fastar: simt backend ${FASTAR_SIMT}")
