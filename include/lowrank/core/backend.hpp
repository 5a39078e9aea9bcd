#pragma once
/// @file
/// Backend tags and the two customisation points every backend specialises.
///
/// A backend is a tag type. It provides
/// - `lowrank::context<Backend>`: owns what the backend needs to run (nothing
///   much on the CPU; a stream, library handles and workspace on a GPU), and
/// - `lowrank::ops<Backend>`: a struct of static functions, the whole backend
///   surface in one place (gemm, orthonormalisation pieces, small SVD, random
///   fills, norms, ...). The concept `lowrank::backend_for<Backend, T>`
///   (core/concepts.hpp) lists the operations; each backend `static_assert`s it.
///
/// Algorithms are written once against `ops<Backend>` and take the context as
/// their first argument; the backend is deduced from the data's type, so CPU
/// data with a CUDA context does not compile.

#include <string_view>
#include <type_traits>

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

/// True for the backend tags lowrank defines.
template <class Backend>
inline constexpr bool is_backend_v = std::is_same_v<Backend, cpu> || std::is_same_v<Backend, cuda>;

}  // namespace lowrank
