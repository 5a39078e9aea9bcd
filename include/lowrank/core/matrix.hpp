#pragma once
/// @file
/// Owning matrices and vectors: `matrix<T, Backend>` and `vector<T, Backend>`.
///
/// Each backend specialises them. On the CPU they *are* Eigen objects:
/// `matrix<T, cpu>` derives from `Eigen::Matrix<T, Dynamic, Dynamic>` (column
/// major) and `vector<T, cpu>` from `Eigen::Matrix<T, Dynamic, 1>`, so every
/// Eigen expression works on them and moving one into a plain Eigen matrix
/// steals its buffer. A GPU backend stores device memory and offers
/// `to_eigen()` (a download), which the CPU types offer too (a copy, or a move
/// from an rvalue), so generic code can treat both alike.
///
/// Every specialisation has `rows()`, `cols()` (or `size()`), `data()`,
/// `view()` (a `matrix_view` / `vector_view`), and a constructor
/// `(context<Backend>&, rows, cols)` that allocates uninitialised storage in
/// the context's memory.

#include <Eigen/Core>
#include <concepts>
#include <utility>

#include "lowrank/core/backend.hpp"
#include "lowrank/core/matrix_view.hpp"

namespace lowrank {

template <class T, class Backend>
class matrix;

template <class T, class Backend>
class vector;

/// A column-major host matrix: an Eigen::Matrix<T, Dynamic, Dynamic> with the
/// lowrank owning-matrix interface added.
template <class T>
class matrix<T, cpu> : public Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> {
 public:
  using base = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
  using base::base;
  using base::operator=;

  matrix() = default;
  /// Uninitialised rows x cols storage (the context is unused on the CPU).
  template <std::integral I, std::integral J>
  matrix(context<cpu>& /*ctx*/, I rows, J cols) : base(index_t(rows), index_t(cols)) {}
  matrix(base&& other) noexcept : base(std::move(other)) {}  // NOLINT(google-explicit-constructor)

  [[nodiscard]] matrix_view<T, cpu> view() noexcept {
    return {this->data(), this->rows(), this->cols()};
  }
  [[nodiscard]] matrix_view<const T, cpu> view() const noexcept {
    return {this->data(), this->rows(), this->cols()};
  }
  /// The Eigen matrix itself.
  [[nodiscard]] const base& to_eigen() const& noexcept { return *this; }
  /// The Eigen matrix, moved out without a copy.
  [[nodiscard]] base to_eigen() && noexcept { return std::move(static_cast<base&>(*this)); }
};

/// A host vector: an Eigen::Matrix<T, Dynamic, 1> with the lowrank
/// owning-vector interface added.
template <class T>
class vector<T, cpu> : public Eigen::Matrix<T, Eigen::Dynamic, 1> {
 public:
  using base = Eigen::Matrix<T, Eigen::Dynamic, 1>;
  using base::base;
  using base::operator=;

  vector() = default;
  /// Uninitialised storage of `size` elements (the context is unused on the CPU).
  template <std::integral I>
  vector(context<cpu>& /*ctx*/, I size) : base(index_t(size)) {}
  vector(base&& other) noexcept : base(std::move(other)) {}  // NOLINT(google-explicit-constructor)

  [[nodiscard]] vector_view<T, cpu> view() noexcept { return {this->data(), this->size()}; }
  [[nodiscard]] vector_view<const T, cpu> view() const noexcept {
    return {this->data(), this->size()};
  }
  [[nodiscard]] const base& to_eigen() const& noexcept { return *this; }
  [[nodiscard]] base to_eigen() && noexcept { return std::move(static_cast<base&>(*this)); }
};

}  // namespace lowrank
