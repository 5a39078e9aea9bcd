// The SVD-free DCT projector (projector with refresh_method::dct): against
// the selection rule of IST-DASLab's FFTLowRankProjector (fixtures from
// tools/make_dct_fixtures.py, tests/basis/fixtures/README.md), the l2 rule
// against brute force over r-subsets, R read out of the transform, stable
// slots and 0/1 transitions, the optimizer with it, checkpoints, bad input.
#include <unistd.h>

#include <gtest/gtest.h>

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "lowrank/basis/dct.hpp"
#include "lowrank/io/npy.hpp"
#include "lowrank/projection/projected_adam.hpp"
#include "lowrank/projection/projector.hpp"
#include "support/backends.hpp"
#include "support/dct_reference.hpp"

namespace lowrank::test::dct_projector_tests {
namespace {

template <class Config>
class dct_projector_test : public backend_test<Config> {};
TYPED_TEST_SUITE(dct_projector_test, test_configs, config_names);

Eigen::MatrixXd fixture(const std::string& name) {
  return io::read_npy<double>(std::string(LOWRANK_TEST_BASIS_FIXTURE_DIR) + "/" + name + ".npy");
}

projector_options dct_options(index_t rank, dct_score norm,
                              projection_side side = projection_side::standard) {
  projector_options o;
  o.rank = rank;
  o.method = refresh_method::dct;
  o.dct_norm = norm;
  o.side = side;
  o.update_gap = 1;
  return o;
}

std::vector<std::int32_t> sorted(std::vector<std::int32_t> v) {
  std::sort(v.begin(), v.end());
  return v;
}

// Fixture cases: shapes, ranks and sides of tests/basis/fixtures/proj_cases.json.
struct fixture_case {
  const char* name;
  index_t rank;
  bool left;
};
constexpr fixture_case fixture_cases[] = {{"right_40x24_r5", 5, false},
                                          {"left_24x40_r6", 6, true},
                                          {"right_33x17_r4", 4, false},
                                          {"left_17x33_r4", 4, true}};

// The fixtures' G are well separated at the cut (relative score gap > 1e-2),
// so float and double select the same indices; R and the back-projection are
// orthonormal transforms of G: a few ulp of ||G|| times the lengths' sqrt.
TYPED_TEST(dct_projector_test, selects_and_projects_as_the_reference) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  auto ctx = make_context<B>(2);
  for (const auto& c : fixture_cases) {
    for (const dct_score norm : {dct_score::l1, dct_score::l2}) {
      const std::string base = std::string("proj_") + c.name + "_";
      const std::string tag = norm == dct_score::l1 ? "l1" : "l2";
      SCOPED_TRACE(base + tag);
      const Eigen::MatrixXd g = fixture(base + "G");
      const Eigen::MatrixXd idx_ref = fixture(base + "idx_" + tag);
      const Eigen::MatrixXd r_ref = fixture(base + "R_" + tag);
      projector<T, B> p(g.rows(), g.cols(), dct_options(c.rank, norm));
      ASSERT_EQ(p.side(), c.left ? projection_side::left : projection_side::right);
      const auto gb = to_backend<B>(ctx, host_matrix<T>(g.template cast<T>()));
      matrix<T, B> r(ctx, p.projected_rows(), p.projected_cols());
      EXPECT_EQ(p.refresh(ctx, gb.view(), r.view()), refresh_outcome::refreshed);
      const auto& idx = p.indices(c.left);
      ASSERT_EQ(index_t(idx.size()), c.rank);
      const auto s = sorted(idx);
      for (index_t i = 0; i < c.rank; ++i) EXPECT_EQ(s[std::size_t(i)], int(idx_ref(i))) << i;
      // R in slot order against the fixture's R in ascending index order.
      const Eigen::MatrixXd rh = to_host(ctx, r);
      const double tol = 16 * eps<T> * g.norm();
      for (index_t slot = 0; slot < c.rank; ++slot) {
        const auto at = std::find(s.begin(), s.end(), idx[std::size_t(slot)]) - s.begin();
        const Eigen::VectorXd got =
            c.left ? Eigen::VectorXd(rh.row(slot).transpose()) : Eigen::VectorXd(rh.col(slot));
        const Eigen::VectorXd want =
            c.left ? Eigen::VectorXd(r_ref.row(at).transpose()) : Eigen::VectorXd(r_ref.col(at));
        EXPECT_LE((got - want).cwiseAbs().maxCoeff(), tol) << slot;
      }
      // project() with the basis vectors gives the same R; reconstruct the
      // orthogonal projection of G (the fixture's back-projection).
      matrix<T, B> r2(ctx, p.projected_rows(), p.projected_cols());
      p.project(ctx, gb.view(), r2.view());
      EXPECT_LE((to_host(ctx, r2) - rh).cwiseAbs().maxCoeff(), tol);
      if (norm == dct_score::l2) {
        matrix<T, B> back(ctx, g.rows(), g.cols());
        p.reconstruct(ctx, as_const(r.view()), T(1), T(0), back.view());
        EXPECT_LE((to_host(ctx, back) - fixture(base + "back_l2")).cwiseAbs().maxCoeff(), tol);
      }
    }
  }
}

// ||G - G Q_I Q_I^T||_F over every r-subset I of the basis: the l2 rule's
// choice attains the minimum (to rounding), on small random G.
TYPED_TEST(dct_projector_test, l2_selection_is_the_best_subset_by_brute_force) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  auto ctx = make_context<B>(1);
  const index_t m = 9;
  const index_t n = 7;
  const Eigen::MatrixXd c = dct_matrix(n);
  for (const index_t rank : {1, 2, 3, 4}) {
    for (int trial = 0; trial < 3; ++trial) {
      const Eigen::MatrixXd g = Eigen::MatrixXd::Random(m, n).cast<T>().template cast<double>();
      projector<T, B> p(m, n, dct_options(rank, dct_score::l2, projection_side::right));
      const auto gb = to_backend<B>(ctx, host_matrix<T>(g.template cast<T>()));
      p.refresh(ctx, gb.view());
      const auto residual = [&](const std::vector<index_t>& set) {
        Eigen::MatrixXd q(n, index_t(set.size()));
        for (std::size_t i = 0; i < set.size(); ++i) q.col(index_t(i)) = c.row(set[i]).transpose();
        return (g - g * q * q.transpose()).norm();
      };
      const auto chosen = p.indices(false);
      const double ours = residual(std::vector<index_t>(chosen.begin(), chosen.end()));
      double best = 1e300;
      for (unsigned mask = 0; mask < (1u << n); ++mask) {
        if (__builtin_popcount(mask) != rank) continue;
        std::vector<index_t> set;
        for (index_t j = 0; j < n; ++j) {
          if (mask & (1u << j)) set.push_back(j);
        }
        best = std::min(best, residual(set));
      }
      EXPECT_LE(ours, best * (1 + 64 * eps<T>)) << "rank " << rank;
    }
  }
}

// A second refresh keeps the slot of every index still selected; the
// transition is [new_i == old_j] and the overlap the fraction kept; the
// state is r int32 per side plus the transitions.
TYPED_TEST(dct_projector_test, slots_are_stable_and_transitions_are_selections) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  auto ctx = make_context<B>(1);
  const index_t m = 12;
  const index_t n = 10;
  const Eigen::MatrixXd c = dct_matrix(n);
  // G = sum_k w_k u_k c_k^T over chosen frequencies: the scores are w_k.
  const auto make = [&](const std::vector<std::pair<index_t, double>>& freq) {
    Eigen::MatrixXd g = Eigen::MatrixXd::Zero(m, n);
    index_t row = 0;
    for (const auto& [k, w] : freq) {
      Eigen::VectorXd u = Eigen::VectorXd::Zero(m);
      u(row++) = w;
      g += u * c.row(k);
    }
    return g;
  };
  projector<T, B> p(m, n, dct_options(3, dct_score::l2, projection_side::right));
  const auto g1 =
      to_backend<B>(ctx, host_matrix<T>(make({{2, 5}, {7, 4}, {4, 3}}).template cast<T>()));
  p.refresh(ctx, g1.view());
  EXPECT_EQ(p.indices(false), (std::vector<std::int32_t>{2, 7, 4}));  // by score
  EXPECT_EQ(p.transition_right().size(), 0);
  const auto g2 =
      to_backend<B>(ctx, host_matrix<T>(make({{9, 6}, {4, 5}, {2, 1}}).template cast<T>()));
  p.refresh(ctx, g2.view());
  // 2 and 4 keep slots 0 and 2; 9 takes the freed slot 1.
  EXPECT_EQ(p.indices(false), (std::vector<std::int32_t>{2, 9, 4}));
  host_matrix<T> ht(3, 3);
  ops<B>::download(ctx, p.transition_right(), view(ht));
  const Eigen::MatrixXd h = ht.template cast<double>();
  Eigen::MatrixXd want = Eigen::MatrixXd::Zero(3, 3);
  want(0, 0) = 1;
  want(2, 2) = 1;
  EXPECT_TRUE(h == want);
  EXPECT_DOUBLE_EQ(p.overlap(), 2.0 / 3.0);
  EXPECT_EQ(p.left_basis().size(), 0);
  EXPECT_EQ(p.right_basis().size(), 0);
  EXPECT_EQ(p.state_bytes(), sizeof(T) * 9 + sizeof(std::int32_t) * 3);
  // basis_copy computes the selected rows of C.
  const Eigen::MatrixXd v = to_host(ctx, p.basis_copy(ctx, false));
  for (index_t i = 0; i < 3; ++i) {
    EXPECT_LE((v.col(i) - c.row(p.indices(false)[std::size_t(i)]).transpose()).norm(), 4 * eps<T>);
  }
}

TYPED_TEST(dct_projector_test, left_right_and_two_sided_projections_agree_with_explicit_c) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  auto ctx = make_context<B>(2);
  const index_t m = 30;
  const index_t n = 20;
  const Eigen::MatrixXd g = Eigen::MatrixXd::Random(m, n).cast<T>().template cast<double>();
  const auto gb = to_backend<B>(ctx, host_matrix<T>(g.template cast<T>()));
  const Eigen::MatrixXd cm = dct_matrix(m);
  const Eigen::MatrixXd cn = dct_matrix(n);
  const double tol = 32 * eps<T> * g.norm();
  for (const auto side :
       {projection_side::left, projection_side::right, projection_side::two_sided}) {
    for (const dct_score norm : {dct_score::l1, dct_score::l2}) {
      SCOPED_TRACE(int(side) * 10 + int(norm));
      projector<T, B> p(m, n, dct_options(6, norm, side));
      matrix<T, B> r(ctx, p.projected_rows(), p.projected_cols());
      p.refresh(ctx, gb.view(), r.view());
      Eigen::MatrixXd u(m, 6);
      Eigen::MatrixXd v(n, 6);
      const Eigen::MatrixXd sl = cm * g;
      const Eigen::MatrixXd sr = g * cn.transpose();
      // The scores recomputed on the host pick the same top 6.
      const auto check = [&](bool left, const Eigen::MatrixXd& s, Eigen::MatrixXd& basis) {
        Eigen::VectorXd score(left ? m : n);
        for (index_t j = 0; j < score.size(); ++j) {
          const Eigen::VectorXd x =
              left ? Eigen::VectorXd(s.row(j).transpose()) : Eigen::VectorXd(s.col(j));
          score(j) = norm == dct_score::l1 ? x.lpNorm<1>() : x.squaredNorm();
        }
        const auto& idx = p.indices(left);
        ASSERT_EQ(idx.size(), 6u);
        double lowest_in = 1e300;
        for (const auto k : idx) lowest_in = std::min(lowest_in, score(k));
        for (index_t j = 0; j < score.size(); ++j) {
          if (std::find(idx.begin(), idx.end(), j) == idx.end()) {
            EXPECT_LE(score(j), lowest_in * (1 + 1e-4));
          }
        }
        for (index_t i = 0; i < 6; ++i) {
          basis.col(i) = (left ? cm : cn).row(idx[std::size_t(i)]).transpose();
        }
      };
      Eigen::MatrixXd want;
      if (side != projection_side::right) check(true, sl, u);
      if (side != projection_side::left) check(false, sr, v);
      if (side == projection_side::left) want = u.transpose() * g;
      if (side == projection_side::right) want = g * v;
      if (side == projection_side::two_sided) want = u.transpose() * g * v;
      EXPECT_LE((to_host(ctx, r) - want).cwiseAbs().maxCoeff(), tol);
      matrix<T, B> back(ctx, m, n);
      p.project_back(ctx, as_const(r.view()), back.view());
      Eigen::MatrixXd back_want;
      if (side == projection_side::left) back_want = u * want;
      if (side == projection_side::right) back_want = want * v.transpose();
      if (side == projection_side::two_sided) back_want = u * want * v.transpose();
      EXPECT_LE((to_host(ctx, back) - back_want).cwiseAbs().maxCoeff(), tol);
    }
  }
}

// DCT-AdamW: projected_adam with a dct projector refreshing every step,
// decoupled semantics, moments rotated; the step equals the same arithmetic
// on the host with the selected basis; save and load resume bit for bit.
TYPED_TEST(dct_projector_test, projected_adam_steps_save_and_resume) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  auto ctx = make_context<B>(2);
  const index_t m = 24;
  const index_t n = 16;
  const Eigen::MatrixXd w0 = Eigen::MatrixXd::Random(m, n).cast<T>().template cast<double>();
  std::vector<Eigen::MatrixXd> grads;
  for (int t = 0; t < 6; ++t) {
    grads.push_back(Eigen::MatrixXd::Random(m, n).cast<T>().template cast<double>());
  }
  projected_adam_options o;
  o.lr = 1e-2;
  o.semantics = adam_semantics::decoupled;
  o.moments = moment_policy::rotate;
  o.eps = 1e-8;
  auto w = to_backend<B>(ctx, host_matrix<T>(w0.template cast<T>()));
  projected_adam<T, B> opt(o);
  projector_options po = dct_options(4, dct_score::l2);
  opt.add(ctx, w.view(), po);
  for (int t = 0; t < 3; ++t) {
    const auto g = to_backend<B>(ctx, host_matrix<T>(grads[std::size_t(t)].template cast<T>()));
    EXPECT_EQ(opt.step(ctx, 0, g.view()), step_outcome::applied);
  }
  const auto dir = std::filesystem::temp_directory_path();
  const auto file = dir / ("lowrank_dct_adam_" + std::to_string(::getpid()) + ".safetensors");
  opt.save(ctx, file);
  auto w2 = to_backend<B>(ctx, host_matrix<T>(to_host(ctx, w).template cast<T>()));
  projected_adam<T, B> resumed(o);
  resumed.add(ctx, w2.view(), po);
  resumed.load(ctx, file);
  for (int t = 3; t < 6; ++t) {
    const auto g = to_backend<B>(ctx, host_matrix<T>(grads[std::size_t(t)].template cast<T>()));
    opt.step(ctx, 0, g.view());
    resumed.step(ctx, 0, g.view());
  }
  EXPECT_TRUE(to_host(ctx, w) == to_host(ctx, w2));
  // The weight moved only inside the span of the bases used: each update is
  // R' C[idx, :] (right side), so the change is finite and nonzero.
  const double moved = (to_host(ctx, w) - w0).norm();
  EXPECT_GT(moved, 0);
  EXPECT_TRUE(std::isfinite(moved));
  // A corrupted index is refused on load, the live state unchanged.
  {
    auto f = io::safetensors_file::read(file);
    std::vector<io::tensor_to_write> tensors;
    for (const auto& [name, info] : f.tensors()) {
      Eigen::MatrixXd x = f.template matrix<double>(name);
      if (name.find("indices_right") != std::string::npos) x(0) = double(n);  // out of range
      tensors.push_back({name,
                         name.find("indices") != std::string::npos
                             ? io::dtype::float32
                             : (std::is_same_v<T, float> ? io::dtype::float32 : io::dtype::float64),
                         x, false});
    }
    io::write_safetensors(file, tensors, f.metadata());
    const Eigen::MatrixXd before = to_host(ctx, w2);
    try {
      resumed.load(ctx, file);
      ADD_FAILURE() << "no throw";
    } catch (const invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("indices_right"), std::string::npos) << e.what();
    }
    EXPECT_TRUE(to_host(ctx, w2) == before);
  }
  std::filesystem::remove(file);
}

TYPED_TEST(dct_projector_test, bad_options_are_refused) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  auto ctx = make_context<B>(1);
  projector_options o = dct_options(3, dct_score::l2);
  o.quantize_bits = 4;
  EXPECT_THROW((projector<T, B>(10, 8, o)), invalid_argument);
  projector<T, B> p(10, 8, dct_options(3, dct_score::l2));
  matrix<T, B> u(ctx, 10, 3);
  matrix<T, B> v(ctx, 8, 3);
  EXPECT_THROW(p.set_basis(ctx, as_const(u.view()), as_const(v.view())), invalid_argument);
  matrix<T, B> g(ctx, 10, 8);
  ops<B>::fill(ctx, g.view(), std::numeric_limits<T>::quiet_NaN());
  EXPECT_EQ(p.refresh(ctx, as_const(g.view())), refresh_outcome::skipped_non_finite);
  EXPECT_FALSE(p.has_basis());
}

}  // namespace
}  // namespace lowrank::test::dct_projector_tests
