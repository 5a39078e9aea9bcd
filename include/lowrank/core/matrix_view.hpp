#pragma once
/// @file
/// Non-owning views of column-major data with a leading dimension, as in BLAS,
/// Eigen and cuBLAS. `matrix_view<T, B>` is writable, `matrix_view<const T, B>`
/// read-only; a writable view converts to a read-only one. The backend `B` is
/// part of the type: a view of device memory is not a view of host memory.
///
/// Element access (`operator()`) exists only for host memory (`B = cpu`).
/// A matrix view is a `linear_operator` (core/linear_operator.hpp): `apply`
/// and `apply_transposed` multiply by it on its backend (a gemm).

#include <cstddef>
#include <type_traits>

#include "lowrank/core/backend.hpp"
#include "lowrank/core/config.hpp"

namespace lowrank {

/// Signed index type of all shapes and indices (Eigen::Index, ptrdiff_t).
using index_t = std::ptrdiff_t;

/// Whether an operand is used as is or transposed (BLAS 'N' / 'T').
enum class transpose { no, yes };

/// A rows x cols column-major matrix at `data` with leading dimension `ld`
/// (element (i, j) at data[i + j * ld], ld >= max(1, rows)).
template <class T, class Backend>
class matrix_view {
 public:
  using element_type = T;
  using value_type = std::remove_cv_t<T>;
  using backend = Backend;

  constexpr matrix_view() noexcept = default;

  constexpr matrix_view(T* data, index_t rows, index_t cols, index_t ld) noexcept
      : data_(data), rows_(rows), cols_(cols), ld_(ld) {
    LOWRANK_ASSERT(rows >= 0 && cols >= 0 && ld >= (rows > 1 ? rows : 1));
  }

  constexpr matrix_view(T* data, index_t rows, index_t cols) noexcept
      : matrix_view(data, rows, cols, rows > 1 ? rows : 1) {}

  /// A writable view converts to a read-only view.
  template <class U>
  requires(std::is_same_v<const U, T> && !std::is_same_v<U, T>) constexpr matrix_view(
      matrix_view<U, Backend> other) noexcept  // NOLINT(google-explicit-constructor)
      : data_(other.data()), rows_(other.rows()), cols_(other.cols()), ld_(other.ld()) {}

  [[nodiscard]] constexpr T* data() const noexcept { return data_; }
  [[nodiscard]] constexpr index_t rows() const noexcept { return rows_; }
  [[nodiscard]] constexpr index_t cols() const noexcept { return cols_; }
  [[nodiscard]] constexpr index_t ld() const noexcept { return ld_; }
  [[nodiscard]] constexpr index_t size() const noexcept { return rows_ * cols_; }
  [[nodiscard]] constexpr bool empty() const noexcept { return rows_ == 0 || cols_ == 0; }
  /// True when the columns are stored back to back (ld == rows).
  [[nodiscard]] constexpr bool contiguous() const noexcept { return ld_ == rows_ || cols_ <= 1; }

  /// The r x c sub-matrix whose top-left element is (i, j).
  [[nodiscard]] constexpr matrix_view block(index_t i, index_t j, index_t r,
                                            index_t c) const noexcept {
    LOWRANK_ASSERT(i >= 0 && j >= 0 && r >= 0 && c >= 0 && i + r <= rows_ && j + c <= cols_);
    return {data_ + i + j * ld_, r, c, ld_};
  }
  /// Columns j, ..., j + c - 1.
  [[nodiscard]] constexpr matrix_view middle_cols(index_t j, index_t c) const noexcept {
    return block(0, j, rows_, c);
  }
  /// The first c columns.
  [[nodiscard]] constexpr matrix_view left_cols(index_t c) const noexcept {
    return block(0, 0, rows_, c);
  }
  /// Rows i, ..., i + r - 1.
  [[nodiscard]] constexpr matrix_view middle_rows(index_t i, index_t r) const noexcept {
    return block(i, 0, r, cols_);
  }
  /// Column j as a rows x 1 view.
  [[nodiscard]] constexpr matrix_view col(index_t j) const noexcept {
    return block(0, j, rows_, 1);
  }

  /// Y = alpha A X + beta Y, A this view (m x n), X n x c, Y m x c: a gemm
  /// on the backend (`ops<Backend>::gemm`; beta = 0 ignores Y).
  void apply(context<Backend>& ctx, matrix_view<const value_type, Backend> x,
             matrix_view<value_type, Backend> y, value_type alpha = value_type(1),
             value_type beta = value_type(0)) const {
    ops<Backend>::gemm(ctx, transpose::no, transpose::no, alpha, as_read_only(), x, beta, y);
  }
  /// Y = alpha A^T X + beta Y (X m x c, Y n x c).
  void apply_transposed(context<Backend>& ctx, matrix_view<const value_type, Backend> x,
                        matrix_view<value_type, Backend> y, value_type alpha = value_type(1),
                        value_type beta = value_type(0)) const {
    ops<Backend>::gemm(ctx, transpose::yes, transpose::no, alpha, as_read_only(), x, beta, y);
  }

  /// Element (i, j); host memory only.
  [[nodiscard]] constexpr T& operator()(
      index_t i, index_t j) const noexcept requires std::is_same_v<Backend, cpu> {
    LOWRANK_ASSERT(i >= 0 && j >= 0 && i < rows_ && j < cols_);
    return data_[i + j * ld_];
  }

 private:
  [[nodiscard]] constexpr matrix_view<const value_type, Backend> as_read_only() const noexcept {
    return {data_, rows_, cols_, ld_};
  }

  T* data_ = nullptr;
  index_t rows_ = 0;
  index_t cols_ = 0;
  index_t ld_ = 1;
};

/// A contiguous vector of `size` elements at `data`.
template <class T, class Backend>
class vector_view {
 public:
  using element_type = T;
  using value_type = std::remove_cv_t<T>;
  using backend = Backend;

  constexpr vector_view() noexcept = default;
  constexpr vector_view(T* data, index_t size) noexcept : data_(data), size_(size) {
    LOWRANK_ASSERT(size >= 0);
  }
  template <class U>
  requires(std::is_same_v<const U, T> && !std::is_same_v<U, T>) constexpr vector_view(
      vector_view<U, Backend> other) noexcept  // NOLINT(google-explicit-constructor)
      : data_(other.data()), size_(other.size()) {}

  [[nodiscard]] constexpr T* data() const noexcept { return data_; }
  [[nodiscard]] constexpr index_t size() const noexcept { return size_; }
  [[nodiscard]] constexpr bool empty() const noexcept { return size_ == 0; }

  /// Elements i, ..., i + n - 1.
  [[nodiscard]] constexpr vector_view segment(index_t i, index_t n) const noexcept {
    LOWRANK_ASSERT(i >= 0 && n >= 0 && i + n <= size_);
    return {data_ + i, n};
  }
  /// The vector as a size x 1 matrix.
  [[nodiscard]] constexpr matrix_view<T, Backend> as_matrix() const noexcept {
    return {data_, size_, 1};
  }

  /// Element i; host memory only.
  [[nodiscard]] constexpr T& operator[](
      index_t i) const noexcept requires std::is_same_v<Backend, cpu> {
    LOWRANK_ASSERT(i >= 0 && i < size_);
    return data_[i];
  }

 private:
  T* data_ = nullptr;
  index_t size_ = 0;
};

/// The read-only view of a view.
template <class T, class Backend>
[[nodiscard]] constexpr matrix_view<const T, Backend> as_const(matrix_view<T, Backend> v) noexcept {
  return v;
}
template <class T, class Backend>
[[nodiscard]] constexpr vector_view<const T, Backend> as_const(vector_view<T, Backend> v) noexcept {
  return v;
}

}  // namespace lowrank
