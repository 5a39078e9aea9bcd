// DoRA: the base layer at init, the factored norm against the direct one,
// finite-difference gradients in double (with and without dropout), merge /
// unmerge exactness, zero rows, bad input.
#include <gtest/gtest.h>

#include <Eigen/Core>
#include <cstring>
#include <functional>
#include <limits>
#include <random>

#include "lowrank/adapters/dora.hpp"
#include "lowrank/backend/cpu/ops.hpp"
#include "support/adapters.hpp"
#include "support/backends.hpp"

namespace lowrank::test::dora_tests {
namespace {

template <class T>
using mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
using matd = mat<double>;

template <class T>
class dora_typed : public ::testing::Test {};
using scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(dora_typed, scalars);

// At init B = 0, m = ||W||_row: c = m / n = 1 up to m's rounding to T, so
// the output is the base layer's to one rounding (exactly in double).
TYPED_TEST(dora_typed, starts_as_the_base_layer) {
  using T = TypeParam;
  context<cpu> ctx(2);
  mat<T> w = random_matrix<T>(14, 20, 1);
  Eigen::Matrix<T, -1, 1> bias = random_matrix<T>(14, 1, 2);
  const mat<T> x = random_matrix<T>(9, 20, 3);
  dora<T, cpu> layer(ctx, view(w), vector_view<T, cpu>(bias.data(), 14), {.rank = 3});
  mat<T> y(9, 14);
  layer.forward(ctx, view(x), view(y));
  mat<T> base = x * w.transpose();
  base.rowwise() += bias.transpose();
  const T eps = std::numeric_limits<T>::epsilon();
  EXPECT_LT((y - base).cwiseAbs().maxCoeff(), 8 * eps * base.cwiseAbs().maxCoeff());
  const auto m = as_eigen(layer.magnitude());
  EXPECT_LT((m - w.rowwise().norm()).cwiseAbs().maxCoeff(), 4 * eps);
}

// The factored row norm equals ||W + s B A||_row formed densely.
TYPED_TEST(dora_typed, factored_norm_matches_the_dense_norm) {
  using T = TypeParam;
  context<cpu> ctx(2);
  mat<T> w = random_matrix<T>(30, 25, 1);
  const mat<T> x = random_matrix<T>(4, 25, 3);
  dora<T, cpu> layer(ctx, view(w), {}, {.rank = 5, .alpha = 10});
  as_eigen(layer.b()) = random_matrix<T>(30, 5, 4);
  mat<T> y(4, 30);
  layer.forward(ctx, view(x), view(y));
  const matd dense = w.template cast<double>() + layer.scaling() *
                                                     as_eigen(layer.b()).template cast<double>() *
                                                     as_eigen(layer.a()).template cast<double>();
  const Eigen::VectorXd expected = dense.rowwise().norm();
  const double tol = sizeof(T) == 4 ? 1e-5 : 1e-13;  // a GEMM's rounding in T, relative
  for (index_t i = 0; i < 30; ++i) {
    EXPECT_NEAR(layer.norms()[i], expected(i), tol * expected(i)) << i;
  }
}

class dora_gradients : public ::testing::TestWithParam<double> {};

// The gradients PEFT computes hold the norm n detached: the reference loss
// evaluates the forward formula of dora.hpp with n fixed at the layer's n, so
// central differences (exact up to rounding: the loss is polynomial of
// degree <= 2 in each parameter, error ~ eps / h ~ 1e-10) check exactly that.
TEST_P(dora_gradients, match_finite_differences_in_double) {
  const double p = GetParam();
  context<cpu> ctx(2);
  const index_t out = 8, in = 10, n = 5, r = 3;
  matd w = random_matrix<double>(out, in, 1);
  Eigen::VectorXd bias = random_matrix<double>(out, 1, 2);
  matd x = random_matrix<double>(n, in, 3);
  const matd g = random_matrix<double>(n, out, 4);
  const vector_view<double, cpu> bias_view(bias.data(), out);
  lora_options o{.rank = r, .alpha = 6, .dropout = p, .train_bias = true, .seed = 5};
  dora<double, cpu> layer(ctx, view(w), bias_view, o);
  as_eigen(layer.b()) = random_matrix<double>(out, r, 6);
  as_eigen(layer.magnitude()).array() += random_matrix<double>(out, 1, 7).array() * 0.5;
  matd y(n, out);
  layer.forward(ctx, view(std::as_const(x)), view(y));
  const Eigen::VectorXd n0 = as_eigen(layer.norms());
  matd dx(n, in);
  layer.backward(ctx, view(g), view(dx));
  // The loss with the detached norm: Y recomputed from the formula of the
  // file comment with n fixed at n0 (the same mask: a probe's first step).
  auto a = as_eigen(layer.a());
  auto b = as_eigen(layer.b());
  auto m = as_eigen(layer.magnitude());
  // The forward's mask: drop(1) = M / (1 - p) from the same stream.
  matd drop_ones(n, in);
  ops<cpu>::dropout(ctx, adapter_stream(5, 0, adapter_stream_kind::dropout, 0), p, 1.0,
                    view(matd(matd::Ones(n, in))), 0.0, view(drop_ones));
  auto loss = [&] {
    const matd xd = x.cwiseProduct(drop_ones);
    const matd z = xd * w.transpose() + layer.scaling() * (xd * a.transpose()) * b.transpose();
    matd yy = (x - xd) * w.transpose();
    for (index_t j = 0; j < out; ++j) yy.col(j) += m(j, 0) / n0(j) * z.col(j);
    yy.rowwise() += bias.transpose();
    return (yy.array() * g.array()).sum();
  };
  // The formula reproduces the layer's forward.
  {
    const double l0 = loss();
    EXPECT_NEAR(l0, (y.array() * g.array()).sum(), 1e-12 * std::abs(l0) + 1e-12);
  }
  const matd da = as_eigen(layer.grad_a()), db = as_eigen(layer.grad_b());
  const matd dm = as_eigen(layer.grad_magnitude()), dbias = as_eigen(layer.grad_bias());
  EXPECT_LT(relative_error(da, numeric_gradient(a, loss)), 1e-6);
  EXPECT_LT(relative_error(db, numeric_gradient(b, loss)), 1e-6);
  EXPECT_LT(relative_error(dm, numeric_gradient(m, loss)), 1e-6);
  EXPECT_LT(relative_error(dx, numeric_gradient(x, loss)), 1e-6);
  EXPECT_LT(relative_error(dbias, numeric_gradient(bias, loss)), 1e-6);
}

INSTANTIATE_TEST_SUITE_P(dropout, dora_gradients, ::testing::Values(0.0, 0.3));

TYPED_TEST(dora_typed, merge_unmerge_is_exact_and_merged_output_matches) {
  using T = TypeParam;
  context<cpu> ctx(2);
  mat<T> w = random_matrix<T>(21, 17, 1);
  const mat<T> original = w;
  const mat<T> x = random_matrix<T>(6, 17, 2);
  dora<T, cpu> layer(ctx, view(w), {}, {.rank = 4, .alpha = 8});
  as_eigen(layer.b()) = random_matrix<T>(21, 4, 3);
  as_eigen(layer.magnitude()).array() *= T(1.5);
  layer.train(false);
  mat<T> before(6, 21), after(6, 21);
  layer.forward(ctx, view(x), view(before));
  layer.merge(ctx);
  layer.forward(ctx, view(x), view(after));
  const T eps = std::numeric_limits<T>::epsilon();
  EXPECT_LT((after - before).cwiseAbs().maxCoeff(), 64 * eps * before.cwiseAbs().maxCoeff());
  layer.unmerge(ctx);
  EXPECT_EQ(std::memcmp(w.data(), original.data(), sizeof(T) * std::size_t(w.size())), 0);
  layer.safe_merge(ctx);
  layer.unmerge(ctx);
  EXPECT_EQ(std::memcmp(w.data(), original.data(), sizeof(T) * std::size_t(w.size())), 0);
}

// A zero row of W with a zero row of B: PEFT divides 0 by 0; the floor keeps
// the output and every gradient finite (and that row's output zero + bias).
TEST(dora, zero_row_stays_finite) {
  context<cpu> ctx(1);
  mat<float> w = random_matrix<float>(6, 9, 1);
  w.row(2).setZero();
  const mat<float> x = random_matrix<float>(4, 9, 2);
  const mat<float> g = random_matrix<float>(4, 6, 3);
  dora<float, cpu> layer(ctx, view(w), {}, {.rank = 2});
  as_eigen(layer.b()) = random_matrix<float>(6, 2, 4);
  as_eigen(layer.b()).row(2).setZero();
  as_eigen(layer.magnitude())(2, 0) = 0.5f;
  mat<float> y(4, 6), dx(4, 9);
  layer.forward(ctx, view(x), view(y));
  layer.backward(ctx, view(g), view(dx));
  EXPECT_TRUE(y.allFinite());
  EXPECT_TRUE(dx.allFinite());
  EXPECT_TRUE(as_eigen(layer.grad_a()).allFinite());
  EXPECT_TRUE(as_eigen(layer.grad_magnitude()).allFinite());
  EXPECT_EQ(y.col(2).cwiseAbs().maxCoeff(), 0.0f);
}

TEST(dora, bad_input_throws) {
  context<cpu> ctx(1);
  mat<float> w = random_matrix<float>(6, 5, 1);
  EXPECT_THROW((dora<float, cpu>(ctx, view(w), {}, {.rank = 0})), lowrank::invalid_argument);
  dora<float, cpu> layer(ctx, view(w), {}, {.rank = 2});
  mat<float> x(3, 4), y(3, 6), g(3, 6);
  EXPECT_THROW(layer.forward(ctx, view(x), view(y)), lowrank::invalid_argument);
  EXPECT_THROW(layer.backward(ctx, view(g), {}), lowrank::invalid_argument);
  EXPECT_THROW(layer.unmerge(ctx), lowrank::invalid_argument);
  layer.merge(ctx);
  EXPECT_THROW(layer.merge(ctx), lowrank::invalid_argument);
}

// Trained factors and magnitude in one call (as a PEFT DoRA stores them):
// the same layer as one built, trained and then given the same A, B and m,
// bit for bit; a magnitude of the wrong size or not finite is refused.
TEST(dora, from_factors_loads_a_trained_adapter) {
  context<cpu> ctx(2);
  mat<double> w = random_matrix<double>(12, 9, 1);
  Eigen::VectorXd bias = random_matrix<double>(12, 1, 2);
  const mat<double> a = random_matrix<double>(3, 9, 3);
  const mat<double> b = random_matrix<double>(12, 3, 4);
  const Eigen::VectorXd m = random_matrix<double>(12, 1, 5).cwiseAbs();
  const lora_options options{.rank = 3, .alpha = 6, .dropout = 0.25, .seed = 9};
  const vector_view<double, cpu> bv(bias.data(), 12);
  auto loaded = dora<double>::from_factors(ctx, view(w), bv, view(a), view(b),
                                           vector_view<const double, cpu>(m.data(), 12), options);
  dora<double> built(ctx, view(w), bv, options);
  as_eigen(built.a()) = a;
  as_eigen(built.b()) = b;
  as_eigen(built.magnitude()) = m;
  EXPECT_EQ(as_eigen(loaded.magnitude()), m);
  EXPECT_EQ(loaded.parameters().size(), 3u);
  const mat<double> x = random_matrix<double>(5, 9, 6);
  const mat<double> g = random_matrix<double>(5, 12, 7);
  mat<double> y1(5, 12), y2(5, 12), dx1(5, 9), dx2(5, 9);
  loaded.forward(ctx, view(x), view(y1));
  built.forward(ctx, view(x), view(y2));
  EXPECT_EQ(y1, y2);  // the same dropout mask: the same seed, layer and step
  loaded.backward(ctx, view(g), view(dx1));
  built.backward(ctx, view(g), view(dx2));
  EXPECT_EQ(dx1, dx2);
  EXPECT_EQ(as_eigen(loaded.grad_magnitude()), as_eigen(built.grad_magnitude()));

  const Eigen::VectorXd short_m = m.head(11);
  EXPECT_THROW(
      (void)dora<double>::from_factors(ctx, view(w), bv, view(a), view(b),
                                       vector_view<const double, cpu>(short_m.data(), 11), options),
      lowrank::invalid_argument);
  Eigen::VectorXd nan_m = m;
  nan_m(4) = std::numeric_limits<double>::quiet_NaN();
  EXPECT_THROW(
      (void)dora<double>::from_factors(ctx, view(w), bv, view(a), view(b),
                                       vector_view<const double, cpu>(nan_m.data(), 12), options),
      lowrank::numerical_error);
  EXPECT_THROW(
      (void)dora<double>::from_factors(ctx, view(w), bv, view(a), view(mat<double>(b.topRows(11))),
                                       vector_view<const double, cpu>(m.data(), 12), options),
      lowrank::invalid_argument);
}

// A DoRA over a merged LoRA would inherit a merge it cannot undo: refused,
// and the LoRA keeps W merged and unmergeable.
TEST(dora, refuses_a_merged_lora) {
  context<cpu> ctx(1);
  mat<float> w = random_matrix<float>(6, 5, 1);
  const mat<float> original = w;
  lora<float> adapter(ctx, view(w), {}, {.rank = 2});
  as_eigen(adapter.b()) = random_matrix<float>(6, 2, 2);
  adapter.merge(ctx);
  EXPECT_THROW((dora<float>(ctx, std::move(adapter))), lowrank::invalid_argument);
  adapter.unmerge(ctx);
  EXPECT_EQ(w, original);
}

}  // namespace
}  // namespace lowrank::test::dora_tests
