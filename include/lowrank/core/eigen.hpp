#pragma once
/// @file
/// Zero-cost interop between Eigen and lowrank views.
///
/// - `view(x)` wraps any Eigen dense object with direct access and unit inner
///   stride that is column-major (or a vector) in a `matrix_view<T, cpu>`
///   (`matrix_view<const T, cpu>` for a const object): blocks, Maps, Refs and
///   plain matrices all qualify. Row-major matrices do not: their bytes are the
///   transpose (view `x.transpose()` explicitly, or copy into a column-major
///   matrix); this is a compile error rather than a silent transposition.
/// - `as_eigen(v)` is an `Eigen::Map` over a host view with its outer stride.
///
/// The CPU convenience overloads of the algorithms accept any Eigen
/// expression through `Eigen::Ref<const Matrix, 0, OuterStride<>>`, which
/// binds column-major data directly and evaluates anything else once.

#include <Eigen/Core>
#include <algorithm>
#include <type_traits>

#include "lowrank/core/error.hpp"
#include "lowrank/core/matrix_view.hpp"

namespace lowrank {

/// A host matrix as Eigen sees it through a map (column-major, outer stride).
template <class T>
using eigen_map = Eigen::Map<
    std::conditional_t<std::is_const_v<T>,
                       const Eigen::Matrix<std::remove_const_t<T>, Eigen::Dynamic, Eigen::Dynamic>,
                       Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>>,
    Eigen::Unaligned, Eigen::OuterStride<>>;

/// A host vector as Eigen sees it through a map.
template <class T>
using eigen_vector_map =
    Eigen::Map<std::conditional_t<std::is_const_v<T>,
                                  const Eigen::Matrix<std::remove_const_t<T>, Eigen::Dynamic, 1>,
                                  Eigen::Matrix<T, Eigen::Dynamic, 1>>>;

/// The reference type the CPU convenience overloads take: binds column-major
/// data without a copy, evaluates other expressions once.
template <class T>
using eigen_input =
    Eigen::Ref<const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>, 0, Eigen::OuterStride<>>;

namespace detail {

template <class Derived>
inline constexpr bool viewable_v = (int(Derived::Flags) & Eigen::DirectAccessBit) != 0 &&
                                   ((int(Derived::Flags) & Eigen::RowMajorBit) == 0 ||
                                    Derived::IsVectorAtCompileTime);

/// The view of an Eigen object with direct access: T is `Scalar` or
/// `const Scalar`, as the object's data() allows.
template <class T, class Derived>
matrix_view<T, cpu> view_of(T* data, const Eigen::DenseBase<Derived>& x) {
  const auto& d = x.derived();
  if constexpr (Derived::IsRowMajor) {
    // A row vector (the only row-major object allowed): element j is at
    // data[j * innerStride()], i.e. a 1 x n column-major matrix with ld = stride.
    return {data, d.rows(), d.cols(), std::max<index_t>({d.innerStride(), d.rows(), 1})};
  } else {
    if (d.innerStride() != 1 && d.size() > 1) {
      throw_invalid_argument("lowrank::view", "x.innerStride()", d.innerStride(),
                             "1 (contiguous columns)");
    }
    return {data, d.rows(), d.cols(), std::max<index_t>({d.outerStride(), d.rows(), 1})};
  }
}

}  // namespace detail

/// A view of an Eigen column-major object (or vector) with direct access:
/// writable when the object is (a Matrix, a Map, a Block, a Ref), read-only
/// when it is const (a Map<const ...>, a Block of a const matrix).
/// @throws lowrank::invalid_argument if the columns are not contiguous.
template <class Derived>
requires detail::viewable_v<Derived>
[[nodiscard]] auto view(Eigen::DenseBase<Derived>& x) {
  return detail::view_of(x.derived().data(), x);
}

/// A read-only view of an Eigen column-major object (or vector) with direct access.
/// @throws lowrank::invalid_argument if the columns are not contiguous.
template <class Derived>
requires detail::viewable_v<Derived>
[[nodiscard]] matrix_view<const typename Derived::Scalar, cpu> view(
    const Eigen::DenseBase<Derived>& x) {
  const typename Derived::Scalar* data = x.derived().data();
  return detail::view_of(data, x);
}

/// An Eigen map over a host view (no copy).
template <class T>
[[nodiscard]] eigen_map<T> as_eigen(matrix_view<T, cpu> v) noexcept {
  return eigen_map<T>(v.data(), v.rows(), v.cols(), Eigen::OuterStride<>(v.ld()));
}

/// An Eigen map over a host vector view (no copy).
template <class T>
[[nodiscard]] eigen_vector_map<T> as_eigen(vector_view<T, cpu> v) noexcept {
  return eigen_vector_map<T>(v.data(), v.size());
}

}  // namespace lowrank
