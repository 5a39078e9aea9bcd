// The GaLore family against the reference implementations: fixtures from
// galore-torch 1.0, fira 1.0.2 and q-galore-torch 1.0
// (tools/make_galore_fixtures.py, tools/make_qgalore_fixtures.py; the signs
// of the reference's SVD canonicalised as ours, tests/projection/fixtures/
// README.md). Projector bases and projected gradients; 2T + 5 steps of
// GaLore's AdamW across refreshes (T = 3), its plain AdamW, and Fira's
// reference form; Q-GaLore's 4-bit bases and its lazy refresh schedule.
#include <gtest/gtest.h>

#include <Eigen/Core>
#include <string>
#include <vector>

#include "lowrank/backend/cpu/ops.hpp"
#include "lowrank/io/npy.hpp"
#include "lowrank/projection/projected_adam.hpp"
#include "lowrank/projection/projector.hpp"

namespace lowrank::test::galore_fixture_tests {
namespace {

using matf = Eigen::MatrixXf;

matf fixture(const std::string& name) {
  // Appended piece by piece: GCC 12 misreports `std::string(...) + "/" + name` under
  // -Warray-bounds (its bug 105651) when this file is compiled with the tests' precompiled header.
  std::string path = LOWRANK_TEST_PROJECTION_FIXTURE_DIR;
  path += '/';
  path += name;
  path += ".npy";
  return io::read_npy<float>(path);
}

/// Row t of a (steps, m n) fixture as the m x n matrix it flattens (row-major).
matf step_matrix(const matf& rows, index_t t, index_t m, index_t n) {
  matf x(m, n);
  for (index_t i = 0; i < m; ++i) {
    for (index_t j = 0; j < n; ++j) x(i, j) = rows(t, i * n + j);
  }
  return x;
}

struct projector_case {
  const char* name;
  projection_side side;
  index_t rank;
};

// The reference stores the right basis as P = V^T (r x n), ours V; the
// fixtures' signs follow our rule, so bases compare entry by entry. The
// gradients have a gap s_r / s_{r+1} >= 1.5, so the float SVDs agree to a few
// hundred ulps of the largest entries.
TEST(galore_fixtures, projector_bases_and_projections) {
  context<cpu> ctx(2);
  for (const auto& c : {projector_case{"std_tall", projection_side::standard, 3},
                        projector_case{"std_wide", projection_side::standard, 3},
                        projector_case{"std_square", projection_side::standard, 4},
                        projector_case{"reverse_std_tall", projection_side::reverse_standard, 3},
                        projector_case{"right_wide", projection_side::right, 3},
                        projector_case{"left_tall", projection_side::left, 3}}) {
    SCOPED_TRACE(c.name);
    const std::string base = std::string("projector_") + c.name + "_";
    const matf g = fixture(base + "G");
    const matf p_ref = fixture(base + "P");
    const matf r_ref = fixture(base + "R");
    projector<float> p(g.rows(), g.cols(),
                       {.rank = c.rank, .side = c.side, .method = refresh_method::exact});
    ASSERT_EQ(p.refresh(ctx, as_const(view(g))), refresh_outcome::refreshed);
    matf r(p.projected_rows(), p.projected_cols());
    p.project(ctx, as_const(view(g)), view(r));
    ASSERT_EQ(r.rows(), r_ref.rows());
    ASSERT_EQ(r.cols(), r_ref.cols());
    if (p.side() == projection_side::left) {
      matf u(g.rows(), p.rank());
      ops<cpu>::copy(ctx, p.left_basis(), view(u));
      EXPECT_LT((u - p_ref).cwiseAbs().maxCoeff(), 1e-5f);
    } else {
      matf v(g.cols(), p.rank());
      ops<cpu>::copy(ctx, p.right_basis(), view(v));
      EXPECT_LT((v.transpose() - p_ref).cwiseAbs().maxCoeff(), 1e-5f);
    }
    EXPECT_LT((r - r_ref).cwiseAbs().maxCoeff(), 1e-5f * g.cwiseAbs().maxCoeff());
  }
}

struct trajectory_case {
  const char* name;
  bool projected;
  residual_mode residual;
  double weight_decay;
};

// 11 steps fed the reference's gradients; W after every step compared. A
// step's rounding differs from torch's by an ulp or so (we round each element
// once from double; torch rounds each operation in float), and the steps add
// it up: 1e-5 absolute on weights of size ~1.
TEST(galore_fixtures, adamw_and_fira_trajectories) {
  context<cpu> ctx(2);
  for (const auto& c : {trajectory_case{"adamw_tall", true, residual_mode::none, 0.1},
                        trajectory_case{"adamw_wide", true, residual_mode::none, 0.1},
                        trajectory_case{"adamw_plain", false, residual_mode::none, 0.1},
                        trajectory_case{"fira_tall", true, residual_mode::fira_reference, 0.0}}) {
    SCOPED_TRACE(c.name);
    const std::string base = std::string(c.name) + "_";
    matf w = fixture(base + "W0");
    const matf grads = fixture(base + "G");
    const matf weights = fixture(base + "W");
    projected_adam<float> opt(
        {.lr = 0.01, .eps = 1e-6, .weight_decay = c.weight_decay, .residual = c.residual});
    const index_t i =
        c.projected
            ? opt.add(ctx, view(w),
                      {.rank = 3, .method = refresh_method::exact, .update_gap = 3, .scale = 0.25})
            : opt.add_plain(ctx, view(w));
    for (index_t t = 0; t < grads.rows(); ++t) {
      const matf g = step_matrix(grads, t, w.rows(), w.cols());
      ASSERT_EQ(opt.step(ctx, i, as_const(view(g))), step_outcome::applied);
      const matf want = step_matrix(weights, t, w.rows(), w.cols());
      EXPECT_LT((w - want).cwiseAbs().maxCoeff(), 1e-5f) << "after step " << t;
    }
    if (c.projected) {
      EXPECT_EQ(opt.projector_of(i)->refreshes(), 4u);  // steps 0, 3, 6, 9
    }
  }
}

// Q-GaLore's 4-bit basis: the dequantized basis and the projection. The
// fixtures' values sit at least 2.3e-3 code steps from a rounding tie, so our
// float SVD gives the reference's codes; the scales then agree to float
// rounding.
TEST(galore_fixtures, qgalore_quantized_bases) {
  context<cpu> ctx(2);
  for (const bool left : {false, true}) {
    const std::string base = std::string("qgalore_quant_") + (left ? "left" : "right") + "_";
    SCOPED_TRACE(base);
    const matf g = fixture(base + "G");
    const matf p_hat = fixture(base + "P_hat");
    const matf r_ref = fixture(base + "R");
    projector<float> p(g.rows(), g.cols(),
                       {.rank = 8, .method = refresh_method::exact, .quantize_bits = 4});
    ASSERT_EQ(p.side(), left ? projection_side::left : projection_side::right);
    ASSERT_EQ(p.refresh(ctx, as_const(view(g))), refresh_outcome::refreshed);
    const auto basis = p.basis_copy(ctx, left);
    const matf ours = left ? matf(basis) : matf(basis.transpose());
    ASSERT_EQ(ours.rows(), p_hat.rows());
    EXPECT_LT((ours - p_hat).cwiseAbs().maxCoeff(), 1e-5f);
    matf r(p.projected_rows(), p.projected_cols());
    p.project(ctx, as_const(view(g)), view(r));
    EXPECT_LT((r - r_ref).cwiseAbs().maxCoeff(), 1e-5f * g.cwiseAbs().maxCoeff());
  }
}

// The lazy rule over 120 steps of a slowly drifting 32 x 32 gradient (gap 4,
// queue 5, threshold 0.4, doubling): the same refresh steps, the same gap
// after every step, and the same signed cosines.
TEST(galore_fixtures, qgalore_lazy_schedule) {
  context<cpu> ctx(1);
  const matf grads = fixture("qgalore_lazy_G");
  const matf steps = fixture("qgalore_lazy_refresh_steps");
  const matf gaps = fixture("qgalore_lazy_gaps");
  const matf cosines = fixture("qgalore_lazy_cosines");
  projector<float> p(32, 32,
                     {.rank = 8,
                      .method = refresh_method::exact,
                      .update_gap = 4,
                      .quantize_bits = 4,
                      .lazy = true});
  std::vector<float> refreshed;
  std::vector<float> seen;
  for (index_t t = 0; t < grads.rows(); ++t) {
    if (p.due(std::uint64_t(t))) {
      const matf g = step_matrix(grads, t, 32, 32);
      ASSERT_EQ(p.refresh(ctx, as_const(view(g))), refresh_outcome::refreshed);
      refreshed.push_back(float(t));
      if (p.refreshes() > 1) seen.push_back(float(p.cosines().back()));
    }
    EXPECT_EQ(float(p.current_gap()), gaps(t, 0)) << "after step " << t;
  }
  ASSERT_EQ(refreshed.size(), std::size_t(steps.size()));
  for (std::size_t k = 0; k < refreshed.size(); ++k) EXPECT_EQ(refreshed[k], steps(index_t(k), 0));
  ASSERT_EQ(seen.size(), std::size_t(cosines.size()));
  for (std::size_t k = 0; k < seen.size(); ++k) {
    EXPECT_NEAR(seen[k], cosines(index_t(k), 0), 1e-5f) << "refresh " << k + 1;
  }
}

}  // namespace
}  // namespace lowrank::test::galore_fixture_tests
