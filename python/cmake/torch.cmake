# Finds the torch that the Python interpreter imports, before the top-level CMakeLists.txt
# decides on CUDA: the extension must be built against exactly that torch, and when it has
# no CUDA the library is built CPU-only (RMSNORM_CUDA=OFF). Included when RMSNORM_BUILD_PYTHON
# is ON; python/CMakeLists.txt then does find_package(Torch).
#
# Sets RMSNORM_TORCH_VERSION, RMSNORM_TORCH_CUDA_VERSION ("" for a CPU-only torch) and
# appends torch.utils.cmake_prefix_path to CMAKE_PREFIX_PATH.

# scikit-build-core passes Python_EXECUTABLE: the interpreter pip runs in.
find_package(Python COMPONENTS Interpreter REQUIRED)
execute_process(
  COMMAND "${Python_EXECUTABLE}" -c
          "import torch; print(torch.utils.cmake_prefix_path); print(torch.version.cuda or ''); print(torch.__version__)"
  OUTPUT_VARIABLE _rmsnorm_torch_out
  ERROR_VARIABLE _rmsnorm_torch_err
  RESULT_VARIABLE _rmsnorm_torch_rc
  OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT _rmsnorm_torch_rc EQUAL 0)
  message(FATAL_ERROR
    "RMSNORM_BUILD_PYTHON: cannot import torch with ${Python_EXECUTABLE}:\n${_rmsnorm_torch_err}\n"
    "Install torch into that environment first; build with `pip install --no-build-isolation .` "
    "so that the extension is built against the installed torch.")
endif()
string(REPLACE "\n" ";" _rmsnorm_torch_out "${_rmsnorm_torch_out}")
list(GET _rmsnorm_torch_out 0 _rmsnorm_torch_prefix)
list(GET _rmsnorm_torch_out 1 RMSNORM_TORCH_CUDA_VERSION)
list(GET _rmsnorm_torch_out 2 RMSNORM_TORCH_VERSION)
list(APPEND CMAKE_PREFIX_PATH "${_rmsnorm_torch_prefix}")

if(RMSNORM_TORCH_CUDA_VERSION STREQUAL "")
  if(RMSNORM_CUDA STREQUAL "ON")
    message(FATAL_ERROR "RMSNORM_CUDA=ON, but torch ${RMSNORM_TORCH_VERSION} has no CUDA")
  endif()
  # A normal variable shadows the cache entry for this configure only.
  set(RMSNORM_CUDA OFF)
endif()
if(RMSNORM_TORCH_CUDA_VERSION STREQUAL "")
  message(STATUS "rmsnorm: PyTorch extension for torch ${RMSNORM_TORCH_VERSION} (CPU only)")
else()
  message(STATUS "rmsnorm: PyTorch extension for torch ${RMSNORM_TORCH_VERSION} (CUDA ${RMSNORM_TORCH_CUDA_VERSION})")
endif()
