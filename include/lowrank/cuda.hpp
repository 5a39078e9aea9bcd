#pragma once
/// @file
/// The CUDA backend of lowrank: everything in <lowrank/lowrank.hpp> plus
/// `context<cuda>`, `matrix<T, cuda>` / `vector<T, cuda>` and `ops<cuda>`, so
/// that every algorithm runs on a GPU through the same code:
///
/// ```cpp
/// lowrank::context<lowrank::cuda> ctx;                      // device 0
/// lowrank::matrix<float, lowrank::cuda> a(ctx, host_a);     // upload
/// auto r = lowrank::randomized_svd(ctx, a.view(), 64);      // on the GPU
/// Eigen::MatrixXf u = r.u.to_eigen();                       // download
/// ```
///
/// Compile as CUDA (nvcc, or clang -x cuda), C++20. Eigen is used on the host
/// only: CMake's `lowrank::cuda` target defines EIGEN_NO_CUDA for CUDA sources
/// (without it Eigen marks its functions __host__ __device__ and nvcc warns
/// about every host call inside them); define it yourself when not using the
/// target.

#if !defined(__CUDACC__)
#error "<lowrank/cuda.hpp> must be compiled as CUDA (nvcc, or clang -x cuda)"
#endif

#include "lowrank/lowrank.hpp"

#include "lowrank/backend/cuda/context.hpp"
#include "lowrank/backend/cuda/error.hpp"
#include "lowrank/backend/cuda/matrix.hpp"
#include "lowrank/backend/cuda/ops.hpp"
