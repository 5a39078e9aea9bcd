#pragma once
/// @file
/// The CPU operation table, `lowrank::ops<lowrank::cpu>`, assembled from one
/// part per family (docs/architecture.md, "Backends"):
/// - backend/cpu/core.hpp: the core operations (`backend_for`,
///   core/concepts.hpp), on Eigen maps of the caller's memory, a BLAS and
///   LAPACK behind them when linked;
/// - backend/cpu/adapters.hpp: the adapters' operations
///   (`adapter_backend_for`, adapters/backend.hpp);
/// - backend/cpu/projection.hpp: the projected optimizers' operations
///   (`projection_backend_for`, projection/backend.hpp);
/// - backend/cpu/basis.hpp: the basis family's operations (`basis_backend_for`,
///   basis/backend.hpp): the DCT's FFT route, basis vectors, column gathers;
/// - backend/cpu/factors.hpp: the factors family's operations
///   (`factors_backend_for`, factors/backend.hpp): sparse products, supports.
/// A new family adds its part here and asserts its concept below. Parts use
/// distinct names, so that no call through `ops<cpu>` is ambiguous.

#include "lowrank/adapters/backend.hpp"
#include "lowrank/backend/cpu/adapters.hpp"
#include "lowrank/backend/cpu/basis.hpp"
#include "lowrank/backend/cpu/context.hpp"
#include "lowrank/backend/cpu/core.hpp"
#include "lowrank/backend/cpu/factors.hpp"
#include "lowrank/backend/cpu/projection.hpp"
#include "lowrank/basis/backend.hpp"
#include "lowrank/core/backend.hpp"
#include "lowrank/core/concepts.hpp"
#include "lowrank/factors/backend.hpp"
#include "lowrank/projection/backend.hpp"

namespace lowrank {

template <>
struct ops<cpu> : detail::cpu_core_ops,
                  detail::cpu_adapter_ops,
                  detail::cpu_projection_ops,
                  detail::cpu_basis_ops,
                  detail::cpu_factor_ops {
  using backend = cpu;
};

static_assert(backend_for<cpu, float>);
static_assert(backend_for<cpu, double>);
static_assert(adapter_backend_for<cpu, float>);
static_assert(adapter_backend_for<cpu, double>);
static_assert(projection_backend_for<cpu, float>);
static_assert(projection_backend_for<cpu, double>);
static_assert(basis_backend_for<cpu, float>);
static_assert(basis_backend_for<cpu, double>);
static_assert(factors_backend_for<cpu, float>);
static_assert(factors_backend_for<cpu, double>);

}  // namespace lowrank
