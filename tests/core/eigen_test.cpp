// Eigen interop: view() over Eigen objects, as_eigen() back, and the owning
// matrix<T, cpu> / vector<T, cpu>, which are Eigen objects.

#include "lowrank/core/eigen.hpp"

#include <gtest/gtest.h>

#include <Eigen/Core>
#include <type_traits>
#include <utility>
#include <vector>

#include "lowrank/backend/cpu/context.hpp"
#include "lowrank/core/error.hpp"
#include "lowrank/core/matrix.hpp"

namespace eigen_tests {
namespace {

using lowrank::cpu;
using lowrank::index_t;
using lowrank::matrix_view;
using lowrank::vector_view;

// Whether view() accepts an lvalue of type X. (A concept rather than a bare
// requires-expression: outside a template an unsatisfied requirement is
// ill-formed, not false, by the letter of the standard.)
template <class X>
concept viewable = requires(X& x) {
  lowrank::view(x);
};

using row_major_3x3 = Eigen::Matrix<float, 3, 3, Eigen::RowMajor>;
using row_major_xd = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using row_major_xf = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Row-major matrices hold the bytes of the transpose: a compile error, never a
// silent transposition.
static_assert(!viewable<row_major_3x3>);
static_assert(!viewable<row_major_xd>);
static_assert(!viewable<const row_major_xf>);
static_assert(!viewable<Eigen::Map<row_major_xf>>);
static_assert(viewable<Eigen::MatrixXf> && viewable<const Eigen::MatrixXd>);
static_assert(viewable<Eigen::Matrix<float, 3, 3>> && viewable<Eigen::Map<Eigen::MatrixXd>>);
// Expressions without direct access are not viewable, nor is the transpose of
// column-major data (row-major) ...
static_assert(!viewable<const decltype(Eigen::MatrixXf() + Eigen::MatrixXf())>);
static_assert(!viewable<const Eigen::Transpose<Eigen::MatrixXf>>);
// ... but the transpose of row-major data is column-major.
static_assert(viewable<Eigen::Transpose<row_major_xf>>);

// Constness follows the Eigen object.
static_assert(std::is_same_v<decltype(lowrank::view(std::declval<Eigen::MatrixXf&>())),
                             matrix_view<float, cpu>>);
static_assert(std::is_same_v<decltype(lowrank::view(std::declval<const Eigen::MatrixXd&>())),
                             matrix_view<const double, cpu>>);

template <class View, class Derived>
void expect_views(const View& v, const Eigen::DenseBase<Derived>& x, index_t ld) {
  EXPECT_EQ(v.data(), x.derived().data());
  EXPECT_EQ(v.rows(), x.rows());
  EXPECT_EQ(v.cols(), x.cols());
  EXPECT_EQ(v.ld(), ld);
  for (index_t j = 0; j < x.cols(); ++j) {
    for (index_t i = 0; i < x.rows(); ++i) EXPECT_EQ(&v(i, j), &x.derived().coeffRef(i, j));
  }
}

TEST(EigenView, PlainMatrices) {
  Eigen::MatrixXf f = Eigen::MatrixXf::Random(5, 3);
  expect_views(lowrank::view(f), f, 5);
  Eigen::MatrixXd d = Eigen::MatrixXd::Random(4, 6);
  const auto v = lowrank::view(d);
  expect_views(v, d, 4);
  v(3, 5) = 42.0;
  EXPECT_EQ(d(3, 5), 42.0);
  const Eigen::MatrixXd& cd = d;
  expect_views(lowrank::view(cd), cd, 4);
  // A fixed-size column-major matrix.
  Eigen::Matrix<float, 3, 2> fixed = Eigen::Matrix<float, 3, 2>::Random();
  expect_views(lowrank::view(fixed), fixed, 3);
}

TEST(EigenView, EmptyMatrixHasLdAtLeastOne) {
  Eigen::MatrixXd e(0, 4);
  const auto v = lowrank::view(e);
  EXPECT_EQ(v.rows(), 0);
  EXPECT_EQ(v.cols(), 4);
  EXPECT_GE(v.ld(), 1);
  EXPECT_TRUE(v.empty());
}

TEST(EigenView, BlockHasParentLeadingDimension) {
  Eigen::MatrixXf m = Eigen::MatrixXf::Random(7, 6);
  auto b = m.block(2, 1, 3, 4);
  const auto v = lowrank::view(b);
  static_assert(std::is_same_v<decltype(v), const matrix_view<float, cpu>>);
  expect_views(v, b, 7);
  EXPECT_EQ(v.data(), &m(2, 1));
  v(2, 3) = -7.0f;
  EXPECT_EQ(m(4, 4), -7.0f);
  // A temporary block binds to the const overload: a read-only view.
  const auto c = lowrank::view(m.block(1, 2, 2, 2));
  static_assert(std::is_same_v<decltype(c), const matrix_view<const float, cpu>>);
  EXPECT_EQ(c.data(), &m(1, 2));
  EXPECT_EQ(c.ld(), 7);
  // Column ranges of a matrix.
  auto cols = m.middleCols(2, 3);
  expect_views(lowrank::view(cols), cols, 7);
}

TEST(EigenView, MapWithOuterStride) {
  std::vector<double> buffer(9 * 4, 0.0);
  Eigen::Map<Eigen::MatrixXd, 0, Eigen::OuterStride<>> map(buffer.data(), 5, 4,
                                                           Eigen::OuterStride<>(9));
  const auto v = lowrank::view(map);
  expect_views(v, map, 9);
  v(4, 3) = 1.5;
  EXPECT_EQ(buffer[4 + 3 * 9], 1.5);
  // A Map with the default (packed) stride.
  Eigen::Map<Eigen::MatrixXd> packed(buffer.data(), 6, 5);
  expect_views(lowrank::view(packed), packed, 6);
  // A const Map.
  Eigen::Map<const Eigen::MatrixXd, 0, Eigen::OuterStride<>> cmap(buffer.data(), 3, 3,
                                                                  Eigen::OuterStride<>(9));
  // (Viewed as a const lvalue: see the note in EigenView.Ref.)
  const auto cv = lowrank::view(std::as_const(cmap));
  static_assert(std::is_same_v<decltype(cv), const matrix_view<const double, cpu>>);
  EXPECT_EQ(cv.ld(), 9);
  EXPECT_EQ(&cv(2, 1), buffer.data() + 2 + 9);
}

TEST(EigenView, Ref) {
  Eigen::MatrixXf m = Eigen::MatrixXf::Random(8, 5);
  Eigen::Ref<Eigen::MatrixXf> r = m.block(1, 1, 4, 3);
  const auto v = lowrank::view(r);
  expect_views(v, r, 8);
  EXPECT_EQ(v.data(), &m(1, 1));
  // A read-only Eigen object (Ref<const ...>, Map<const ...>) is viewed here
  // as a const lvalue: a non-const lvalue of one picks the writable overload
  // of view(), which does not compile (eigen.hpp: it returns
  // matrix_view<Scalar> from a const Scalar*).
  const Eigen::Ref<const Eigen::MatrixXf> cr = m.middleCols(1, 2);
  const auto cv = lowrank::view(cr);
  EXPECT_EQ(cv.data(), &m(0, 1));
  EXPECT_EQ(cv.ld(), 8);
  // The interop's own input type binds column-major data without a copy.
  const lowrank::eigen_input<float> in = m.middleRows(2, 3);
  const auto iv = lowrank::view(in);
  EXPECT_EQ(iv.data(), &m(2, 0));
  EXPECT_EQ(iv.rows(), 3);
  EXPECT_EQ(iv.ld(), 8);
}

TEST(EigenView, ColumnVector) {
  Eigen::VectorXd x = Eigen::VectorXd::Random(6);
  expect_views(lowrank::view(x), x, 6);
  Eigen::MatrixXd m = Eigen::MatrixXd::Random(5, 4);
  auto c = m.col(2);
  const auto v = lowrank::view(c);
  expect_views(v, c, 5);
  EXPECT_EQ(v.cols(), 1);
  EXPECT_TRUE(v.contiguous());
}

TEST(EigenView, RowOfColumnMajorMatrix) {
  // m.row(i) is 1 x n with its elements a column's length apart: the view is
  // 1 x n with ld = m.rows(), no copy.
  Eigen::MatrixXd m = Eigen::MatrixXd::Random(5, 7);
  auto r = m.row(2);
  matrix_view<double, cpu> v;
  ASSERT_NO_THROW(v = lowrank::view(r));
  expect_views(v, r, 5);
  EXPECT_EQ(v.data(), &m(2, 0));
  v(0, 6) = 3.0;
  EXPECT_EQ(m(2, 6), 3.0);
  const Eigen::MatrixXd& cm = m;
  matrix_view<const double, cpu> cv;
  ASSERT_NO_THROW(cv = lowrank::view(cm.row(4)));
  EXPECT_EQ(cv.rows(), 1);
  EXPECT_EQ(cv.cols(), 7);
  EXPECT_EQ(cv.ld(), 5);
  EXPECT_EQ(cv.data(), &m(4, 0));
  // The same row as a dynamic block (not a compile-time row vector).
  Eigen::Block<Eigen::MatrixXd> b(m, 3, 0, 1, 7);
  expect_views(lowrank::view(b), b, 5);
}

TEST(EigenView, RowMajorRowVectorHasUnitLd) {
  Eigen::RowVectorXd r = Eigen::RowVectorXd::Random(6);
  const auto v = lowrank::view(r);
  EXPECT_EQ(v.data(), r.data());
  EXPECT_EQ(v.rows(), 1);
  EXPECT_EQ(v.cols(), 6);
  EXPECT_EQ(v.ld(), 1);
  for (index_t j = 0; j < 6; ++j) EXPECT_EQ(&v(0, j), &r(j));
  // A row of a row-major matrix is contiguous too.
  Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> rm(3, 4);
  rm.setRandom();
  auto row = rm.row(1);
  const auto rv = lowrank::view(row);
  EXPECT_EQ(rv.data(), &rm(1, 0));
  EXPECT_EQ(rv.ld(), 1);
  EXPECT_EQ(&rv(0, 3), &rm(1, 3));
}

TEST(EigenView, NonUnitInnerStrideThrows) {
  std::vector<float> buffer(64, 0.0f);
  Eigen::Map<Eigen::MatrixXf, 0, Eigen::Stride<Eigen::Dynamic, 2>> strided(
      buffer.data(), 3, 4, Eigen::Stride<Eigen::Dynamic, 2>(8, 2));
  EXPECT_THROW((void)lowrank::view(strided), lowrank::invalid_argument);
  const auto& cstrided = strided;
  EXPECT_THROW((void)lowrank::view(cstrided), lowrank::invalid_argument);
  // Every other element of a vector.
  Eigen::Map<Eigen::VectorXf, 0, Eigen::InnerStride<2>> every_other(buffer.data(), 5);
  EXPECT_THROW((void)lowrank::view(every_other), lowrank::invalid_argument);
  // A column of a row-major matrix is strided.
  Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> rm(3, 4);
  auto column = rm.col(1);
  EXPECT_THROW((void)lowrank::view(column), lowrank::invalid_argument);
  // ... and the message names what was wrong.
  try {
    (void)lowrank::view(strided);
    FAIL() << "no throw";
  } catch (const lowrank::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("innerStride"), std::string::npos) << e.what();
  }
}

TEST(AsEigen, RoundTripsWithoutCopy) {
  Eigen::MatrixXd m = Eigen::MatrixXd::Random(6, 5);
  auto b = m.block(1, 1, 4, 3);
  const auto v = lowrank::view(b);
  auto e = lowrank::as_eigen(v);
  EXPECT_EQ(e.data(), &m(1, 1));
  EXPECT_EQ(e.rows(), 4);
  EXPECT_EQ(e.cols(), 3);
  EXPECT_EQ(e.outerStride(), 6);
  EXPECT_EQ(e.innerStride(), 1);
  EXPECT_EQ(Eigen::MatrixXd(e), Eigen::MatrixXd(b));
  // Writes go through to the original matrix.
  e(3, 2) = 9.0;
  EXPECT_EQ(m(4, 3), 9.0);
  e.col(0).setConstant(-1.0);
  EXPECT_TRUE((m.block(1, 1, 4, 1).array() == -1.0).all());
  // And back again: the same memory.
  const auto again = lowrank::view(e);
  EXPECT_EQ(again.data(), v.data());
  EXPECT_EQ(again.ld(), v.ld());
  // A read-only view maps to a read-only Eigen object.
  const auto c = lowrank::as_eigen(lowrank::as_const(v));
  static_assert(std::is_const_v<std::remove_reference_t<decltype(c.coeffRef(0, 0))>>);
  EXPECT_EQ(c.data(), &m(1, 1));
}

TEST(AsEigen, VectorView) {
  Eigen::VectorXf x = Eigen::VectorXf::Random(7);
  const vector_view<float, cpu> v(x.data(), x.size());
  auto e = lowrank::as_eigen(v.segment(2, 3));
  EXPECT_EQ(e.data(), x.data() + 2);
  EXPECT_EQ(e.size(), 3);
  e(1) = 11.0f;
  EXPECT_EQ(x(3), 11.0f);
  const auto c = lowrank::as_eigen(lowrank::as_const(v));
  EXPECT_EQ(c.data(), x.data());
  EXPECT_EQ(c.size(), 7);
}

// ------------------------------------------------------ owning host types

static_assert(std::is_base_of_v<Eigen::MatrixXf, lowrank::matrix<float, cpu>>);
static_assert(std::is_base_of_v<Eigen::VectorXd, lowrank::vector<double, cpu>>);

TEST(HostMatrix, IsAnEigenMatrix) {
  lowrank::context<cpu> ctx;
  lowrank::matrix<double, cpu> a(ctx, 4, 3);
  EXPECT_EQ(a.rows(), 4);
  EXPECT_EQ(a.cols(), 3);
  a.setConstant(2.0);
  lowrank::matrix<double, cpu> b = a * 3.0 + a;  // an Eigen expression
  EXPECT_TRUE((b.array() == 8.0).all());
  const Eigen::MatrixXd product = a.transpose() * b;
  EXPECT_EQ(product.rows(), 3);
  EXPECT_EQ(product(0, 0), 4 * 2.0 * 8.0);
  // Built from an Eigen matrix, moved in without a copy.
  Eigen::MatrixXd source = Eigen::MatrixXd::Random(5, 2);
  const double* buffer = source.data();
  lowrank::matrix<double, cpu> moved(std::move(source));
  EXPECT_EQ(moved.data(), buffer);
}

TEST(HostMatrix, ConstructorTakesAnyIntegerTypes) {
  lowrank::context<cpu> ctx;
  const int ri = 3;
  const long cl = 7;
  const lowrank::matrix<float, cpu> a(ctx, ri, cl);
  EXPECT_EQ(a.rows(), 3);
  EXPECT_EQ(a.cols(), 7);
  const lowrank::matrix<float, cpu> b(ctx, long{2}, 5);
  EXPECT_EQ(b.rows(), 2);
  EXPECT_EQ(b.cols(), 5);
  const lowrank::matrix<double, cpu> c(ctx, index_t{0}, std::size_t{4});
  EXPECT_EQ(c.rows(), 0);
  EXPECT_EQ(c.cols(), 4);
  const lowrank::vector<double, cpu> v(ctx, 6);
  EXPECT_EQ(v.size(), 6);
  const lowrank::vector<float, cpu> w(ctx, long{9});
  EXPECT_EQ(w.size(), 9);
}

TEST(HostMatrix, Views) {
  lowrank::context<cpu> ctx;
  lowrank::matrix<float, cpu> a(ctx, 5, 3);
  a.setZero();
  const auto v = a.view();
  static_assert(std::is_same_v<decltype(v), const matrix_view<float, cpu>>);
  EXPECT_EQ(v.data(), a.data());
  EXPECT_EQ(v.rows(), 5);
  EXPECT_EQ(v.cols(), 3);
  EXPECT_EQ(v.ld(), 5);
  v(4, 2) = 1.0f;
  EXPECT_EQ(a(4, 2), 1.0f);
  const auto& ca = a;
  const auto cv = ca.view();
  static_assert(std::is_same_v<decltype(cv), const matrix_view<const float, cpu>>);
  EXPECT_EQ(cv.data(), a.data());
  EXPECT_EQ(cv.ld(), 5);

  lowrank::vector<double, cpu> s(ctx, 4);
  const auto sv = s.view();
  static_assert(std::is_same_v<decltype(sv), const vector_view<double, cpu>>);
  EXPECT_EQ(sv.data(), s.data());
  EXPECT_EQ(sv.size(), 4);
  sv[3] = 2.5;
  EXPECT_EQ(s(3), 2.5);
  const auto& cs = s;
  static_assert(std::is_same_v<decltype(cs.view()), vector_view<const double, cpu>>);

  // An empty matrix still has a valid leading dimension.
  lowrank::matrix<double, cpu> empty(ctx, 0, 3);
  EXPECT_EQ(empty.view().ld(), 1);
  EXPECT_TRUE(empty.view().empty());
}

TEST(HostMatrix, ToEigenStealsTheBuffer) {
  lowrank::context<cpu> ctx;
  lowrank::matrix<double, cpu> a(ctx, 6, 4);
  a.setRandom();
  const Eigen::MatrixXd copy = a;
  const double* buffer = a.data();
  // An lvalue gives the matrix itself.
  EXPECT_EQ(&a.to_eigen(), static_cast<const Eigen::MatrixXd*>(&a));
  const Eigen::MatrixXd stolen = std::move(a).to_eigen();
  EXPECT_EQ(stolen.data(), buffer);
  EXPECT_EQ(stolen, copy);

  lowrank::vector<float, cpu> v(ctx, 5);
  v.setRandom();
  const Eigen::VectorXf vcopy = v;
  const float* vbuffer = v.data();
  const Eigen::VectorXf vstolen = std::move(v).to_eigen();
  EXPECT_EQ(vstolen.data(), vbuffer);
  EXPECT_EQ(vstolen, vcopy);
}

}  // namespace
}  // namespace eigen_tests
