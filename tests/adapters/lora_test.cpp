// LoRA: identities, finite-difference gradients in double, dropout, merge /
// unmerge exactness, PiSSA, and bad input.
#include <gtest/gtest.h>

#include <Eigen/Core>
#include <atomic>
#include <cstdlib>
#include <functional>
#include <limits>
#include <new>
#include <random>

#include "lowrank/adapters/dora.hpp"
#include "lowrank/adapters/lora.hpp"
#include "lowrank/adapters/multi_lora.hpp"
#include "lowrank/adapters/nola.hpp"
#include "lowrank/backend/cpu/ops.hpp"
#include "support/adapters.hpp"
#include "support/backends.hpp"

// GCC flags free() in a replaced operator delete when it inlines a new/delete
// pair; the replacement below is the standard-conforming malloc/free pair.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"

// Every allocation of this test executable is counted, so that a test can
// check that a training step allocates nothing after the first: operator new
// here, and malloc as called from the test's own objects (Eigen's aligned
// allocator) through the linker's --wrap=malloc (tests/CMakeLists.txt).
namespace {
std::atomic<long> allocations{0};
}  // namespace
extern "C" void* __real_malloc(std::size_t size);   // NOLINT(bugprone-reserved-identifier)
extern "C" void* __wrap_malloc(std::size_t size) {  // NOLINT(bugprone-reserved-identifier)
  allocations.fetch_add(1, std::memory_order_relaxed);
  return __real_malloc(size);
}
void* operator new(std::size_t size) {
  allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace lowrank::test::lora_tests {
namespace {

using matd = Eigen::MatrixXd;

struct lora_case {
  double dropout;
  bool rslora;
  bool train_bias;
};

class lora_gradients : public ::testing::TestWithParam<lora_case> {};

// The loss is linear in Y and Y is bilinear in the parameters, so central
// differences in double are exact up to rounding: relative error ~ eps / h
// = 1e-10, far below the 1e-6 the issue asks.
TEST_P(lora_gradients, match_finite_differences_in_double) {
  const auto c = GetParam();
  context<cpu> ctx(2);
  const index_t out = 9, in = 11, n = 6, r = 3;
  matd w = random_matrix<double>(out, in, 1);
  Eigen::VectorXd bias = random_matrix<double>(out, 1, 2);
  matd x = random_matrix<double>(n, in, 3);
  const matd g = random_matrix<double>(n, out, 4);
  lora_options o{.rank = r,
                 .alpha = 6,
                 .rslora = c.rslora,
                 .dropout = c.dropout,
                 .train_bias = c.train_bias,
                 .seed = 42};
  const vector_view<double, cpu> bias_view(bias.data(), out);
  lora<double, cpu> layer(ctx, view(w), bias_view, o);
  as_eigen(layer.b()) = random_matrix<double>(out, r, 5);  // a non-zero B
  matd y(n, out);
  // Every evaluation replays the same dropout mask: the step is fixed by
  // recreating the layer state's step counter through a fresh forward count.
  const std::uint64_t step0 = layer.step();
  auto loss = [&] {
    auto probe = lora<double, cpu>::from_factors(ctx, view(w), bias_view, layer.a(), layer.b(), o);
    for (std::uint64_t s = 0; s < step0; ++s) {
      probe.forward(ctx, view(std::as_const(x)), view(y));
    }
    probe.forward(ctx, view(std::as_const(x)), view(y));
    return (y.array() * g.array()).sum();
  };
  layer.forward(ctx, view(std::as_const(x)), view(y));
  matd dx(n, in);
  layer.backward(ctx, view(g), view(dx));
  const matd da = as_eigen(layer.grad_a());
  const matd db = as_eigen(layer.grad_b());
  // The probe copies the layer's A and B: perturb those.
  auto a = as_eigen(layer.a());
  auto b = as_eigen(layer.b());
  EXPECT_LT(relative_error(da, numeric_gradient(a, loss)), 1e-6);
  EXPECT_LT(relative_error(db, numeric_gradient(b, loss)), 1e-6);
  EXPECT_LT(relative_error(dx, numeric_gradient(x, loss)), 1e-6);
  if (c.train_bias) {
    const matd dbias = as_eigen(layer.grad_bias());
    EXPECT_LT(relative_error(dbias, numeric_gradient(bias, loss)), 1e-6);
  }
}

template <class T>
using mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;

template <class T>
class lora_typed : public ::testing::Test {};
using scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(lora_typed, scalars);

// Zero-B LoRA is the base layer: Y = X W^T + b to the last bit (the same
// GEMM computes both, and s H 0^T adds exact zeros).
TYPED_TEST(lora_typed, zero_b_adapter_equals_base_layer) {
  using T = TypeParam;
  context<cpu> ctx(2);
  mat<T> w = random_matrix<T>(20, 30, 1);
  Eigen::Matrix<T, -1, 1> bias = random_matrix<T>(20, 1, 2);
  const mat<T> x = random_matrix<T>(8, 30, 3);
  lora<T, cpu> layer(ctx, view(w), vector_view<T, cpu>(bias.data(), 20), {.rank = 4, .seed = 9});
  mat<T> y(8, 20), base(8, 20);
  layer.forward(ctx, view(x), view(y));
  ops<cpu>::gemm(ctx, transpose::no, transpose::yes, T(1), view(x), view(std::as_const(w)), T(0),
                 view(base));
  base.rowwise() += bias.transpose();
  EXPECT_EQ(y, base);
  // The default init: A uniform in [-1/sqrt(in), 1/sqrt(in)), not all equal.
  const auto a = as_eigen(layer.a());
  EXPECT_LE(a.cwiseAbs().maxCoeff(), T(1 / std::sqrt(30.0)));
  EXPECT_GT(a.cwiseAbs().maxCoeff(), T(0.8 / std::sqrt(30.0)));
  EXPECT_EQ(as_eigen(layer.b()).cwiseAbs().maxCoeff(), T(0));
}

// The gaussian init: A ~ N(0, 1/r^2): the sample std over r * in = 8 * 512
// entries is within 5% of 1/r (4096 samples: std error of the std ~1.1%).
TEST(lora, gaussian_init_has_std_one_over_rank) {
  context<cpu> ctx(1);
  mat<double> w = random_matrix<double>(64, 512, 1);
  lora<double, cpu> layer(ctx, view(w), {}, {.rank = 8, .init = lora_init::gaussian});
  const auto a = as_eigen(layer.a());
  const double mean = a.mean();
  const double var = (a.array() - mean).square().mean();
  EXPECT_NEAR(std::sqrt(var), 1.0 / 8, 0.05 / 8);
  EXPECT_NEAR(mean, 0.0, 0.01);
}

// merge then unmerge restores W bit for bit, also where the rounding of the
// merge loses information (|s B A| much larger than |W| in some entries).
TYPED_TEST(lora_typed, merge_unmerge_restores_weight_exactly) {
  using T = TypeParam;
  context<cpu> ctx(2);
  mat<T> w = random_matrix<T>(33, 47, 1);
  w.col(3) *= T(1e-6);  // tiny weights: the merge rounds them away
  const mat<T> original = w;
  const mat<T> x = random_matrix<T>(5, 47, 4);
  lora<T, cpu> layer(ctx, view(w), {}, {.rank = 5, .alpha = 16});
  as_eigen(layer.b()) = random_matrix<T>(33, 5, 2);
  mat<T> before(5, 33), after(5, 33);
  layer.train(false);
  layer.forward(ctx, view(x), view(before));
  layer.merge(ctx);
  EXPECT_TRUE(layer.merged());
  // The merged weight is W + s B A rounded once from extended precision: within
  // half an ulp of the value, up to the extended-precision error of the sum
  // (a reference in long double; its own error is bounded by `slack`).
  using ld = long double;
  const auto bl = as_eigen(layer.b()).template cast<ld>().eval();
  const auto al = as_eigen(layer.a()).template cast<ld>().eval();
  const Eigen::Matrix<ld, -1, -1> exact =
      original.template cast<ld>() + ld(layer.scaling()) * (bl * al);
  const Eigen::Matrix<ld, -1, -1> size = original.template cast<ld>().cwiseAbs() +
                                         ld(layer.scaling()) * (bl.cwiseAbs() * al.cwiseAbs());
  const ld extended_eps = sizeof(T) == 4 ? ld(std::numeric_limits<double>::epsilon())
                                         : std::numeric_limits<ld>::epsilon();
  const ld half_ulp = ld(std::numeric_limits<T>::epsilon()) / 2;
  for (index_t j = 0; j < w.cols(); ++j) {
    for (index_t i = 0; i < w.rows(); ++i) {
      const ld slack = 8 * extended_eps * size(i, j);
      ASSERT_LE(std::abs(ld(w(i, j)) - exact(i, j)), half_ulp * std::abs(exact(i, j)) + slack)
          << i << ", " << j;
    }
  }
  const double ulp = std::numeric_limits<T>::epsilon();
  // The merged layer computes the same function (to rounding).
  layer.forward(ctx, view(x), view(after));
  EXPECT_LT((after - before).norm(), 1e3 * ulp * before.norm());
  EXPECT_GT(layer.merge_exceptions(), 0u);  // column 3 needed the record
  // Training the adapter while merged cannot break the unmerge.
  as_eigen(layer.a()).array() += T(1);
  mat<T> dy = random_matrix<T>(5, 33, 5);
  EXPECT_THROW(layer.backward(ctx, view(dy), {}), lowrank::invalid_argument);
  layer.unmerge(ctx);
  EXPECT_FALSE(layer.merged());
  EXPECT_EQ(std::memcmp(w.data(), original.data(), sizeof(T) * std::size_t(w.size())), 0);
  for (int cycle = 0; cycle < 20; ++cycle) {
    layer.merge(ctx);
    layer.unmerge(ctx);
  }
  EXPECT_EQ(std::memcmp(w.data(), original.data(), sizeof(T) * std::size_t(w.size())), 0);
  EXPECT_THROW(layer.unmerge(ctx), lowrank::invalid_argument);
}

// safe_merge throws on a non-finite merged value and leaves W untouched;
// merge() then unmerge() still round-trips even through infinities.
TEST(lora, safe_merge_refuses_non_finite_and_keeps_weight) {
  context<cpu> ctx(2);
  mat<float> w = random_matrix<float>(6, 7, 1);
  w(2, 3) = 3.0e38f;
  const mat<float> original = w;
  lora<float, cpu> layer(ctx, view(w), {}, {.rank = 2, .alpha = 2});
  as_eigen(layer.a()).setConstant(1);
  as_eigen(layer.b()).setConstant(1e38f);  // s B A = 2e38 everywhere
  EXPECT_THROW(layer.safe_merge(ctx), lowrank::numerical_error);
  EXPECT_FALSE(layer.merged());
  EXPECT_EQ(w, original);
  layer.merge(ctx);
  EXPECT_TRUE(std::isinf(w(2, 3)));
  layer.unmerge(ctx);
  EXPECT_EQ(std::memcmp(w.data(), original.data(), sizeof(float) * 42), 0);
}

// PiSSA: s B A is the rank-r truncated SVD of W and W_res + s B A == W (to
// the rounding of W_res, one ulp of W's entries); randomized "niter" too.
TYPED_TEST(lora_typed, pissa_moves_principal_part_into_adapter) {
  using T = TypeParam;
  context<cpu> ctx(2);
  for (const index_t iterations : {0, 4}) {
    mat<T> w = random_matrix<T>(24, 18, 7);
    const mat<T> original = w;
    lora<T, cpu> layer(
        ctx, view(w), {},
        {.rank = 4, .alpha = 8, .init = lora_init::pissa, .pissa_iterations = iterations});
    const Eigen::MatrixXd dw = layer.scaling() * as_eigen(layer.b()).template cast<double>() *
                               as_eigen(layer.a()).template cast<double>();
    const Eigen::MatrixXd sum = w.template cast<double>() + dw;
    const double eps = std::numeric_limits<T>::epsilon();
    EXPECT_LT((sum - original.template cast<double>()).cwiseAbs().maxCoeff(), 8 * eps);
    // dW is the best rank-4 approximation: its error is the tail of the spectrum.
    Eigen::JacobiSVD<Eigen::MatrixXd> svd(original.template cast<double>());
    const double tail = svd.singularValues().tail(14).norm();
    const double tol = iterations == 0 ? 1e-3 : 2e-2;  // randomized: near-optimal
    EXPECT_LT(std::abs((original.template cast<double>() - dw).norm() - tail), tol * tail);
  }
}

// PiSSA export: after "training" (A, B changed), the rank-2r plain LoRA of
// pissa_as_lora() on the original W gives W_res + s B A, with s' = s; other
// inits refuse it.
TEST(lora, pissa_exports_as_plain_lora_of_the_original_weight) {
  context<cpu> ctx(1);
  for (const bool rslora : {false, true}) {
    mat<double> w = random_matrix<double>(16, 12, 3);
    const mat<double> original = w;
    lora<double, cpu> layer(ctx, view(w), {},
                            {.rank = 3, .alpha = 5, .rslora = rslora, .init = lora_init::pissa});
    as_eigen(layer.a()) += 0.1 * random_matrix<double>(3, 12, 4);
    as_eigen(layer.b()) += 0.1 * random_matrix<double>(16, 3, 5);
    const auto plain = layer.pissa_as_lora(ctx);
    EXPECT_EQ(plain.rank, 6);
    const double s2 = detail::lora_scaling(plain.alpha, plain.rank, rslora);
    EXPECT_NEAR(s2, layer.scaling(), 1e-15);
    const mat<double> tuned = w + layer.scaling() * as_eigen(layer.b()) * as_eigen(layer.a());
    const mat<double> exported = original + s2 * plain.b * plain.a;
    EXPECT_LT((tuned - exported).norm(), 1e-13 * original.norm());
  }
  mat<double> w = random_matrix<double>(8, 6, 1);
  lora<double, cpu> plain_init(ctx, view(w), {}, {.rank = 2});
  EXPECT_THROW((void)plain_init.pissa_as_lora(ctx), lowrank::invalid_argument);
}

// from_low_rank: s B A equals U diag(S) V^T.
TEST(lora, from_low_rank_reproduces_the_factorisation) {
  context<cpu> ctx(1);
  mat<double> w = random_matrix<double>(12, 10, 1);
  const mat<double> target = random_matrix<double>(12, 10, 2);
  const auto f = truncated_svd(ctx, view(target), 3);
  auto layer = lora<double, cpu>::from_low_rank(ctx, view(w), {}, f, {.alpha = 5});
  EXPECT_EQ(layer.rank(), 3);
  const mat<double> dw = layer.scaling() * as_eigen(layer.b()) * as_eigen(layer.a());
  EXPECT_LT((dw - f.reconstruct()).norm(), 1e-12 * f.reconstruct().norm());
  // U, s and V that disagree on the rank are refused before anything is read.
  for (int part = 0; part < 3; ++part) {
    auto bad = f;
    if (part == 0) bad.u = bad.u.leftCols(2).eval();
    if (part == 1) bad.s = bad.s.head(2).eval();
    if (part == 2) bad.v = bad.v.leftCols(2).eval();
    EXPECT_THROW((void)lora<double>::from_low_rank(ctx, view(w), {}, bad, {.alpha = 5}),
                 lowrank::invalid_argument)
        << part;
  }
}

// Dropout: the mask keeps about 1 - p of the entries, scaled by 1/(1 - p);
// two adapters with the same seed and step draw the same mask, another seed
// or step a different one; evaluation mode has no dropout.
TEST(lora, dropout_mask_is_reproducible_and_has_the_right_rate) {
  context<cpu> ctx(2);
  const index_t in = 64, out = 8, n = 256;
  mat<float> w = mat<float>::Zero(out, in);
  const mat<float> x = mat<float>::Ones(n, in);
  lora_options o{.rank = 1, .alpha = 1, .dropout = 0.25, .seed = 3};
  auto make = [&](lora_options opt) {
    const mat<float> a = mat<float>::Identity(1, in);  // picks input column 0
    const mat<float> b = mat<float>::Ones(out, 1);
    return lora<float, cpu>::from_factors(ctx, view(w), {}, view(a), view(b), opt);
  };
  auto l1 = make(o);
  auto l2 = make(o);
  mat<float> y1(n, out), y2(n, out);
  l1.forward(ctx, view(x), view(y1));
  l2.forward(ctx, view(x), view(y2));
  EXPECT_EQ(y1, y2);
  // y(i, :) = mask(i, 0) / 0.75: kept rows give 4/3.
  const double kept = (y1.col(0).array() > 0.5f).cast<double>().mean();
  EXPECT_NEAR(kept, 0.75, 0.08);  // 256 Bernoulli(0.75): std 0.027, 3 sigma
  EXPECT_FLOAT_EQ(y1.col(0).maxCoeff(), 4.0f / 3.0f);
  l1.forward(ctx, view(x), view(y2));  // the next step: another mask
  EXPECT_NE(y1, y2);
  o.seed = 4;
  auto l3 = make(o);
  l3.forward(ctx, view(x), view(y2));
  EXPECT_NE(y1, y2);
  l3.train(false);
  l3.forward(ctx, view(x), view(y2));
  EXPECT_TRUE((y2.array() == 1.0f).all());
}

// A training step allocates nothing after the first with a given batch size
// (docs/architecture.md: hot loops allocate nothing), for every adapter.
TEST(lora, training_step_allocates_nothing_after_the_first) {
  context<cpu> ctx(1);
  mat<float> w = random_matrix<float>(48, 40, 1);
  Eigen::VectorXf bias = random_matrix<float>(48, 1, 2);
  const mat<float> x = random_matrix<float>(16, 40, 3);
  const mat<float> g = random_matrix<float>(16, 48, 4);
  mat<float> y(16, 48), dx(16, 40);
  lora<float, cpu> l(ctx, view(w), vector_view<float, cpu>(bias.data(), 48),
                     {.rank = 4, .dropout = 0.1, .train_bias = true});
  dora<float, cpu> d(ctx, view(w), vector_view<float, cpu>(bias.data(), 48),
                     {.rank = 4, .dropout = 0.1});
  nola<float, cpu> nl(
      ctx, view(w), vector_view<float, cpu>(bias.data(), 48),
      {.rank = 4, .dropout = 0.1, .num_bases_a = 20, .num_bases_b = 12, .chunk_size = 8});
  multi_lora<float, cpu> multi(ctx, view(std::as_const(w)));
  const mat<float> a = random_matrix<float>(4, 40, 5);
  const mat<float> b = random_matrix<float>(48, 4, 6);
  multi.add_adapter(ctx, view(a), view(b), 2.0);
  multi.add_adapter(ctx, view(a), view(b), 0.5);
  std::vector<std::int32_t> ids(16);
  for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = std::int32_t(i % 3) - 1;
  auto step = [&] {
    l.forward(ctx, view(x), view(y));
    l.backward(ctx, view(g), view(dx));
    d.forward(ctx, view(x), view(y));
    d.backward(ctx, view(g), view(dx));
    nl.forward(ctx, view(x), view(y));
    nl.backward(ctx, view(g), view(dx));
    multi.forward(ctx, view(x), std::span<const std::int32_t>(ids), view(y));
    multi.backward(ctx, view(g), view(dx));
  };
  step();
  const long before = allocations.load();
  for (int i = 0; i < 3; ++i) step();
  EXPECT_EQ(allocations.load(), before);
}

// Bad input: documented exceptions, and nothing changes.
TEST(lora, bad_input_throws_and_changes_nothing) {
  context<cpu> ctx(1);
  mat<float> w = random_matrix<float>(6, 5, 1);
  const mat<float> original = w;
  auto make = [&](lora_options o) { lora<float, cpu> l(ctx, view(w), {}, o); };
  EXPECT_THROW(make({.rank = 0}), lowrank::invalid_argument);
  EXPECT_THROW(make({.rank = 6}), lowrank::invalid_argument);
  EXPECT_THROW(make({.rank = 2, .alpha = 0}), lowrank::invalid_argument);
  EXPECT_THROW(make({.rank = 2, .alpha = std::numeric_limits<double>::infinity()}),
               lowrank::invalid_argument);
  EXPECT_THROW(make({.rank = 2, .dropout = 1}), lowrank::invalid_argument);
  EXPECT_THROW(make({.rank = 2, .dropout = -0.1}), lowrank::invalid_argument);
  Eigen::VectorXf short_bias(3);
  EXPECT_THROW(
      (lora<float, cpu>(ctx, view(w), vector_view<float, cpu>(short_bias.data(), 3), {.rank = 2})),
      lowrank::invalid_argument);
  w(1, 1) = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROW(make({.rank = 2, .init = lora_init::pissa}), lowrank::numerical_error);
  EXPECT_TRUE(std::isnan(w(1, 1)));
  w = original;
  try {
    make({.rank = 9});
    FAIL();
  } catch (const lowrank::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("lowrank::lora::lora: argument 'options.rank' is 9"),
              std::string::npos)
        << e.what();
  }
  lora<float, cpu> l(ctx, view(w), {}, {.rank = 2});
  const mat<float> a0 = as_eigen(l.a());
  mat<float> x(3, 4), y(3, 6), yw(2, 6);
  EXPECT_THROW(l.forward(ctx, view(x), view(y)), lowrank::invalid_argument);
  mat<float> x5 = random_matrix<float>(3, 5, 2);
  EXPECT_THROW(l.forward(ctx, view(x5), view(yw)), lowrank::invalid_argument);
  mat<float> g(3, 6);
  EXPECT_THROW(l.backward(ctx, view(g), {}), lowrank::invalid_argument);  // no forward
  l.forward(ctx, view(x5), view(y));
  mat<float> g2(2, 6);
  EXPECT_THROW(l.backward(ctx, view(g2), {}), lowrank::invalid_argument);
  mat<float> dx_bad(3, 4);
  EXPECT_THROW(l.backward(ctx, view(g), view(dx_bad)), lowrank::invalid_argument);
  EXPECT_EQ(as_eigen(l.grad_a()).cwiseAbs().maxCoeff(), 0.0f);
  const mat<float> bad_a = mat<float>::Constant(2, 5, std::numeric_limits<float>::infinity());
  const mat<float> b = mat<float>::Zero(6, 2);
  EXPECT_THROW(((void)lora<float, cpu>::from_factors(ctx, view(w), {}, view(bad_a), view(b), {})),
               lowrank::numerical_error);
  const mat<float> a_wrong = mat<float>::Zero(2, 4);
  EXPECT_THROW(((void)lora<float, cpu>::from_factors(ctx, view(w), {}, view(a_wrong), view(b), {})),
               lowrank::invalid_argument);
  EXPECT_EQ(as_eigen(l.a()), a0);
  EXPECT_EQ(w, original);
}

// Hardening: an alpha whose scaling overflows T (the forward would give NaN),
// and outputs that alias the inputs (read after being written), are refused.
TEST(lora, overflowing_scaling_and_aliased_outputs_throw) {
  context<cpu> ctx(1);
  mat<float> w = random_matrix<float>(6, 6, 1);
  EXPECT_THROW((lora<float>(ctx, view(w), {}, {.rank = 2, .alpha = 1e300})),
               lowrank::invalid_argument);
  EXPECT_THROW((lora<float>(ctx, view(w), {}, {.rank = 4, .alpha = 1e39, .rslora = true})),
               lowrank::invalid_argument);
  mat<double> wd = random_matrix<double>(6, 6, 1);
  EXPECT_NO_THROW((lora<double>(ctx, view(wd), {}, {.rank = 2, .alpha = 1e300})));

  lora<float> l(ctx, view(w), {}, {.rank = 2});
  as_eigen(l.b()) = random_matrix<float>(6, 2, 3);
  mat<float> x = random_matrix<float>(4, 6, 2);
  const mat<float> x0 = x;
  EXPECT_THROW(l.forward(ctx, view(std::as_const(x)), view(x)), lowrank::invalid_argument);
  EXPECT_EQ(x, x0);
  // Overlapping, not equal: Y's columns start inside X's storage.
  mat<float> both = random_matrix<float>(4, 9, 4);
  EXPECT_THROW(l.forward(ctx, as_const(view(both).middle_cols(0, 6)), view(both).middle_cols(3, 6)),
               lowrank::invalid_argument);
  mat<float> y(4, 6);
  l.forward(ctx, view(std::as_const(x)), view(y));
  mat<float> g = random_matrix<float>(4, 6, 5);
  EXPECT_THROW(l.backward(ctx, view(std::as_const(g)), view(g)), lowrank::invalid_argument);
  mat<float> dx(4, 6);
  EXPECT_NO_THROW(l.backward(ctx, view(std::as_const(g)), view(dx)));

  multi_lora<float> ml(ctx, view(std::as_const(w)));
  const mat<float> a = random_matrix<float>(2, 6, 6);
  const mat<float> b = random_matrix<float>(6, 2, 7);
  EXPECT_THROW((void)ml.add_adapter(ctx, view(a), view(b), 1e300), lowrank::invalid_argument);
  EXPECT_EQ(ml.adapters(), 0);
}

INSTANTIATE_TEST_SUITE_P(all, lora_gradients,
                         ::testing::Values(lora_case{0, false, false}, lora_case{0, true, true},
                                           lora_case{0.3, false, true}));

}  // namespace
}  // namespace lowrank::test::lora_tests
