// NOLA: the zero-coefficient identity, the bases (chunk, seed and layer),
// finite-difference gradients in double, memory, merge / unmerge exactness,
// and bad input.
#include <gtest/gtest.h>

#include <Eigen/Core>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <tuple>
#include <utility>

#include "lowrank/adapters/lora.hpp"
#include "lowrank/adapters/nola.hpp"
#include "lowrank/backend/cpu/ops.hpp"
#include "support/adapters.hpp"
#include "support/backends.hpp"

namespace lowrank::test::nola_tests {
namespace {

using matd = Eigen::MatrixXd;
template <class T>
using mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;

/// Equal shapes and equal bits (so that -0 differs from +0).
template <class A, class B>
bool same_bits(const Eigen::MatrixBase<A>& a, const Eigen::MatrixBase<B>& b) {
  using T = typename A::Scalar;
  static_assert(std::is_same_v<T, typename B::Scalar>);
  const mat<T> x = a;
  const mat<T> y = b;
  return x.rows() == y.rows() && x.cols() == y.cols() &&
         std::memcmp(x.data(), y.data(), static_cast<std::size_t>(x.size()) * sizeof(T)) == 0;
}

template <class T>
class nola_typed : public ::testing::Test {};
using scalar_types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(nola_typed, scalar_types);

/// X W^T + b by the same ops the adapter uses for its base layer.
template <class T>
mat<T> base_layer(context<cpu>& ctx, const mat<T>& x, const mat<T>& w, const mat<T>& b) {
  mat<T> y(x.rows(), w.rows());
  ops<cpu>::gemm(ctx, transpose::no, transpose::yes, T(1), view(x), view(w), T(0), view(y));
  ops<cpu>::add_row_vector(ctx, T(1), vector_view<const T, cpu>(b.data(), b.size()), view(y));
  return y;
}

// alpha = beta = 0 gives B = 0 exactly, so Y is the base layer bit for bit,
// dropout or not; and A is then lora's peft_default A (the same A0 stream).
TYPED_TEST(nola_typed, starts_as_the_base_layer) {
  using T = TypeParam;
  context<cpu> ctx(2);
  const index_t out = 7, in = 10, n = 5, r = 3;
  mat<T> w = random_matrix<T>(out, in, 1);
  mat<T> bias = random_matrix<T>(out, 1, 2);
  const mat<T> x = random_matrix<T>(n, in, 3);
  const nola_options o{.rank = r,
                       .dropout = 0.25,
                       .num_bases_a = 6,
                       .num_bases_b = 5,
                       .chunk_size = 4,
                       .seed = 9,
                       .layer = 3};
  nola<T, cpu> layer(ctx, view(w), vector_view<T, cpu>(bias.data(), out), o);
  EXPECT_TRUE((as_eigen(layer.coefficients_a()).array() == T(0)).all());
  EXPECT_TRUE((as_eigen(layer.coefficients_b()).array() == T(0)).all());
  mat<T> y(n, out);
  layer.forward(ctx, view(x), view(y));
  EXPECT_TRUE(same_bits(y, base_layer<T>(ctx, x, w, bias)));
  layer.train(false);
  layer.forward(ctx, view(x), view(y));
  EXPECT_TRUE(same_bits(y, base_layer<T>(ctx, x, w, bias)));

  mat<T> a(r, in), b(out, r);
  layer.materialize_a(ctx, view(a));
  layer.materialize_b(ctx, view(b));
  EXPECT_TRUE((b.array() == T(0)).all());
  const lora<T, cpu> reference(ctx, view(w), vector_view<T, cpu>(),
                               {.rank = r, .seed = 9, .layer = 3});
  EXPECT_TRUE(same_bits(a, as_eigen(reference.a())));
}

// Element (e, i) of the bases depends only on (seed, layer, A or B, i, e):
// any chunking gives the same bits. A and B match their definition; with a
// one-hot coefficient (k = 4, l = 16: 1/sqrt(k), 1/sqrt(l) and the products
// are exact) every chunking forms the same A, B and Y bit for bit, and with
// general coefficients they agree to rounding.
TYPED_TEST(nola_typed, bases_do_not_depend_on_chunk_size) {
  using T = TypeParam;
  context<cpu> ctx(2);
  const index_t out = 6, in = 9, n = 4, r = 2, k = 4, l = 16;
  mat<T> w = random_matrix<T>(out, in, 4);
  const mat<T> x = random_matrix<T>(n, in, 5);
  nola_options o{.rank = r, .num_bases_a = k, .num_bases_b = l, .chunk_size = 1, .seed = 77};
  nola<T, cpu> one(ctx, view(w), vector_view<T, cpu>(), o);
  o.chunk_size = l;
  nola<T, cpu> all(ctx, view(w), vector_view<T, cpu>(), o);
  o.chunk_size = 3;
  nola<T, cpu> three(ctx, view(w), vector_view<T, cpu>(), o);

  mat<T> bases_a(r * in, k), bases_b(out * r, l), column(out * r, 1), part(out * r, 3);
  one.bases_a(ctx, 0, view(bases_a));
  one.bases_b(ctx, 0, view(bases_b));
  EXPECT_GE(bases_a.minCoeff(), T(-1));
  EXPECT_LT(bases_a.maxCoeff(), T(1));
  EXPECT_GE(bases_b.minCoeff(), T(-1));
  EXPECT_LT(bases_b.maxCoeff(), T(1));
  for (index_t j = 0; j < l; ++j) {
    all.bases_b(ctx, j, view(column));
    EXPECT_TRUE(same_bits(column, bases_b.col(j))) << "basis " << j;
  }
  three.bases_b(ctx, 5, view(part));
  EXPECT_TRUE(same_bits(part, bases_b.middleCols(5, 3)));

  auto factors_and_output = [&](nola<T, cpu>& layer) {
    mat<T> a(r, in), b(out, r), y(n, out);
    layer.materialize_a(ctx, view(a));
    layer.materialize_b(ctx, view(b));
    layer.forward(ctx, view(x), view(y));
    return std::tuple{a, b, y};
  };
  mat<T> a0(r, in), zero_b(out, r);
  one.materialize_a(ctx, view(a0));

  // One-hot coefficients: A = A0 + A_2 * (-2) / 2, B = B_9 / 4, exactly.
  for (auto* layer : {&one, &all, &three}) {
    as_eigen(layer->coefficients_a())(2, 0) = T(-2);
    as_eigen(layer->coefficients_b())(9, 0) = T(1);
  }
  const auto [a1, b1, y1] = factors_and_output(one);
  const mat<T> expected_a = a0 - bases_a.col(2).reshaped(r, in);
  const mat<T> expected_b = bases_b.col(9).reshaped(out, r) / T(4);
  EXPECT_TRUE(same_bits(a1, expected_a));
  EXPECT_TRUE(same_bits(b1, expected_b));
  for (auto* layer : {&all, &three}) {
    const auto [a, b, y] = factors_and_output(*layer);
    EXPECT_TRUE(same_bits(a, a1));
    EXPECT_TRUE(same_bits(b, b1));
    EXPECT_TRUE(same_bits(y, y1));
  }

  // General coefficients: the definition, to the rounding of k (or l) terms.
  const mat<T> alpha = random_matrix<T>(k, 1, 6);
  const mat<T> beta = random_matrix<T>(l, 1, 7);
  const matd ref_a =
      a0.template cast<double>() +
      (bases_a.template cast<double>() * alpha.template cast<double>()).reshaped(r, in) / 2.0;
  const matd ref_b =
      (bases_b.template cast<double>() * beta.template cast<double>()).reshaped(out, r) / 4.0;
  for (auto* layer : {&one, &all, &three}) {
    as_eigen(layer->coefficients_a()) = alpha;
    as_eigen(layer->coefficients_b()) = beta;
    const auto [a, b, y] = factors_and_output(*layer);
    // A sum of n terms errs by at most n eps sum |terms| (first order): for B,
    // 16 eps 16 / 4 = 64 eps; for A (4 terms / 2, plus A0) less.
    EXPECT_LT((a.template cast<double>() - ref_a).cwiseAbs().maxCoeff(), 64 * eps<T>);
    EXPECT_LT((b.template cast<double>() - ref_b).cwiseAbs().maxCoeff(), 64 * eps<T>);
  }
}

// Another seed or layer draws other bases (and another A0); the same seed and
// layer draw the same bits in two objects.
TYPED_TEST(nola_typed, seed_and_layer_select_the_bases) {
  using T = TypeParam;
  context<cpu> ctx(2);
  const index_t out = 5, in = 8, n = 3, r = 2, k = 3, l = 4;
  mat<T> w = random_matrix<T>(out, in, 8);
  const mat<T> x = random_matrix<T>(n, in, 9);
  const auto make = [&](std::uint64_t seed, std::uint64_t layer) {
    return nola<T, cpu>(
        ctx, view(w), vector_view<T, cpu>(),
        {.rank = r, .num_bases_a = k, .num_bases_b = l, .seed = seed, .layer = layer});
  };
  auto first = make(1, 0);
  auto twin = make(1, 0);
  auto other_layer = make(1, 1);
  auto other_seed = make(2, 0);
  const auto bases = [&](nola<T, cpu>& layer) {
    mat<T> ba(r * in, k), bb(out * r, l), a0(r, in);
    layer.bases_a(ctx, 0, view(ba));
    layer.bases_b(ctx, 0, view(bb));
    layer.materialize_a(ctx, view(a0));
    return std::tuple{ba, bb, a0};
  };
  const auto [ba, bb, a0] = bases(first);
  const auto [twin_ba, twin_bb, twin_a0] = bases(twin);
  EXPECT_TRUE(same_bits(ba, twin_ba));
  EXPECT_TRUE(same_bits(bb, twin_bb));
  EXPECT_TRUE(same_bits(a0, twin_a0));
  // Independent U(-1, 1) matrices of 16+ entries: they differ everywhere.
  for (auto* layer : {&other_layer, &other_seed}) {
    const auto [oa, ob, o0] = bases(*layer);
    EXPECT_GT((oa - ba).cwiseAbs().maxCoeff(), T(0.1));
    EXPECT_GT((ob - bb).cwiseAbs().maxCoeff(), T(0.1));
    EXPECT_GT((o0 - a0).cwiseAbs().maxCoeff(), T(0.01));
  }
  // A and B bases of one layer differ too (kinds nola_a and nola_b).
  EXPECT_FALSE(same_bits(ba.col(0).head(out * r), bb.col(0)));

  mat<T> y(n, out), twin_y(n, out);
  for (auto* layer : {&first, &twin}) {
    as_eigen(layer->coefficients_a()) = random_matrix<T>(k, 1, 10);
    as_eigen(layer->coefficients_b()) = random_matrix<T>(l, 1, 11);
  }
  first.forward(ctx, view(x), view(y));
  twin.forward(ctx, view(x), view(twin_y));
  EXPECT_TRUE(same_bits(y, twin_y));
  EXPECT_GT(y.cwiseAbs().maxCoeff(), T(0));
}

struct nola_case {
  double dropout;
  bool rslora;
  index_t chunk;
};

class nola_gradients : public ::testing::TestWithParam<nola_case> {};

// Y is linear in alpha for fixed beta and in beta for fixed alpha, and the
// loss is linear in Y, so central differences in double are exact up to
// rounding: relative error ~ eps / h = 1e-10, far below the 1e-6 asked.
TEST_P(nola_gradients, match_finite_differences_in_double) {
  const auto c = GetParam();
  context<cpu> ctx(2);
  const index_t out = 9, in = 11, n = 6, r = 3, k = 5, l = 7;
  matd w = random_matrix<double>(out, in, 1);
  Eigen::VectorXd bias = random_matrix<double>(out, 1, 2);
  matd x = random_matrix<double>(n, in, 3);
  const matd g = random_matrix<double>(n, out, 4);
  const nola_options o{.rank = r,
                       .alpha = 6,
                       .rslora = c.rslora,
                       .dropout = c.dropout,
                       .num_bases_a = k,
                       .num_bases_b = l,
                       .chunk_size = c.chunk,
                       .seed = 42};
  const vector_view<double, cpu> bias_view(bias.data(), out);
  nola<double, cpu> layer(ctx, view(w), bias_view, o);
  auto alpha = as_eigen(layer.coefficients_a());
  auto beta = as_eigen(layer.coefficients_b());
  alpha = random_matrix<double>(k, 1, 5);
  beta = random_matrix<double>(l, 1, 6);
  matd y(n, out);
  // A fresh adapter with the layer's coefficients, brought to the layer's
  // step, replays the layer's dropout mask.
  const std::uint64_t step0 = layer.step();
  auto loss = [&] {
    nola<double, cpu> probe(ctx, view(w), bias_view, o);
    as_eigen(probe.coefficients_a()) = alpha;
    as_eigen(probe.coefficients_b()) = beta;
    for (std::uint64_t s = 0; s < step0; ++s) probe.forward(ctx, view(std::as_const(x)), view(y));
    probe.forward(ctx, view(std::as_const(x)), view(y));
    return (y.array() * g.array()).sum();
  };
  layer.forward(ctx, view(std::as_const(x)), view(y));
  matd dx(n, in);
  layer.backward(ctx, view(g), view(dx));
  const matd d_alpha = as_eigen(layer.grad_coefficients_a());
  const matd d_beta = as_eigen(layer.grad_coefficients_b());
  EXPECT_GT(d_alpha.norm(), 0);
  EXPECT_GT(d_beta.norm(), 0);
  EXPECT_LT(relative_error(d_alpha, numeric_gradient(alpha, loss)), 1e-6);
  EXPECT_LT(relative_error(d_beta, numeric_gradient(beta, loss)), 1e-6);
  EXPECT_LT(relative_error(dx, numeric_gradient(x, loss)), 1e-6);
}

INSTANTIATE_TEST_SUITE_P(all, nola_gradients,
                         ::testing::Values(nola_case{0, false, 64}, nola_case{0, true, 2},
                                           nola_case{0.3, false, 3}));

// Gradients accumulate across backwards until zero_grad(); parameters() lists
// the coefficients with their gradients.
TEST(nola, parameters_accumulate_and_zero_grad) {
  context<cpu> ctx(2);
  const index_t out = 4, in = 6, n = 3, k = 5, l = 3;
  matd w = random_matrix<double>(out, in, 12);
  const matd x = random_matrix<double>(n, in, 13);
  const matd g = random_matrix<double>(n, out, 14);
  nola<double, cpu> layer(ctx, view(w), vector_view<double, cpu>(),
                          {.rank = 2, .num_bases_a = k, .num_bases_b = l, .chunk_size = 2});
  const auto params = layer.parameters();
  ASSERT_EQ(params.size(), 2u);
  EXPECT_STREQ(params[0].name, "nola_coefficients_a");
  EXPECT_STREQ(params[1].name, "nola_coefficients_b");
  EXPECT_EQ(params[0].value.data(), layer.coefficients_a().data());
  EXPECT_EQ(params[0].grad.data(), layer.grad_coefficients_a().data());
  EXPECT_EQ(params[1].value.data(), layer.coefficients_b().data());
  EXPECT_EQ(params[1].grad.data(), layer.grad_coefficients_b().data());
  EXPECT_EQ(params[0].value.rows(), k);
  EXPECT_EQ(params[1].grad.rows(), l);
  as_eigen(layer.coefficients_a()) = random_matrix<double>(k, 1, 15);
  as_eigen(layer.coefficients_b()) = random_matrix<double>(l, 1, 16);
  matd y(n, out);
  layer.forward(ctx, view(x), view(y));
  layer.backward(ctx, view(g), matrix_view<double, cpu>());
  const matd once_a = as_eigen(layer.grad_coefficients_a());
  const matd once_b = as_eigen(layer.grad_coefficients_b());
  layer.forward(ctx, view(x), view(y));
  layer.backward(ctx, view(g), matrix_view<double, cpu>());
  // 2 g is exact, and g + g rounds to it.
  EXPECT_EQ(matd(as_eigen(layer.grad_coefficients_a())), matd(2 * once_a));
  EXPECT_EQ(matd(as_eigen(layer.grad_coefficients_b())), matd(2 * once_b));
  layer.zero_grad(ctx);
  EXPECT_EQ(matd(as_eigen(layer.grad_coefficients_a())), matd::Zero(k, 1));
  EXPECT_EQ(matd(as_eigen(layer.grad_coefficients_b())), matd::Zero(l, 1));
}

// Evaluation mode turns dropout off and does not advance the step.
TEST(nola, evaluation_mode_has_no_dropout) {
  context<cpu> ctx(2);
  const index_t out = 5, in = 7, n = 4, k = 3, l = 4;
  matd w = random_matrix<double>(out, in, 17);
  const matd x = random_matrix<double>(n, in, 18);
  nola_options o{.rank = 2, .dropout = 0.5, .num_bases_a = k, .num_bases_b = l};
  nola<double, cpu> dropped(ctx, view(w), vector_view<double, cpu>(), o);
  o.dropout = 0;
  nola<double, cpu> plain(ctx, view(w), vector_view<double, cpu>(), o);
  for (auto* layer : {&dropped, &plain}) {
    as_eigen(layer->coefficients_a()) = random_matrix<double>(k, 1, 19);
    as_eigen(layer->coefficients_b()) = random_matrix<double>(l, 1, 20);
  }
  matd y(n, out), y_plain(n, out);
  dropped.forward(ctx, view(x), view(y));
  plain.forward(ctx, view(x), view(y_plain));
  EXPECT_FALSE(same_bits(y, y_plain));
  EXPECT_EQ(dropped.step(), 1u);
  dropped.train(false);
  EXPECT_FALSE(dropped.training());
  dropped.forward(ctx, view(x), view(y));
  EXPECT_TRUE(same_bits(y, y_plain));
  EXPECT_EQ(dropped.step(), 1u);
}

// The state is the 2 (k + l) coefficients and gradients; the workspaces are
// what the file comment lists (independent of k and l beyond one chunk), and
// after release_workspace() nothing else is held and a forward gives the
// same bits.
TYPED_TEST(nola_typed, workspaces_are_released_and_regenerated) {
  using T = TypeParam;
  context<cpu> ctx(2);
  const index_t out = 6, in = 8, n = 5, r = 2, k = 40, l = 30, c = 4;
  mat<T> w = random_matrix<T>(out, in, 21);
  mat<T> bias = random_matrix<T>(out, 1, 22);
  const mat<T> x = random_matrix<T>(n, in, 23);
  const mat<T> g = random_matrix<T>(n, out, 24);
  nola<T, cpu> layer(
      ctx, view(w), vector_view<T, cpu>(bias.data(), out),
      {.rank = r, .dropout = 0.2, .num_bases_a = k, .num_bases_b = l, .chunk_size = c, .seed = 5});
  const std::size_t state = 2 * (k + l) * sizeof(T);
  EXPECT_EQ(layer.state_bytes(), state);
  EXPECT_EQ(layer.workspace_bytes(), 0u);
  as_eigen(layer.coefficients_a()) = random_matrix<T>(k, 1, 25);
  as_eigen(layer.coefficients_b()) = random_matrix<T>(l, 1, 26);
  mat<T> y(n, out), dx(n, in);
  layer.forward(ctx, view(x), view(y));
  layer.backward(ctx, view(g), view(dx));
  const index_t basis = std::max(r * in * c, out * r * c);
  EXPECT_LE(basis, (r * in + out * r) * c);
  const index_t scalars = r * (in + out) + basis + r * std::max(in, out) + 2 * n * r + n * in;
  const std::size_t bytes = static_cast<std::size_t>(scalars) * sizeof(T);
  EXPECT_EQ(layer.workspace_bytes(), bytes);
  EXPECT_EQ(layer.state_bytes(), state);
  // Another step, and one with a smaller batch, reuse the workspaces.
  layer.forward(ctx, view(x), view(y));
  layer.backward(ctx, view(g), view(dx));
  mat<T> y2(2, out), dx2(2, in);
  layer.forward(ctx, view(x.topRows(2)), view(y2));
  layer.backward(ctx, view(g.topRows(2)), view(dx2));
  EXPECT_EQ(layer.workspace_bytes(), bytes);

  layer.train(false);
  mat<T> before(n, out), after(n, out);
  layer.forward(ctx, view(x), view(before));
  layer.release_workspace();
  EXPECT_EQ(layer.workspace_bytes(), 0u);
  EXPECT_EQ(layer.state_bytes(), state);
  // The pending forward ended with its workspaces.
  EXPECT_THROW(layer.backward(ctx, view(g), view(dx)), invalid_argument);
  layer.forward(ctx, view(x), view(after));
  EXPECT_TRUE(same_bits(before, after));
  layer.release_workspace();
  EXPECT_EQ(layer.workspace_bytes(), 0u);
}

// merge() then unmerge() restores W bit for bit (several cycles, even if the
// coefficients change while merged); the merged forward equals the adapter's
// to rounding; safe_merge() refuses a non-finite result and leaves W as it was.
TYPED_TEST(nola_typed, merge_unmerge_restores_the_weight) {
  using T = TypeParam;
  context<cpu> ctx(2);
  const index_t out = 12, in = 10, n = 4, r = 3, k = 6, l = 5;
  mat<T> w = random_matrix<T>(out, in, 27);
  mat<T> bias = random_matrix<T>(out, 1, 28);
  const mat<T> w0 = w;
  const mat<T> x = random_matrix<T>(n, in, 29);
  const mat<T> g = random_matrix<T>(n, out, 30);
  nola<T, cpu> layer(ctx, view(w), vector_view<T, cpu>(bias.data(), out),
                     {.rank = r, .alpha = 16, .num_bases_a = k, .num_bases_b = l, .chunk_size = 4});
  as_eigen(layer.coefficients_a()) = random_matrix<T>(k, 1, 31);
  as_eigen(layer.coefficients_b()) = random_matrix<T>(l, 1, 32);
  mat<T> y(n, out), y_merged(n, out);
  EXPECT_THROW(layer.unmerge(ctx), invalid_argument);
  for (int cycle = 0; cycle < 3; ++cycle) {
    layer.forward(ctx, view(x), view(y));
    layer.merge(ctx);
    EXPECT_TRUE(layer.merged());
    EXPECT_FALSE(same_bits(w, w0));
    EXPECT_THROW(layer.merge(ctx), invalid_argument);
    EXPECT_THROW(layer.backward(ctx, view(g), matrix_view<T, cpu>()), invalid_argument);
    layer.forward(ctx, view(x), view(y_merged));
    // One rounding of W' plus the GEMMs' rounding: a few hundred eps of |Y|.
    EXPECT_LT((y_merged - y).norm(), 256 * eps<T> * y.norm());
    if (cycle == 1) as_eigen(layer.coefficients_a()) *= T(2);  // ignored by unmerge
    layer.unmerge(ctx);
    EXPECT_FALSE(layer.merged());
    EXPECT_EQ(layer.merge_exceptions(), 0u);
    EXPECT_TRUE(same_bits(w, w0)) << "cycle " << cycle;
  }
  as_eigen(layer.coefficients_b())(0, 0) = std::numeric_limits<T>::infinity();
  EXPECT_THROW(layer.safe_merge(ctx), numerical_error);
  EXPECT_FALSE(layer.merged());
  EXPECT_TRUE(same_bits(w, w0));
}

// Every documented precondition throws and leaves W, the adapter and its
// gradients as they were.
TEST(nola, bad_input_throws_and_changes_nothing) {
  context<cpu> ctx(2);
  const index_t out = 5, in = 6, n = 3;
  matd w = random_matrix<double>(out, in, 33);
  Eigen::VectorXd bias = random_matrix<double>(out, 1, 34);
  const matd w0 = w;
  const vector_view<double, cpu> b(bias.data(), out);
  const nola_options good{.rank = 2, .num_bases_a = 4, .num_bases_b = 3, .chunk_size = 2};
  const auto make = [&](nola_options o) { return nola<double, cpu>(ctx, view(w), b, o); };
  const auto with = [&](auto change) {
    nola_options o = good;
    change(o);
    return o;
  };
  EXPECT_THROW(make(with([](auto& o) { o.rank = 0; })), invalid_argument);
  EXPECT_THROW(make(with([](auto& o) { o.rank = 6; })), invalid_argument);
  EXPECT_THROW(make(with([](auto& o) { o.num_bases_a = 0; })), invalid_argument);
  EXPECT_THROW(make(with([](auto& o) { o.num_bases_b = 0; })), invalid_argument);
  EXPECT_THROW(make(with([](auto& o) { o.num_bases_a = (index_t{1} << 32) + 1; })),
               invalid_argument);
  EXPECT_THROW(make(with([](auto& o) { o.chunk_size = 0; })), invalid_argument);
  EXPECT_THROW(make(with([](auto& o) { o.alpha = 0; })), invalid_argument);
  EXPECT_THROW(make(with([](auto& o) { o.dropout = 1; })), invalid_argument);
  EXPECT_THROW(make(with([](auto& o) { o.layer = std::uint64_t{1} << 30; })), invalid_argument);
  EXPECT_THROW((nola<double, cpu>(ctx, view(w), b.segment(0, out - 1), good)), invalid_argument);
  EXPECT_THROW((nola<double, cpu>(ctx, matrix_view<double, cpu>(), b, good)), invalid_argument);
  w(1, 2) = std::numeric_limits<double>::quiet_NaN();
  EXPECT_THROW(make(good), numerical_error);
  w(1, 2) = w0(1, 2);
  bias(3) = std::numeric_limits<double>::infinity();
  EXPECT_THROW(make(good), numerical_error);
  bias(3) = 0.5;
  EXPECT_TRUE(same_bits(w, w0));

  auto layer = make(good);
  as_eigen(layer.coefficients_a()) = random_matrix<double>(4, 1, 35);
  as_eigen(layer.coefficients_b()) = random_matrix<double>(3, 1, 36);
  const matd x = random_matrix<double>(n, in, 37);
  const matd g = random_matrix<double>(n, out, 38);
  matd y(n, out), dx(n, in), wrong_x(n, in + 1), wrong_y(n + 1, out);
  EXPECT_THROW(layer.backward(ctx, view(g), view(dx)), invalid_argument);  // no forward
  EXPECT_THROW(layer.forward(ctx, view(wrong_x), view(y)), invalid_argument);
  EXPECT_THROW(layer.forward(ctx, view(x), view(wrong_y)), invalid_argument);
  EXPECT_EQ(layer.step(), 0u);
  EXPECT_EQ(layer.workspace_bytes(), 0u);
  layer.forward(ctx, view(x), view(y));
  const matd wrong_g = matd::Zero(n + 1, out);
  matd short_dx(n, in - 1);
  EXPECT_THROW(layer.backward(ctx, view(wrong_g), view(dx)), invalid_argument);
  EXPECT_THROW(layer.backward(ctx, view(g), view(short_dx)), invalid_argument);
  EXPECT_EQ(matd(as_eigen(layer.grad_coefficients_a())), matd::Zero(4, 1));
  EXPECT_EQ(matd(as_eigen(layer.grad_coefficients_b())), matd::Zero(3, 1));
  layer.backward(ctx, view(g), view(dx));  // the forward is still pending
  EXPECT_GT(matd(as_eigen(layer.grad_coefficients_a())).norm(), 0);

  matd bases(2 * in, 2), a(2, in), strided(3, in), b_wrong(out, 3);
  EXPECT_THROW(layer.bases_a(ctx, 3, view(bases)), invalid_argument);  // columns 3, 4 of 4
  EXPECT_THROW(layer.bases_a(ctx, -1, view(bases)), invalid_argument);
  EXPECT_THROW(layer.bases_b(ctx, 0, view(bases)), invalid_argument);  // rows 2 in, not out 2
  EXPECT_THROW(layer.materialize_a(ctx, view(strided).middle_rows(0, 2)), invalid_argument);
  EXPECT_THROW(layer.materialize_b(ctx, view(b_wrong)), invalid_argument);
  EXPECT_NO_THROW(layer.materialize_a(ctx, view(a)));
}

}  // namespace
}  // namespace lowrank::test::nola_tests
