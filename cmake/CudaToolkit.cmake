# moetrain_find_cuda_toolkit(): find_package(CUDAToolkit) that configures with Debian 12's stock CMake 3.25.1
# as well as with newer CMakes, with or without a CUDA toolkit installed.
#
# Why: the stock FindCUDAToolkit.cmake of CMake 3.25.1 (line 1087) sets a DEPRECATION property on the
# imported target CUDA::nvToolsExt whenever the project requires CMake >= 3.25, without checking that the
# target exists. CUDA 12.9 and later ship no libnvToolsExt (nvtx3 is header-only), so with CUDA 13 that
# target is never created and configuring stops at "set_property could not find TARGET CUDA::nvToolsExt".
# CMake 3.26 guards the call. The module reads CMAKE_MINIMUM_REQUIRED_VERSION, so we lower it inside this
# function's scope only, which skips that one deprecation message and nothing else; imported targets are
# directory-scoped and survive the function, and the result variables are copied to the caller.
function(moetrain_find_cuda_toolkit)
  if(CMAKE_VERSION VERSION_LESS 3.26)
    set(CMAKE_MINIMUM_REQUIRED_VERSION 3.24)
  endif()
  find_package(CUDAToolkit)
  foreach(var IN ITEMS CUDAToolkit_FOUND CUDAToolkit_VERSION CUDAToolkit_LIBRARY_DIR CUDAToolkit_INCLUDE_DIRS
                       CUDAToolkit_BIN_DIR CUDAToolkit_NVCC_EXECUTABLE CUDAToolkit_TARGET_DIR)
    set(${var} "${${var}}" PARENT_SCOPE)
  endforeach()
endfunction()

# moetrain_allow_torch_without_cuda_toolkit(): call before find_package(Torch).
#
# Why: the PyPI torch wheel is built with CUDA, and its CMake package (Caffe2/public/cuda.cmake) looks for
# a CUDA toolkit with the legacy FindCUDA (nvcc on PATH, $CUDA_HOME, $CUDA_PATH, /usr/local/cuda); without
# one, find_package(Torch) stops ("Your installed Caffe2 version uses CUDA but I cannot find the CUDA
# libraries"). moetrain's CPU code needs no toolkit: libtorch_cuda and the CUDA runtime come with the wheel
# (its nvidia-* packages, found through the libraries' RUNPATH). When no nvcc is found where FindCUDA
# would look, we define the one imported target the wheel's targets refer to, torch::cudart, as an empty
# interface; cuda.cmake sees it (its include guard) and returns, and the wheel's libraries still link.
# MOETRAIN_HAVE_CUDA_TOOLKIT tells the rest of the build whether CUDA sources can be compiled. When nvcc is
# found off PATH (/usr/local/cuda/bin on a stock system), CMAKE_CUDA_COMPILER is set to it.
function(moetrain_allow_torch_without_cuda_toolkit)
  find_program(MOETRAIN_NVCC nvcc HINTS ENV CUDA_HOME ENV CUDA_PATH ENV CUDA_TOOLKIT_ROOT_DIR
               PATHS /usr/local/cuda PATH_SUFFIXES bin)
  if(MOETRAIN_NVCC)
    set(MOETRAIN_HAVE_CUDA_TOOLKIT ON PARENT_SCOPE)
    # The wheel's cuda.cmake enables the CUDA language, and CMake looks for nvcc only in $CUDACXX and on
    # PATH; the toolkit's installer puts it in /usr/local/cuda/bin, which is not on a stock PATH
    # ("Failed to detect a default CUDA architecture"). Name the compiler we found.
    if(NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX})
      set(CMAKE_CUDA_COMPILER "${MOETRAIN_NVCC}" CACHE FILEPATH "CUDA compiler (found by moetrain)")
    endif()
  else()
    message(STATUS "moetrain: no CUDA toolkit (nvcc) found; building without CUDA and NCCL sources "
                   "(the torch wheel's own CUDA libraries are still linked, and work at run time)")
    if(NOT TARGET torch::cudart)
      add_library(torch::cudart INTERFACE IMPORTED)
    endif()
    set(MOETRAIN_HAVE_CUDA_TOOLKIT OFF PARENT_SCOPE)
  endif()
endfunction()
