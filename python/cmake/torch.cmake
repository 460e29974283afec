# Finds the torch that the Python interpreter imports, before the top-level CMakeLists.txt
# decides on CUDA: the extension must be built against exactly that torch. Included when
# RMSNORM_BUILD_PYTHON is ON; python/CMakeLists.txt then builds the extension.
#
# Sets RMSNORM_TORCH_VERSION, RMSNORM_TORCH_CUDA_VERSION ("" for a CPU-only torch),
# RMSNORM_TORCH_DIR (the torch package), RMSNORM_TORCH_CXX11_ABI (torch's
# _GLIBCXX_USE_CXX11_ABI, 0 or 1), and RMSNORM_TORCH_CUDA: whether the extension gets CUDA
# kernels, which needs torch with CUDA and a CUDA compiler of torch's CUDA major version.
# Across majors the kernels would run on another CUDA runtime (libcudart.so.N) than torch's
# tensors and streams; torch.utils.cpp_extension refuses that mismatch too. Without CUDA
# kernels the extension is built with CPU kernels only, and says so.
#
# RMSNORM_CUDA: a torch without CUDA makes the whole build CPU-only (RMSNORM_CUDA=OFF). A
# torch whose CUDA the extension cannot use leaves the library's CUDA backend to the C++ tests
# and the CLI when they are built; a build of the extension alone (pip) is then CPU-only too,
# as its CUDA code would serve nothing and need a second CUDA runtime to load.

# scikit-build-core passes Python_EXECUTABLE: the interpreter pip runs in.
find_package(Python COMPONENTS Interpreter REQUIRED)
execute_process(
  COMMAND "${Python_EXECUTABLE}" -c
          "import os, torch; print(os.path.dirname(torch.__file__)); print(torch.utils.cmake_prefix_path); print(torch.version.cuda or ''); print(torch.__version__); print(int(torch._C._GLIBCXX_USE_CXX11_ABI))"
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
list(GET _rmsnorm_torch_out 0 RMSNORM_TORCH_DIR)
list(GET _rmsnorm_torch_out 1 _rmsnorm_torch_prefix)
list(GET _rmsnorm_torch_out 2 RMSNORM_TORCH_CUDA_VERSION)
list(GET _rmsnorm_torch_out 3 RMSNORM_TORCH_VERSION)
list(GET _rmsnorm_torch_out 4 RMSNORM_TORCH_CXX11_ABI)
list(APPEND CMAKE_PREFIX_PATH "${_rmsnorm_torch_prefix}")  # torch's CMake package, for the CUDA build

set(RMSNORM_TORCH_CUDA OFF)
if(RMSNORM_TORCH_CUDA_VERSION STREQUAL "")
  if(RMSNORM_CUDA STREQUAL "ON")
    message(FATAL_ERROR "RMSNORM_CUDA=ON, but torch ${RMSNORM_TORCH_VERSION} has no CUDA")
  endif()
  # A normal variable shadows the cache entry for this configure only.
  set(RMSNORM_CUDA OFF)
elseif(NOT RMSNORM_CUDA STREQUAL "OFF")
  include(CheckLanguage)
  check_language(CUDA)  # the compiler the top-level CMakeLists.txt then enables
  string(REGEX MATCH "^[0-9]+" _rmsnorm_torch_cuda_major "${RMSNORM_TORCH_CUDA_VERSION}")
  if(CMAKE_CUDA_COMPILER)
    execute_process(COMMAND "${CMAKE_CUDA_COMPILER}" --version OUTPUT_VARIABLE _rmsnorm_nvcc_out ERROR_QUIET)
    set(_rmsnorm_nvcc_major "")
    set(_rmsnorm_nvcc_cuda "an unknown version")
    if(_rmsnorm_nvcc_out MATCHES "release ([0-9]+)\\.([0-9]+)")
      set(_rmsnorm_nvcc_major "${CMAKE_MATCH_1}")
      set(_rmsnorm_nvcc_cuda "CUDA ${CMAKE_MATCH_1}.${CMAKE_MATCH_2}")
    endif()
    if(_rmsnorm_nvcc_major STREQUAL _rmsnorm_torch_cuda_major)
      set(RMSNORM_TORCH_CUDA ON)
    else()
      message(WARNING
        "rmsnorm: torch ${RMSNORM_TORCH_VERSION} was built with CUDA ${RMSNORM_TORCH_CUDA_VERSION}, but the CUDA "
        "compiler ${CMAKE_CUDA_COMPILER} is ${_rmsnorm_nvcc_cuda}: the PyTorch extension is built WITHOUT CUDA "
        "kernels (CPU only; rmsnorm.has_cuda_kernels() is False). For CUDA kernels, build with the nvcc of CUDA "
        "${_rmsnorm_torch_cuda_major} (CUDACXX or -DCMAKE_CUDA_COMPILER, in a new build folder), or with a torch "
        "built for the CUDA of this nvcc.")
    endif()
  else()
    message(STATUS "rmsnorm: no CUDA compiler: the PyTorch extension gets CPU kernels only")
  endif()
  if(NOT RMSNORM_TORCH_CUDA AND RMSNORM_CUDA STREQUAL "AUTO" AND NOT RMSNORM_BUILD_TESTS
     AND NOT RMSNORM_BUILD_TOOLS)
    set(RMSNORM_CUDA OFF)
  endif()
endif()
if(RMSNORM_TORCH_CUDA_VERSION STREQUAL "")
  message(STATUS "rmsnorm: PyTorch extension for torch ${RMSNORM_TORCH_VERSION} (CPU only)")
else()
  message(STATUS "rmsnorm: PyTorch extension for torch ${RMSNORM_TORCH_VERSION} (CUDA ${RMSNORM_TORCH_CUDA_VERSION})")
endif()
