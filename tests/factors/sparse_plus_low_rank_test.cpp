// The factors family: random supports (exact size, distinct, sorted, the same
// whatever the threads and on every backend), the sparse operations against
// dense references, SLTrain's layer (finite-difference gradients in double
// on both routes and as an adapter, the reference's fixture from
// tools/make_sltrain_fixtures.py, merge, seed storage) and bad input. Typed
// over the backends (the file builds as CUDA too).
#include <gtest/gtest.h>

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <set>
#include <string>
#include <vector>

#include "lowrank/factors/sparse.hpp"
#include "lowrank/factors/sparse_plus_low_rank.hpp"
#include "lowrank/io/safetensors.hpp"
#include "support/backends.hpp"
#include "support/factors.hpp"

namespace lowrank::test::sparse_plus_low_rank_tests {
namespace {

using matd = Eigen::MatrixXd;
using vecd = Eigen::VectorXd;

template <class Config>
class factors_test : public backend_test<Config> {};
TYPED_TEST_SUITE(factors_test, test_configs, config_names);

/// The dense m x n matrix of a support and its values.
template <class Backend>
matd dense_of(context<Backend>& ctx, const sparse_support<Backend>& s, const vecd& v) {
  matd w = matd::Zero(s.rows(), s.cols());
  const auto flat = s.flat_indices(ctx);
  for (std::size_t k = 0; k < flat.size(); ++k) {
    w(flat[k] / s.cols(), flat[k] % s.cols()) += v(index_t(k));
  }
  return w;
}

sparse_plus_low_rank_options small_options(double density = 0.2) {
  sparse_plus_low_rank_options o;
  o.rank = 3;
  o.alpha = 6;
  o.density = density;
  o.seed = 11;
  o.layer = 2;
  return o;
}

TYPED_TEST(factors_test, random_support_is_exact_distinct_sorted_and_thread_independent) {
  using B = typename TypeParam::backend;
  auto ctx = make_context<B>(2);
  const random_stream st = factor_stream(5, 1, factor_stream_kind::support);
  for (const auto& [m, n, nnz] : std::vector<std::array<index_t, 3>>{
           {1, 1, 1}, {1, 1, 0}, {7, 9, 12}, {7, 9, 63}, {300, 257, 2313}, {64, 4096, 7864}}) {
    const auto s = sparse_support<B>::random(ctx, m, n, nnz, st);
    const auto flat = s.flat_indices(ctx);
    ASSERT_EQ(index_t(flat.size()), nnz);
    for (std::size_t k = 0; k < flat.size(); ++k) {
      ASSERT_GE(flat[k], 0);
      ASSERT_LT(flat[k], m * n);
      if (k > 0) {
        ASSERT_LT(flat[k - 1], flat[k]) << "sorted and distinct";
      }
    }
    auto ctx1 = make_context<B>(1);
    EXPECT_EQ(sparse_support<B>::random(ctx1, m, n, nnz, st).flat_indices(ctx1), flat);
  }
  // Another seed gives another support; nnz = m n gives every position.
  const auto a = sparse_support<B>::random(ctx, 40, 50, 100, st).flat_indices(ctx);
  const auto b = sparse_support<B>::random(ctx, 40, 50, 100, st.next()).flat_indices(ctx);
  EXPECT_NE(a, b);
  const auto all = sparse_support<B>::random(ctx, 13, 11, 143, st).flat_indices(ctx);
  for (std::int64_t k = 0; k < 143; ++k) ASSERT_EQ(all[std::size_t(k)], k);
}

TYPED_TEST(factors_test, random_support_is_uniform) {
  using B = typename TypeParam::backend;
  auto ctx = make_context<B>(2);
  // 200 x 300 with 6000 entries: each row holds 30 on average, hypergeometric
  // (variance about 27). Over 200 rows, chi^2 / dof stays near 1 for a
  // uniform subset (P[> 1.35] < 1e-4); columns likewise (20 per column).
  const index_t m = 200, n = 300, nnz = 6000;
  const auto s =
      sparse_support<B>::random(ctx, m, n, nnz, factor_stream(9, 0, factor_stream_kind::support));
  const auto flat = s.flat_indices(ctx);
  std::vector<double> rows(std::size_t(m), 0), cols(std::size_t(n), 0);
  for (const auto f : flat) {
    rows[std::size_t(f / n)] += 1;
    cols[std::size_t(f % n)] += 1;
  }
  auto chi = [](const std::vector<double>& c, double mean) {
    double x = 0;
    for (const double v : c) x += (v - mean) * (v - mean) / mean;
    return x / double(c.size() - 1);
  };
  EXPECT_LT(chi(rows, 30), 1.35);
  EXPECT_GT(chi(rows, 30), 0.65);
  EXPECT_LT(chi(cols, 20), 1.35);
  EXPECT_GT(chi(cols, 20), 0.65);
}

TYPED_TEST(factors_test, sparse_operations_match_dense_references) {
  using B = typename TypeParam::backend;
  using T = typename TypeParam::scalar;
  auto ctx = make_context<B>(2);
  const index_t m = 37, n = 53, nnz = 400;
  const auto s = sparse_support<B>::random(ctx, m, n, nnz, random_stream{3, 4});
  const vecd v = vecd::Random(nnz);
  const auto vb = upload<T>(ctx, matd(v));
  const vector_view<const T, B> vv(vb.view().data(), nnz);
  const matd dense = dense_of(ctx, s, v);
  // Unit roundoff times the terms of a sum (at most ~64 + 20 here).
  const double tol = 200 * eps<T>;
  for (const index_t rows : {index_t(1), index_t(63), index_t(64), index_t(150)}) {
    const matd x = matd::Random(rows, n);
    const matd y0 = matd::Random(rows, m);
    auto xb = upload<T>(ctx, x);
    auto yb = upload<T>(ctx, y0);
    ops<B>::sparse_times(ctx, transpose::no, T(0.5), s.view(), vv, xb.view(), yb.view());
    const matd want = y0 + 0.5 * x * dense.transpose();
    EXPECT_LT((host(ctx, as_const(yb.view())) - want).norm(), tol * want.norm()) << rows;

    const matd g = matd::Random(rows, m);
    const matd dx0 = matd::Random(rows, n);
    auto gb = upload<T>(ctx, g);
    auto dxb = upload<T>(ctx, dx0);
    ops<B>::sparse_times(ctx, transpose::yes, T(-2), s.view(), vv, gb.view(), dxb.view());
    const matd want_dx = dx0 - 2 * g * dense;
    EXPECT_LT((host(ctx, as_const(dxb.view())) - want_dx).norm(), tol * want_dx.norm()) << rows;

    // SDDMM: the support's entries of G^T X.
    const vecd v0 = vecd::Random(nnz);
    auto outb = upload<T>(ctx, matd(v0));
    ops<B>::sampled_product(ctx, T(3), gb.view(), xb.view(), s.view(), T(-1),
                            vector_view<T, B>(outb.view().data(), nnz));
    const matd full = g.transpose() * x;
    const auto flat = s.flat_indices(ctx);
    vecd want_v(nnz);
    for (index_t k = 0; k < nnz; ++k) {
      want_v(k) = 3 * full(flat[std::size_t(k)] / n, flat[std::size_t(k)] % n) - v0(k);
    }
    EXPECT_LT((host(ctx, as_const(outb.view())).col(0) - want_v).norm(), tol * want_v.norm());
  }
  // Scatter into and gather from a dense matrix.
  const matd w0 = matd::Random(m, n);
  auto wb = upload<T>(ctx, w0);
  ops<B>::sparse_to_dense(ctx, T(2), s.view(), vv, wb.view());
  EXPECT_LT((host(ctx, as_const(wb.view())) - (w0 + 2 * dense)).norm(), 10 * eps<T> * w0.norm());
  auto gathered = upload<T>(ctx, matd(v));
  ops<B>::dense_to_sparse(ctx, T(1), s.view(), as_const(wb.view()), T(0),
                          vector_view<T, B>(gathered.view().data(), nnz));
  const auto flat = s.flat_indices(ctx);
  const matd wh = host(ctx, as_const(wb.view()));
  const matd got = host(ctx, as_const(gathered.view()));
  for (index_t k = 0; k < nnz; ++k) {
    ASSERT_EQ(got(k, 0), wh(flat[std::size_t(k)] / n, flat[std::size_t(k)] % n));
  }
}

TYPED_TEST(factors_test, sparse_products_do_not_depend_on_threads) {
  using B = typename TypeParam::backend;
  using T = typename TypeParam::scalar;
  const matd x = matd::Random(200, 70);
  const matd g = matd::Random(200, 90);
  auto run = [&](int threads) {
    auto ctx = make_context<B>(threads);
    const auto s = sparse_support<B>::random(ctx, 90, 70, 900, random_stream{1, 2});
    auto xb = upload<T>(ctx, x);
    auto gb = upload<T>(ctx, g);
    auto v = upload<T>(ctx, matd(vecd::LinSpaced(900, -1, 1)));
    const vector_view<const T, B> vv(v.view().data(), 900);
    matrix<T, B> y(ctx, 200, 90), dx(ctx, 200, 70), dv(ctx, 900, 1);
    ops<B>::fill(ctx, y.view(), T(0));
    ops<B>::fill(ctx, dx.view(), T(0));
    ops<B>::sparse_times(ctx, transpose::no, T(1), s.view(), vv, xb.view(), y.view());
    ops<B>::sparse_times(ctx, transpose::yes, T(1), s.view(), vv, gb.view(), dx.view());
    ops<B>::sampled_product(ctx, T(1), gb.view(), xb.view(), s.view(), T(0),
                            vector_view<T, B>(dv.view().data(), 900));
    return std::vector<matd>{host(ctx, as_const(y.view())), host(ctx, as_const(dx.view())),
                             host(ctx, as_const(dv.view()))};
  };
  const auto one = run(1);
  const auto two = run(2);
  for (std::size_t i = 0; i < one.size(); ++i) EXPECT_TRUE(one[i] == two[i]) << i;
}

TYPED_TEST(factors_test, gradients_match_finite_differences) {
  using B = typename TypeParam::backend;
  if constexpr (std::is_same_v<typename TypeParam::scalar, double>) {
    auto ctx = make_context<B>(2);
    for (const factor_route route : {factor_route::factored, factor_route::dense}) {
      for (const support_storage storage : {support_storage::indices, support_storage::seed}) {
        auto o = small_options();
        o.route = route;
        o.storage = storage;
        sparse_plus_low_rank<double, B> layer(ctx, 7, 9, o);
        EXPECT_EQ(layer.nnz(), 12);
        check_gradients(ctx, layer, 70);
      }
      // As an adapter on a frozen layer with a bias.
      const auto w0 = upload<double>(ctx, matd::Random(8, 6));
      const auto b0 = upload<double>(ctx, matd::Random(8, 1));
      auto o = small_options(0.3);
      o.route = route;
      sparse_plus_low_rank<double, B> adapter(ctx, w0.view(),
                                              vector_view<const double, B>(b0.view().data(), 8), o);
      set(ctx, adapter.values().as_matrix(), matd::Random(adapter.nnz(), 1));
      check_gradients(ctx, adapter, 5);
    }
  }
}

TYPED_TEST(factors_test, routes_and_merge_agree) {
  using B = typename TypeParam::backend;
  using T = typename TypeParam::scalar;
  auto ctx = make_context<B>(2);
  auto o = small_options(0.05);
  o.rank = 8;
  o.alpha = 16;
  sparse_plus_low_rank<T, B> fact(ctx, 40, 90, o);
  o.route = factor_route::dense;
  sparse_plus_low_rank<T, B> dense(ctx, 40, 90, o);
  const matd bh = matd::Random(40, 8);
  set(ctx, fact.b(), bh);
  set(ctx, dense.b(), bh);
  EXPECT_EQ(fact.route_for(16), factor_route::factored);
  // The same streams: the same initial A, values and bias.
  EXPECT_TRUE(host(ctx, as_const(fact.a())) == host(ctx, as_const(dense.a())));
  matrix<T, B> w(ctx, 40, 90);
  fact.dense_weight(ctx, w.view());
  const matd wh = host(ctx, as_const(w.view()));
  const matd x = matd::Random(33, 90);
  const matd g = matd::Random(33, 40);
  auto xb = upload<T>(ctx, x);
  auto gb = upload<T>(ctx, g);
  matrix<T, B> y1(ctx, 33, 40), y2(ctx, 33, 40), dx1(ctx, 33, 90), dx2(ctx, 33, 90);
  fact.forward(ctx, xb.view(), y1.view());
  dense.forward(ctx, xb.view(), y2.view());
  const matd bias = host(ctx, as_const(fact.bias().as_matrix()));
  const matd want = (x * wh.transpose()).rowwise() + bias.col(0).transpose();
  const double tol = 100 * eps<T> * want.norm();
  EXPECT_LT((host(ctx, as_const(y1.view())) - want).norm(), tol);
  EXPECT_LT((host(ctx, as_const(y2.view())) - want).norm(), tol);
  fact.backward(ctx, gb.view(), dx1.view());
  dense.backward(ctx, gb.view(), dx2.view());
  EXPECT_LT((host(ctx, as_const(dx1.view())) - g * wh).norm(), tol);
  EXPECT_LT((host(ctx, as_const(dx2.view())) - g * wh).norm(), tol);
  auto p1 = fact.parameters();
  auto p2 = dense.parameters();
  ASSERT_EQ(p1.size(), 4u);
  for (std::size_t i = 0; i < p1.size(); ++i) {
    EXPECT_STREQ(p1[i].name, p2[i].name);
    const matd a = host(ctx, as_const(p1[i].grad));
    EXPECT_LT((a - host(ctx, as_const(p2[i].grad))).norm(), 1000 * eps<T> * (1 + a.norm()))
        << p1[i].name;
  }
  EXPECT_EQ(fact.parameter_count(), 8 * (40 + 90) + fact.nnz() + 40);
}

TYPED_TEST(factors_test, seed_storage_keeps_no_indices_and_computes_the_same) {
  using B = typename TypeParam::backend;
  using T = typename TypeParam::scalar;
  auto ctx = make_context<B>(2);
  auto o = small_options(0.1);
  sparse_plus_low_rank<T, B> kept(ctx, 30, 50, o);
  o.storage = support_storage::seed;
  sparse_plus_low_rank<T, B> seeded(ctx, 30, 50, o);
  EXPECT_LT(seeded.persistent_bytes() + (30 + 1 + kept.nnz()) * sizeof(std::int32_t),
            kept.persistent_bytes() + 1);
  EXPECT_EQ(seeded.support_copy(ctx).flat_indices(ctx), kept.support_copy(ctx).flat_indices(ctx));
  const auto xb = upload<T>(ctx, matd::Random(4, 50));
  matrix<T, B> y1(ctx, 4, 30), y2(ctx, 4, 30);
  kept.forward(ctx, xb.view(), y1.view());
  seeded.forward(ctx, xb.view(), y2.view());
  EXPECT_TRUE(host(ctx, as_const(y1.view())) == host(ctx, as_const(y2.view())));
}

/// SLTrain's reference computation (tools/make_sltrain_fixtures.py, a numpy
/// transcription of andyjm3/SLTrain's splora_linear.py and sparse_linear.cpp).
TYPED_TEST(factors_test, matches_sltrain_reference_fixture) {
  using B = typename TypeParam::backend;
  using T = typename TypeParam::scalar;
  auto ctx = make_context<B>(2);
  const auto file = io::safetensors_file::read(std::string(LOWRANK_TEST_FACTORS_FIXTURE_DIR) +
                                               "/sltrain_small.safetensors");
  auto get = [&](const char* name) { return file.template matrix<double>(name); };
  const auto bytes = file.tensor_bytes("sparse_index");
  std::vector<std::int64_t> flat(bytes.size() / 8);
  std::memcpy(flat.data(), bytes.data(), bytes.size());  // little-endian, as this host
  auto support = sparse_support<B>::from_flat_indices(ctx, 7, 9, flat);
  sparse_plus_low_rank_options o;
  o.alpha = std::stod(file.metadata().at("lora_alpha"));
  const auto a = upload<T>(ctx, get("lora_A"));
  const auto b = upload<T>(ctx, get("lora_B"));
  const auto v = upload<T>(ctx, get("sparse_value"));
  const auto bias = upload<T>(ctx, get("bias"));
  const matd x = get("x");
  const matd g = get("grad_output");
  for (const factor_route route : {factor_route::factored, factor_route::dense}) {
    o.route = route;
    auto layer = sparse_plus_low_rank<T, B>::from_tensors(
        ctx, a.view(), b.view(), vector_view<const T, B>(v.view().data(), v.rows()),
        sparse_support<B>::from_flat_indices(ctx, 7, 9, flat),
        vector_view<const T, B>(bias.view().data(), 7), o);
    EXPECT_EQ(layer.rank(), 3);
    EXPECT_EQ(layer.scaling(), 2.0);
    auto xb = upload<T>(ctx, x);
    auto gb = upload<T>(ctx, g);
    matrix<T, B> y(ctx, 5, 7), dx(ctx, 5, 9), w(ctx, 7, 9);
    layer.forward(ctx, xb.view(), y.view());
    layer.backward(ctx, gb.view(), dx.view());
    layer.dense_weight(ctx, w.view());
    const double tol = 100 * eps<T>;
    auto near = [&](const matd& got, const char* name) {
      const matd want = get(name);
      EXPECT_LT((got - want).norm(), tol * (1 + want.norm())) << name;
    };
    near(host(ctx, as_const(y.view())), "y");
    near(host(ctx, as_const(dx.view())), "grad_input");
    near(host(ctx, as_const(w.view())), "weight");
    near(host(ctx, as_const(layer.grad_a())), "grad_lora_A");
    near(host(ctx, as_const(layer.grad_b())), "grad_lora_B");
    near(host(ctx, as_const(layer.grad_values().as_matrix())), "grad_sparse_value");
    near(host(ctx, as_const(layer.grad_bias().as_matrix())), "grad_bias");
  }
  EXPECT_EQ(support.flat_indices(ctx), flat);
}

TYPED_TEST(factors_test, rejects_bad_input_and_leaves_the_layer_as_it_was) {
  using B = typename TypeParam::backend;
  using T = typename TypeParam::scalar;
  auto ctx = make_context<B>(2);
  auto with = [](auto f) {
    auto o = small_options();
    f(o);
    return o;
  };
  using layer_t = sparse_plus_low_rank<T, B>;
  for (const double d : {0.0, 1.0, -0.1, 1.5, std::numeric_limits<double>::quiet_NaN()}) {
    EXPECT_THROW(layer_t(ctx, 7, 9, with([&](auto& o) { o.density = d; })), invalid_argument) << d;
  }
  EXPECT_THROW(layer_t(ctx, 7, 9, with([](auto& o) { o.rank = 0; })), invalid_argument);
  EXPECT_THROW(layer_t(ctx, 7, 9, with([](auto& o) { o.rank = 8; })), invalid_argument);
  EXPECT_THROW(layer_t(ctx, 7, 9, with([](auto& o) { o.alpha = 0; })), invalid_argument);
  EXPECT_THROW(layer_t(ctx, 0, 9, small_options()), invalid_argument);
  EXPECT_THROW(layer_t(ctx, 7, 9, with([](auto& o) { o.layer = max_stream_layers; })),
               invalid_argument);
  try {
    layer_t(ctx, 7, 9, with([](auto& o) { o.density = 1.5; }));
    FAIL();
  } catch (const invalid_argument& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("lowrank::sparse_plus_low_rank"), std::string::npos) << what;
    EXPECT_NE(what.find("density"), std::string::npos) << what;
    EXPECT_NE(what.find("(0, 1)"), std::string::npos) << what;
  }
  // Supports: nnz beyond m n, unsorted, repeated or out-of-range indices.
  EXPECT_THROW((void)sparse_support<B>::random(ctx, 3, 4, 13, random_stream{}), invalid_argument);
  const std::vector<std::int64_t> unsorted{3, 1}, repeated{1, 1}, outside{2, 12}, negative{-1};
  for (const auto* f : {&unsorted, &repeated, &outside, &negative}) {
    EXPECT_THROW((void)sparse_support<B>::from_flat_indices(ctx, 3, 4, *f), invalid_argument);
  }
  const std::vector<std::int32_t> offsets{0, 1, 3, 3}, cols_bad{0, 2, 2}, cols_out{0, 1, 4};
  const std::vector<std::int32_t> good_cols{0, 1, 3};
  EXPECT_NO_THROW((void)sparse_support<B>::from_csr(ctx, 3, 4, offsets, good_cols));
  EXPECT_THROW((void)sparse_support<B>::from_csr(ctx, 3, 4, offsets, cols_bad), invalid_argument);
  EXPECT_THROW((void)sparse_support<B>::from_csr(ctx, 3, 4, offsets, cols_out), invalid_argument);
  const std::vector<std::int32_t> decreasing{0, 2, 1, 3};
  EXPECT_THROW((void)sparse_support<B>::from_csr(ctx, 3, 4, decreasing, good_cols),
               invalid_argument);
  // from_tensors: wrong shapes, non-finite values.
  auto o = small_options();
  const auto a = upload<T>(ctx, matd::Random(3, 4));
  const auto b = upload<T>(ctx, matd::Random(3, 3));
  matd vh = matd::Random(3, 1);
  auto tensors = [&](const matd& values, index_t b_rows) {
    const auto vb = upload<T>(ctx, values);
    const auto bb = upload<T>(ctx, matd::Random(b_rows, 3));
    return layer_t::from_tensors(
        ctx, a.view(), bb.view(), vector_view<const T, B>(vb.view().data(), vb.rows()),
        sparse_support<B>::from_csr(ctx, 3, 4, offsets, good_cols), vector_view<const T, B>(), o);
  };
  EXPECT_NO_THROW((void)tensors(vh, 3));
  EXPECT_THROW((void)tensors(vh, 4), invalid_argument);
  EXPECT_THROW((void)tensors(matd::Random(4, 1), 3), invalid_argument);
  vh(1) = std::numeric_limits<double>::infinity();
  EXPECT_THROW((void)tensors(vh, 3), numerical_error);
  (void)b;
  // Forward and backward: shapes, a backward without a forward; the layer is unchanged.
  layer_t layer(ctx, 7, 9, small_options());
  const matd a0 = host(ctx, as_const(layer.a()));
  matrix<T, B> x(ctx, 2, 8), y(ctx, 2, 7), g(ctx, 2, 7), dx(ctx, 2, 9);
  EXPECT_THROW(layer.forward(ctx, x.view(), y.view()), invalid_argument);
  EXPECT_THROW(layer.backward(ctx, g.view(), dx.view()), invalid_argument);
  matrix<T, B> x9(ctx, 2, 9), y3(ctx, 3, 7);
  ops<B>::fill(ctx, x9.view(), T(1));
  EXPECT_THROW(layer.forward(ctx, x9.view(), y3.view()), invalid_argument);
  layer.forward(ctx, x9.view(), y.view());
  EXPECT_THROW(layer.backward(ctx, y3.view(), dx.view()), invalid_argument);
  EXPECT_TRUE(host(ctx, as_const(layer.a())) == a0);
  // Adapter mode: non-finite base weights.
  matd wbad = matd::Random(7, 9);
  wbad(2, 3) = std::numeric_limits<double>::quiet_NaN();
  const auto wb = upload<T>(ctx, wbad);
  EXPECT_THROW(layer_t(ctx, wb.view(), vector_view<const T, B>(), small_options()),
               numerical_error);
}

#if defined(__CUDACC__)
// --- CUDA against the CPU --------------------------------------------------------
// The same input on both backends: the random supports and their CSC copies
// are the same arrays; the sparse products, the SDDMM, the scatter and the
// gather (double) and SLTrain's layer agree to 1e-12 relative (the kernels
// replay the CPU's order and rounding, so they should agree bit for bit; the
// layer's GEMMs do not); the soft threshold is bit for bit. Operands are
// blocks of larger matrices, compared whole (what lies outside a block stays
// as it was). Skips without a GPU (fails under LOWRANK_TEST_REQUIRE_DEVICE=1).

class factors_cuda_vs_cpu : public backend_test<config<cuda, double>> {};

/// ||a - b|| / ||b|| (0 when both are 0; infinite for another shape).
double relative_difference(const matd& a, const matd& b) {
  if (a.rows() != b.rows() || a.cols() != b.cols()) return std::numeric_limits<double>::infinity();
  const double d = (a - b).norm();
  return d == 0 ? 0.0 : d / b.norm();
}

std::vector<std::int32_t> download_ints(context<cuda>& gpu, const std::int32_t* p, index_t n) {
  std::vector<std::int32_t> out(static_cast<std::size_t>(n));
  ops<cuda>::download_int32(gpu, vector_view<const std::int32_t, cuda>(p, n),
                            vector_view<std::int32_t, cpu>(out.data(), n));
  return out;
}

/// A rows x cols block at (1, 2) of a random (rows + 3) x (cols + 2) matrix
/// (or one of NaN), the same on the CPU and the GPU.
struct twin {
  index_t rows;
  index_t cols;
  matrix<double, cpu> h;
  matrix<double, cuda> d;

  twin(context<cpu>& c, context<cuda>& g, index_t r, index_t k, bool nan = false)
      : rows(r), cols(k), h(c, r + 3, k + 2), d(g, r + 3, k + 2) {
    matd whole = matd::Random(r + 3, k + 2);
    if (nan) whole.setConstant(std::numeric_limits<double>::quiet_NaN());
    set(c, h.view(), whole);
    set(g, d.view(), whole);
  }
  matrix_view<double, cpu> on_cpu() { return h.view().block(1, 2, rows, cols); }
  matrix_view<double, cuda> on_gpu() { return d.view().block(1, 2, rows, cols); }
  /// Both whole matrices, the GPU's downloaded.
  [[nodiscard]] std::pair<matd, matd> whole(context<cuda>& g) const {
    return {host(g, as_const(d.view())), matd(h)};
  }
};

TEST_F(factors_cuda_vs_cpu, random_supports_and_their_columns_are_the_cpus) {
  context<cpu> c(2);
  context<cuda> g;
  const random_stream st = factor_stream(5, 1, factor_stream_kind::support);
  for (const auto& [m, n, nnz] : std::vector<std::array<index_t, 3>>{{1, 1, 1},
                                                                     {1, 1, 0},
                                                                     {3, 5, 0},
                                                                     {7, 9, 12},
                                                                     {7, 9, 63},
                                                                     {13, 11, 143},
                                                                     {300, 257, 2313},
                                                                     {1000, 3, 1500},
                                                                     {2, 3000, 17},
                                                                     {64, 4096, 7864},
                                                                     {64, 4096, 64 * 4096}}) {
    const std::string shape =
        std::to_string(m) + " x " + std::to_string(n) + ", nnz " + std::to_string(nnz);
    const auto sc = sparse_support<cpu>::random(c, m, n, nnz, st);
    const auto sg = sparse_support<cuda>::random(g, m, n, nnz, st);
    EXPECT_EQ(sg.flat_indices(g), sc.flat_indices(c)) << shape;
    EXPECT_EQ(sg.row_offsets(g), sc.row_offsets(c)) << shape;
    EXPECT_EQ(sg.col_indices(g), sc.col_indices(c)) << shape;
    // The CSC copy: the CPU's support_columns (which the CPU does not keep).
    std::vector<std::int32_t> offsets(static_cast<std::size_t>(n) + 1),
        rows(static_cast<std::size_t>(nnz)), slots(static_cast<std::size_t>(nnz));
    ops<cpu>::support_columns(c, sc.view(), vector_view<std::int32_t, cpu>(offsets.data(), n + 1),
                              vector_view<std::int32_t, cpu>(rows.data(), nnz),
                              vector_view<std::int32_t, cpu>(slots.data(), nnz));
    const support_view<cuda> v = sg.view();
    ASSERT_NE(v.col_offsets, nullptr) << shape;
    EXPECT_EQ(download_ints(g, v.col_offsets, n + 1), offsets) << shape;
    EXPECT_EQ(download_ints(g, v.row_indices, nnz), rows) << shape;
    EXPECT_EQ(download_ints(g, v.positions, nnz), slots) << shape;
  }
  // A support from CSR arrays (empty rows and columns): the same CSC.
  const std::vector<std::int32_t> offsets{0, 2, 2, 5, 5, 6}, cols{1, 4, 0, 1, 4, 2};
  const auto sc = sparse_support<cpu>::from_csr(c, 5, 6, offsets, cols);
  const auto sg = sparse_support<cuda>::from_csr(g, 5, 6, offsets, cols);
  std::vector<std::int32_t> col_offsets(7), rows(6), slots(6);
  ops<cpu>::support_columns(c, sc.view(), vector_view<std::int32_t, cpu>(col_offsets.data(), 7),
                            vector_view<std::int32_t, cpu>(rows.data(), 6),
                            vector_view<std::int32_t, cpu>(slots.data(), 6));
  EXPECT_EQ(col_offsets, (std::vector<std::int32_t>{0, 1, 3, 4, 4, 6, 6}));
  EXPECT_EQ(download_ints(g, sg.view().col_offsets, 7), col_offsets);
  EXPECT_EQ(download_ints(g, sg.view().row_indices, 6), rows);
  EXPECT_EQ(download_ints(g, sg.view().positions, 6), slots);
}

TEST_F(factors_cuda_vs_cpu, sparse_operations_are_the_cpus) {
  context<cpu> c(2);
  context<cuda> g;
  const double tol = 1e-12;
  for (const auto& [m, n, nnz] : std::vector<std::array<index_t, 3>>{
           {90, 70, 900}, {37, 53, 400}, {50, 40, 30}, {1, 1, 1}, {20, 30, 600}}) {
    const auto sc = sparse_support<cpu>::random(c, m, n, nnz, random_stream{3, 4});
    const auto sg = sparse_support<cuda>::random(g, m, n, nnz, random_stream{3, 4});
    const vecd values = vecd::Random(nnz);
    const vector<double, cpu> vc = vecd(values);
    const vector<double, cuda> vg(g, values);
    for (const index_t rows : {index_t(1), index_t(5), index_t(63), index_t(64), index_t(65),
                               index_t(257), index_t(600)}) {
      const std::string what = std::to_string(m) + " x " + std::to_string(n) + ", nnz " +
                               std::to_string(nnz) + ", N " + std::to_string(rows);
      // Y += alpha X S^T.
      twin x(c, g, rows, n), y(c, g, rows, m);
      ops<cpu>::sparse_times(c, transpose::no, 0.5, sc.view(), vc.view(), as_const(x.on_cpu()),
                             y.on_cpu());
      ops<cuda>::sparse_times(g, transpose::no, 0.5, sg.view(), vg.view(), as_const(x.on_gpu()),
                              y.on_gpu());
      auto [yg, yc] = y.whole(g);
      EXPECT_LT(relative_difference(yg, yc), tol) << "X S^T, " << what;
      // DX += alpha G S.
      twin gr(c, g, rows, m), dx(c, g, rows, n);
      ops<cpu>::sparse_times(c, transpose::yes, -2.0, sc.view(), vc.view(), as_const(gr.on_cpu()),
                             dx.on_cpu());
      ops<cuda>::sparse_times(g, transpose::yes, -2.0, sg.view(), vg.view(), as_const(gr.on_gpu()),
                              dx.on_gpu());
      auto [dxg, dxc] = dx.whole(g);
      EXPECT_LT(relative_difference(dxg, dxc), tol) << "G S, " << what;
      // The SDDMM, with beta = -1 and with beta = 0 over NaN.
      for (const double beta : {-1.0, 0.0}) {
        twin out(c, g, nnz, 1, beta == 0);
        const auto oc = out.on_cpu();
        const auto og = out.on_gpu();
        ops<cpu>::sampled_product(c, 3.0, as_const(gr.on_cpu()), as_const(x.on_cpu()), sc.view(),
                                  beta, vector_view<double, cpu>(oc.data(), nnz));
        ops<cuda>::sampled_product(g, 3.0, as_const(gr.on_gpu()), as_const(x.on_gpu()), sg.view(),
                                   beta, vector_view<double, cuda>(og.data(), nnz));
        const matd got = host(g, as_const(og));
        const matd want = matd(out.h).block(1, 2, nnz, 1);
        EXPECT_TRUE(want.allFinite()) << what;
        EXPECT_LT(relative_difference(got, want), tol) << "SDDMM, beta " << beta << ", " << what;
      }
    }
    // W += alpha S, then v = alpha W(support) + beta v (beta 0.5, and 0 over NaN).
    twin w(c, g, m, n);
    ops<cpu>::sparse_to_dense(c, 2.0, sc.view(), vc.view(), w.on_cpu());
    ops<cuda>::sparse_to_dense(g, 2.0, sg.view(), vg.view(), w.on_gpu());
    auto [wg, wc] = w.whole(g);
    EXPECT_LT(relative_difference(wg, wc), tol) << "sparse_to_dense";
    for (const double beta : {0.5, 0.0}) {
      twin out(c, g, nnz, 1, beta == 0);
      const auto oc = out.on_cpu();
      const auto og = out.on_gpu();
      ops<cpu>::dense_to_sparse(c, -1.5, sc.view(), as_const(w.on_cpu()), beta,
                                vector_view<double, cpu>(oc.data(), nnz));
      ops<cuda>::dense_to_sparse(g, -1.5, sg.view(), as_const(w.on_gpu()), beta,
                                 vector_view<double, cuda>(og.data(), nnz));
      auto [got, want] = out.whole(g);
      EXPECT_TRUE(want.block(1, 2, nnz, 1).allFinite());
      EXPECT_LT(relative_difference(got.block(1, 2, nnz, 1), want.block(1, 2, nnz, 1)), tol)
          << "dense_to_sparse, beta " << beta;
    }
  }
  // The soft threshold, out of place and in place: bit for bit (NaN to 0,
  // the sign of -0 kept).
  twin x(c, g, 70, 9), y(c, g, 70, 9);
  matd xh = matd::Random(73, 11);
  xh(3, 4) = std::numeric_limits<double>::quiet_NaN();
  xh(5, 6) = -0.0;
  xh(6, 6) = -std::numeric_limits<double>::infinity();
  set(c, x.h.view(), xh);
  set(g, x.d.view(), xh);
  ops<cpu>::soft_threshold(c, 0.25, as_const(x.on_cpu()), y.on_cpu());
  ops<cuda>::soft_threshold(g, 0.25, as_const(x.on_gpu()), y.on_gpu());
  ops<cpu>::soft_threshold(c, 0.5, as_const(x.on_cpu()), x.on_cpu());
  ops<cuda>::soft_threshold(g, 0.5, as_const(x.on_gpu()), x.on_gpu());
  for (twin* t : {&x, &y}) {
    const auto [got, want] = t->whole(g);
    EXPECT_EQ(std::memcmp(got.data(), want.data(), sizeof(double) * std::size_t(got.size())), 0);
  }
}

TEST_F(factors_cuda_vs_cpu, layer_forward_and_backward_are_the_cpus) {
  context<cpu> c(2);
  context<cuda> g;
  for (const factor_route route : {factor_route::factored, factor_route::dense}) {
    for (const support_storage storage : {support_storage::indices, support_storage::seed}) {
      auto o = small_options(0.05);
      o.rank = 8;
      o.alpha = 16;
      o.route = route;
      o.storage = storage;
      sparse_plus_low_rank<double, cpu> lc(c, 40, 90, o);
      sparse_plus_low_rank<double, cuda> lg(g, 40, 90, o);
      ASSERT_EQ(lg.nnz(), lc.nnz());
      // The same Philox streams: the same initial A, values and bias.
      EXPECT_TRUE(host(g, as_const(lg.a())) == host(c, as_const(lc.a())));
      EXPECT_TRUE(host(g, as_const(lg.values().as_matrix())) ==
                  host(c, as_const(lc.values().as_matrix())));
      const matd bh = matd::Random(40, 8);
      set(c, lc.b(), bh);
      set(g, lg.b(), bh);
      const matd x = matd::Random(70, 90);
      const matd gy = matd::Random(70, 40);
      const auto xc = upload<double>(c, x);
      const auto xg = upload<double>(g, x);
      const auto gc = upload<double>(c, gy);
      const auto gg = upload<double>(g, gy);
      matrix<double, cpu> yc(c, 70, 40), dxc(c, 70, 90), wc(c, 40, 90);
      matrix<double, cuda> yg(g, 70, 40), dxg(g, 70, 90), wg(g, 40, 90);
      for (int step = 0; step < 2; ++step) {  // gradients accumulate
        lc.forward(c, xc.view(), yc.view());
        lg.forward(g, xg.view(), yg.view());
        lc.backward(c, gc.view(), dxc.view());
        lg.backward(g, gg.view(), dxg.view());
      }
      const std::string what = std::string(route == factor_route::dense ? "dense" : "factored") +
                               (storage == support_storage::seed ? ", seed" : ", indices");
      const double tol = 1e-12;
      EXPECT_LT(relative_difference(host(g, as_const(yg.view())), host(c, as_const(yc.view()))),
                tol)
          << "y, " << what;
      EXPECT_LT(relative_difference(host(g, as_const(dxg.view())), host(c, as_const(dxc.view()))),
                tol)
          << "dx, " << what;
      auto pc = lc.parameters();
      auto pg = lg.parameters();
      ASSERT_EQ(pg.size(), pc.size());
      for (std::size_t i = 0; i < pc.size(); ++i) {
        EXPECT_LT(relative_difference(host(g, as_const(pg[i].grad)), host(c, as_const(pc[i].grad))),
                  tol)
            << pc[i].name << ", " << what;
      }
      lc.dense_weight(c, wc.view());
      lg.dense_weight(g, wg.view());
      EXPECT_LT(relative_difference(host(g, as_const(wg.view())), host(c, as_const(wc.view()))),
                tol)
          << "dense_weight, " << what;
    }
  }
}
#endif  // defined(__CUDACC__)

}  // namespace
}  // namespace lowrank::test::sparse_plus_low_rank_tests
