# The CUDA language and its build flags: whether the CUDA backend is built, and for which
# architectures. Kept in one file because a change here changes the GPU code, and GPU code
# lands only after a recorded GPU run (tools/gpu-record-check.sh watches this file).
# Sets RMSNORM_HAVE_CUDA.
set(RMSNORM_HAVE_CUDA OFF)
if(NOT RMSNORM_CUDA STREQUAL "OFF")
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    # sm_90 (H100, H200) first; sm_80 (A100) must build and run.
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES 90 80)
    endif()
    enable_language(CUDA)
    set(CMAKE_CUDA_STANDARD 17)
    set(CMAKE_CUDA_STANDARD_REQUIRED ON)
    find_package(CUDAToolkit REQUIRED)
    set(RMSNORM_HAVE_CUDA ON)
  elseif(RMSNORM_CUDA STREQUAL "ON")
    message(FATAL_ERROR "RMSNORM_CUDA=ON but no CUDA compiler was found")
  endif()
endif()
