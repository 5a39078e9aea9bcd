# The CUDA backend's build support (included by the top-level CMakeLists.txt).
#
# LOWRANK_BUILD_CUDA: AUTO (default: when CMake finds a CUDA compiler), ON or
# OFF: builds the CUDA tests, examples, benchmarks and lowrank-compare's
# --backend cuda, for CMAKE_CUDA_ARCHITECTURES (default sm_80 and sm_90 code
# plus compute_90 PTX).
#
# lowrank::cuda (INTERFACE) exists whenever the CUDA toolkit is found:
# lowrank::lowrank + CUDA::cudart, cublas, cusolver, cufft; for CUDA sources it adds
# EIGEN_NO_CUDA (Eigen stays on the host; without it nvcc warns about Eigen's
# host calls in __host__ __device__ functions) and -std=c++20 (CMake 3.25 does
# not know the cuda_std_20 feature for nvcc 12+, so the flag is given directly;
# do not also set CUDA_STANDARD on targets that link lowrank::cuda).

set(LOWRANK_BUILD_CUDA AUTO CACHE STRING "Build lowrank's CUDA tests and programs: AUTO, ON or OFF")
set_property(CACHE LOWRANK_BUILD_CUDA PROPERTY STRINGS AUTO ON OFF)

set(LOWRANK_CUDA_ENABLED OFF)
if(LOWRANK_BUILD_CUDA STREQUAL "AUTO")
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    set(LOWRANK_CUDA_ENABLED ON)
  endif()
elseif(LOWRANK_BUILD_CUDA)
  set(LOWRANK_CUDA_ENABLED ON)
endif()

if(LOWRANK_CUDA_ENABLED)
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
    set(CMAKE_CUDA_ARCHITECTURES "80-real;90")
  endif()
  enable_language(CUDA)
  find_package(CUDAToolkit REQUIRED)
  message(STATUS "lowrank: CUDA backend builds for ${CMAKE_CUDA_ARCHITECTURES} (nvcc ${CMAKE_CUDA_COMPILER_VERSION})")
else()
  find_package(CUDAToolkit QUIET)
endif()

if(CUDAToolkit_FOUND)
  add_library(lowrank_cuda INTERFACE)
  add_library(lowrank::cuda ALIAS lowrank_cuda)
  set_target_properties(lowrank_cuda PROPERTIES EXPORT_NAME cuda)
  target_link_libraries(lowrank_cuda INTERFACE lowrank::lowrank CUDA::cudart CUDA::cublas CUDA::cusolver
                        CUDA::cufft)
  target_compile_definitions(lowrank_cuda INTERFACE $<$<COMPILE_LANGUAGE:CUDA>:EIGEN_NO_CUDA>)
  target_compile_options(lowrank_cuda INTERFACE $<$<COMPILE_LANGUAGE:CUDA>:-std=c++20>)
endif()
