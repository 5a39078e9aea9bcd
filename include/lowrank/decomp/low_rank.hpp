#pragma once
/// @file
/// `lowrank::low_rank<T, Backend>`: a rank-k factorisation A ~ U diag(s) V^T as
/// a value type, the result of every SVD in decomp/.
///
/// Shapes: A is m x n, U is m x k with orthonormal columns, s holds k values in
/// descending order (>= 0), V is n x k with orthonormal columns. On the CPU the
/// members are Eigen objects (core/matrix.hpp), so
/// `r.u * r.s.asDiagonal() * r.v.transpose()` is the approximation.

#include <Eigen/Core>
#include <concepts>
#include <string>

#include "lowrank/core/backend.hpp"
#include "lowrank/core/concepts.hpp"
#include "lowrank/core/error.hpp"
#include "lowrank/core/matrix.hpp"

namespace lowrank {

/// A ~ U diag(s) V^T with k = s.size() terms.
template <scalar T, class Backend = cpu>
struct low_rank {
  matrix<T, Backend> u;  ///< m x k, orthonormal columns
  vector<T, Backend> s;  ///< k singular values, descending, >= 0
  matrix<T, Backend> v;  ///< n x k, orthonormal columns

  /// m, the number of rows of the approximated matrix.
  [[nodiscard]] index_t rows() const noexcept { return u.rows(); }
  /// n, the number of columns of the approximated matrix.
  [[nodiscard]] index_t cols() const noexcept { return v.rows(); }
  /// k, the number of terms.
  [[nodiscard]] index_t rank() const noexcept { return s.size(); }

  /// The number of stored scalars, k (m + n + 1): what the factorisation costs
  /// in memory, to compare with m n for the dense matrix.
  [[nodiscard]] index_t parameter_count() const noexcept {
    return u.rows() * u.cols() + s.size() + v.rows() * v.cols();
  }

  /// The m x n matrix U diag(s) V^T (CPU; costs m n k flops and m n memory).
  [[nodiscard]] Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> reconstruct()
      const requires std::same_as<Backend, cpu> {
    return (u * s.asDiagonal()) * v.transpose();
  }

  /// U diag(s) V^T X for an n x c matrix (or vector) X, without forming the
  /// m x n matrix: (m + n) k c flops.
  /// @throws lowrank::invalid_argument if X does not have n rows.
  template <class Derived>
  [[nodiscard]] Eigen::Matrix<T, Eigen::Dynamic, Derived::ColsAtCompileTime> apply(
      const Eigen::MatrixBase<Derived>& x)
      const requires std::same_as<Backend, cpu> && std::same_as<typename Derived::Scalar, T> {
    if (x.rows() != cols()) {
      detail::throw_invalid_argument("lowrank::low_rank::apply", "x.rows()", x.rows(),
                                     "n = " + std::to_string(cols()));
    }
    return u * (s.asDiagonal() * (v.transpose() * x));
  }
};

/// Why the fixed-accuracy randomized SVD stopped.
enum class qb_status {
  converged,         ///< the error estimate met the tolerance
  max_rank_reached,  ///< the rank reached `max_rank` before the tolerance was met
  stalled,           ///< a whole block added no measurable energy (below the indicator's floor)
};

/// The result of the fixed-accuracy randomized SVD: the factorisation plus what
/// the error indicator measured.
template <scalar T, class Backend = cpu>
struct adaptive_low_rank : low_rank<T, Backend> {
  /// The indicator's ||A - U diag(s) V^T||_F / ||A||_F (exact in exact arithmetic).
  double relative_error_estimate = 0;
  /// The tolerance the search used: the requested one, raised to the
  /// indicator's floor if it was below it.
  double tolerance = 0;
  qb_status status = qb_status::converged;
};

}  // namespace lowrank
