// LoCA: the factored forward against the dense update alpha C^T S C, both
// routes, the zero-coefficient identity, finite-difference gradients in
// double, the location gradient rule against K = alpha C G^T X C^T formed
// densely, the reference's fixture (TL-UESTC/LoCA, tests/adapters/fixtures/loca),
// the schedule counted in optimizer steps, merge / unmerge exactness, and bad
// input. Typed over the backends (the file builds as CUDA too).
#include <gtest/gtest.h>

#include <Eigen/Core>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <source_location>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "lowrank/adapters/loca.hpp"
#include "lowrank/io/npy.hpp"
#include "support/adapters.hpp"
#include "support/backends.hpp"

namespace lowrank::test::loca_tests {
namespace {

using matd = Eigen::MatrixXd;
using vecd = Eigen::VectorXd;

template <class Config>
class loca_test : public backend_test<Config> {};
TYPED_TEST_SUITE(loca_test, test_configs, config_names);

/// The orthonormal DCT-II matrix in double: C[k, j] = s_k cos(pi k (2j + 1) / (2n)).
matd dct_matrix(index_t n) {
  matd c(n, n);
  const double pi = 3.14159265358979323846;
  for (index_t k = 0; k < n; ++k) {
    const double s = k == 0 ? std::sqrt(1.0 / double(n)) : std::sqrt(2.0 / double(n));
    for (index_t j = 0; j < n; ++j) {
      // The argument reduced in integers (mod 4n), as the fixture's script does.
      const auto m = (k * (2 * j + 1)) % (4 * n);
      c(k, j) = s * std::cos(pi * double(m) / double(2 * n));
    }
  }
  return c;
}

/// dW = alpha C_M^T S C_N, S(r_i, c_i) += a_i, formed densely.
matd dense_update(const vecd& a, const std::vector<index_t>& rows, const std::vector<index_t>& cols,
                  double alpha, index_t m, index_t n) {
  matd s = matd::Zero(m, n);
  for (std::size_t i = 0; i < rows.size(); ++i) s(rows[i], cols[i]) += a(index_t(i));
  return alpha * dct_matrix(m).transpose() * s * dct_matrix(n);
}

/// Equal shapes and equal bits (so that -0 differs from +0).
template <class T>
bool same_bits(const host_matrix<T>& x, const host_matrix<T>& y) {
  return x.rows() == y.rows() && x.cols() == y.cols() &&
         std::memcmp(x.data(), y.data(), std::size_t(x.size()) * sizeof(T)) == 0;
}

template <class T, class Backend>
host_matrix<T> download(context<Backend>& ctx, matrix_view<const T, Backend> x) {
  host_matrix<T> out(x.rows(), x.cols());
  ops<Backend>::download(ctx, x, view(out));
  return out;
}

/// A backend view in double on the host.
template <class T, class Backend>
matd host(context<Backend>& ctx, matrix_view<T, Backend> x) {
  return download(ctx, as_const(x)).template cast<double>();
}

template <class T, class Backend>
matrix<T, Backend> upload(context<Backend>& ctx, const matd& x) {
  return to_backend<Backend>(ctx, host_matrix<T>(x.cast<T>()));
}

template <class T, class Backend>
vector_view<T, Backend> as_vector(matrix<T, Backend>& m) {
  return {m.view().data(), m.rows()};
}

/// A layer's data on the backend: W (out x in) and b (out x 1); the adapter
/// refers to them, so they outlive it.
template <class T, class Backend>
struct frozen {
  frozen(context<Backend>& ctx, const matd& w, const matd& b)
      : weight(upload<T, Backend>(ctx, w)), bias(upload<T, Backend>(ctx, b)) {}
  matrix<T, Backend> weight, bias;
  [[nodiscard]] vector_view<T, Backend> b() { return as_vector(bias); }
};

// The test case of most tests: 12 x 10, 7 locations with a duplicate, the
// corners and every border among them.
struct layer_case {
  index_t out = 12, in = 10, batch = 5;
  std::vector<index_t> rows{0, 11, 4, 4, 7, 0, 11};
  std::vector<index_t> cols{0, 9, 6, 6, 0, 5, 3};
  double alpha = 1.5;
  [[nodiscard]] index_t k() const { return index_t(rows.size()); }
};

/// X W^T + b + X dW^T in double, from the float-exact host data.
matd dense_forward(const matd& x, const matd& w, const matd& b, const matd& dw) {
  return (x * (w + dw).transpose()).rowwise() + b.col(0).transpose();
}

/// A tolerance for results of size `scale` computed in T through a few
/// transforms of length <= 12.
template <class T>
double tol(double scale) {
  return 64 * eps<T> * std::max(scale, 1.0);
}

// The factored forward (both routes) equals the dense route alpha C^T S C,
// duplicates adding up; so does the merged weight.
TYPED_TEST(loca_test, factored_forward_equals_dense_update) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  auto ctx = make_context<B>(2);
  const layer_case c;
  const matd w = random_matrix<double>(c.out, c.in, 1);
  const matd b = random_matrix<double>(c.out, 1, 2);
  const matd x = random_matrix<double>(c.batch, c.in, 3);
  const matd a = random_matrix<double>(c.k(), 1, 4);
  const matd want = dense_forward(x, w, b, dense_update(a, c.rows, c.cols, c.alpha, c.out, c.in));
  auto xb = upload<T, B>(ctx, x);
  auto ab = upload<T, B>(ctx, a);
  matd first;
  for (const auto route : {loca_route::transform, loca_route::basis}) {
    frozen<T, B> f(ctx, w, b);
    auto layer = loca<T, B>::from_state(ctx, f.weight.view(), f.b(), ab.view(), c.rows, c.cols,
                                        {.alpha = c.alpha, .route = route});
    EXPECT_EQ(layer.route(), route);
    matrix<T, B> y(ctx, c.batch, c.out);
    layer.forward(ctx, xb.view(), y.view());
    const matd got = to_host(ctx, y);
    EXPECT_LT((got - want).cwiseAbs().maxCoeff(), tol<T>(want.cwiseAbs().maxCoeff()));
    if (first.size() == 0) {
      first = got;
    } else {
      EXPECT_LT((got - first).cwiseAbs().maxCoeff(), tol<T>(want.cwiseAbs().maxCoeff()));
    }
    const auto loc = layer.integer_locations(ctx);
    EXPECT_EQ(loc.rows, c.rows);
    EXPECT_EQ(loc.cols, c.cols);
  }
}

// Zero coefficients (a new adapter) give the base layer bit for bit, on both
// routes and with dropout; the location parameters start in [0, 1),
// reproducibly from the seed and the layer.
TYPED_TEST(loca_test, starts_as_the_base_layer) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  auto ctx = make_context<B>(2);
  const index_t out = 20, in = 30, n = 8;
  const matd w = random_matrix<double>(out, in, 1);
  const matd b = random_matrix<double>(out, 1, 2);
  auto xb = upload<T, B>(ctx, random_matrix<double>(n, in, 3));
  frozen<T, B> f(ctx, w, b);
  matrix<T, B> base(ctx, n, out);
  ops<B>::gemm(ctx, transpose::no, transpose::yes, T(1), as_const(xb.view()),
               as_const(f.weight.view()), T(0), base.view());
  ops<B>::add_row_vector(ctx, T(1), as_const(f.b()), base.view());
  const auto want = download(ctx, as_const(base.view()));
  for (const auto route : {loca_route::transform, loca_route::basis}) {
    for (const double dropout : {0.0, 0.25}) {
      loca<T, B> layer(ctx, f.weight.view(), f.b(),
                       {.n_frequency = 40, .dropout = dropout, .route = route, .seed = 5});
      matrix<T, B> y(ctx, n, out);
      layer.forward(ctx, xb.view(), y.view());
      EXPECT_TRUE(same_bits(download(ctx, as_const(y.view())), want));
      EXPECT_EQ(host(ctx, layer.coefficients()).cwiseAbs().maxCoeff(), 0.0);
    }
  }
  loca<T, B> l1(ctx, f.weight.view(), f.b(), {.n_frequency = 40, .seed = 5, .layer = 1});
  loca<T, B> l2(ctx, f.weight.view(), f.b(), {.n_frequency = 40, .seed = 5, .layer = 1});
  loca<T, B> l3(ctx, f.weight.view(), f.b(), {.n_frequency = 40, .seed = 5, .layer = 2});
  const matd p1 = host(ctx, l1.locations());
  EXPECT_EQ(p1, host(ctx, l2.locations()));
  EXPECT_NE(p1, host(ctx, l3.locations()));
  EXPECT_GE(p1.minCoeff(), 0.0);
  EXPECT_LT(p1.maxCoeff(), 1.0);
  EXPECT_GT(p1.maxCoeff() - p1.minCoeff(), 0.5);
}

// Finite differences in double: the loss <Y, G> is linear in a, X and b, so
// central differences are exact up to rounding (~1e-10 relative).
TYPED_TEST(loca_test, gradients_match_finite_differences_in_double) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  if constexpr (!std::is_same_v<T, double>) {
    GTEST_SKIP() << "finite differences in double only";
  } else {
    auto ctx = make_context<B>(2);
    const layer_case c;
    const matd w = random_matrix<double>(c.out, c.in, 1);
    const matd g = random_matrix<double>(c.batch, c.out, 5);
    for (const auto route : {loca_route::transform, loca_route::basis}) {
      for (const double dropout : {0.0, 0.3}) {
        SCOPED_TRACE(std::string(route == loca_route::basis ? "basis" : "transform") +
                     (dropout > 0 ? ", dropout" : ""));
        matd b = random_matrix<double>(c.out, 1, 2);
        matd x = random_matrix<double>(c.batch, c.in, 3);
        matd a = random_matrix<double>(c.k(), 1, 4);
        const loca_options o{
            .alpha = c.alpha, .dropout = dropout, .train_bias = true, .route = route, .seed = 11};
        // Each evaluation is a fresh adapter's first training forward: the same mask.
        auto loss = [&] {
          frozen<double, B> f(ctx, w, b);
          auto ab = upload<double, B>(ctx, a);
          auto probe = loca<double, B>::from_state(ctx, f.weight.view(), f.b(), ab.view(), c.rows,
                                                   c.cols, o);
          auto xb = upload<double, B>(ctx, x);
          matrix<double, B> y(ctx, c.batch, c.out);
          probe.forward(ctx, xb.view(), y.view());
          return (to_host(ctx, y).array() * g.array()).sum();
        };
        frozen<double, B> f(ctx, w, b);
        auto ab = upload<double, B>(ctx, a);
        auto layer =
            loca<double, B>::from_state(ctx, f.weight.view(), f.b(), ab.view(), c.rows, c.cols, o);
        EXPECT_FALSE(layer.locations_phase());
        auto xb = upload<double, B>(ctx, x);
        auto gb = upload<double, B>(ctx, g);
        matrix<double, B> y(ctx, c.batch, c.out), dx(ctx, c.batch, c.in);
        layer.forward(ctx, xb.view(), y.view());
        layer.backward(ctx, gb.view(), dx.view());
        const matd da = host(ctx, layer.grad_coefficients());
        const matd db = host(ctx, layer.grad_bias());
        EXPECT_LT(relative_error(da, numeric_gradient(a, loss)), 1e-8);
        EXPECT_LT(relative_error(to_host(ctx, dx), numeric_gradient(x, loss)), 1e-8);
        EXPECT_LT(relative_error(db, numeric_gradient(b, loss)), 1e-8);
        // The coefficients' phase leaves the locations' gradient alone.
        EXPECT_EQ(host(ctx, layer.grad_locations()).cwiseAbs().maxCoeff(), 0.0);
      }
    }
  }
}

/// The reference's location gradient (tests/adapters/fixtures/loca/README.md)
/// from a dense K, chained to p through clamp(p, 0, cmax) (n - 1).
matd reference_location_gradient(const matd& k_matrix, const vecd& a, const matd& p,
                                 const std::vector<index_t>& rows, const std::vector<index_t>& cols,
                                 double cmax) {
  const index_t m = k_matrix.rows();
  const index_t n = k_matrix.cols();
  matd d(2, a.size());
  for (index_t i = 0; i < a.size(); ++i) {
    const index_t r = rows[std::size_t(i)];
    const index_t c = cols[std::size_t(i)];
    const index_t up = r < m - 1 ? r + 1 : m - 1;
    const index_t dn = r > 0 ? r - 1 : 0;
    const index_t rt = c < n - 1 ? c + 1 : n - 1;
    const index_t lf = c > 0 ? c - 1 : 0;
    const double gr = std::clamp(0.5 * a(i) * (k_matrix(up, c) - k_matrix(dn, c)), -1.0, 1.0);
    const double gc = std::clamp(0.5 * a(i) * (k_matrix(r, rt) - k_matrix(r, lf)), -1.0, 1.0);
    d(0, i) = p(0, i) > 0 && p(0, i) < cmax ? double(m - 1) * gr : 0.0;
    d(1, i) = p(1, i) > 0 && p(1, i) < cmax ? double(n - 1) * gc : 0.0;
  }
  return d;
}

// In the locations phase, backward gives the reference's finite-difference
// location gradient (K = alpha C_M G^T X C_N^T formed densely here), leaves
// the coefficients' gradient alone, and the basis route falls back to the
// transform route for it; with either clamp.
TYPED_TEST(loca_test, location_gradient_follows_the_reference_rule) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  auto ctx = make_context<B>(2);
  const index_t out = 16, in = 13, n = 6, k = 9;
  const double alpha = 0.75;
  const matd w = random_matrix<double>(out, in, 1);
  const matd x = random_matrix<double>(n, in, 2);
  const matd g = random_matrix<double>(n, out, 3);
  const matd a = 4 * random_matrix<double>(k, 1, 4);  // some gradients clamp at +-1
  // Continuous locations: borders, a duplicate, values outside [0, 1].
  matd p(2, k);
  p << 0.01, 0.999, 0.5, 0.5, -0.2, 1.3, 0.2, 0.71, 0.9995,  //
      0.02, 0.5, 0.33, 0.33, 0.6, 0.4, 1.2, 0.98, 0.1;
  const matd k_dense = alpha * dct_matrix(out) * g.transpose() * x * dct_matrix(in).transpose();
  for (const bool reference_clamp : {false, true}) {
    for (const auto route : {loca_route::transform, loca_route::basis}) {
      frozen<T, B> f(ctx, w, matd::Zero(out, 1));
      auto ab = upload<T, B>(ctx, a);
      auto pb = upload<T, B>(ctx, p);
      auto layer = loca<T, B>::from_state(ctx, f.weight.view(), {}, ab.view(), pb.view(),
                                          {.alpha = alpha,
                                           .learn_location_until = 100,
                                           .coefficient_steps = 1,
                                           .location_steps = 1,
                                           .reference_clamp = reference_clamp,
                                           .route = route});
      EXPECT_FALSE(layer.locations_phase());
      layer.optimizer_step();
      EXPECT_TRUE(layer.locations_phase());
      const auto loc = layer.integer_locations(ctx);
      // The rounding of the clamped p, in T as the reference.
      const double cmax = reference_clamp ? double(T(0.999)) : 1.0;
      for (index_t i = 0; i < k; ++i) {
        const auto round_to = [&](double v, index_t size) {
          const T clamped = std::clamp(T(v), T(0), T(cmax));
          return index_t(std::nearbyint(double(T(clamped * T(size - 1)))));
        };
        EXPECT_EQ(loc.rows[std::size_t(i)], round_to(p(0, i), out)) << i;
        EXPECT_EQ(loc.cols[std::size_t(i)], round_to(p(1, i), in)) << i;
      }
      auto xb = upload<T, B>(ctx, x);
      auto gb = upload<T, B>(ctx, g);
      matrix<T, B> y(ctx, n, out), dx(ctx, n, in);
      layer.forward(ctx, xb.view(), y.view());
      layer.backward(ctx, gb.view(), dx.view());
      const matd p_t = p.cast<T>().template cast<double>();
      const matd want = reference_location_gradient(k_dense, a, p_t, loc.rows, loc.cols, cmax);
      const matd got = host(ctx, layer.grad_locations());
      // |K| <= ~10 here: the rule's inputs are accurate to ~eps K; times (n - 1).
      EXPECT_LT((got - want).cwiseAbs().maxCoeff(), 2000 * eps<T> * double(out)) << got << "\n\n"
                                                                                 << want;
      EXPECT_GE((want.array() == 0).count(), 3);         // outside the clamp's range
      EXPECT_GT((want.array().abs() == 15).count(), 0);  // clamped at +-1, times out - 1
      EXPECT_EQ(host(ctx, layer.grad_coefficients()).cwiseAbs().maxCoeff(), 0.0);
      // dX is the same in both phases.
      const matd dw = dense_update(a, loc.rows, loc.cols, alpha, out, in);
      EXPECT_LT((to_host(ctx, dx) - g * (w + dw)).cwiseAbs().maxCoeff(), tol<T>(10));
      // The coefficients' gradient, in the coefficients' phase: K at (r, c).
      layer.optimizer_step();
      EXPECT_FALSE(layer.locations_phase());
      layer.zero_grad(ctx);
      layer.forward(ctx, xb.view(), y.view());
      layer.backward(ctx, gb.view(), {});
      const matd da = host(ctx, layer.grad_coefficients());
      for (index_t i = 0; i < k; ++i) {
        EXPECT_NEAR(da(i), k_dense(loc.rows[std::size_t(i)], loc.cols[std::size_t(i)]), tol<T>(10));
      }
      EXPECT_EQ(host(ctx, layer.grad_locations()).cwiseAbs().maxCoeff(), 0.0);
    }
  }
}

// Locations: every frequency reachable with c = 1, the reference's 0.999
// clamp stops short of the last ones; rounding is half to even.
TYPED_TEST(loca_test, locations_round_half_to_even_and_clamp) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  auto ctx = make_context<B>(1);
  const index_t out = 4096, in = 5;
  frozen<T, B> f(ctx, matd::Zero(out, in), matd::Zero(out, 1));
  matd p(2, 4);
  p << 1.0, 1.0, 0.0, 2.0,    // rows
      0.625, 0.875, 1.0, -1;  // cols: 2.5 -> 2, 3.5 -> 4
  auto pb = upload<T, B>(ctx, p);
  auto ab = upload<T, B>(ctx, matd::Zero(4, 1));
  auto ours = loca<T, B>::from_state(ctx, f.weight.view(), {}, ab.view(), pb.view(), {});
  auto loc = ours.integer_locations(ctx);
  EXPECT_EQ(loc.rows, (std::vector<index_t>{4095, 4095, 0, 4095}));
  EXPECT_EQ(loc.cols, (std::vector<index_t>{2, 4, 4, 0}));
  auto ref = loca<T, B>::from_state(ctx, f.weight.view(), {}, ab.view(), pb.view(),
                                    {.reference_clamp = true});
  loc = ref.integer_locations(ctx);
  EXPECT_EQ(loc.rows, (std::vector<index_t>{4091, 4091, 0, 4091}));
  EXPECT_EQ(loc.cols, (std::vector<index_t>{2, 4, 4, 0}));
  // Integer locations round-trip through from_state; 4092 and up are
  // unreachable with the reference's clamp.
  const std::vector<index_t> rows{0, 1, 2047, 4091}, cols{0, 1, 3, 4};
  auto exact = loca<T, B>::from_state(ctx, f.weight.view(), {}, ab.view(), rows, cols,
                                      {.reference_clamp = true});
  EXPECT_EQ(exact.integer_locations(ctx).rows, rows);
  EXPECT_EQ(exact.integer_locations(ctx).cols, cols);
  const std::vector<index_t> far{0, 1, 2, 4092};
  EXPECT_THROW(((void)loca<T, B>::from_state(ctx, f.weight.view(), {}, ab.view(), far, cols,
                                             {.reference_clamp = true})),
               lowrank::invalid_argument);
  EXPECT_EQ((loca<T, B>::from_state(ctx, f.weight.view(), {}, ab.view(), far, cols, {})
                 .integer_locations(ctx)
                 .rows),
            far);
}

// The schedule counts optimizer steps: forwards (gradient accumulation) do
// not advance it; the phases follow the reference's rule (the fixture's
// example: learn_location_iter = 75, B_a = 10, B_l = 20); active_parameters()
// lists the group that trains.
TYPED_TEST(loca_test, schedule_counts_optimizer_steps) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  auto ctx = make_context<B>(1);
  frozen<T, B> f(ctx, random_matrix<double>(6, 5, 1), random_matrix<double>(6, 1, 2));
  loca<T, B> layer(ctx, f.weight.view(), f.b(),
                   {.n_frequency = 8, .learn_location_until = 75, .train_bias = true});
  auto xb = upload<T, B>(ctx, random_matrix<double>(3, 5, 3));
  auto gb = upload<T, B>(ctx, random_matrix<double>(3, 6, 4));
  matrix<T, B> y(ctx, 3, 6);
  for (int t = 0; t < 100; ++t) {
    const bool want = t < 75 && t % 30 >= 10;
    ASSERT_EQ(layer.locations_phase(), want) << t;
    EXPECT_EQ(layer.optimizer_steps(), std::uint64_t(t));
    const auto active = layer.active_parameters();
    ASSERT_EQ(active.size(), 2u);
    EXPECT_STREQ(active[0].name, want ? "loca_spectrum_indices" : "loca_spectrum");
    EXPECT_STREQ(active[1].name, "bias");
    if (t == 0 || t == 10) {
      // Gradient accumulation: three micro-batches, one step.
      layer.zero_grad(ctx);
      for (int micro = 0; micro < 3; ++micro) {
        layer.forward(ctx, xb.view(), y.view());
        layer.backward(ctx, gb.view(), {});
        EXPECT_EQ(layer.locations_phase(), want);
      }
      const double da = host(ctx, layer.grad_coefficients()).cwiseAbs().maxCoeff();
      const double dp = host(ctx, layer.grad_locations()).cwiseAbs().maxCoeff();
      // At t = 0 the coefficients are zero: the location gradient would be 0
      // anyway, so give them values first.
      EXPECT_EQ(want ? da : dp, 0.0) << t;
      if (t == 0) {
        EXPECT_GT(da, 0.0);
        ops<B>::fill(ctx, layer.coefficients(), T(0.5));
      } else {
        EXPECT_GT(dp, 0.0);
      }
    }
    layer.optimizer_step();
  }
  const auto all = layer.parameters();
  ASSERT_EQ(all.size(), 3u);
  EXPECT_STREQ(all[0].name, "loca_spectrum");
  EXPECT_EQ(all[0].value.rows(), 8);
  EXPECT_STREQ(all[1].name, "loca_spectrum_indices");
  EXPECT_EQ(all[1].value.rows(), 2);
  EXPECT_EQ(all[1].value.cols(), 8);
  EXPECT_STREQ(all[2].name, "bias");
  layer.set_optimizer_steps(12);
  EXPECT_TRUE(layer.locations_phase());
  // learn_location_until = 0: the locations never train.
  loca<T, B> never(ctx, f.weight.view(), f.b(), {.n_frequency = 8});
  for (int t = 0; t < 40; ++t, never.optimizer_step()) EXPECT_FALSE(never.locations_phase());
}

// merge then unmerge restores W bit for bit; the merged weight is W + dW and
// gives the adapted layer's outputs.
TYPED_TEST(loca_test, merge_unmerge_restores_weight_exactly) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  auto ctx = make_context<B>(2);
  const layer_case c;
  matd w = random_matrix<double>(c.out, c.in, 1);
  w.col(3) *= 1e-6;  // tiny weights: the merge rounds them away
  const matd b = random_matrix<double>(c.out, 1, 2);
  const matd a = 3 * random_matrix<double>(c.k(), 1, 3);
  frozen<T, B> f(ctx, w, b);
  const auto original = download(ctx, as_const(f.weight.view()));
  auto ab = upload<T, B>(ctx, a);
  auto layer =
      loca<T, B>::from_state(ctx, f.weight.view(), f.b(), ab.view(), c.rows, c.cols, {.alpha = 2});
  auto xb = upload<T, B>(ctx, random_matrix<double>(4, c.in, 4));
  matrix<T, B> before(ctx, 4, c.out), after(ctx, 4, c.out);
  layer.train(false);
  layer.forward(ctx, xb.view(), before.view());
  layer.merge(ctx);
  EXPECT_TRUE(layer.merged());
  const matd dw = dense_update(a, c.rows, c.cols, 2, c.out, c.in);
  const matd merged = to_host(ctx, f.weight);
  EXPECT_LT((merged - (original.template cast<double>() + dw)).cwiseAbs().maxCoeff(), tol<T>(10));
  layer.forward(ctx, xb.view(), after.view());
  EXPECT_LT((to_host(ctx, after) - to_host(ctx, before)).cwiseAbs().maxCoeff(), tol<T>(10));
  EXPECT_GT(layer.merge_exceptions(), 0u);
  // Training while merged cannot break the unmerge.
  ops<B>::fill(ctx, layer.coefficients(), T(7));
  ops<B>::fill(ctx, layer.locations(), T(0.3));
  auto gb = upload<T, B>(ctx, random_matrix<double>(4, c.out, 5));
  EXPECT_THROW(layer.backward(ctx, gb.view(), {}), lowrank::invalid_argument);
  layer.unmerge(ctx);
  EXPECT_FALSE(layer.merged());
  EXPECT_TRUE(same_bits(download(ctx, as_const(f.weight.view())), original));
  for (int cycle = 0; cycle < 5; ++cycle) {
    layer.merge(ctx);
    layer.unmerge(ctx);
  }
  EXPECT_TRUE(same_bits(download(ctx, as_const(f.weight.view())), original));
  EXPECT_THROW(layer.unmerge(ctx), lowrank::invalid_argument);
}

// safe_merge refuses non-finite coefficients and leaves W untouched.
TYPED_TEST(loca_test, safe_merge_refuses_non_finite_coefficients) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  auto ctx = make_context<B>(1);
  frozen<T, B> f(ctx, random_matrix<double>(6, 7, 1), matd::Zero(6, 1));
  const auto original = download(ctx, as_const(f.weight.view()));
  loca<T, B> layer(ctx, f.weight.view(), {}, {.n_frequency = 5, .alpha = 1e6});
  ops<B>::fill(ctx, layer.coefficients().block(2, 0, 1, 1), std::numeric_limits<T>::quiet_NaN());
  try {
    layer.safe_merge(ctx);
    FAIL();
  } catch (const lowrank::numerical_error& e) {
    EXPECT_NE(std::string(e.what()).find("coefficients(2, 0)"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(layer.merged());
  EXPECT_TRUE(same_bits(download(ctx, as_const(f.weight.view())), original));
  // A finite coefficient whose update overflows: the merged values are checked too.
  if constexpr (std::is_same_v<T, float>) {
    ops<B>::fill(ctx, layer.coefficients(), T(3e38));
    EXPECT_THROW(layer.safe_merge(ctx), lowrank::numerical_error);
    EXPECT_TRUE(same_bits(download(ctx, as_const(f.weight.view())), original));
  }
}

// Bad input: documented exceptions, nothing built or changed.
TYPED_TEST(loca_test, bad_input_throws_and_changes_nothing) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  auto ctx = make_context<B>(1);
  frozen<T, B> f(ctx, random_matrix<double>(6, 5, 1), matd::Zero(6, 1));
  const auto original = download(ctx, as_const(f.weight.view()));
  auto make = [&](loca_options o) { loca<T, B> l(ctx, f.weight.view(), {}, o); };
  const double inf = std::numeric_limits<double>::infinity();
  EXPECT_THROW(make({.n_frequency = 0}), lowrank::invalid_argument);
  EXPECT_THROW(make({.n_frequency = 31}), lowrank::invalid_argument);
  EXPECT_NO_THROW(make({.n_frequency = 30}));
  EXPECT_THROW(make({.n_frequency = 4, .alpha = 0}), lowrank::invalid_argument);
  EXPECT_THROW(make({.n_frequency = 4, .alpha = -1}), lowrank::invalid_argument);
  EXPECT_THROW(make({.n_frequency = 4, .alpha = inf}), lowrank::invalid_argument);
  EXPECT_THROW(make({.n_frequency = 4, .alpha = std::nan("")}), lowrank::invalid_argument);
  EXPECT_THROW(make({.n_frequency = 4, .learn_location_until = -1}), lowrank::invalid_argument);
  EXPECT_THROW(make({.n_frequency = 4, .coefficient_steps = 0}), lowrank::invalid_argument);
  EXPECT_THROW(make({.n_frequency = 4, .location_steps = -1}), lowrank::invalid_argument);
  EXPECT_THROW(make({.n_frequency = 4, .dropout = 1}), lowrank::invalid_argument);
  EXPECT_THROW(make({.n_frequency = 4, .layer = std::uint64_t{1} << 30}),
               lowrank::invalid_argument);
  try {
    make({.n_frequency = 31});
    FAIL();
  } catch (const lowrank::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find(
                  "lowrank::loca::loca: argument 'options.n_frequency' is 31; expected 1 <= "
                  "options.n_frequency <= out in = 30"),
              std::string::npos)
        << e.what();
  }
  // from_state: locations out of range, counts, shapes, non-finite values.
  auto a3 = upload<T, B>(ctx, matd::Ones(3, 1));
  const std::vector<index_t> rows{0, 5, 2}, cols{0, 4, 1};
  auto state = [&](std::vector<index_t> r, std::vector<index_t> c) {
    (void)loca<T, B>::from_state(ctx, f.weight.view(), {}, a3.view(), r, c, {});
  };
  EXPECT_NO_THROW(state(rows, cols));
  EXPECT_THROW(state({0, 6, 2}, cols), lowrank::invalid_argument);
  EXPECT_THROW(state({0, -1, 2}, cols), lowrank::invalid_argument);
  EXPECT_THROW(state(rows, {0, 5, 1}), lowrank::invalid_argument);
  EXPECT_THROW(state({0, 1}, cols), lowrank::invalid_argument);
  try {
    state(rows, {0, 5, 1});
    FAIL();
  } catch (const lowrank::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find(
                  "lowrank::loca::from_state: argument 'cols[1]' is 5; expected a location in "
                  "[0, 5)"),
              std::string::npos)
        << e.what();
  }
  auto wide = upload<T, B>(ctx, matd::Ones(3, 2));
  EXPECT_THROW(
      ((void)loca<T, B>::from_state(ctx, f.weight.view(), {}, wide.view(), rows, cols, {})),
      lowrank::invalid_argument);
  auto p_bad_shape = upload<T, B>(ctx, matd::Constant(2, 4, 0.5));
  EXPECT_THROW(
      ((void)loca<T, B>::from_state(ctx, f.weight.view(), {}, a3.view(), p_bad_shape.view(), {})),
      lowrank::invalid_argument);
  matd p = matd::Constant(2, 3, 0.5);
  p(1, 2) = std::numeric_limits<double>::quiet_NaN();
  auto p_nan = upload<T, B>(ctx, p);
  EXPECT_THROW(
      ((void)loca<T, B>::from_state(ctx, f.weight.view(), {}, a3.view(), p_nan.view(), {})),
      lowrank::numerical_error);
  // A non-finite p at forward: numerical_error, Y not written, the pending
  // forward still pending.
  loca<T, B> layer(ctx, f.weight.view(), {}, {.n_frequency = 3});
  auto xb = upload<T, B>(ctx, random_matrix<double>(2, 5, 2));
  auto y = upload<T, B>(ctx, matd::Constant(2, 6, 9));
  matrix<T, B> y_ok(ctx, 2, 6);
  layer.forward(ctx, xb.view(), y_ok.view());
  ops<B>::copy(ctx, as_const(p_nan.view()), layer.locations());
  try {
    layer.forward(ctx, xb.view(), y.view());
    FAIL();
  } catch (const lowrank::numerical_error& e) {
    EXPECT_NE(std::string(e.what()).find("locations(1, 2)"), std::string::npos) << e.what();
  }
  EXPECT_EQ(to_host(ctx, y), matd::Constant(2, 6, 9));
  auto g = upload<T, B>(ctx, matd::Ones(2, 6));
  EXPECT_NO_THROW(layer.backward(ctx, g.view(), {}));
  EXPECT_GT(host(ctx, layer.grad_coefficients()).cwiseAbs().maxCoeff(), 0.0);
  // Shapes of forward and backward.
  auto x_bad = upload<T, B>(ctx, matd::Zero(2, 4));
  EXPECT_THROW(layer.forward(ctx, x_bad.view(), y.view()), lowrank::invalid_argument);
  EXPECT_THROW(layer.backward(ctx, g.view(), {}), lowrank::invalid_argument);  // no forward
  EXPECT_TRUE(same_bits(download(ctx, as_const(f.weight.view())), original));
}

// The automatic route: the basis vectors for small k, the transforms for
// large k (LoCA's k = 1000 at 4096 x 4096), as the cost model says.
TEST(loca, route_cost_model) {
  EXPECT_EQ(loca_route_for<cpu>(4096, 4096, 100), loca_route::basis);
  EXPECT_EQ(loca_route_for<cpu>(4096, 4096, 300), loca_route::basis);
  EXPECT_EQ(loca_route_for<cpu>(4096, 4096, 500), loca_route::transform);
  EXPECT_EQ(loca_route_for<cpu>(4096, 4096, 1000), loca_route::transform);
  // A prime length's DCT is a GEMM with C: the basis wins up to k ~ n.
  EXPECT_EQ(loca_route_for<cpu>(127, 127, 100), loca_route::basis);
  EXPECT_EQ(loca_route_for<cpu>(12, 10, 7), loca_route::basis);
}

// --- The reference's fixture -------------------------------------------------------

/// tests/adapters/fixtures/loca, next to this source (also when it builds as CUDA).
std::filesystem::path fixture_dir() {
  const std::filesystem::path here(std::source_location::current().file_name());
  return here.parent_path() / "fixtures" / "loca";
}

matd fixture(const std::string& name) {
  return io::read_npy<double>((fixture_dir() / (name + ".npy")).string());
}

std::vector<index_t> as_indices(const matd& v) {
  std::vector<index_t> out(std::size_t(v.size()));
  for (index_t i = 0; i < v.size(); ++i) out[std::size_t(i)] = index_t(v(i));
  return out;
}

/// The integers of the JSON array after `key` in params.json.
std::vector<int> json_array(const std::string& key) {
  std::ifstream in(fixture_dir() / "params.json");
  std::stringstream text;
  text << in.rdbuf();
  const std::string s = text.str();
  const auto at = s.find("\"" + key + "\"");
  std::vector<int> out;
  if (at == std::string::npos) return out;
  std::size_t i = s.find('[', at) + 1;
  const std::size_t end = s.find(']', i);
  std::stringstream items(s.substr(i, end - i));
  std::string item;
  while (std::getline(items, item, ',')) out.push_back(std::stoi(item));
  return out;
}

// The reference's forward, dX, coefficient gradient and (in the locations
// phase) location gradient, with its 0.999 clamp and scale 1.5, float64.
TYPED_TEST(loca_test, matches_the_reference_fixture) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  auto ctx = make_context<B>(2);
  const matd w0 = fixture("W0");
  const matd bias = fixture("b");
  const matd x = fixture("X");
  const matd dy = fixture("dY");
  const matd coef = fixture("coef");
  const matd p = fixture("spectrum_indices");
  const index_t m = w0.rows(), n = w0.cols(), k = coef.rows();
  ASSERT_EQ(m, 12);
  ASSERT_EQ(p.rows(), 2);
  const double scale = 1.5;
  // T-rounded inputs: the fixture's values are not float-exact, so the
  // tolerances below are relative to T's precision.
  const double t_tol = std::is_same_v<T, float> ? 2e-5 : 1e-11;
  frozen<T, B> f(ctx, w0, bias);
  auto ab = upload<T, B>(ctx, coef);
  auto pb = upload<T, B>(ctx, p);
  auto layer = loca<T, B>::from_state(
      ctx, f.weight.view(), f.b(), ab.view(), pb.view(),
      {.alpha = scale, .learn_location_until = 75, .reference_clamp = true, .train_bias = true});
  const auto loc = layer.integer_locations(ctx);
  EXPECT_EQ(loc.rows, as_indices(fixture("rows")));
  EXPECT_EQ(loc.cols, as_indices(fixture("cols")));
  auto xb = upload<T, B>(ctx, x);
  auto gb = upload<T, B>(ctx, dy);
  matrix<T, B> y(ctx, x.rows(), m), dx(ctx, x.rows(), n);
  // The coefficients' phase (step 0).
  layer.forward(ctx, xb.view(), y.view());
  layer.backward(ctx, gb.view(), dx.view());
  const matd y_ref = fixture("Y");
  const matd dx_ref = fixture("dX");
  EXPECT_LT(relative_error(to_host(ctx, y), y_ref), t_tol);
  EXPECT_LT(relative_error(to_host(ctx, dx), dx_ref), t_tol);
  EXPECT_LT(relative_error(host(ctx, layer.grad_coefficients()), fixture("dcoef")), t_tol);
  EXPECT_LT(relative_error(host(ctx, layer.grad_bias()), dy.colwise().sum().transpose()), t_tol);
  // The locations' phase (step 10).
  layer.zero_grad(ctx);
  layer.set_optimizer_steps(10);
  ASSERT_TRUE(layer.locations_phase());
  layer.forward(ctx, xb.view(), y.view());
  layer.backward(ctx, gb.view(), dx.view());
  const matd dp_ref = fixture("dspectrum_indices");
  const matd dp = host(ctx, layer.grad_locations());
  EXPECT_LT((dp - dp_ref).cwiseAbs().maxCoeff(), t_tol * double(m)) << dp << "\n\n" << dp_ref;
  EXPECT_EQ(host(ctx, layer.grad_coefficients()).cwiseAbs().maxCoeff(), 0.0);
  // The raw (clamped) gradients times n - 1 where the chain rule passes.
  const matd drow = fixture("drow_raw");
  const matd dcol = fixture("dcol_raw");
  for (index_t i = 0; i < k; ++i) {
    if (dp_ref(0, i) != 0) {
      EXPECT_NEAR(dp_ref(0, i), double(m - 1) * drow(i), 1e-12);
    }
    if (dp_ref(1, i) != 0) {
      EXPECT_NEAR(dp_ref(1, i), double(n - 1) * dcol(i), 1e-12);
    }
  }
  // The merged weight is W0 + dW.
  layer.merge(ctx);
  EXPECT_LT((to_host(ctx, f.weight) - (w0 + fixture("dW"))).cwiseAbs().maxCoeff(),
            t_tol * w0.cwiseAbs().maxCoeff());
  layer.unmerge(ctx);
  // The schedule example (phase by step for learn_location_iter = 75).
  const auto phases = json_array("trains_locations_by_global_iter");
  ASSERT_EQ(phases.size(), 100u);
  for (std::size_t t = 0; t < phases.size(); ++t) {
    layer.set_optimizer_steps(t);
    EXPECT_EQ(layer.locations_phase(), phases[t] == 1) << t;
  }
}

}  // namespace
}  // namespace lowrank::test::loca_tests
