// Multi-adapter LoRA (SGMV-style grouped GEMMs) and the shared-A form: mixed
// batches against per-row plain LoRA, base rows, unused adapters,
// finite-difference gradients in double, workspaces, and bad input.
#include <gtest/gtest.h>

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "lowrank/adapters/lora.hpp"
#include "lowrank/adapters/multi_lora.hpp"
#include "lowrank/backend/cpu/ops.hpp"
#include "support/adapters.hpp"
#include "support/backends.hpp"

namespace lowrank::test::multi_lora_tests {
namespace {

using matd = Eigen::MatrixXd;

/// A frozen layer (out x in, with bias), a batch and K adapters of different
/// ranks. Adapter 3 has no row in `ids`; rows 1, 6 and 11 are base only.
struct problem {
  static constexpr index_t out = 9, in = 11, n = 12;
  matd w = random_matrix<double>(out, in, 1);
  Eigen::VectorXd bias = random_matrix<double>(out, 1, 2);
  matd x = random_matrix<double>(n, in, 3);
  std::vector<index_t> ranks{2, 3, 4, 1};
  // Exact products s * r and quotients (s r) / r, so that a plain LoRA with
  // alpha = s r has scaling s exactly.
  std::vector<double> scalings{0.5, 2.0, 1.25, 3.0};
  std::vector<matd> a, b;
  std::vector<std::int32_t> ids{1, -1, 0, 2, 1, 0, -1, 2, 2, 0, 1, -1};

  problem() {
    for (std::size_t k = 0; k < ranks.size(); ++k) {
      a.push_back(random_matrix<double>(ranks[k], in, 10 + unsigned(k)));
      b.push_back(random_matrix<double>(out, ranks[k], 20 + unsigned(k)));
    }
  }
  [[nodiscard]] vector_view<double, cpu> bias_view() { return {bias.data(), out}; }
  /// Y = X W^T + b by the same backend call multi_lora makes (bit for bit).
  [[nodiscard]] matd base(context<cpu>& ctx) const {
    matd y(n, out);
    ops<cpu>::gemm(ctx, transpose::no, transpose::yes, 1.0, view(x), view(w), 0.0, view(y));
    ops<cpu>::add_row_vector(ctx, 1.0, vector_view<const double, cpu>(bias.data(), out), view(y));
    return y;
  }
};

/// A multi_lora holding every adapter of the problem (adapter 1 through a
/// plain LoRA object, the others from their factors).
multi_lora<double, cpu> make_layer(context<cpu>& ctx, problem& p) {
  multi_lora<double, cpu> layer(ctx, view(std::as_const(p.w)), p.bias_view());
  for (std::size_t k = 0; k < p.ranks.size(); ++k) {
    if (k == 1) {
      const auto plain = lora<double, cpu>::from_factors(
          ctx, view(p.w), p.bias_view(), view(std::as_const(p.a[k])), view(std::as_const(p.b[k])),
          {.alpha = p.scalings[k] * double(p.ranks[k])});
      EXPECT_EQ(layer.add_adapter(ctx, plain), std::int32_t(k));
    } else {
      EXPECT_EQ(layer.add_adapter(ctx, view(std::as_const(p.a[k])), view(std::as_const(p.b[k])),
                                  p.scalings[k]),
                std::int32_t(k));
    }
  }
  return layer;
}

// --- multi_lora ----------------------------------------------------------------

// Both sides sum the same O(1) products in different orders (one grouped GEMM
// against one row at a time): they agree to a few ulps of |Y| ~ 10, far below
// the 1e-12 the issue asks.
TEST(multi_lora, mixed_batch_matches_per_row_plain_lora) {
  context<cpu> ctx(2);
  problem p;
  auto layer = make_layer(ctx, p);
  ASSERT_EQ(layer.adapters(), 4);
  matd y(p.n, p.out);
  layer.forward(ctx, view(std::as_const(p.x)), p.ids, view(y));
  const matd base = p.base(ctx);
  for (index_t i = 0; i < p.n; ++i) {
    const std::int32_t id = p.ids[std::size_t(i)];
    if (id < 0) {
      // The base only, bit for bit.
      EXPECT_EQ(y.row(i), base.row(i)) << "row " << i;
      continue;
    }
    const auto k = std::size_t(id);
    auto plain = lora<double, cpu>::from_factors(
        ctx, view(p.w), p.bias_view(), view(std::as_const(p.a[k])), view(std::as_const(p.b[k])),
        {.alpha = p.scalings[k] * double(p.ranks[k])});
    const matd xi = p.x.row(i);
    matd yi(1, p.out);
    plain.forward(ctx, view(xi), view(yi));
    EXPECT_LT((y.row(i) - yi).cwiseAbs().maxCoeff(), 1e-12) << "row " << i << ", adapter " << id;
  }
}

TEST(multi_lora, ids_as_a_vector_view_and_all_base_rows) {
  context<cpu> ctx(1);
  problem p;
  auto layer = make_layer(ctx, p);
  matd y1(p.n, p.out), y2(p.n, p.out);
  layer.forward(ctx, view(std::as_const(p.x)), p.ids, view(y1));
  layer.forward(ctx, view(std::as_const(p.x)),
                vector_view<const std::int32_t, cpu>(p.ids.data(), p.n), view(y2));
  EXPECT_EQ(y1, y2);
  // Every row base only: the adapters add nothing.
  const std::vector<std::int32_t> none(std::size_t(p.n), -1);
  layer.forward(ctx, view(std::as_const(p.x)), none, view(y1));
  EXPECT_EQ(y1, p.base(ctx));
  // An empty batch.
  const matd x0(0, p.in);
  matd y0(0, p.out);
  layer.forward(ctx, view(x0), std::span<const std::int32_t>(), view(y0));
  layer.backward(ctx, view(std::as_const(y0)), matrix_view<double, cpu>());
}

// The loss <Y, G> is linear in Y and Y is bilinear in (A_a, B_a) and linear in
// X, so central differences in double are exact up to rounding: relative
// error ~ eps |L| / (h |grad|) ~ 1e-9, far below the 1e-6 the issue asks.
TEST(multi_lora, gradients_match_finite_differences_in_double) {
  context<cpu> ctx(2);
  problem p;
  p.scalings[2] = -1.25;  // any finite scaling
  auto layer = make_layer(ctx, p);
  const matd g = random_matrix<double>(p.n, p.out, 4);
  matd y(p.n, p.out);
  layer.forward(ctx, view(std::as_const(p.x)), p.ids, view(y));
  matd dx(p.n, p.in);
  layer.backward(ctx, view(g), view(dx));
  auto loss = [&] {
    layer.forward(ctx, view(std::as_const(p.x)), p.ids, view(y));
    return (y.array() * g.array()).sum();
  };
  for (index_t k = 0; k < 3; ++k) {
    const matd da = as_eigen(layer.grad_a(k));
    const matd db = as_eigen(layer.grad_b(k));
    auto a = as_eigen(layer.a(k));
    auto b = as_eigen(layer.b(k));
    EXPECT_LT(relative_error(da, numeric_gradient(a, loss)), 1e-6) << "adapter " << k;
    EXPECT_LT(relative_error(db, numeric_gradient(b, loss)), 1e-6) << "adapter " << k;
  }
  EXPECT_LT(relative_error(dx, numeric_gradient(p.x, loss)), 1e-6);
  // Adapter 3 has no rows: exactly zero gradients.
  EXPECT_TRUE(as_eigen(layer.grad_a(3)).isZero(0));
  EXPECT_TRUE(as_eigen(layer.grad_b(3)).isZero(0));
}

TEST(multi_lora, gradients_accumulate_and_dx_is_optional) {
  context<cpu> ctx(2);
  problem p;
  auto layer = make_layer(ctx, p);
  const matd g = random_matrix<double>(p.n, p.out, 4);
  matd y(p.n, p.out);
  matd dx(p.n, p.in);
  layer.forward(ctx, view(std::as_const(p.x)), p.ids, view(y));
  layer.backward(ctx, view(g), view(dx));
  const matd da = as_eigen(layer.grad_a(0));
  const matd db = as_eigen(layer.grad_b(2));
  EXPECT_GT(da.norm(), 0);
  // A second step without dX: the same gradients again (2x, exact in binary).
  layer.forward(ctx, view(std::as_const(p.x)), p.ids, view(y));
  layer.backward(ctx, view(g), matrix_view<double, cpu>());
  EXPECT_EQ(matd(as_eigen(layer.grad_a(0))), 2 * da);
  EXPECT_EQ(matd(as_eigen(layer.grad_b(2))), 2 * db);
  layer.zero_grad(ctx);
  for (auto& param : layer.parameters()) EXPECT_TRUE(as_eigen(param.grad).isZero(0));
  EXPECT_EQ(layer.parameters().size(), 8u);
  EXPECT_EQ(layer.parameters(1)[0].value.rows(), 3);
}

TEST(multi_lora, float_matches_a_double_reference) {
  context<cpu> ctx(2);
  problem p;
  using matf = Eigen::MatrixXf;
  const matf w = p.w.cast<float>();
  const Eigen::VectorXf bias = p.bias.cast<float>();
  const matf x = p.x.cast<float>();
  multi_lora<float, cpu> layer(ctx, view(w), vector_view<const float, cpu>(bias.data(), p.out));
  for (std::size_t k = 0; k < p.ranks.size(); ++k) {
    const matf a = p.a[k].cast<float>();
    const matf b = p.b[k].cast<float>();
    layer.add_adapter(ctx, view(a), view(b), p.scalings[k]);
  }
  matf y(p.n, p.out);
  layer.forward(ctx, view(x), p.ids, view(y));
  matd ref = (p.x * p.w.transpose()).rowwise() + p.bias.transpose();
  for (index_t i = 0; i < p.n; ++i) {
    const std::int32_t id = p.ids[std::size_t(i)];
    if (id < 0) continue;
    const auto k = std::size_t(id);
    ref.row(i) += p.scalings[k] * (p.x.row(i) * p.a[k].transpose()) * p.b[k].transpose();
  }
  // Float data (exact in float), float arithmetic: each entry sums ~in + r (in
  // + out) = 80 products of magnitude <= 1 (times s <= 3), so the error is
  // below 80 * 3 * eps_f ~ 3e-5 absolute.
  EXPECT_LT((y.cast<double>() - ref).cwiseAbs().maxCoeff(), 3e-5);
}

TEST(multi_lora, workspaces_do_not_grow_after_the_first_call_with_a_given_n) {
  context<cpu> ctx(1);
  problem p;
  auto layer = make_layer(ctx, p);
  matd y(p.n, p.out);
  matd dx(p.n, p.in);
  const matd g = random_matrix<double>(p.n, p.out, 4);
  layer.forward(ctx, view(std::as_const(p.x)), p.ids, view(y));
  layer.backward(ctx, view(g), view(dx));
  const std::size_t bytes = layer.workspace_bytes();
  EXPECT_GT(bytes, 0u);
  // Other groupings of the same N, then a smaller batch.
  const std::vector<std::vector<std::int32_t>> patterns{
      std::vector<std::int32_t>(std::size_t(p.n), 2),
      std::vector<std::int32_t>(std::size_t(p.n), -1),
      {3, 3, 3, 0, 0, 1, 1, 2, 2, 2, 3, 0}};
  for (const auto& ids : patterns) {
    layer.forward(ctx, view(std::as_const(p.x)), ids, view(y));
    layer.backward(ctx, view(g), view(dx));
    EXPECT_EQ(layer.workspace_bytes(), bytes);
  }
  const std::vector<std::int32_t> few{0, 1, 2};
  matd y3(3, p.out);
  layer.forward(ctx, view(std::as_const(p.x).topRows(3)), few, view(y3));
  EXPECT_EQ(layer.workspace_bytes(), bytes);
}

template <class F>
void expect_invalid(F&& f, const std::string& fragment) {
  try {
    f();
    ADD_FAILURE() << "no lowrank::invalid_argument (expected one mentioning '" << fragment << "')";
  } catch (const lowrank::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

TEST(multi_lora, rejects_bad_layers_and_adapters_and_stays_unchanged) {
  context<cpu> ctx(1);
  problem p;
  const vector_view<const double, cpu> no_bias;
  expect_invalid([&] { multi_lora<double, cpu>(ctx, matrix_view<const double, cpu>(), no_bias); },
                 "weight");
  expect_invalid(
      [&] {
        multi_lora<double, cpu>(ctx, view(std::as_const(p.w)),
                                vector_view<const double, cpu>(p.bias.data(), p.out - 1));
      },
      "bias.size()");
  matd bad_w = p.w;
  bad_w(2, 3) = std::numeric_limits<double>::quiet_NaN();
  EXPECT_THROW((multi_lora<double, cpu>(ctx, view(std::as_const(bad_w)), no_bias)),
               numerical_error);

  auto layer = make_layer(ctx, p);
  const matd a2 = random_matrix<double>(2, p.in, 7);
  const matd b2 = random_matrix<double>(p.out, 2, 8);
  auto add = [&](const matd& a, const matd& b, double s) {
    return layer.add_adapter(ctx, view(a), view(b), s);
  };
  expect_invalid([&] { add(matd(0, p.in), matd(p.out, 0), 1); }, "a.rows()");  // rank 0
  expect_invalid(
      [&] { add(random_matrix<double>(10, p.in, 9), random_matrix<double>(p.out, 10, 9), 1); },
      "a.rows()");  // rank > min(out, in) = 9
  expect_invalid([&] { add(random_matrix<double>(2, p.in + 1, 9), b2, 1); }, "'a'");
  expect_invalid([&] { add(a2, random_matrix<double>(p.out + 1, 2, 9), 1); }, "'b'");
  expect_invalid([&] { add(a2, random_matrix<double>(p.out, 3, 9), 1); }, "'b'");
  expect_invalid([&] { add(a2, b2, std::numeric_limits<double>::infinity()); }, "scaling");
  expect_invalid([&] { add(a2, b2, std::numeric_limits<double>::quiet_NaN()); }, "scaling");
  matd bad_a = a2;
  bad_a(1, 4) = std::numeric_limits<double>::infinity();
  EXPECT_THROW(add(bad_a, b2, 1), numerical_error);
  matd bad_b = b2;
  bad_b(0, 1) = std::numeric_limits<double>::quiet_NaN();
  EXPECT_THROW(add(a2, bad_b, 1), numerical_error);
  matd w_small = p.w.leftCols(p.in - 1);
  const auto other = lora<double, cpu>::from_factors(ctx, view(w_small), vector_view<double, cpu>(),
                                                     view(a2.leftCols(p.in - 1)), view(b2), {});
  expect_invalid([&] { layer.add_adapter(ctx, other); }, "adapter");
  EXPECT_EQ(layer.adapters(), 4);

  // Ids of adapters that do not exist.
  expect_invalid([&] { (void)layer.a(4); }, "'id'");
  expect_invalid([&] { (void)layer.b(-1); }, "'id'");
  expect_invalid([&] { (void)layer.grad_a(4); }, "'id'");
  expect_invalid([&] { (void)layer.grad_b(4); }, "'id'");
  expect_invalid([&] { (void)layer.rank(4); }, "'id'");
  expect_invalid([&] { (void)layer.scaling(4); }, "'id'");
  expect_invalid([&] { (void)layer.parameters(4); }, "'id'");
}

TEST(multi_lora, rejects_bad_batches_and_leaves_outputs_unchanged) {
  context<cpu> ctx(1);
  problem p;
  auto layer = make_layer(ctx, p);
  const matd sentinel = matd::Constant(p.n, p.out, 7.0);
  matd y = sentinel;
  const auto x = view(std::as_const(p.x));
  auto ids = p.ids;
  ids[3] = 4;  // K = 4 adapters
  expect_invalid([&] { layer.forward(ctx, x, ids, view(y)); }, "ids[3]");
  ids[3] = -2;
  expect_invalid([&] { layer.forward(ctx, x, ids, view(y)); }, "ids[3]");
  ids.pop_back();
  expect_invalid([&] { layer.forward(ctx, x, ids, view(y)); }, "ids.size()");
  const matd x_wide = random_matrix<double>(p.n, p.in + 1, 5);
  expect_invalid([&] { layer.forward(ctx, view(x_wide), p.ids, view(y)); }, "x.cols()");
  matd y_short(p.n - 1, p.out);
  expect_invalid([&] { layer.forward(ctx, x, p.ids, view(y_short)); }, "'y'");
  EXPECT_EQ(y, sentinel);

  // Backward without a forward, then with wrong shapes: gradients unchanged.
  const matd g = random_matrix<double>(p.n, p.out, 4);
  matd dx(p.n, p.in);
  expect_invalid([&] { layer.backward(ctx, view(g), view(dx)); }, "pending forward");
  layer.forward(ctx, x, p.ids, view(y));
  const matd g_short = g.topRows(p.n - 1);
  expect_invalid([&] { layer.backward(ctx, view(g_short), view(dx)); }, "'dy'");
  matd dx_wide(p.n, p.in + 1);
  expect_invalid([&] { layer.backward(ctx, view(g), view(dx_wide)); }, "'dx'");
  for (auto& param : layer.parameters()) EXPECT_TRUE(as_eigen(param.grad).isZero(0));
  layer.backward(ctx, view(g), view(dx));  // the forward is still pending
  expect_invalid([&] { layer.backward(ctx, view(g), view(dx)); }, "pending forward");
}

// --- shared_a_lora ---------------------------------------------------------------

/// The shared-A problem: A (r x in) and the B_a of `problem` truncated to r columns.
struct shared_problem : problem {
  static constexpr index_t r = 3;
  matd shared_a = random_matrix<double>(r, in, 30);
  std::vector<matd> bs;
  shared_problem() {
    for (std::size_t k = 0; k < 4; ++k)
      bs.push_back(random_matrix<double>(out, r, 40 + unsigned(k)));
  }
};

shared_a_lora<double, cpu> make_shared(context<cpu>& ctx, shared_problem& p) {
  shared_a_lora<double, cpu> layer(ctx, view(std::as_const(p.w)), p.bias_view(),
                                   view(std::as_const(p.shared_a)));
  for (std::size_t k = 0; k < p.bs.size(); ++k) {
    EXPECT_EQ(layer.add_adapter(ctx, view(std::as_const(p.bs[k])), p.scalings[k]), std::int32_t(k));
  }
  return layer;
}

// Reference sums in another order: a few ulps of |Y| ~ 10 (see above).
TEST(shared_a_lora, per_row_forward_matches_per_adapter_computation) {
  context<cpu> ctx(2);
  shared_problem p;
  auto layer = make_shared(ctx, p);
  matd y(p.n, p.out);
  layer.forward(ctx, view(std::as_const(p.x)), p.ids, view(y));
  // Against a multi_lora whose adapters all have A = the shared A.
  multi_lora<double, cpu> separate(ctx, view(std::as_const(p.w)), p.bias_view());
  for (std::size_t k = 0; k < p.bs.size(); ++k) {
    separate.add_adapter(ctx, view(std::as_const(p.shared_a)), view(std::as_const(p.bs[k])),
                         p.scalings[k]);
  }
  matd y_separate(p.n, p.out);
  separate.forward(ctx, view(std::as_const(p.x)), p.ids, view(y_separate));
  EXPECT_LT((y - y_separate).cwiseAbs().maxCoeff(), 1e-12);
  // Against the formula, row by row; base rows bit for bit.
  const matd base = p.base(ctx);
  for (index_t i = 0; i < p.n; ++i) {
    const std::int32_t id = p.ids[std::size_t(i)];
    if (id < 0) {
      EXPECT_EQ(y.row(i), base.row(i)) << "row " << i;
      continue;
    }
    const auto k = std::size_t(id);
    const Eigen::RowVectorXd expected =
        p.x.row(i) * p.w.transpose() + p.bias.transpose() +
        p.scalings[k] * (p.x.row(i) * p.shared_a.transpose()) * p.bs[k].transpose();
    EXPECT_LT((y.row(i) - expected).cwiseAbs().maxCoeff(), 1e-12) << "row " << i;
  }
}

TEST(shared_a_lora, mixed_forward_matches_the_weighted_sum) {
  context<cpu> ctx(2);
  shared_problem p;
  auto layer = make_shared(ctx, p);
  const std::vector<double> weights{0.25, 0.0, 0.5, 0.25};
  matd y(p.n, p.out);
  layer.forward_mixed(ctx, view(std::as_const(p.x)), weights, view(y));
  const matd h = p.x * p.shared_a.transpose();
  matd expected = (p.x * p.w.transpose()).rowwise() + p.bias.transpose();
  for (std::size_t k = 0; k < p.bs.size(); ++k) {
    expected += weights[k] * p.scalings[k] * h * p.bs[k].transpose();
  }
  EXPECT_LT((y - expected).cwiseAbs().maxCoeff(), 1e-12);
}

// Exact up to rounding, as for multi_lora (Y is bilinear in A and each B_a).
class shared_a_gradients : public ::testing::TestWithParam<bool> {};

TEST_P(shared_a_gradients, match_finite_differences_in_double) {
  const bool mixed = GetParam();
  context<cpu> ctx(2);
  shared_problem p;
  auto layer = make_shared(ctx, p);
  const std::vector<double> weights{0.25, -0.5, 0.0, 1.5};  // adapter 2 off
  const matd g = random_matrix<double>(p.n, p.out, 4);
  matd y(p.n, p.out);
  auto run = [&] {
    if (mixed) {
      layer.forward_mixed(ctx, view(std::as_const(p.x)), weights, view(y));
    } else {
      layer.forward(ctx, view(std::as_const(p.x)), p.ids, view(y));
    }
  };
  run();
  matd dx(p.n, p.in);
  layer.backward(ctx, view(g), view(dx));
  auto loss = [&] {
    run();
    return (y.array() * g.array()).sum();
  };
  const matd da = as_eigen(layer.grad_a());
  auto a = as_eigen(layer.a());
  EXPECT_LT(relative_error(da, numeric_gradient(a, loss)), 1e-6);
  const std::size_t unused = mixed ? 2 : 3;
  for (std::size_t k = 0; k < p.bs.size(); ++k) {
    const matd db = as_eigen(layer.grad_b(index_t(k)));
    if (k == unused) {
      EXPECT_TRUE(db.isZero(0)) << "adapter " << k;
      continue;
    }
    auto b = as_eigen(layer.b(index_t(k)));
    EXPECT_LT(relative_error(db, numeric_gradient(b, loss)), 1e-6) << "adapter " << k;
  }
  EXPECT_LT(relative_error(dx, numeric_gradient(p.x, loss)), 1e-6);
  layer.zero_grad(ctx);
  for (auto& param : layer.parameters()) EXPECT_TRUE(as_eigen(param.grad).isZero(0));
  EXPECT_EQ(layer.parameters().size(), 5u);
}

INSTANTIATE_TEST_SUITE_P(modes, shared_a_gradients, ::testing::Values(false, true),
                         [](const auto& param) { return param.param ? "mixed" : "per_row_ids"; });

TEST(shared_a_lora, rejects_bad_input_and_stays_unchanged) {
  context<cpu> ctx(1);
  shared_problem p;
  const auto w = view(std::as_const(p.w));
  const vector_view<const double, cpu> bias = p.bias_view();
  using layer_t = shared_a_lora<double, cpu>;
  expect_invalid([&] { layer_t(ctx, w, bias, view(matd(0, p.in))); }, "a.rows()");  // rank 0
  expect_invalid([&] { layer_t(ctx, w, bias, view(random_matrix<double>(10, p.in, 9))); },
                 "a.rows()");
  expect_invalid([&] { layer_t(ctx, w, bias, view(random_matrix<double>(2, p.in - 1, 9))); },
                 "'a'");
  matd bad_a = p.shared_a;
  bad_a(0, 0) = std::numeric_limits<double>::quiet_NaN();
  EXPECT_THROW(layer_t(ctx, w, bias, view(std::as_const(bad_a))), numerical_error);

  auto layer = make_shared(ctx, p);
  expect_invalid([&] { layer.add_adapter(ctx, view(random_matrix<double>(p.out, 2, 9)), 1); },
                 "'b'");
  expect_invalid([&] { layer.add_adapter(ctx, view(std::as_const(p.bs[0])), HUGE_VAL); },
                 "scaling");
  matd bad_b = p.bs[0];
  bad_b(3, 1) = -std::numeric_limits<double>::infinity();
  EXPECT_THROW(layer.add_adapter(ctx, view(std::as_const(bad_b)), 1), numerical_error);
  expect_invalid([&] { (void)layer.b(4); }, "'id'");
  expect_invalid([&] { (void)layer.grad_b(-1); }, "'id'");
  expect_invalid([&] { (void)layer.scaling(4); }, "'id'");
  EXPECT_EQ(layer.adapters(), 4);

  const matd sentinel = matd::Constant(p.n, p.out, 7.0);
  matd y = sentinel;
  const auto x = view(std::as_const(p.x));
  auto ids = p.ids;
  ids[0] = 4;
  expect_invalid([&] { layer.forward(ctx, x, ids, view(y)); }, "ids[0]");
  ids.pop_back();
  expect_invalid([&] { layer.forward(ctx, x, ids, view(y)); }, "ids.size()");
  expect_invalid(
      [&] {
        layer.forward_mixed(ctx, x, std::vector<double>{1, 1, 1}, view(y));
      },
      "weights.size()");
  expect_invalid(
      [&] {
        layer.forward_mixed(ctx, x, std::vector<double>{1, std::nan(""), 1, 1}, view(y));
      },
      "weights[1]");
  matd y_wide(p.n, p.out + 1);
  expect_invalid([&] { layer.forward(ctx, x, p.ids, view(y_wide)); }, "'y'");
  EXPECT_EQ(y, sentinel);
  const matd g = random_matrix<double>(p.n, p.out, 4);
  expect_invalid([&] { layer.backward(ctx, view(g), matrix_view<double, cpu>()); },
                 "pending forward");
  EXPECT_TRUE(as_eigen(layer.grad_a()).isZero(0));
}

}  // namespace
}  // namespace lowrank::test::multi_lora_tests
