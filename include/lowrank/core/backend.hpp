#pragma once
/// @file
/// Backend tags and the two customisation points every backend specialises
/// (docs/architecture.md, "Backends").
///
/// A backend is a tag type. It provides
/// - `lowrank::context<Backend>`: owns what the backend needs to run (threads
///   and scratch memory on the CPU; a stream, library handles, workspace and
///   per-family resources created on first use on a GPU), and
/// - `lowrank::ops<Backend>`: a struct of static functions assembled from one
///   part per family (backend/<name>/ops.hpp): the core part, with what every
///   family needs (products, factorisations, random fills, element-wise maps,
///   reductions, transfers; the concept `backend_for<Backend, T>` in
///   core/concepts.hpp), and one part for each family that needs operations
///   of its own (the adapters' concept is `adapter_backend_for<Backend, T>` in
///   adapters/backend.hpp). Each backend `static_assert`s every concept.
///
/// Algorithms are written once against `ops<Backend>` and take the context as
/// their first argument; the backend is deduced from the data's type, so CPU
/// data with a CUDA context does not compile.

#include <string_view>

namespace lowrank {

/// The host backend: Eigen, optionally a BLAS / LAPACK behind it.
struct cpu {
  static constexpr std::string_view name = "cpu";
};

/// The CUDA backend: cuBLAS, cuSOLVER and lowrank's kernels
/// (`<lowrank/cuda.hpp>`, compiled as CUDA only).
struct cuda {
  static constexpr std::string_view name = "cuda";
};

/// The operation table of a backend; specialised in backend/<name>/ops.hpp.
template <class Backend>
struct ops;

/// The execution context of a backend; specialised in backend/<name>/context.hpp.
template <class Backend>
class context;

}  // namespace lowrank
