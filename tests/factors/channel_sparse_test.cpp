// The LOST-form channel-sparse factor W = s B A + V P^T: its random channels
// (sorted, distinct, seeded, uniform), finite-difference gradients in
// double, forward, backward and merge against host references, LOST's
// initialisation from a weight (exact recovery of a low-rank plus
// channel-block weight, the Eckart-Young bound and the channels against a
// host SVD on a generic weight), from_tensors and bad input. Typed over the
// backends (the file builds as CUDA too: backend memory is read through
// download only).
#include <gtest/gtest.h>

#include <Eigen/Core>
#include <Eigen/QR>
#include <Eigen/SVD>
#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "lowrank/factors/channel_sparse.hpp"
#include "support/backends.hpp"
#include "support/factors.hpp"

namespace lowrank::test::channel_sparse_tests {
namespace {

using matd = Eigen::MatrixXd;
using vecd = Eigen::VectorXd;

template <class Config>
class channel_sparse_test : public backend_test<Config> {};
TYPED_TEST_SUITE(channel_sparse_test, test_configs, config_names);

channel_sparse_options small_options() {
  channel_sparse_options o;
  o.rank = 3;
  o.alpha = 6;
  o.channels = 4;
  o.seed = 11;
  o.layer = 2;
  return o;
}

/// P, the in x k selection of the channels: P(c_i, i) = 1.
matd selection(const std::vector<index_t>& channels, index_t in) {
  matd p = matd::Zero(in, index_t(channels.size()));
  for (std::size_t i = 0; i < channels.size(); ++i) p(channels[i], index_t(i)) = 1;
  return p;
}

/// s B A + V P^T on the host, from the layer's tensors.
template <class T, class B>
matd host_weight(context<B>& ctx, const channel_sparse_low_rank<T, B>& layer) {
  return layer.scaling() * host(ctx, layer.b()) * host(ctx, layer.a()) +
         host(ctx, layer.values()) * selection(layer.channels(), layer.in_features()).transpose();
}

/// Strictly increasing, in [0, in), k of them.
void expect_valid_channels(const std::vector<index_t>& c, index_t in, index_t k) {
  ASSERT_EQ(index_t(c.size()), k);
  for (std::size_t i = 0; i < c.size(); ++i) {
    EXPECT_GE(c[i], 0);
    EXPECT_LT(c[i], in);
    if (i > 0) {
      EXPECT_LT(c[i - 1], c[i]) << "sorted and distinct";
    }
  }
}

/// An m x n matrix with orthonormal columns.
matd orthonormal(index_t m, index_t n) {
  const matd q = Eigen::HouseholderQR<matd>(matd::Random(m, n)).householderQ();
  return q.leftCols(n);
}

TYPED_TEST(channel_sparse_test, random_channels_are_sorted_distinct_seeded_and_uniform) {
  using B = typename TypeParam::backend;
  using T = typename TypeParam::scalar;
  auto ctx = make_context<B>(2);
  auto o = small_options();
  o.channels = 20;
  channel_sparse_low_rank<T, B> layer(ctx, 30, 200, o);
  expect_valid_channels(layer.channels(), 200, 20);
  // The family's generator: the column indices of a 1 x in random support.
  const auto drawn = sparse_support<B>::random(
      ctx, 1, 200, 20, factor_stream(o.seed, o.layer, factor_stream_kind::support));
  const auto columns = drawn.col_indices(ctx);
  EXPECT_EQ(layer.channels(), std::vector<index_t>(columns.begin(), columns.end()));
  // The same seed and layer, another thread count: the same layer.
  auto ctx1 = make_context<B>(1);
  channel_sparse_low_rank<T, B> again(ctx1, 30, 200, o);
  EXPECT_EQ(again.channels(), layer.channels());
  EXPECT_TRUE(host(ctx1, as_const(again.a())) == host(ctx, as_const(layer.a())));
  EXPECT_TRUE(host(ctx1, as_const(again.values())) == host(ctx, as_const(layer.values())));
  // Initialisation: B = 0, |A|, |V| <= 1/sqrt(in), |bias| <= 1/sqrt(out), zero gradients.
  EXPECT_EQ(host(ctx, as_const(layer.b())).norm(), 0.0);
  EXPECT_LE(host(ctx, as_const(layer.a())).cwiseAbs().maxCoeff(), 1 / std::sqrt(200.0));
  EXPECT_LE(host(ctx, as_const(layer.values())).cwiseAbs().maxCoeff(), 1 / std::sqrt(200.0));
  EXPECT_GT(host(ctx, as_const(layer.values())).cwiseAbs().maxCoeff(), 0.5 / std::sqrt(200.0));
  EXPECT_LE(host(ctx, as_const(layer.bias()).as_matrix()).cwiseAbs().maxCoeff(),
            1 / std::sqrt(30.0));
  for (auto& p : layer.parameters()) EXPECT_EQ(host(ctx, as_const(p.grad)).norm(), 0.0) << p.name;
  // Another layer index: other channels.
  o.layer = 3;
  const channel_sparse_low_rank<T, B> other(ctx, 30, 200, o);
  EXPECT_NE(other.channels(), layer.channels());
  // Uniform: over 400 layers keeping 10 of 50 channels, each channel is kept
  // 80 times on average (variance about 64), so chi^2 / dof = sum (n_c -
  // 80)^2 / 80 / 49 stays near 0.8 (standard deviation about 0.16).
  o.channels = 10;
  o.rank = 1;
  o.bias = false;
  std::vector<double> counts(50, 0);
  for (std::uint64_t l = 0; l < 400; ++l) {
    o.layer = l;
    const channel_sparse_low_rank<T, B> one(ctx, 1, 50, o);
    for (const index_t c : one.channels()) counts[std::size_t(c)] += 1;
  }
  double chi = 0;
  for (const double n : counts) chi += (n - 80) * (n - 80) / 80;
  EXPECT_LT(chi / 49, 1.6);
  EXPECT_GT(chi / 49, 0.2);
}

TYPED_TEST(channel_sparse_test, gradients_match_finite_differences) {
  using B = typename TypeParam::backend;
  if constexpr (std::is_same_v<typename TypeParam::scalar, double>) {
    auto ctx = make_context<B>(2);
    channel_sparse_low_rank<double, B> layer(ctx, 7, 9, small_options());
    ASSERT_EQ(layer.parameters().size(), 4u);
    check_gradients(ctx, layer, 70);
    // Every input channel in the sparse part, no bias, more rows than columns.
    auto o = small_options();
    o.rank = 2;
    o.channels = 4;
    o.bias = false;
    channel_sparse_low_rank<double, B> all(ctx, 6, 4, o);
    EXPECT_EQ(all.channels(), (std::vector<index_t>{0, 1, 2, 3}));
    ASSERT_EQ(all.parameters().size(), 3u);
    check_gradients(ctx, all, 5);
    // One channel, rank 1, one row.
    o.rank = 1;
    o.channels = 1;
    o.bias = true;
    channel_sparse_low_rank<double, B> one(ctx, 5, 8, o);
    check_gradients(ctx, one, 1);
  }
}

TYPED_TEST(channel_sparse_test, forward_backward_and_merge_match_host_references) {
  using B = typename TypeParam::backend;
  using T = typename TypeParam::scalar;
  auto ctx = make_context<B>(2);
  auto o = small_options();
  o.rank = 8;
  o.alpha = 16;
  o.channels = 12;
  const index_t out = 40, in = 90, n = 33, r = 8, k = 12;
  channel_sparse_low_rank<T, B> layer(ctx, out, in, o);
  set(ctx, layer.b(), matd::Random(out, r));
  EXPECT_EQ(layer.scaling(), 2.0);
  const matd a = host(ctx, as_const(layer.a()));
  const matd bm = host(ctx, as_const(layer.b()));
  const matd v = host(ctx, as_const(layer.values()));
  const matd bias = host(ctx, as_const(layer.bias()).as_matrix());
  const matd p = selection(layer.channels(), in);
  const matd w_want = 2.0 * bm * a + v * p.transpose();
  // dense_weight = s B A + V P^T.
  matrix<T, B> w(ctx, out, in);
  layer.dense_weight(ctx, w.view());
  EXPECT_LT((host(ctx, as_const(w.view())) - w_want).norm(), 20 * eps<T> * w_want.norm());
  // Y = X W^T + b; the backward's gradients, twice (they accumulate).
  const matd x = matd::Random(n, in);
  const matd g = matd::Random(n, out);
  auto xb = upload<T>(ctx, x);
  auto gb = upload<T>(ctx, g);
  matrix<T, B> y(ctx, n, out), dx(ctx, n, in);
  for (int step = 1; step <= 2; ++step) {
    layer.forward(ctx, xb.view(), y.view());
    layer.backward(ctx, gb.view(), dx.view());
    EXPECT_EQ(layer.workspace_bytes(), sizeof(T) * std::size_t(n * (r + k)));
    const matd y_want = (x * w_want.transpose()).rowwise() + bias.col(0).transpose();
    const double tol = 200 * eps<T>;
    EXPECT_LT((host(ctx, as_const(y.view())) - y_want).norm(), tol * y_want.norm()) << step;
    const matd dx_want = g * w_want;
    EXPECT_LT((host(ctx, as_const(dx.view())) - dx_want).norm(), tol * dx_want.norm()) << step;
    const double st = step;
    const std::vector<matd> want{st * 2.0 * (g * bm).transpose() * x,
                                 st * 2.0 * g.transpose() * (x * a.transpose()),
                                 st * g.transpose() * x * p, st * g.colwise().sum().transpose()};
    auto params = layer.parameters();
    ASSERT_EQ(params.size(), 4u);
    for (std::size_t i = 0; i < params.size(); ++i) {
      const matd got = host(ctx, as_const(params[i].grad));
      EXPECT_LT((got - want[i]).norm(), tol * want[i].norm()) << params[i].name << " " << step;
    }
  }
  // Names, shapes and counts.
  auto params = layer.parameters();
  const std::vector<std::string> names{"lora_A", "lora_B", "sparse_value", "bias"};
  const std::vector<std::pair<index_t, index_t>> shapes{{r, in}, {out, r}, {out, k}, {out, 1}};
  for (std::size_t i = 0; i < params.size(); ++i) {
    EXPECT_EQ(params[i].name, names[i]);
    EXPECT_EQ(params[i].value.rows(), shapes[i].first) << names[i];
    EXPECT_EQ(params[i].value.cols(), shapes[i].second) << names[i];
    EXPECT_EQ(params[i].grad.rows(), shapes[i].first) << names[i];
    EXPECT_EQ(params[i].grad.cols(), shapes[i].second) << names[i];
  }
  EXPECT_EQ(layer.parameter_count(), r * (in + out) + out * k + out);
  EXPECT_EQ(layer.persistent_bytes(), 2 * sizeof(T) * std::size_t(layer.parameter_count()) +
                                          sizeof(index_t) * std::size_t(k));
  layer.zero_grad(ctx);
  for (auto& q : layer.parameters()) EXPECT_EQ(host(ctx, as_const(q.grad)).norm(), 0.0) << q.name;
  // host_weight agrees with the hand-built reference.
  EXPECT_LT((host_weight(ctx, layer) - w_want).norm(), 20 * eps<T> * w_want.norm());
}

/// The tolerance of from_weight's reconstructions, relative to ||W||_F.
template <class T>
constexpr double svd_tolerance = std::is_same_v<T, double> ? 1e-10 : 2e-4;

TYPED_TEST(channel_sparse_test, from_weight_recovers_low_rank_plus_channel_block) {
  using B = typename TypeParam::backend;
  using T = typename TypeParam::scalar;
  auto ctx = make_context<B>(2);
  // W = L0 + M P^T with L0 = U0 diag(10, ..., 6) V0^T, V0 zero on the
  // channels and M orthogonal to U0: an orthogonal sum, so that W's top 5
  // triplets are L0's and the next 4 are M P^T's (singular values 3 to 1.5).
  const index_t out = 30, in = 40, r = 5, k = 4;
  const std::vector<index_t> channels{3, 17, 18, 33};
  const matd q = orthonormal(out, r + k);
  const matd u0 = q.leftCols(r);
  const matd v_rest = orthonormal(in - k, r);
  matd v0 = matd::Zero(in, r);
  for (index_t row = 0, j = 0; row < in; ++row) {
    if (std::find(channels.begin(), channels.end(), row) == channels.end()) {
      v0.row(row) = v_rest.row(j++);
    }
  }
  const vecd s0 = (vecd(r) << 10, 9, 8, 7, 6).finished();
  const matd l0 = u0 * s0.asDiagonal() * v0.transpose();
  const vecd sm = (vecd(k) << 3, 2.5, 2, 1.5).finished();
  const matd m = q.rightCols(k) * sm.asDiagonal() * orthonormal(k, k);
  const matd p = selection(channels, in);
  const matd w = l0 + m * p.transpose();
  const auto wb = upload<T>(ctx, w);
  auto o = small_options();
  o.rank = r;
  o.alpha = 10;
  o.channels = k;
  auto layer = channel_sparse_low_rank<T, B>::from_weight(ctx, as_const(wb.view()), o);
  EXPECT_EQ(layer.channels(), channels);
  const double tol = svd_tolerance<T> * w.norm();
  matrix<T, B> wf(ctx, out, in);
  layer.dense_weight(ctx, wf.view());
  EXPECT_LT((host(ctx, as_const(wf.view())) - w).norm(), tol);
  // s B A = L0, V = M, split evenly: B^T B = A A^T = diag(S_r / s).
  const matd a = host(ctx, as_const(layer.a()));
  const matd bm = host(ctx, as_const(layer.b()));
  EXPECT_LT((layer.scaling() * bm * a - l0).norm(), tol);
  EXPECT_LT((host(ctx, as_const(layer.values())) - m).norm(), tol);
  const matd d = (s0 / layer.scaling()).asDiagonal();
  EXPECT_LT((bm.transpose() * bm - d).norm(), svd_tolerance<T> * d.norm());
  EXPECT_LT((a * a.transpose() - d).norm(), svd_tolerance<T> * d.norm());
  // A zero bias (options.bias), zero gradients.
  ASSERT_EQ(layer.bias().size(), out);
  EXPECT_EQ(host(ctx, as_const(layer.bias()).as_matrix()).norm(), 0.0);
  for (auto& param : layer.parameters()) {
    EXPECT_EQ(host(ctx, as_const(param.grad)).norm(), 0.0) << param.name;
  }
  // Without a bias; and r = min(out, in): no spectrum left, so the channels
  // are the first k, V = 0 and s B A = W.
  o.bias = false;
  o.rank = 6;
  o.channels = 3;
  const matd small = matd::Random(6, 8);
  const auto sb = upload<T>(ctx, small);
  auto full = channel_sparse_low_rank<T, B>::from_weight(ctx, as_const(sb.view()), o);
  EXPECT_TRUE(full.bias().empty());
  EXPECT_EQ(full.parameters().size(), 3u);
  EXPECT_EQ(full.channels(), (std::vector<index_t>{0, 1, 2}));
  EXPECT_LT(host(ctx, as_const(full.values())).norm(), svd_tolerance<T> * small.norm());
  matrix<T, B> ws(ctx, 6, 8);
  full.dense_weight(ctx, ws.view());
  EXPECT_LT((host(ctx, as_const(ws.view())) - small).norm(), svd_tolerance<T> * small.norm());
}

TYPED_TEST(channel_sparse_test, from_weight_is_best_given_its_channels_on_a_generic_weight) {
  using B = typename TypeParam::backend;
  using T = typename TypeParam::scalar;
  auto ctx = make_context<B>(2);
  for (const auto& [out, in, r, k] : std::vector<std::array<index_t, 4>>{
           {30, 40, 5, 6}, {50, 20, 4, 7}, {12, 12, 3, 12}, {16, 9, 7, 2}}) {
    const std::string what = std::to_string(out) + " x " + std::to_string(in) + ", r " +
                             std::to_string(r) + ", k " + std::to_string(k);
    const matd w = matd::Random(out, in);
    const auto wb = upload<T>(ctx, w);
    auto o = small_options();
    o.rank = r;
    o.alpha = 2.5 * double(r);
    o.channels = k;
    auto layer = channel_sparse_low_rank<T, B>::from_weight(ctx, as_const(wb.view()), o);
    expect_valid_channels(layer.channels(), in, k);
    // The host reference: scores from the next k' = min(r, min(out, in) - r) triplets.
    const Eigen::JacobiSVD<matd> svd(w, Eigen::ComputeThinU | Eigen::ComputeThinV);
    const vecd& s = svd.singularValues();
    const index_t next = std::min(r, std::min(out, in) - r);
    vecd score = vecd::Zero(in);
    for (index_t c = 0; c < in; ++c) {
      for (index_t j = r; j < r + next; ++j) {
        score(c) += s(j) * s(j) * svd.matrixV()(c, j) * svd.matrixV()(c, j);
      }
      score(c) = std::sqrt(score(c));
    }
    std::vector<index_t> order(static_cast<std::size_t>(in));
    std::iota(order.begin(), order.end(), index_t{0});
    std::stable_sort(order.begin(), order.end(),
                     [&](index_t x, index_t y) { return score(x) > score(y); });
    // The chosen channels' scores dominate the others' (up to rounding); the
    // host's top k exactly where the k-th and (k+1)-th scores are apart.
    const double score_tol = svd_tolerance<T> * s(0);
    const std::vector<index_t>& chosen = layer.channels();
    for (index_t c = 0; c < in; ++c) {
      if (std::binary_search(chosen.begin(), chosen.end(), c)) continue;
      for (const index_t kept : chosen) {
        EXPECT_GE(score(kept), score(c) - score_tol) << what << ": " << kept << " over " << c;
      }
    }
    if (k == in || score(order[std::size_t(k - 1)]) - score(order[std::size_t(k)]) > score_tol) {
      std::vector<index_t> top(order.begin(), order.begin() + k);
      std::sort(top.begin(), top.end());
      EXPECT_EQ(chosen, top) << what;
    }
    // s B A = the rank-r truncation; V = the residual's columns; the error is
    // the residual's without those columns, at most the truncation error.
    const matd lr =
        svd.matrixU().leftCols(r) * s.head(r).asDiagonal() * svd.matrixV().leftCols(r).transpose();
    const matd residual = w - lr;
    const double tol = svd_tolerance<T> * w.norm();
    const matd a = host(ctx, as_const(layer.a()));
    const matd bm = host(ctx, as_const(layer.b()));
    EXPECT_LT((layer.scaling() * bm * a - lr).norm(), tol) << what;
    const matd p = selection(chosen, in);
    EXPECT_LT((host(ctx, as_const(layer.values())) - residual * p).norm(), tol) << what;
    matrix<T, B> wf(ctx, out, in);
    layer.dense_weight(ctx, wf.view());
    const double error = (host(ctx, as_const(wf.view())) - w).norm();
    const double truncation = s.tail(s.size() - r).norm();
    EXPECT_LE(error, truncation + tol) << what;
    const double kept = (residual * p).squaredNorm();
    EXPECT_NEAR(error * error, truncation * truncation - kept, 10 * tol * w.norm()) << what;
    if (k == in) {
      EXPECT_LT(error, tol) << what;
    } else {
      EXPECT_LT(error, truncation) << what;
    }
  }
}

TYPED_TEST(channel_sparse_test, from_tensors_round_trips) {
  using B = typename TypeParam::backend;
  using T = typename TypeParam::scalar;
  auto ctx = make_context<B>(2);
  channel_sparse_low_rank<T, B> layer(ctx, 7, 9, small_options());
  set(ctx, layer.b(), matd::Random(7, 3));
  channel_sparse_options o;  // rank, channels and bias come from the tensors
  o.alpha = 6;
  auto copy = channel_sparse_low_rank<T, B>::from_tensors(
      ctx, as_const(layer.a()), as_const(layer.b()), as_const(layer.values()), layer.channels(),
      as_const(layer.bias()), o);
  EXPECT_EQ(copy.rank(), 3);
  EXPECT_EQ(copy.channel_count(), 4);
  EXPECT_EQ(copy.channels(), layer.channels());
  EXPECT_EQ(copy.parameter_count(), layer.parameter_count());
  const auto xb = upload<T>(ctx, matd::Random(5, 9));
  matrix<T, B> y1(ctx, 5, 7), y2(ctx, 5, 7);
  layer.forward(ctx, xb.view(), y1.view());
  copy.forward(ctx, xb.view(), y2.view());
  EXPECT_TRUE(host(ctx, as_const(y1.view())) == host(ctx, as_const(y2.view())));
  // Without a bias: none, and the output differs by it.
  auto unbiased = channel_sparse_low_rank<T, B>::from_tensors(
      ctx, as_const(layer.a()), as_const(layer.b()), as_const(layer.values()), layer.channels(),
      vector_view<const T, B>(), o);
  EXPECT_TRUE(unbiased.bias().empty());
  EXPECT_EQ(unbiased.parameters().size(), 3u);
  unbiased.forward(ctx, xb.view(), y2.view());
  const matd diff = host(ctx, as_const(y1.view())) - host(ctx, as_const(y2.view()));
  const matd bias = host(ctx, as_const(layer.bias()).as_matrix());
  for (index_t i = 0; i < 5; ++i) {
    EXPECT_LT((diff.row(i).transpose() - bias).norm(), 10 * eps<T> * (1 + bias.norm()));
  }
}

TYPED_TEST(channel_sparse_test, rejects_bad_input_and_leaves_the_layer_as_it_was) {
  using B = typename TypeParam::backend;
  using T = typename TypeParam::scalar;
  using layer_t = channel_sparse_low_rank<T, B>;
  auto ctx = make_context<B>(2);
  auto with = [](auto f) {
    auto o = small_options();
    f(o);
    return o;
  };
  // Options and shapes.
  EXPECT_THROW(layer_t(ctx, 0, 9, small_options()), invalid_argument);
  EXPECT_THROW(layer_t(ctx, 7, 0, small_options()), invalid_argument);
  EXPECT_THROW(layer_t(ctx, 7, 9, with([](auto& o) { o.rank = 0; })), invalid_argument);
  EXPECT_THROW(layer_t(ctx, 7, 9, with([](auto& o) { o.rank = 8; })), invalid_argument);
  EXPECT_THROW(layer_t(ctx, 7, 9, with([](auto& o) { o.channels = 0; })), invalid_argument);
  EXPECT_THROW(layer_t(ctx, 7, 9, with([](auto& o) { o.channels = 10; })), invalid_argument);
  EXPECT_NO_THROW(layer_t(ctx, 7, 9, with([](auto& o) { o.channels = 9; })));
  for (const double alpha : {0.0, -1.0, std::numeric_limits<double>::quiet_NaN(),
                             std::numeric_limits<double>::infinity()}) {
    EXPECT_THROW(layer_t(ctx, 7, 9, with([&](auto& o) { o.alpha = alpha; })), invalid_argument)
        << alpha;
  }
  EXPECT_THROW(layer_t(ctx, 7, 9, with([](auto& o) { o.layer = max_stream_layers; })),
               invalid_argument);
  try {
    layer_t(ctx, 7, 9, with([](auto& o) { o.channels = 10; }));
    FAIL();
  } catch (const invalid_argument& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("lowrank::channel_sparse_low_rank"), std::string::npos) << what;
    EXPECT_NE(what.find("options.channels"), std::string::npos) << what;
    EXPECT_NE(what.find("[1, 9]"), std::string::npos) << what;
  }
  // from_weight: an empty or non-finite W, options that do not fit it.
  matd wh = matd::Random(7, 9);
  const auto wgood = upload<T>(ctx, wh);
  EXPECT_NO_THROW((void)layer_t::from_weight(ctx, as_const(wgood.view()), small_options()));
  EXPECT_THROW((void)layer_t::from_weight(ctx, matrix_view<const T, B>(), small_options()),
               invalid_argument);
  EXPECT_THROW(
      (void)layer_t::from_weight(ctx, as_const(wgood.view()), with([](auto& o) { o.rank = 8; })),
      invalid_argument);
  EXPECT_THROW((void)layer_t::from_weight(ctx, as_const(wgood.view()),
                                          with([](auto& o) { o.channels = 10; })),
               invalid_argument);
  wh(2, 3) = std::numeric_limits<double>::quiet_NaN();
  const auto wbad = upload<T>(ctx, wh);
  EXPECT_THROW((void)layer_t::from_weight(ctx, as_const(wbad.view()), small_options()),
               numerical_error);
  // from_tensors: channels unsorted, repeated or out of range; shapes; non-finite tensors.
  const auto a = upload<T>(ctx, matd::Random(3, 9));
  const auto bm = upload<T>(ctx, matd::Random(7, 3));
  const auto bias = upload<T>(ctx, matd::Random(7, 1));
  auto tensors = [&](const matd& values, const std::vector<index_t>& channels,
                     index_t bias_size = 7) {
    const auto vb = upload<T>(ctx, values);
    return layer_t::from_tensors(ctx, as_const(a.view()), as_const(bm.view()), as_const(vb.view()),
                                 channels, vector_view<const T, B>(bias.view().data(), bias_size),
                                 small_options());
  };
  const matd v4 = matd::Random(7, 4);
  const std::vector<index_t> good{0, 2, 5, 8};
  EXPECT_NO_THROW((void)tensors(v4, good));
  for (const auto& bad :
       std::vector<std::vector<index_t>>{{0, 5, 2, 8}, {0, 2, 2, 8}, {-1, 2, 5, 8}, {0, 2, 5, 9}}) {
    try {
      (void)tensors(v4, bad);
      ADD_FAILURE() << "no throw";
    } catch (const invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("channels"), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW((void)tensors(matd::Random(7, 3), good), invalid_argument);
  EXPECT_THROW((void)tensors(matd::Random(6, 4), good), invalid_argument);
  EXPECT_THROW((void)tensors(v4, good, 6), invalid_argument);
  EXPECT_THROW((void)tensors(v4, {}), invalid_argument);
  matd vnan = v4;
  vnan(1, 2) = std::numeric_limits<double>::infinity();
  EXPECT_THROW((void)tensors(vnan, good), numerical_error);
  // Forward, backward, merge: the layer stays as it was, a pending forward included.
  layer_t layer(ctx, 7, 9, small_options());
  set(ctx, layer.b(), matd::Random(7, 3));
  auto snapshot = [&]() {
    std::vector<matd> s;
    for (auto& p : layer.parameters()) {
      s.push_back(host(ctx, as_const(p.value)));
      s.push_back(host(ctx, as_const(p.grad)));
    }
    return s;
  };
  const auto before = snapshot();
  const auto channels_before = layer.channels();
  matrix<T, B> x8(ctx, 2, 8), x(ctx, 2, 9), y(ctx, 2, 7), y3(ctx, 3, 7), g(ctx, 2, 7),
      dx(ctx, 2, 9), dx8(ctx, 2, 8), w(ctx, 7, 8), both(ctx, 2, 9);
  ops<B>::fill(ctx, x.view(), T(1));
  ops<B>::fill(ctx, g.view(), T(1));
  EXPECT_THROW(layer.forward(ctx, x8.view(), y.view()), invalid_argument);
  EXPECT_THROW(layer.forward(ctx, x.view(), y3.view()), invalid_argument);
  EXPECT_THROW(layer.forward(ctx, both.view(), both.view().left_cols(7)), invalid_argument);
  EXPECT_THROW(layer.backward(ctx, g.view(), dx.view()), invalid_argument);
  EXPECT_THROW(layer.dense_weight(ctx, w.view()), invalid_argument);
  EXPECT_TRUE(snapshot() == before);
  EXPECT_EQ(layer.channels(), channels_before);
  layer.forward(ctx, x.view(), y.view());
  const matd y_good = host(ctx, as_const(y.view()));
  EXPECT_THROW(layer.forward(ctx, x8.view(), y.view()), invalid_argument);
  EXPECT_THROW(layer.backward(ctx, y3.view(), dx.view()), invalid_argument);
  EXPECT_THROW(layer.backward(ctx, g.view(), dx8.view()), invalid_argument);
  EXPECT_THROW(layer.backward(ctx, as_const(both.view().left_cols(7)), both.view()),
               invalid_argument);
  EXPECT_TRUE(snapshot() == before);
  EXPECT_TRUE(host(ctx, as_const(y.view())) == y_good);
  // The forward is still pending: the backward runs once, then needs another forward.
  EXPECT_NO_THROW(layer.backward(ctx, g.view(), dx.view()));
  EXPECT_THROW(layer.backward(ctx, g.view(), dx.view()), invalid_argument);
}

}  // namespace
}  // namespace lowrank::test::channel_sparse_tests
