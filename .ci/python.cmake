# Prints the Python interpreter that the top-level CMakeLists.txt finds (the same call, in the
# same environment), so that .ci/run installs torch and the test requirements into the
# interpreter whose `import torch` decides whether the PyTorch extension is built.
#
#     cmake -P .ci/python.cmake
find_package(Python COMPONENTS Interpreter QUIET)
if(NOT Python_FOUND)
  message(FATAL_ERROR "no Python interpreter found")
endif()
execute_process(COMMAND "${CMAKE_COMMAND}" -E echo "${Python_EXECUTABLE}")
