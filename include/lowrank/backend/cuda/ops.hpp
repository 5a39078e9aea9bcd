#pragma once
/// @file
/// The CUDA operation table, `lowrank::ops<lowrank::cuda>`, assembled from
/// one part per family (docs/architecture.md, "Backends"):
/// - backend/cuda/core.hpp: the core operations (`backend_for`,
///   core/concepts.hpp) through cuBLAS, cuSOLVER and lowrank's kernels, the
///   SVD's routes in backend/cuda/svd.hpp;
/// - backend/cuda/adapters.hpp: the adapters' operations
///   (`adapter_backend_for`, adapters/backend.hpp);
/// - backend/cuda/projection.hpp: the projected optimizers' operations
///   (`projection_backend_for`, projection/backend.hpp);
/// - backend/cuda/basis.hpp: the basis family's operations
///   (`basis_backend_for`, basis/backend.hpp): the DCT's FFT route through
///   cuFFT, basis vectors, column gathers;
/// - backend/cuda/factors.hpp: the factors family's operations
///   (`factors_backend_for`, factors/backend.hpp): products with a sparse
///   support (CSR and its CSC copy), the SDDMM, random supports.
/// A new family adds its part here and asserts its concept below. Parts use
/// distinct names, so that no call through `ops<cuda>` is ambiguous.

#include "lowrank/adapters/backend.hpp"
#include "lowrank/backend/cuda/adapters.hpp"
#include "lowrank/backend/cuda/basis.hpp"
#include "lowrank/backend/cuda/context.hpp"
#include "lowrank/backend/cuda/core.hpp"
#include "lowrank/backend/cuda/factors.hpp"
#include "lowrank/backend/cuda/projection.hpp"
#include "lowrank/basis/backend.hpp"
#include "lowrank/core/backend.hpp"
#include "lowrank/core/concepts.hpp"
#include "lowrank/factors/backend.hpp"
#include "lowrank/projection/backend.hpp"

namespace lowrank {

template <>
struct ops<cuda> : detail::cuda_core_ops,
                   detail::cuda_adapter_ops,
                   detail::cuda_projection_ops,
                   detail::cuda_basis_ops,
                   detail::cuda_factor_ops {
  using backend = cuda;
};

static_assert(backend_for<cuda, float>);
static_assert(backend_for<cuda, double>);
static_assert(adapter_backend_for<cuda, float>);
static_assert(adapter_backend_for<cuda, double>);
static_assert(projection_backend_for<cuda, float>);
static_assert(projection_backend_for<cuda, double>);
static_assert(basis_backend_for<cuda, float>);
static_assert(basis_backend_for<cuda, double>);
static_assert(factors_backend_for<cuda, float>);
static_assert(factors_backend_for<cuda, double>);

}  // namespace lowrank
