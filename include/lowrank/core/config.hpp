#pragma once
/// @file
/// Configuration: the only macros of lowrank besides version.hpp.
///
/// - `LOWRANK_HOST_DEVICE` marks functions usable from host and device code
///   (`__host__ __device__` under nvcc, nothing otherwise).
/// - `LOWRANK_ASSERT(cond)` checks internal invariants only (never caller
///   input, which throws). It defaults to `assert`; define it before including
///   any lowrank header to override it.
/// - `LOWRANK_HAS_LAPACK` is 1 when the build links a LAPACK (CMake option
///   `LOWRANK_USE_LAPACK`); the CPU backend then calls gesdd / geqrf / orgqr.
/// - `EIGEN_USE_BLAS` (Eigen's own macro, set by CMake option
///   `LOWRANK_USE_BLAS`) routes Eigen's dense products to the linked BLAS.

#include <cassert>

#if defined(__CUDACC__)
#define LOWRANK_HOST_DEVICE __host__ __device__
#else
#define LOWRANK_HOST_DEVICE
#endif

#ifndef LOWRANK_ASSERT
#define LOWRANK_ASSERT(cond) assert(cond)
#endif

#ifndef LOWRANK_HAS_LAPACK
#define LOWRANK_HAS_LAPACK 0
#endif
