# fastar._simt: the same csrc/kernels sources compiled by the host compiler under the CPU emulator
# (csrc/simt/simt.h), registered as torch.ops.fastar_simt.* for CPU tensors. Test infrastructure only.
option(FASTAR_SIMT_SANITIZE "Build fastar._simt with AddressSanitizer and UndefinedBehaviorSanitizer" OFF)
option(FASTAR_SIMT_TSAN "Build fastar._simt with ThreadSanitizer (csrc/simt/tsan.h: races between CUDA threads)" OFF)
message(STATUS "fastar: simt backend ${FASTAR_SIMT} (sanitized: ${FASTAR_SIMT_SANITIZE}, tsan: ${FASTAR_SIMT_TSAN})")

if(FASTAR_SIMT)
  find_path(FASTAR_CUDA_INCLUDE cuda_runtime_api.h
            HINTS "$ENV{CUDA_HOME}/include" /usr/local/cuda/include REQUIRED)
  # Each kernel is compiled as C++ through a generated wrapper, so the same .cu can also be a CUDA source of _C.
  # The wrapper names the .cu relative to csrc/ (on the include path): with an absolute path its text would differ
  # from clone to clone and ccache (CCACHE_BASEDIR) could not share the objects between them.
  file(GLOB_RECURSE _kernels RELATIVE "${CMAKE_SOURCE_DIR}/csrc" CONFIGURE_DEPENDS csrc/kernels/*.cu)
  set(_wrappers "")
  foreach(_cu ${_kernels})
    set(_wrapper "${CMAKE_BINARY_DIR}/simt/csrc/${_cu}.cpp")
    file(CONFIGURE OUTPUT "${_wrapper}" CONTENT "#include \"${_cu}\"\n" @ONLY)
    list(APPEND _wrappers "${_wrapper}")
  endforeach()
  set_source_files_properties(${_wrappers} PROPERTIES COMPILE_OPTIONS "-include;${CMAKE_SOURCE_DIR}/csrc/simt/simt.h")
  file(GLOB _glue CONFIGURE_DEPENDS csrc/torch/*_device.cpp)

  Python_add_library(_simt MODULE WITH_SOABI ${_wrappers} ${_glue} csrc/torch/simt_module.cpp)
  target_link_libraries(_simt PRIVATE fastar_torch)
  target_include_directories(_simt PRIVATE "${FASTAR_CUDA_INCLUDE}")
  target_compile_definitions(_simt PRIVATE FASTAR_SIMT_BUILD)
  target_compile_options(_simt PRIVATE -O2 -pthread)
  target_link_options(_simt PRIVATE -pthread)
  if(FASTAR_SIMT_SANITIZE)
    # -O1 -g1 (after the build type's flags, so they win): ASan's advice; line tables alone give the same reports,
    # every frame's file:line inlined ones included, as -O2 -g, at 40% of the compile time.
    target_compile_options(_simt PRIVATE -O1 -g1 -fsanitize=address,undefined -fno-omit-frame-pointer)
    target_link_options(_simt PRIVATE -fsanitize=address,undefined)
  elseif(FASTAR_SIMT_TSAN)
    target_compile_options(_simt PRIVATE -O1 -g1 -fsanitize=thread)
    target_link_options(_simt PRIVATE -fsanitize=thread)
  endif()
  set_target_properties(_simt PROPERTIES LIBRARY_OUTPUT_DIRECTORY "${FASTAR_OUTPUT_DIR}")
endif()
