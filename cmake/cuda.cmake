# The CUDA backend: csrc/kernels/**/*.cu plus the thin csrc/torch/*_device.cpp glue, compiled for
# TORCH_CUDA_ARCH_LIST (default 8.0;9.0). Needs a CUDA build of torch and nvcc; never asks for a GPU.
set(FASTAR_WITH_CUDA OFF)
if(FASTAR_CUDA STREQUAL "on" AND TORCH_CUDA_VERSION STREQUAL "")
  message(FATAL_ERROR "FASTAR_CUDA=on but torch at ${TORCH_ROOT} is not a CUDA build")
endif()
if(NOT FASTAR_CUDA STREQUAL "off" AND NOT TORCH_CUDA_VERSION STREQUAL "")
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    set(FASTAR_WITH_CUDA ON)
  elseif(FASTAR_CUDA STREQUAL "on")
    message(FATAL_ERROR "FASTAR_CUDA=on but no CUDA compiler was found (set CUDACXX or CUDA_HOME)")
  endif()
endif()
message(STATUS "fastar: CUDA backend ${FASTAR_WITH_CUDA}")

if(FASTAR_WITH_CUDA)
  # "8.0;9.0+PTX" -> 80-real;90: machine code for every listed arch, PTX only where "+PTX" asks for it (as torch).
  if(NOT TORCH_CUDA_ARCH_LIST)
    set(TORCH_CUDA_ARCH_LIST "8.0;9.0")
  endif()
  string(REPLACE " " ";" _arch_list "${TORCH_CUDA_ARCH_LIST}")
  set(_archs "")
  foreach(_arch IN LISTS _arch_list)
    string(REPLACE "." "" _arch "${_arch}")
    if(_arch MATCHES "\\+PTX$")
      string(REPLACE "+PTX" "" _arch "${_arch}")
      list(APPEND _archs "${_arch}")
    else()
      list(APPEND _archs "${_arch}-real")
    endif()
  endforeach()
  set(CMAKE_CUDA_ARCHITECTURES ${_archs})
  set(CMAKE_CUDA_STANDARD 17)
  enable_language(CUDA)
  find_package(CUDAToolkit REQUIRED)

  # ATen/cuda headers include cuBLAS/cuSPARSE headers, which come with the nvidia pip packages, not the toolkit.
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c "import nvidia, os; print(next(p for p in (os.path.join(d, 'cu13', 'include') for d in nvidia.__path__) if os.path.isdir(p)))"
    OUTPUT_VARIABLE FASTAR_NVIDIA_INCLUDE OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)

  file(GLOB_RECURSE FASTAR_KERNEL_SOURCES CONFIGURE_DEPENDS csrc/kernels/*.cu)
  file(GLOB FASTAR_DEVICE_SOURCES CONFIGURE_DEPENDS csrc/torch/*_device.cpp)
  target_sources(_C PRIVATE ${FASTAR_KERNEL_SOURCES} ${FASTAR_DEVICE_SOURCES})
  target_include_directories(_C PRIVATE ${CUDAToolkit_INCLUDE_DIRS} ${FASTAR_NVIDIA_INCLUDE})
  target_link_libraries(_C PRIVATE c10_cuda torch_cuda CUDA::cudart)
  # _C exists before CUDA is enabled, so it does not inherit CMAKE_CUDA_ARCHITECTURES.
  set_target_properties(_C PROPERTIES CUDA_ARCHITECTURES "${_archs}")
  string(REPLACE ";" "\\;" _arch_string "${TORCH_CUDA_ARCH_LIST}")  # one definition, not a list
  target_compile_definitions(_C PRIVATE FASTAR_WITH_CUDA "FASTAR_CUDA_ARCHS=\"${_arch_string}\"")
  # -Wall and friends are for the host compiler; nvcc only passes them on.
  set_source_files_properties(${FASTAR_KERNEL_SOURCES} PROPERTIES COMPILE_OPTIONS "-Xptxas=-warn-spills")
  message(STATUS "fastar: CUDA archs ${CMAKE_CUDA_ARCHITECTURES}, nvidia headers '${FASTAR_NVIDIA_INCLUDE}'")
endif()
