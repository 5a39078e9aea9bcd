// matrix_view / vector_view: shapes, leading dimension, sub-view pointer
// arithmetic, const conversions and host element access.

#include "lowrank/core/matrix_view.hpp"

#include <gtest/gtest.h>

#include <array>
#include <numeric>
#include <type_traits>

namespace matrix_view_tests {
namespace {

using lowrank::cpu;
using lowrank::cuda;
using lowrank::index_t;
using lowrank::matrix_view;
using lowrank::vector_view;

// Writable converts to read-only, never the other way, never across element
// types or backends.
static_assert(std::is_convertible_v<matrix_view<float, cpu>, matrix_view<const float, cpu>>);
static_assert(!std::is_convertible_v<matrix_view<const float, cpu>, matrix_view<float, cpu>>);
static_assert(!std::is_constructible_v<matrix_view<float, cpu>, matrix_view<const float, cpu>>);
static_assert(!std::is_convertible_v<matrix_view<float, cpu>, matrix_view<const double, cpu>>);
static_assert(!std::is_convertible_v<matrix_view<float, cpu>, matrix_view<const float, cuda>>);
static_assert(!std::is_convertible_v<matrix_view<float, cuda>, matrix_view<float, cpu>>);
static_assert(std::is_convertible_v<vector_view<double, cpu>, vector_view<const double, cpu>>);
static_assert(!std::is_convertible_v<vector_view<const double, cpu>, vector_view<double, cpu>>);
static_assert(!std::is_constructible_v<vector_view<double, cpu>, vector_view<const double, cpu>>);
static_assert(!std::is_convertible_v<vector_view<double, cpu>, vector_view<const double, cuda>>);

// Element access exists for host memory only. (Concepts rather than bare
// requires-expressions: outside a template an unsatisfied requirement is
// ill-formed, not false, by the letter of the standard.)
template <class V>
concept has_element_access = requires(V v) {
  v(0, 0);
};
template <class V>
concept has_subscript = requires(V v) {
  v[0];
};
static_assert(has_element_access<matrix_view<float, cpu>>);
static_assert(!has_element_access<matrix_view<float, cuda>>);
static_assert(has_subscript<vector_view<float, cpu>>);
static_assert(!has_subscript<vector_view<float, cuda>>);

// A read-only view hands out read-only elements.
static_assert(
    std::is_same_v<decltype(std::declval<matrix_view<const float, cpu>>()(0, 0)), const float&>);
static_assert(
    std::is_same_v<decltype(std::declval<vector_view<const double, cpu>>()[0]), const double&>);
static_assert(std::is_same_v<matrix_view<const float, cpu>::value_type, float>);
static_assert(std::is_same_v<matrix_view<const float, cpu>::element_type, const float>);
static_assert(std::is_same_v<matrix_view<float, cuda>::backend, cuda>);

// as_const gives the read-only type, and is idempotent.
static_assert(std::is_same_v<decltype(lowrank::as_const(matrix_view<float, cpu>{})),
                             matrix_view<const float, cpu>>);
static_assert(std::is_same_v<decltype(lowrank::as_const(matrix_view<const float, cpu>{})),
                             matrix_view<const float, cpu>>);
static_assert(std::is_same_v<decltype(lowrank::as_const(vector_view<double, cpu>{})),
                             vector_view<const double, cpu>>);

// Views are usable in constant expressions: write through a sub-view of a
// local array and read back through the parent.
constexpr double constexpr_block_sum() {
  std::array<double, 12> storage{};
  const matrix_view<double, cpu> a(storage.data(), 2, 4, 3);  // ld 3 > rows 2
  const auto b = a.block(1, 1, 1, 3);
  for (index_t j = 0; j < b.cols(); ++j) b(0, j) = double(j + 1);
  // (1,1), (1,2), (1,3) are storage[4], storage[7], storage[10].
  return storage[4] + 10 * storage[7] + 100 * storage[10] + double(storage[3]);
}
static_assert(constexpr_block_sum() == 321.0);

TEST(MatrixView, DefaultIsEmpty) {
  const matrix_view<float, cpu> v;
  EXPECT_EQ(v.data(), nullptr);
  EXPECT_EQ(v.rows(), 0);
  EXPECT_EQ(v.cols(), 0);
  EXPECT_EQ(v.ld(), 1);
  EXPECT_EQ(v.size(), 0);
  EXPECT_TRUE(v.empty());
  const vector_view<float, cpu> w;
  EXPECT_EQ(w.data(), nullptr);
  EXPECT_EQ(w.size(), 0);
  EXPECT_TRUE(w.empty());
}

TEST(MatrixView, ShapeAndDefaultLeadingDimension) {
  std::array<float, 12> storage{};
  const matrix_view<float, cpu> a(storage.data(), 3, 4);
  EXPECT_EQ(a.data(), storage.data());
  EXPECT_EQ(a.rows(), 3);
  EXPECT_EQ(a.cols(), 4);
  EXPECT_EQ(a.ld(), 3);
  EXPECT_EQ(a.size(), 12);
  EXPECT_FALSE(a.empty());
  EXPECT_TRUE(a.contiguous());

  // ld is at least 1, also for zero rows.
  const matrix_view<float, cpu> no_rows(storage.data(), 0, 4);
  EXPECT_EQ(no_rows.ld(), 1);
  EXPECT_TRUE(no_rows.empty());
  EXPECT_EQ(no_rows.size(), 0);
  const matrix_view<float, cpu> no_cols(storage.data(), 3, 0);
  EXPECT_EQ(no_cols.ld(), 3);
  EXPECT_TRUE(no_cols.empty());
  const matrix_view<float, cpu> one_row(storage.data(), 1, 5);
  EXPECT_EQ(one_row.ld(), 1);
  EXPECT_TRUE(one_row.contiguous());
}

TEST(MatrixView, ExplicitLeadingDimensionAndContiguity) {
  std::array<double, 40> storage{};
  const matrix_view<double, cpu> a(storage.data(), 3, 4, 7);
  EXPECT_EQ(a.ld(), 7);
  EXPECT_EQ(a.size(), 12);  // the elements viewed, not the span
  EXPECT_FALSE(a.contiguous());
  // A single column is contiguous whatever ld says.
  EXPECT_TRUE((matrix_view<double, cpu>(storage.data(), 3, 1, 7).contiguous()));
  EXPECT_TRUE((matrix_view<double, cpu>(storage.data(), 3, 4, 3).contiguous()));
}

TEST(MatrixView, ElementAccessIsColumnMajorWithLd) {
  std::array<double, 28> storage{};
  std::iota(storage.begin(), storage.end(), 0.0);
  const index_t ld = 7;
  const matrix_view<double, cpu> a(storage.data(), 5, 4, ld);
  for (index_t j = 0; j < a.cols(); ++j) {
    for (index_t i = 0; i < a.rows(); ++i) {
      EXPECT_EQ(&a(i, j), storage.data() + i + j * ld);
      EXPECT_EQ(a(i, j), double(i + j * ld));
    }
  }
  a(2, 3) = -1.0;
  EXPECT_EQ(storage[2 + 3 * 7], -1.0);
}

TEST(MatrixView, BlockPointerAndLeadingDimension) {
  std::array<float, 60> storage{};
  const matrix_view<float, cpu> a(storage.data(), 6, 7, 8);
  const auto b = a.block(2, 3, 4, 2);
  EXPECT_EQ(b.data(), storage.data() + 2 + 3 * 8);
  EXPECT_EQ(b.rows(), 4);
  EXPECT_EQ(b.cols(), 2);
  EXPECT_EQ(b.ld(), 8);
  EXPECT_EQ(&b(3, 1), &a(5, 4));

  // Blocks of blocks compose.
  const auto bb = b.block(1, 1, 2, 1);
  EXPECT_EQ(bb.data(), &a(3, 4));
  EXPECT_EQ(bb.ld(), 8);

  // An empty block at the far corner is valid.
  const auto corner = a.block(6, 7, 0, 0);
  EXPECT_TRUE(corner.empty());
  EXPECT_EQ(corner.data(), storage.data() + 6 + 7 * 8);
}

TEST(MatrixView, ColumnAndRowRanges) {
  std::array<double, 60> storage{};
  const index_t ld = 9;
  const matrix_view<double, cpu> a(storage.data(), 5, 6, ld);

  const auto mc = a.middle_cols(2, 3);
  EXPECT_EQ(mc.data(), storage.data() + 2 * ld);
  EXPECT_EQ(mc.rows(), 5);
  EXPECT_EQ(mc.cols(), 3);
  EXPECT_EQ(mc.ld(), ld);

  const auto lc = a.left_cols(4);
  EXPECT_EQ(lc.data(), storage.data());
  EXPECT_EQ(lc.rows(), 5);
  EXPECT_EQ(lc.cols(), 4);
  EXPECT_EQ(lc.ld(), ld);

  const auto mr = a.middle_rows(1, 3);
  EXPECT_EQ(mr.data(), storage.data() + 1);
  EXPECT_EQ(mr.rows(), 3);
  EXPECT_EQ(mr.cols(), 6);
  EXPECT_EQ(mr.ld(), ld);
  EXPECT_FALSE(mr.contiguous());

  const auto c = a.col(4);
  EXPECT_EQ(c.data(), storage.data() + 4 * ld);
  EXPECT_EQ(c.rows(), 5);
  EXPECT_EQ(c.cols(), 1);
  EXPECT_TRUE(c.contiguous());
  EXPECT_EQ(&c(3, 0), &a(3, 4));
}

TEST(MatrixView, ConversionToConstKeepsEverything) {
  std::array<float, 30> storage{};
  const matrix_view<float, cpu> a(storage.data(), 4, 5, 6);
  const matrix_view<const float, cpu> c = a;
  EXPECT_EQ(c.data(), a.data());
  EXPECT_EQ(c.rows(), 4);
  EXPECT_EQ(c.cols(), 5);
  EXPECT_EQ(c.ld(), 6);
  const auto k = lowrank::as_const(a.block(1, 2, 3, 3));
  EXPECT_EQ(k.data(), &a(1, 2));
  EXPECT_EQ(k.rows(), 3);
  EXPECT_EQ(k.cols(), 3);
  EXPECT_EQ(k.ld(), 6);
  // Reads through the const view see writes through the writable one.
  a(1, 2) = 5.0f;
  EXPECT_EQ(k(0, 0), 5.0f);
}

TEST(VectorView, SizeSegmentAndAccess) {
  std::array<double, 10> storage{};
  std::iota(storage.begin(), storage.end(), 0.0);
  const vector_view<double, cpu> v(storage.data(), 10);
  EXPECT_EQ(v.size(), 10);
  EXPECT_FALSE(v.empty());
  EXPECT_EQ(&v[7], storage.data() + 7);
  EXPECT_EQ(v[7], 7.0);

  const auto s = v.segment(3, 4);
  EXPECT_EQ(s.data(), storage.data() + 3);
  EXPECT_EQ(s.size(), 4);
  EXPECT_EQ(s[0], 3.0);
  s[1] = -2.0;
  EXPECT_EQ(storage[4], -2.0);
  EXPECT_TRUE(v.segment(10, 0).empty());

  const auto m = v.as_matrix();
  EXPECT_EQ(m.data(), storage.data());
  EXPECT_EQ(m.rows(), 10);
  EXPECT_EQ(m.cols(), 1);
  EXPECT_EQ(m.ld(), 10);
  EXPECT_EQ(&m(6, 0), &v[6]);
  // An empty vector is a 0 x 1 matrix with ld 1.
  EXPECT_EQ(v.segment(2, 0).as_matrix().ld(), 1);
}

TEST(VectorView, ConversionToConst) {
  std::array<float, 5> storage{};
  const vector_view<float, cpu> v(storage.data(), 5);
  const vector_view<const float, cpu> c = v;
  EXPECT_EQ(c.data(), v.data());
  EXPECT_EQ(c.size(), 5);
  const auto k = lowrank::as_const(v);
  EXPECT_EQ(k.data(), v.data());
  EXPECT_EQ(k.size(), 5);
  v[2] = 3.0f;
  EXPECT_EQ(k[2], 3.0f);
}

}  // namespace
}  // namespace matrix_view_tests
