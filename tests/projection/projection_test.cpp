// The GaLore family: projector sides, shapes and schedule; bases against the
// exact singular subspace; the optimizer's semantics against formulas in
// double (galore, decoupled, plain AdamW, Fira), its moment policies, its
// invariants (a projected update lies in the basis' span; a full-rank
// projector is AdamW), skipped steps, memory, and bitwise resume.
#include <gtest/gtest.h>

#include <unistd.h>
#include <Eigen/Core>
#include <Eigen/QR>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <random>
#include <string>

#include "support/backends.hpp"
#include "support/test_matrices.hpp"

#include "lowrank/projection/projected_adam.hpp"
#include "lowrank/projection/projector.hpp"

namespace lowrank::test::projection_tests {
namespace {

using matd = Eigen::MatrixXd;

template <class Config>
class projection_test : public backend_test<Config> {};
TYPED_TEST_SUITE(projection_test, test_configs, config_names);

/// ||A^T B||_F^2 / r for two orthonormal n x r bases: 1 when the spans agree.
double overlap(const matd& a, const matd& b) {
  return (a.transpose() * b).squaredNorm() / double(a.cols());
}

/// G = U diag(s) V^T with a clear gap after the third value.
matd gapped(index_t m, index_t n, std::uint64_t seed) {
  Eigen::VectorXd s = Eigen::VectorXd::Zero(std::min(m, n));
  for (index_t i = 0; i < s.size(); ++i) s(i) = i < 3 ? 10.0 - 2 * double(i) : 0.5 / double(i + 1);
  return make_matrix(s, m, n, seed);
}

/// Same bits (so that -0 differs from +0).
bool same_bits(const matd& a, const matd& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), std::size_t(a.size()) * sizeof(double)) == 0;
}

template <class T, class Backend>
matd host(context<Backend>& ctx, matrix_view<const T, Backend> x) {
  host_matrix<T> out(x.rows(), x.cols());
  if (x.size() > 0) ops<Backend>::download(ctx, x, view(out));
  return out.template cast<double>();
}

TYPED_TEST(projection_test, sides_shapes_and_rank) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  EXPECT_EQ((projector<T, B>(12, 8, {.rank = 3}).side()), projection_side::right);
  EXPECT_EQ((projector<T, B>(8, 12, {.rank = 3}).side()), projection_side::left);
  EXPECT_EQ((projector<T, B>(8, 8, {.rank = 3}).side()), projection_side::right);
  const projector_options reverse{.rank = 3, .side = projection_side::reverse_standard};
  EXPECT_EQ((projector<T, B>(12, 8, reverse).side()), projection_side::left);
  EXPECT_EQ((projector<T, B>(8, 12, reverse).side()), projection_side::right);
  // galore-torch's reverse_std re-infers the side from N's shape and breaks
  // when N is square (64 x 256, r = 128 -> a 64 x 64 N): ours keeps it.
  projector<T, B> square(64, 256, {.rank = 128, .side = projection_side::reverse_standard});
  EXPECT_EQ(square.rank(), 64);
  EXPECT_EQ(square.side(), projection_side::right);
  EXPECT_EQ(square.projected_rows(), 64);
  EXPECT_EQ(square.projected_cols(), 64);
  projector<T, B> clamped(6, 4, {.rank = 100});
  EXPECT_EQ(clamped.rank(), 4);
  projector<T, B> two(9, 7, {.rank = 2, .side = projection_side::two_sided});
  EXPECT_EQ(two.projected_rows(), 2);
  EXPECT_EQ(two.projected_cols(), 2);
}

TYPED_TEST(projection_test, exact_basis_is_the_leading_singular_subspace) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  auto ctx = make_context<B>(2);
  for (const auto& [m, n] : {std::pair<index_t, index_t>{30, 20}, {20, 30}}) {
    const matd g = gapped(m, n, 7);
    const Eigen::JacobiSVD<matd> svd(g, Eigen::ComputeThinU | Eigen::ComputeThinV);
    auto gb = to_backend<B>(ctx, host_matrix<T>(g.cast<T>()));
    for (const auto side : {projection_side::standard, projection_side::two_sided}) {
      projector<T, B> p(m, n, {.rank = 3, .side = side, .method = refresh_method::exact});
      EXPECT_EQ(p.refresh(ctx, gb.view()), refresh_outcome::refreshed);
      // The gap (4 after 6) keeps the subspace to rounding: 1 - O(eps).
      const double tol = 50 * eps<T>;
      if (p.projects_left()) {
        EXPECT_NEAR(overlap(host(ctx, p.left_basis()), svd.matrixU().leftCols(3)), 1, tol);
      }
      if (p.projects_right()) {
        EXPECT_NEAR(overlap(host(ctx, p.right_basis()), svd.matrixV().leftCols(3)), 1, tol);
      }
      // reconstruct(project(G)) is the projection of G onto the span.
      matrix<T, B> r(ctx, p.projected_rows(), p.projected_cols());
      p.project(ctx, gb.view(), r.view());
      matrix<T, B> back(ctx, m, n);
      p.reconstruct(ctx, r.view(), T(1), T(0), back.view());
      const matd u = svd.matrixU().leftCols(3);
      const matd v = svd.matrixV().leftCols(3);
      const matd want = side == projection_side::two_sided
                            ? matd(u * u.transpose() * g * v * v.transpose())
                        : p.projects_left() ? matd(u * u.transpose() * g)
                                            : matd(g * v * v.transpose());
      EXPECT_LT((to_host(ctx, back) - want).norm(), 100 * eps<T> * g.norm());
      // project_back carries the scale: 0.25 back(R) + W.
      projector<T, B> scaled(
          m, n, {.rank = 3, .side = side, .method = refresh_method::exact, .scale = 0.25});
      scaled.refresh(ctx, gb.view());
      matrix<T, B> y(ctx, m, n);
      ops<B>::copy(ctx, gb.view(), y.view());
      scaled.project(ctx, gb.view(), r.view());
      scaled.project_back(ctx, r.view(), T(1), T(1), y.view());
      EXPECT_LT((to_host(ctx, y) - (g + 0.25 * want)).norm(), 100 * eps<T> * g.norm());
    }
  }
}

// A slowly drifting gradient (a fixed low-rank signal rotated a little each
// step, plus noise): warm keeps the subspace of the exact SVD step after
// step, with two products per refresh; randomized agrees too.
TYPED_TEST(projection_test, warm_and_randomized_track_the_exact_subspace) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  auto ctx = make_context<B>(2);
  const index_t m = 60, n = 40, r = 4;
  const matd u = random_orthonormal(m, r, 1);
  const matd v0 = random_orthonormal(n, r + 1, 2);
  const matd noise = make_matrix(Eigen::VectorXd::Constant(n, 0.01), m, n, 3);
  projector<T, B> warm(m, n, {.rank = r, .method = refresh_method::warm, .update_gap = 1});
  projector<T, B> randomized(m, n, {.rank = r, .method = refresh_method::randomized});
  for (int step = 0; step < 6; ++step) {
    // Rotate the signal's last direction a little towards a spare one.
    matd v = v0.leftCols(r);
    const double a = 0.05 * step;
    v.col(r - 1) = std::cos(a) * v0.col(r - 1) + std::sin(a) * v0.col(r);
    const Eigen::Vector4d s(8, 6, 4, 3);
    const matd g = u * s.asDiagonal() * v.transpose() + noise;
    auto gb = to_backend<B>(ctx, host_matrix<T>(g.cast<T>()));
    const auto outcome = warm.refresh(ctx, gb.view());
    EXPECT_EQ(outcome, refresh_outcome::refreshed);
    ASSERT_EQ(randomized.refresh(ctx, gb.view()), refresh_outcome::refreshed);
    const Eigen::JacobiSVD<matd> svd(g, Eigen::ComputeThinV);
    const matd exact = svd.matrixV().leftCols(r);
    EXPECT_GT(overlap(host(ctx, warm.right_basis()), exact), 0.99) << "step " << step;
    EXPECT_NEAR(overlap(host(ctx, randomized.right_basis()), exact), 1, 1e-4) << "step " << step;
    EXPECT_LT(orthonormality_error(host(ctx, warm.right_basis())), 100 * eps<T>);
    if (step > 0) {
      EXPECT_GT(warm.overlap(), 0.99);
    }
  }
  EXPECT_EQ(warm.refreshes(), 6u);
  EXPECT_EQ(warm.fallbacks(), 0u);
}

// When the subspace jumps away, warm falls back to the randomized SVD.
TYPED_TEST(projection_test, warm_falls_back_when_the_subspace_collapses) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  auto ctx = make_context<B>(1);
  const index_t m = 30, n = 20, r = 3;
  const matd v = random_orthonormal(n, 2 * r, 4);
  const matd u = random_orthonormal(m, r, 5);
  const matd g1 = u * Eigen::Vector3d(5, 4, 3).asDiagonal() * v.leftCols(r).transpose();
  const matd g2 = u * Eigen::Vector3d(5, 4, 3).asDiagonal() * v.rightCols(r).transpose();
  projector<T, B> p(m, n, {.rank = r, .method = refresh_method::warm, .update_gap = 1});
  auto b1 = to_backend<B>(ctx, host_matrix<T>(g1.cast<T>()));
  auto b2 = to_backend<B>(ctx, host_matrix<T>(g2.cast<T>()));
  EXPECT_EQ(p.refresh(ctx, b1.view()), refresh_outcome::refreshed);
  EXPECT_EQ(p.refresh(ctx, b2.view()), refresh_outcome::fell_back);
  EXPECT_EQ(p.fallbacks(), 1u);
  EXPECT_NEAR(overlap(host(ctx, p.right_basis()), v.rightCols(r)), 1, 1e-4);
  EXPECT_LT(p.overlap(), 1e-3);
}

TYPED_TEST(projection_test, random_basis_is_orthonormal_and_reproducible) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  auto one = make_context<B>(1);
  auto three = make_context<B>(3);
  const matd g = gapped(50, 70, 3);
  auto g1 = to_backend<B>(one, host_matrix<T>(g.cast<T>()));
  auto g3 = to_backend<B>(three, host_matrix<T>(g.cast<T>()));
  const projector_options o{.rank = 5, .method = refresh_method::random, .seed = 9, .layer = 4};
  projector<T, B> a(50, 70, o);
  projector<T, B> b(50, 70, o);
  a.refresh(one, g1.view());
  b.refresh(three, g3.view());
  const matd ua = host(one, a.left_basis());
  EXPECT_TRUE(same_bits(ua, host(three, b.left_basis())));
  EXPECT_LT(orthonormality_error(ua), 100 * eps<T>);
  // The next refresh draws the next matrix; another layer another one.
  a.refresh(one, g1.view());
  EXPECT_LT(overlap(host(one, a.left_basis()), ua), 0.5);
  projector_options other = o;
  other.layer = 5;
  projector<T, B> c(50, 70, other);
  c.refresh(one, g1.view());
  EXPECT_LT(overlap(host(one, c.left_basis()), ua), 0.5);
}

TYPED_TEST(projection_test, schedule_and_stagger) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  auto ctx = make_context<B>(1);
  auto g = to_backend<B>(ctx, host_matrix<T>(gapped(8, 6, 1).cast<T>()));
  projector<T, B> plain(8, 6, {.rank = 2, .update_gap = 5});
  projector<T, B> staggered(8, 6, {.rank = 2, .update_gap = 5, .stagger = true, .layer = 7});
  EXPECT_TRUE(plain.due(3));  // no basis yet: any step refreshes
  plain.refresh(ctx, g.view());
  staggered.refresh(ctx, g.view());
  std::string a, b;
  for (std::uint64_t s = 1; s < 16; ++s) {
    if (plain.due(s)) a += std::to_string(s) + " ";
    if (staggered.due(s)) b += std::to_string(s) + " ";
  }
  EXPECT_EQ(a, "5 10 15 ");
  EXPECT_EQ(b, "2 7 12 ");  // 7 mod 5 = 2
}

TYPED_TEST(projection_test, a_non_finite_gradient_keeps_the_basis) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  auto ctx = make_context<B>(1);
  host_matrix<T> g = gapped(10, 8, 2).cast<T>();
  auto gb = to_backend<B>(ctx, g);
  for (const auto method : {refresh_method::exact, refresh_method::randomized, refresh_method::warm,
                            refresh_method::random}) {
    projector<T, B> p(10, 8, {.rank = 3, .method = method});
    p.refresh(ctx, gb.view());
    const matd before = host(ctx, p.right_basis());
    host_matrix<T> bad = g;
    bad(4, 5) = std::numeric_limits<T>::quiet_NaN();
    auto badb = to_backend<B>(ctx, bad);
    EXPECT_EQ(p.refresh(ctx, badb.view()), refresh_outcome::skipped_non_finite);
    bad(4, 5) = std::numeric_limits<T>::infinity();
    badb = to_backend<B>(ctx, bad);
    EXPECT_EQ(p.refresh(ctx, badb.view()), refresh_outcome::skipped_non_finite);
    EXPECT_TRUE(same_bits(before, host(ctx, p.right_basis())));
    EXPECT_EQ(p.skipped_refreshes(), 2u);
    EXPECT_EQ(p.refreshes(), 1u);
  }
}

TYPED_TEST(projection_test, bad_input) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  auto ctx = make_context<B>(1);
  using P = projector<T, B>;
  const auto message = [](const std::function<void()>& f) {
    try {
      f();
    } catch (const invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("no exception");
  };
  // A flattened gradient (galore-torch's FSDP crash, its #47).
  EXPECT_NE(message([] { P(1, 4096); }).find("2-D gradient"), std::string::npos);
  EXPECT_NE(message([] { P(4096, 1); }).find("rows x cols"), std::string::npos);
  EXPECT_NE(message([] { P(8, 6, {.rank = 0}); }).find("options.rank"), std::string::npos);
  EXPECT_THROW(P(8, 6, {.update_gap = 0}), invalid_argument);
  EXPECT_THROW(P(8, 6, {.scale = std::nan("")}), invalid_argument);
  EXPECT_THROW(P(8, 6, {.layer = std::uint64_t{1} << 30}), invalid_argument);
  EXPECT_THROW(P(8, 6, {.warm_iterations = 0}), invalid_argument);
  EXPECT_THROW(P(8, 6, {.warm_min_overlap = 1.5}), invalid_argument);
  P p(8, 6, {.rank = 2});
  matrix<T, B> g(ctx, 8, 6);
  ops<B>::fill(ctx, g.view(), T(1));
  matrix<T, B> r(ctx, 8, 2);
  EXPECT_NE(message([&] { p.project(ctx, g.view(), r.view()); }).find("refresh first"),
            std::string::npos);
  matrix<T, B> wrong(ctx, 6, 8);
  EXPECT_NE(message([&] { p.refresh(ctx, wrong.view()); }).find("8 x 6"), std::string::npos);
  p.refresh(ctx, g.view());
  EXPECT_THROW(p.project(ctx, g.view(), wrong.view()), invalid_argument);

  using O = projected_adam<T, B>;
  EXPECT_THROW(O({.beta1 = 1}), invalid_argument);
  EXPECT_THROW(O({.eps = 0}), invalid_argument);
  EXPECT_THROW(O({.lr = -1}), invalid_argument);
  EXPECT_THROW(O({.fira_limit = 0.5}), invalid_argument);
  O opt;
  matrix<T, B> w(ctx, 8, 6);
  ops<B>::fill(ctx, w.view(), T(0));
  const index_t i = opt.add(ctx, w.view(), {.rank = 2});
  EXPECT_NE(message([&] { opt.step(ctx, i, wrong.view()); }).find("grad"), std::string::npos);
  EXPECT_NE(message([&] { opt.step(ctx, 3, g.view()); }).find("size() - 1"), std::string::npos);
  EXPECT_THROW(opt.step(ctx, i, w.view()), invalid_argument);  // the weight itself
  O fira({.residual = residual_mode::fira});
  EXPECT_THROW(fira.add(ctx, w.view(), {.rank = 2, .side = projection_side::two_sided}),
               invalid_argument);
}

// --- Q-GaLore ---------------------------------------------------------------------

// Group quantisation: every element within half a step of its value, codes in
// range, the groups laid along the flattening asked for, the last one short,
// and the same bits whatever the threads.
TYPED_TEST(projection_test, group_quantisation) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  auto one = make_context<B>(1);
  auto three = make_context<B>(3);
  const index_t m = 37, n = 29, group = 64;  // 1073 elements: 16 full groups and a short one
  const host_matrix<T> x =
      (make_matrix(Eigen::VectorXd::LinSpaced(n, 0.1, 3), m, n, 4) + matd::Constant(m, n, 0.02))
          .template cast<T>();
  const index_t groups = (m * n + group - 1) / group;
  for (const int bits : {4, 8}) {
    for (const bool row_major : {true, false}) {
      auto xb = to_backend<B>(one, x);
      const index_t nbytes = bits == 4 ? (m * n + 1) / 2 : m * n;
      vector<std::uint8_t, B> codes(one, nbytes);
      vector<T, B> scales(one, groups), zeros(one, groups);
      ops<B>::quantize_groups(one, as_const(xb.view()), row_major, group, bits, codes.view(),
                              scales.view(), zeros.view());
      matrix<T, B> back(one, m, n);
      ops<B>::dequantize_groups(one, as_const(codes.view()), as_const(scales.view()),
                                as_const(zeros.view()), group, bits, row_major, back.view());
      const host_matrix<T> s = host_matrix<T>(scales.to_eigen());
      const matd y = to_host(one, back);
      for (index_t i = 0; i < m; ++i) {
        for (index_t j = 0; j < n; ++j) {
          const index_t k = row_major ? i * n + j : i + j * m;
          // Half a step, plus the rounding of x / s and of s (q - z) in T.
          EXPECT_LE(std::abs(y(i, j) - double(x(i, j))), 0.5 * double(s(k / group)) * (1 + 1e-3))
              << i << ", " << j;
        }
      }
      const auto c = codes.to_eigen();
      // The same bits on three threads.
      auto xb3 = to_backend<B>(three, x);
      vector<std::uint8_t, B> codes3(three, nbytes);
      vector<T, B> scales3(three, groups), zeros3(three, groups);
      ops<B>::quantize_groups(three, as_const(xb3.view()), row_major, group, bits, codes3.view(),
                              scales3.view(), zeros3.view());
      EXPECT_TRUE((codes3.to_eigen().array() == c.array()).all());
      EXPECT_TRUE((host_matrix<T>(scales3.to_eigen()).array() == s.array()).all());
    }
  }
}

// A 4-bit projector: its state is the codes, it projects with the
// dequantized basis, and that basis still spans the subspace to the
// quantisation's accuracy.
TYPED_TEST(projection_test, quantized_projector) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  auto ctx = make_context<B>(2);
  const index_t m = 64, n = 48, r = 8;
  const matd g = gapped(m, n, 9);
  auto gb = to_backend<B>(ctx, host_matrix<T>(g.cast<T>()));
  projector<T, B> plain(m, n, {.rank = r, .method = refresh_method::exact});
  projector<T, B> q4(m, n, {.rank = r, .method = refresh_method::exact, .quantize_bits = 4});
  plain.refresh(ctx, gb.view());
  q4.refresh(ctx, gb.view());
  EXPECT_EQ(q4.right_basis().size(), 0);
  const matd exact = host(ctx, plain.right_basis());
  const auto copy = q4.basis_copy(ctx, false);
  const matd dq = to_host(ctx, copy);
  // 4 bits over entries within [-1, 1]: a step of at most 2/15 per group.
  EXPECT_LT((dq - exact).cwiseAbs().maxCoeff(), 1.0 / 15 + 1e-6);
  const Eigen::HouseholderQR<matd> qr(dq);
  const matd q = qr.householderQ() * matd::Identity(n, r);
  EXPECT_GT(overlap(q, exact), 0.9);
  matrix<T, B> rq(ctx, m, r);
  q4.project(ctx, gb.view(), rq.view());
  EXPECT_LT((to_host(ctx, rq) - to_host(ctx, gb) * dq).norm(), 100 * eps<T> * g.norm());
  // State: n r / 2 bytes of codes, a scale and a zero per group of 256, the transition.
  const std::size_t groups = (std::size_t(n * r) + 255) / 256;
  EXPECT_EQ(q4.state_bytes(),
            std::size_t(n * r) / 2 + 2 * sizeof(T) * groups + sizeof(T) * std::size_t(r * r));
  const std::size_t transition = sizeof(T) * std::size_t(r * r);
  EXPECT_LT(q4.state_bytes() - transition, (plain.state_bytes() - transition) / 4);
}

// The lazy rule on a gradient that never changes: cosines of 1, the queue
// fills at the sixth refresh and the gap doubles at every refresh from then
// on (q-galore-torch's rule), or up to max_gap.
TYPED_TEST(projection_test, lazy_refresh_schedule) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  auto ctx = make_context<B>(1);
  auto gb = to_backend<B>(ctx, host_matrix<T>(gapped(12, 8, 3).cast<T>()));
  for (const index_t cap : {index_t{0}, index_t{8}}) {
    projector<T, B> p(12, 8,
                      {.rank = 3,
                       .method = refresh_method::exact,
                       .update_gap = 2,
                       .lazy = true,
                       .max_gap = cap});
    std::string steps;
    for (std::uint64_t s = 0; s < 70; ++s) {
      if (!p.due(s)) continue;
      steps += std::to_string(s) + "/";
      p.refresh(ctx, gb.view());
      steps += std::to_string(p.current_gap()) + " ";
    }
    if (cap == 0) {
      EXPECT_EQ(steps, "0/2 2/2 4/2 6/2 8/2 10/4 12/8 16/16 32/32 64/64 ");
    } else {
      EXPECT_EQ(steps, "0/2 2/2 4/2 6/2 8/2 10/4 12/8 16/8 24/8 32/8 40/8 48/8 56/8 64/8 ");
    }
    ASSERT_EQ(p.cosines().size(), 5u);
    EXPECT_NEAR(p.cosines().back(), 1, 1e-5);
  }
}

// --- The optimizer ----------------------------------------------------------------

/// One step of Adam on host data in double (the reference formulas).
struct adam_reference {
  adam_reference(double lr_, double b1_, double b2_, double eps_, double wd_, bool galore_)
      : lr(lr_), b1(b1_), b2(b2_), eps(eps_), wd(wd_), galore(galore_) {}
  double lr, b1, b2, eps, wd;
  bool galore;
  matd m, v;
  int t = 0;
  /// Returns the direction applied, the weight updated in place with it
  /// through `apply` (which back-projects for projected weights).
  matd direction(const matd& r) {
    if (m.size() == 0) {
      m = matd::Zero(r.rows(), r.cols());
      v = matd::Zero(r.rows(), r.cols());
    }
    ++t;
    m = b1 * m + (1 - b1) * r;
    v = b2 * v + (1 - b2) * r.cwiseProduct(r);
    const double c1 = 1 - std::pow(b1, t);
    const double c2 = 1 - std::pow(b2, t);
    if (galore) {
      return (lr * std::sqrt(c2) / c1) * m.array() / (v.array().sqrt() + eps);
    }
    return lr * (m.array() / c1) / ((v.array() / c2).sqrt() + eps);
  }
};

TYPED_TEST(projection_test, plain_adamw_in_both_semantics) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  auto ctx = make_context<B>(2);
  for (const auto semantics : {adam_semantics::galore, adam_semantics::decoupled}) {
    const projected_adam_options o{.lr = 0.01, .weight_decay = 0.1, .semantics = semantics};
    projected_adam<T, B> opt(o);
    matd w = make_matrix(Eigen::VectorXd::LinSpaced(4, 1, 2), 7, 4, 1);
    auto wb = to_backend<B>(ctx, host_matrix<T>(w.cast<T>()));
    w = to_host(ctx, wb);
    const index_t i = opt.add_plain(ctx, wb.view());
    adam_reference ref{o.lr,  o.beta1,        o.beta2,
                       o.eps, o.weight_decay, semantics == adam_semantics::galore};
    for (int s = 0; s < 5; ++s) {
      const matd g = make_matrix(Eigen::VectorXd::LinSpaced(4, 0.1, 1), 7, 4, 10 + s);
      auto gb = to_backend<B>(ctx, host_matrix<T>(g.cast<T>()));
      ASSERT_EQ(opt.step(ctx, i, gb.view()), step_outcome::applied);
      const matd g_used = to_host(ctx, gb);
      if (!ref.galore) w *= 1 - o.lr * o.weight_decay;
      w -= ref.direction(g_used);
      if (ref.galore) w *= 1 - o.lr * o.weight_decay;
    }
    // Five steps of rounding in T on entries of size ~1.
    EXPECT_LT((to_host(ctx, wb) - w).cwiseAbs().maxCoeff(), 20 * eps<T>);
    EXPECT_EQ(opt.steps(i), 5u);
  }
}

TYPED_TEST(projection_test, projected_steps_follow_the_formulas) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  auto ctx = make_context<B>(2);
  for (const auto& [m, n] : {std::pair<index_t, index_t>{12, 8}, {8, 12}}) {
    for (const auto semantics : {adam_semantics::galore, adam_semantics::decoupled}) {
      const projected_adam_options o{.lr = 0.01, .weight_decay = 0.1, .semantics = semantics};
      projected_adam<T, B> opt(o);
      matd w = make_matrix(Eigen::VectorXd::LinSpaced(std::min(m, n), 1, 2), m, n, 1);
      auto wb = to_backend<B>(ctx, host_matrix<T>(w.cast<T>()));
      w = to_host(ctx, wb);
      const index_t i =
          opt.add(ctx, wb.view(),
                  {.rank = 3, .method = refresh_method::exact, .update_gap = 100, .scale = 0.25});
      adam_reference ref{o.lr,  o.beta1,        o.beta2,
                         o.eps, o.weight_decay, semantics == adam_semantics::galore};
      for (int s = 0; s < 4; ++s) {
        const matd g = gapped(m, n, 20 + s);
        auto gb = to_backend<B>(ctx, host_matrix<T>(g.cast<T>()));
        const matd device_before = to_host(ctx, wb);
        ASSERT_EQ(opt.step(ctx, i, gb.view()), step_outcome::applied);
        const auto* p = opt.projector_of(i);
        const matd gu = to_host(ctx, gb);
        const double decay = 1 - o.lr * o.weight_decay;
        if (!ref.galore) w *= decay;
        if (p->projects_left()) {
          const matd u = host(ctx, p->left_basis());
          w -= 0.25 * u * ref.direction(u.transpose() * gu);
          // The optimizer's own update, the decay taken out, lies in span(U):
          // (I - U U^T) dW = 0 to the rounding of W (entries ~1) and U.
          const matd after = to_host(ctx, wb);
          const matd dw = ref.galore ? matd(after / decay - device_before)
                                     : matd(after - decay * device_before);
          EXPECT_LT((dw - u * (u.transpose() * dw)).norm(), 20 * eps<T> * device_before.norm());
        } else {
          const matd v = host(ctx, p->right_basis());
          w -= 0.25 * ref.direction(gu * v) * v.transpose();
        }
        if (ref.galore) w *= 1 - o.lr * o.weight_decay;
      }
      EXPECT_LT((to_host(ctx, wb) - w).cwiseAbs().maxCoeff(), 40 * eps<T>);
      // State: M, V (m x r or r x n) and the basis with its transition.
      const auto r = std::size_t(3);
      const auto big = std::size_t(std::max(m, n));
      const auto small = std::size_t(std::min(m, n));
      EXPECT_EQ(opt.state_bytes(), sizeof(T) * (2 * big * r + small * r + r * r));
      EXPECT_EQ(opt.adamw_state_bytes(), sizeof(T) * 2 * std::size_t(m * n));
      EXPECT_EQ(opt.step_workspace_bytes(i), sizeof(T) * 2 * big * r);
    }
  }
}

// With r = min(m, n) and gradients whose singular vectors are coordinate
// vectors, the basis is a signed permutation, which commutes with Adam's
// element-wise steps: the projected optimizer is AdamW to rounding.
TYPED_TEST(projection_test, full_rank_projection_is_adamw) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  auto ctx = make_context<B>(1);
  const index_t m = 9, n = 5;
  const projected_adam_options o{.lr = 0.02, .weight_decay = 0.05};
  projected_adam<T, B> opt(o);
  const host_matrix<T> w0 = make_matrix(Eigen::VectorXd::LinSpaced(n, 1, 2), m, n, 3).cast<T>();
  auto wp = to_backend<B>(ctx, w0);
  auto wa = to_backend<B>(ctx, w0);
  const index_t ip =
      opt.add(ctx, wp.view(), {.rank = n, .method = refresh_method::exact, .update_gap = 2});
  const index_t ia = opt.add_plain(ctx, wa.view());
  for (int s = 0; s < 6; ++s) {
    host_matrix<T> g = host_matrix<T>::Zero(m, n);
    for (index_t j = 0; j < n; ++j)
      g(2 * j % m, j) = T((j % 2 ? -1 : 1) * (5.0 - double(j) + 0.1 * s));
    auto gb = to_backend<B>(ctx, g);
    opt.step(ctx, ip, gb.view());
    opt.step(ctx, ia, gb.view());
  }
  EXPECT_LT((to_host(ctx, wp) - to_host(ctx, wa)).cwiseAbs().maxCoeff(), 20 * eps<T>);
}

// rotate: when the new basis spans the old subspace (V_new = V_old Q), the
// moments keep their meaning: M V^T is unchanged, and V is |V_old C^T|.
TYPED_TEST(projection_test, moment_policies) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  auto ctx = make_context<B>(1);
  const index_t m = 12, n = 8, r = 3;
  const matd v = random_orthonormal(n, r, 11);
  const matd q = random_orthonormal(r, r, 12);
  const matd g1 =
      random_orthonormal(m, r, 13) * Eigen::Vector3d(5, 4, 3).asDiagonal() * v.transpose();
  const matd g2 =
      random_orthonormal(m, r, 14) * Eigen::Vector3d(6, 2, 1).asDiagonal() * (v * q).transpose();
  for (const auto policy : {moment_policy::keep, moment_policy::reset, moment_policy::rotate}) {
    const projected_adam_options o{.lr = 0.01, .moments = policy};
    projected_adam<T, B> opt(o);
    auto w = to_backend<B>(ctx, host_matrix<T>(host_matrix<T>::Zero(m, n)));
    const index_t i =
        opt.add(ctx, w.view(), {.rank = r, .method = refresh_method::exact, .update_gap = 1});
    auto b1 = to_backend<B>(ctx, host_matrix<T>(g1.cast<T>()));
    auto b2 = to_backend<B>(ctx, host_matrix<T>(g2.cast<T>()));
    opt.step(ctx, i, b1.view());
    const matd m1 = host(ctx, opt.first_moment(i));
    const matd v1 = host(ctx, opt.second_moment(i));
    const matd basis1 = host(ctx, opt.projector_of(i)->right_basis());
    opt.step(ctx, i, b2.view());
    const auto* p = opt.projector_of(i);
    const matd basis2 = host(ctx, p->right_basis());
    ASSERT_NEAR(overlap(basis1, basis2), 1, 1e-5);  // same span, other vectors
    const matd r2 = to_host(ctx, b2) * basis2;
    const matd m2 = host(ctx, opt.first_moment(i));
    const matd v2 = host(ctx, opt.second_moment(i));
    const matd c = basis2.transpose() * basis1;  // the transition
    EXPECT_LT((host(ctx, p->transition_right()) - c).norm(), 100 * eps<T>);
    matd m_before, v_before;
    if (policy == moment_policy::keep) {
      m_before = m1;
      v_before = v1;
    } else if (policy == moment_policy::reset) {
      m_before = matd::Zero(m, r);
      v_before = matd::Zero(m, r);
    } else {
      m_before = m1 * c.transpose();
      v_before = (v1 * c.transpose()).cwiseAbs();
      // The momentum in weight space is the same before and after the rotation.
      EXPECT_LT((m_before * basis2.transpose() - m1 * basis1.transpose()).norm(),
                1e3 * eps<T> * m1.norm());
    }
    EXPECT_LT((m2 - (0.9 * m_before + 0.1 * r2)).norm(), 100 * eps<T> * r2.norm());
    EXPECT_LT((v2 - (0.999 * v_before + 0.001 * r2.cwiseProduct(r2))).norm(),
              100 * eps<T> * r2.squaredNorm());
  }
}

// Fira: the residual outside the subspace, scaled per row by ||N_i|| / ||R_i||,
// its growth limited to 1.01 a step; paper form and the reference's.
TYPED_TEST(projection_test, fira_residual_and_limiter) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  auto ctx = make_context<B>(1);
  const index_t m = 10, n = 6, r = 2;
  for (const auto mode : {residual_mode::fira, residual_mode::fira_reference}) {
    const projected_adam_options o{.lr = 0.01, .residual = mode};
    projected_adam<T, B> opt(o);
    auto w = to_backend<B>(ctx, host_matrix<T>(host_matrix<T>::Zero(m, n)));
    const index_t i =
        opt.add(ctx, w.view(),
                {.rank = r, .method = refresh_method::exact, .update_gap = 10, .scale = 0.25});
    adam_reference ref{o.lr, o.beta1, o.beta2, o.eps, 0, true};
    matd want = matd::Zero(m, n);
    double previous = -1;
    for (int s = 0; s < 3; ++s) {
      const matd g = (1 + 2 * s) * gapped(m, n, 30 + s);  // growing: the limiter acts
      auto gb = to_backend<B>(ctx, host_matrix<T>(g.cast<T>()));
      opt.step(ctx, i, gb.view());
      const matd gu = to_host(ctx, gb);
      const matd v = host(ctx, opt.projector_of(i)->right_basis());
      const matd rr = gu * v;
      const double c1 = 1 - std::pow(0.9, s + 1);
      const double c2 = 1 - std::pow(0.999, s + 1);
      const double step = o.lr * std::sqrt(c2) / c1;
      const matd dir = ref.direction(rr) / step;  // N = M / (sqrt(V) + eps)
      matd res = gu - (mode == residual_mode::fira ? 1.0 : 0.25) * rr * v.transpose();
      for (index_t k = 0; k < m; ++k) res.row(k) *= dir.row(k).norm() / (rr.row(k).norm() + 1e-8);
      const double norm = res.norm();
      if (previous >= 0) {
        const double limit = std::max(norm / (previous + 1e-8), 1.01) / 1.01;
        res /= limit;
        previous = norm / limit;
        EXPECT_GT(limit, 1);  // the gradient grows: the limiter acts
      } else {
        previous = norm;
      }
      want -= step * (0.25 * dir * v.transpose() + res);
    }
    EXPECT_LT((to_host(ctx, w) - want).cwiseAbs().maxCoeff(),
              100 * eps<T> * want.cwiseAbs().maxCoeff());
  }
}

// A NaN or Inf gradient changes nothing but the skip counter.
TYPED_TEST(projection_test, non_finite_gradients_change_nothing) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  auto ctx = make_context<B>(1);
  projected_adam<T, B> opt({.lr = 0.01, .weight_decay = 0.1, .residual = residual_mode::fira});
  auto w = to_backend<B>(ctx, host_matrix<T>(gapped(10, 7, 1).cast<T>()));
  auto bias = to_backend<B>(ctx, host_matrix<T>(host_matrix<T>::Ones(10, 1)));
  const index_t i = opt.add(ctx, w.view(), {.rank = 2, .update_gap = 1});
  const index_t j = opt.add_plain(ctx, bias.view());
  host_matrix<T> g = gapped(10, 7, 2).cast<T>();
  auto gb = to_backend<B>(ctx, g);
  opt.step(ctx, i, gb.view());
  const matd w1 = to_host(ctx, w);
  const matd m1 = host(ctx, opt.first_moment(i));
  const matd basis = host(ctx, opt.projector_of(i)->right_basis());
  g(3, 3) = std::numeric_limits<T>::quiet_NaN();
  gb = to_backend<B>(ctx, g);
  EXPECT_EQ(opt.step(ctx, i, gb.view()), step_outcome::skipped_non_finite);
  host_matrix<T> gbias = host_matrix<T>::Ones(10, 1);
  gbias(2) = -std::numeric_limits<T>::infinity();
  auto gbb = to_backend<B>(ctx, gbias);
  EXPECT_EQ(opt.step(ctx, j, gbb.view()), step_outcome::skipped_non_finite);
  EXPECT_TRUE(same_bits(w1, to_host(ctx, w)));
  EXPECT_TRUE(same_bits(m1, host(ctx, opt.first_moment(i))));
  EXPECT_TRUE(same_bits(basis, host(ctx, opt.projector_of(i)->right_basis())));
  EXPECT_EQ(opt.steps(i), 1u);
  EXPECT_EQ(opt.skipped_steps(i), 1u);
  EXPECT_EQ(opt.skipped_steps(j), 1u);
  EXPECT_EQ(opt.projector_of(i)->refreshes(), 1u);
}

/// A scratch file removed at scope exit.
struct scratch_file {
  std::filesystem::path path;
  explicit scratch_file(const std::string& name)
      : path(std::filesystem::temp_directory_path() /
             ("lowrank_" + std::to_string(::getpid()) + "_" + name)) {}
  ~scratch_file() { std::filesystem::remove(path); }
};

// Train N steps == train k, save, load into a fresh optimizer, train N - k:
// bit for bit, with every kind of state in play (warm bases with a
// randomized first refresh, a two-sided random basis, Fira's norm, a plain
// weight, skipped steps).
TYPED_TEST(projection_test, resume_is_bitwise) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  auto ctx = make_context<B>(2);
  const projected_adam_options o{.lr = 0.01,
                                 .weight_decay = 0.01,
                                 .moments = moment_policy::rotate,
                                 .residual = residual_mode::fira};
  const host_matrix<T> w0 = gapped(14, 9, 1).cast<T>();
  const host_matrix<T> u0 = gapped(7, 11, 2).cast<T>();
  const host_matrix<T> b0 = host_matrix<T>::Ones(9, 1);
  const host_matrix<T> q0 = gapped(10, 6, 3).cast<T>();
  struct model {
    matrix<T, B> w, u, b, q;
    projected_adam<T, B> opt;
  };
  const auto build = [&](context<B>& c) {
    model md{to_backend<B>(c, w0), to_backend<B>(c, u0), to_backend<B>(c, b0), to_backend<B>(c, q0),
             projected_adam<T, B>(o)};
    md.opt.add(c, md.w.view(),
               {.rank = 3, .method = refresh_method::warm, .update_gap = 3, .layer = 0});
    md.opt.add(c, md.u.view(),
               {.rank = 2,
                .side = projection_side::right,
                .method = refresh_method::randomized,
                .update_gap = 2,
                .stagger = true,
                .seed = 5,
                .layer = 1});
    md.opt.add_plain(c, md.b.view());
    md.opt.add(c, md.q.view(),
               {.rank = 2,
                .method = refresh_method::exact,
                .update_gap = 1,
                .layer = 2,
                .quantize_bits = 4,
                .quantize_group = 16,
                .lazy = true,
                .lazy_queue = 2});
    return md;
  };
  // Gradients that depend on the weights (a least-squares pull towards a
  // target), with a NaN at step 4.
  const auto train = [&](context<B>& c, model& md, int from, int to) {
    for (int s = from; s < to; ++s) {
      for (index_t k = 0; k < 4; ++k) {
        auto& x = k == 0 ? md.w : k == 1 ? md.u : k == 2 ? md.b : md.q;
        host_matrix<T> g(x.rows(), x.cols());
        ops<B>::download(c, x.view(), view(g));
        const host_matrix<T> target =
            make_matrix(Eigen::VectorXd::LinSpaced(std::min(x.rows(), x.cols()), 1, 3), x.rows(),
                        x.cols(), 100 + std::uint64_t(s))
                .template cast<T>();
        g = g - target;
        if (s == 4 && k == 0) g(0, 0) = std::numeric_limits<T>::quiet_NaN();
        auto gb = to_backend<B>(c, g);
        md.opt.step(c, k, gb.view());
      }
    }
  };
  auto straight = build(ctx);
  train(ctx, straight, 0, 11);
  scratch_file file("projected_adam_resume.safetensors");
  auto first = build(ctx);
  train(ctx, first, 0, 5);
  first.opt.save(ctx, file.path);
  auto second = build(ctx);
  // The weights travel separately (the model's checkpoint).
  ops<B>::copy(ctx, first.w.view(), second.w.view());
  ops<B>::copy(ctx, first.u.view(), second.u.view());
  ops<B>::copy(ctx, first.b.view(), second.b.view());
  ops<B>::copy(ctx, first.q.view(), second.q.view());
  second.opt.load(ctx, file.path);
  train(ctx, second, 5, 11);
  EXPECT_TRUE(same_bits(to_host(ctx, straight.w), to_host(ctx, second.w)));
  EXPECT_TRUE(same_bits(to_host(ctx, straight.u), to_host(ctx, second.u)));
  EXPECT_TRUE(same_bits(to_host(ctx, straight.b), to_host(ctx, second.b)));
  EXPECT_TRUE(same_bits(to_host(ctx, straight.q), to_host(ctx, second.q)));
  EXPECT_EQ(straight.opt.projector_of(3)->current_gap(), second.opt.projector_of(3)->current_gap());
  EXPECT_GT(straight.opt.projector_of(3)->current_gap(), 1);  // the lazy rule acted
  for (index_t k = 0; k < 4; ++k) {
    EXPECT_TRUE(
        same_bits(host(ctx, straight.opt.first_moment(k)), host(ctx, second.opt.first_moment(k))));
    EXPECT_EQ(straight.opt.steps(k), second.opt.steps(k));
    EXPECT_EQ(straight.opt.skipped_steps(k), second.opt.skipped_steps(k));
  }
  EXPECT_EQ(second.opt.skipped_steps(0), 1u);
  EXPECT_EQ(straight.opt.projector_of(1)->refreshes(), second.opt.projector_of(1)->refreshes());
}

TYPED_TEST(projection_test, load_refuses_another_optimizer_and_changes_nothing) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  auto ctx = make_context<B>(1);
  auto w = to_backend<B>(ctx, host_matrix<T>(gapped(12, 8, 1).cast<T>()));
  auto g = to_backend<B>(ctx, host_matrix<T>(gapped(12, 8, 2).cast<T>()));
  projected_adam<T, B> saved({.lr = 0.01});
  saved.add(ctx, w.view(), {.rank = 3});
  saved.step(ctx, 0, g.view());
  scratch_file file("projected_adam_refuse.safetensors");
  saved.save(ctx, file.path);

  const auto refuses = [&](projected_adam<T, B>& live, const std::string& what) {
    live.step(ctx, 0, g.view());
    const matd m = host(ctx, live.first_moment(0));
    const auto steps = live.steps(0);
    try {
      live.load(ctx, file.path);
      ADD_FAILURE() << "no exception";
    } catch (const invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
    EXPECT_TRUE(same_bits(m, host(ctx, live.first_moment(0))));
    EXPECT_EQ(live.steps(0), steps);
  };
  projected_adam<T, B> other_rank({.lr = 0.01});
  other_rank.add(ctx, w.view(), {.rank = 4});
  refuses(other_rank, "rank=3");
  projected_adam<T, B> other_options({.lr = 0.01, .moments = moment_policy::reset});
  other_options.add(ctx, w.view(), {.rank = 3});
  refuses(other_options, "options");
  auto wide = to_backend<B>(ctx, host_matrix<T>(gapped(8, 12, 1).cast<T>()));
  projected_adam<T, B> other_shape({.lr = 0.01});
  other_shape.add(ctx, wide.view(), {.rank = 3});
  // (the step inside `refuses` needs a gradient of the weight's shape)
  auto gw = to_backend<B>(ctx, host_matrix<T>(gapped(8, 12, 2).cast<T>()));
  other_shape.step(ctx, 0, gw.view());
  const matd m = host(ctx, other_shape.first_moment(0));
  EXPECT_THROW(other_shape.load(ctx, file.path), invalid_argument);
  EXPECT_TRUE(same_bits(m, host(ctx, other_shape.first_moment(0))));
  // A truncated file.
  {
    const auto size = std::filesystem::file_size(file.path);
    std::filesystem::resize_file(file.path, size - 5);
  }
  projected_adam<T, B> same({.lr = 0.01});
  same.add(ctx, w.view(), {.rank = 3});
  same.step(ctx, 0, g.view());
  const matd before = host(ctx, same.first_moment(0));
  EXPECT_THROW(same.load(ctx, file.path), invalid_argument);
  EXPECT_TRUE(same_bits(before, host(ctx, same.first_moment(0))));
}

#if defined(__CUDACC__)
// --- Across backends (in the CUDA build only) ------------------------------------
//
// The family's operations of ops<cuda> give the CPU's bits (Adam's moments
// and direction, Fira's ratios, row scaling, absolute values, Q-GaLore's
// quantisation both ways), and projected_adam trains the same weights from
// the same gradients on both backends (exact, warm and quantized lazy
// projectors, rotate, Fira, a plain weight) to a float tolerance.

template <class T>
class projection_cross_backend : public backend_test<config<cuda, T>> {};
using scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(projection_cross_backend, scalars);

template <class T>
host_matrix<T> uniform_matrix(index_t rows, index_t cols, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> dist(-1, 1);
  host_matrix<T> m(rows, cols);
  for (index_t j = 0; j < cols; ++j) {
    for (index_t i = 0; i < rows; ++i) m(i, j) = T(dist(gen));
  }
  return m;
}

template <class T>
bool same_host_bits(const host_matrix<T>& a, const host_matrix<T>& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), sizeof(T) * std::size_t(a.size())) == 0;
}

template <class T>
host_matrix<T> down(context<cuda>& ctx, matrix_view<const T, cuda> x) {
  host_matrix<T> h(x.rows(), x.cols());
  ops<cuda>::download(ctx, x, view(h));
  return h;
}

TYPED_TEST(projection_cross_backend, operations_give_the_cpu_bits) {
  using T = TypeParam;
  context<cpu> cpu_ctx(2);
  context<cuda> gpu;
  const index_t m = 67, n = 45;
  const host_matrix<T> g = uniform_matrix<T>(m, n, 1);
  host_matrix<T> mm = uniform_matrix<T>(m, n, 2);
  host_matrix<T> vv = uniform_matrix<T>(m, n, 3).cwiseAbs();
  matrix<T, cuda> gg(gpu, g), gm(gpu, mm), gv(gpu, vv);
  ops<cpu>::adam_moments(cpu_ctx, 0.9, 0.999, view(g), view(mm), view(vv));
  ops<cuda>::adam_moments(gpu, 0.9, 0.999, gg.view(), gm.view(), gv.view());
  EXPECT_TRUE(same_host_bits(mm, down(gpu, as_const(gm.view()))));
  EXPECT_TRUE(same_host_bits(vv, down(gpu, as_const(gv.view()))));
  host_matrix<T> y = uniform_matrix<T>(m, n, 4);
  matrix<T, cuda> gy(gpu, y);
  ops<cpu>::adam_direction(cpu_ctx, 1.1, 0.7, 1e-6, view(mm), view(vv), T(-0.01), T(1), view(y));
  ops<cuda>::adam_direction(gpu, 1.1, 0.7, 1e-6, gm.view(), gv.view(), T(-0.01), T(1), gy.view());
  EXPECT_TRUE(same_host_bits(y, down(gpu, as_const(gy.view()))));
  ops<cpu>::abs_values(cpu_ctx, view(y));
  ops<cuda>::abs_values(gpu, gy.view());
  EXPECT_TRUE(same_host_bits(y, down(gpu, as_const(gy.view()))));
  const Eigen::VectorXd num = uniform_matrix<double>(m, 1, 5).cwiseAbs();
  const Eigen::VectorXd den = uniform_matrix<double>(m, 1, 6).cwiseAbs();
  host_matrix<T> ratio(m, 1);
  vector<double, cuda> gnum(gpu, num), gden(gpu, den);
  vector<T, cuda> gratio(gpu, m);
  ops<cpu>::norm_ratio(cpu_ctx, vector_view<const double, cpu>(num.data(), m),
                       vector_view<const double, cpu>(den.data(), m), 1e-8,
                       vector_view<T, cpu>(ratio.data(), m));
  ops<cuda>::norm_ratio(gpu, as_const(gnum.view()), as_const(gden.view()), 1e-8, gratio.view());
  EXPECT_TRUE(same_host_bits(ratio, host_matrix<T>(gratio.to_eigen())));
  ops<cpu>::scale_rows(cpu_ctx, vector_view<const T, cpu>(ratio.data(), m), view(y));
  ops<cuda>::scale_rows(gpu, as_const(gratio.view()), gy.view());
  EXPECT_TRUE(same_host_bits(y, down(gpu, as_const(gy.view()))));
  for (const int bits : {4, 8}) {
    for (const bool row_major : {true, false}) {
      const index_t group = 256;
      const index_t groups = (m * n + group - 1) / group;
      const index_t nbytes = bits == 4 ? (m * n + 1) / 2 : m * n;
      vector<std::uint8_t, cpu> codes(cpu_ctx, nbytes);
      vector<T, cpu> scales(cpu_ctx, groups), zeros(cpu_ctx, groups);
      vector<std::uint8_t, cuda> gcodes(gpu, nbytes);
      vector<T, cuda> gscales(gpu, groups), gzeros(gpu, groups);
      ops<cpu>::quantize_groups(cpu_ctx, view(g), row_major, group, bits, codes.view(),
                                scales.view(), zeros.view());
      ops<cuda>::quantize_groups(gpu, as_const(gg.view()), row_major, group, bits, gcodes.view(),
                                 gscales.view(), gzeros.view());
      EXPECT_TRUE((gcodes.to_eigen().array() == codes.array()).all());
      EXPECT_TRUE(same_host_bits(host_matrix<T>(scales), host_matrix<T>(gscales.to_eigen())));
      EXPECT_TRUE(same_host_bits(host_matrix<T>(zeros), host_matrix<T>(gzeros.to_eigen())));
      host_matrix<T> back(m, n);
      matrix<T, cuda> gback(gpu, m, n);
      ops<cpu>::dequantize_groups(cpu_ctx, as_const(codes.view()), as_const(scales.view()),
                                  as_const(zeros.view()), group, bits, row_major, view(back));
      ops<cuda>::dequantize_groups(gpu, as_const(gcodes.view()), as_const(gscales.view()),
                                   as_const(gzeros.view()), group, bits, row_major, gback.view());
      EXPECT_TRUE(same_host_bits(back, down(gpu, as_const(gback.view()))));
    }
  }
}

// Products differ in summation order between cuBLAS and the CPU BLAS, and the
// SVD routes differ: after 6 steps the weights agree to about eps sqrt(K)
// times the updates' size, far below a wrong basis or step (O(lr)).
TYPED_TEST(projection_cross_backend, training_agrees_with_the_cpu) {
  using T = TypeParam;
  context<cpu> cpu_ctx(2);
  context<cuda> gpu;
  const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-12;
  const projected_adam_options o{.lr = 0.01,
                                 .weight_decay = 0.01,
                                 .moments = moment_policy::rotate,
                                 .residual = residual_mode::fira};
  const index_t shapes[4][2] = {{40, 24}, {24, 40}, {32, 32}, {24, 1}};
  const projector_options projectors[3] = {
      {.rank = 4, .method = refresh_method::exact, .update_gap = 2},
      {.rank = 3, .method = refresh_method::warm, .update_gap = 2, .layer = 1},
      {.rank = 4,
       .method = refresh_method::exact,
       .update_gap = 1,
       .layer = 2,
       .quantize_bits = 4,
       .lazy = true,
       .lazy_queue = 2}};
  std::vector<host_matrix<T>> cw;
  std::vector<matrix<T, cuda>> gw;
  projected_adam<T, cpu> copt(o);
  projected_adam<T, cuda> gopt(o);
  for (int k = 0; k < 4; ++k) {
    cw.push_back(uniform_matrix<T>(shapes[k][0], shapes[k][1], 10 + k));
    gw.emplace_back(gpu, cw.back());
  }
  for (int k = 0; k < 4; ++k) {
    if (k < 3) {
      copt.add(cpu_ctx, view(cw[k]), projectors[k]);
      gopt.add(gpu, gw[k].view(), projectors[k]);
    } else {
      copt.add_plain(cpu_ctx, view(cw[k]));
      gopt.add_plain(gpu, gw[k].view());
    }
  }
  for (int s = 0; s < 6; ++s) {
    for (int k = 0; k < 4; ++k) {
      // A low-rank signal with a clear gap after the projector's rank (so
      // that both backends' SVDs pick one subspace), plus a small pull
      // towards a fixed target.
      const index_t rows = cw[k].rows();
      const index_t cols = cw[k].cols();
      const index_t r = k < 3 ? projectors[k].rank : 1;
      Eigen::VectorXd spectrum(std::min(rows, cols));
      for (index_t i = 0; i < spectrum.size(); ++i) {
        spectrum(i) = i < r ? 10.0 - double(i) : 0.5 / double(i + 1);
      }
      const host_matrix<T> signal = make_matrix(spectrum, rows, cols, 70 + k).cast<T>();
      const host_matrix<T> target = uniform_matrix<T>(rows, cols, 50 + k);
      const host_matrix<T> g = signal + T(0.01) * (cw[k] - target);
      matrix<T, cuda> gg(gpu, g);
      copt.step(cpu_ctx, k, view(g));
      gopt.step(gpu, k, gg.view());
      const host_matrix<T> back = down(gpu, as_const(gw[k].view()));
      EXPECT_LT((back - cw[k]).norm(), tol * cw[k].norm()) << "step " << s << ", weight " << k;
      // Feed the CPU's weights to both, so that the comparison stays per step.
      ops<cuda>::upload(gpu, as_const(view(cw[k])), gw[k].view());
    }
  }
  EXPECT_EQ(copt.projector_of(2)->current_gap(), gopt.projector_of(2)->current_gap());
}

#endif  // __CUDACC__

}  // namespace
}  // namespace lowrank::test::projection_tests
