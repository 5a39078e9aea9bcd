// Spectral statistics, intruder dimensions, rank allocation, activation-aware factoring and
// EoRA's correction (lowrank/checkpoint/spectrum.hpp, lowrank/checkpoint/compress.hpp),
// against the truth: matrices built with known singular values, the Eckart-Young optimum
// in the whitened norm, and numpy's figures on a fixture (tools/make_checkpoint_fixtures.py).
#include <gtest/gtest.h>

#include <Eigen/Core>
#include <Eigen/QR>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <vector>

#include "io/io_test_support.hpp"
#include "lowrank/checkpoint/compress.hpp"
#include "lowrank/checkpoint/spectrum.hpp"
#include "lowrank/io/checkpoint.hpp"
#include "lowrank/io/peft.hpp"

#ifndef LOWRANK_TEST_CHECKPOINT_FIXTURE_DIR
#error "LOWRANK_TEST_CHECKPOINT_FIXTURE_DIR must name tests/checkpoint/fixtures"
#endif

namespace checkpoint_compress_tests {
namespace {

using Eigen::MatrixXd;
using Eigen::VectorXd;
using io_test::error_message;

// Q with orthonormal columns, m x k, from a seeded Gaussian.
MatrixXd orthonormal(Eigen::Index m, Eigen::Index k, unsigned seed) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> normal;
  MatrixXd g(m, k);
  for (Eigen::Index j = 0; j < k; ++j) {
    for (Eigen::Index i = 0; i < m; ++i) g(i, j) = normal(gen);
  }
  Eigen::HouseholderQR<MatrixXd> qr(g);
  return qr.householderQ() * MatrixXd::Identity(m, k);
}

// U diag(s) V^T with the given singular values.
MatrixXd with_spectrum(Eigen::Index m, Eigen::Index n, const std::vector<double>& s,
                       unsigned seed) {
  const auto p = static_cast<Eigen::Index>(s.size());
  const VectorXd sv = Eigen::Map<const VectorXd>(s.data(), p);
  return orthonormal(m, p, seed) * sv.asDiagonal() * orthonormal(n, p, seed + 1).transpose();
}

TEST(checkpoint_spectrum, StatisticsOfAKnownSpectrum) {
  const std::vector<double> s = {4, 2, 1, 1, 0.5, 0};
  const auto a = with_spectrum(9, 6, s, 1);
  const std::vector<double> got = lowrank::spectrum_of<double>(a);
  ASSERT_EQ(got.size(), 6u);
  // A double SVD is backward stable: each value within a few eps of ||A||.
  for (std::size_t i = 0; i < s.size(); ++i) EXPECT_NEAR(got[i], s[i], 1e-13) << i;
  const auto st = lowrank::spectrum_stats(s, 9, 6);
  EXPECT_DOUBLE_EQ(st.frobenius, std::sqrt(16 + 4 + 1 + 1 + 0.25));
  EXPECT_DOUBLE_EQ(st.spectral, 4);
  EXPECT_DOUBLE_EQ(st.stable_rank, 22.25 / 16);
  const double total = 8.5;
  double h = 0;
  for (const double x : s) {
    if (x > 0) h -= x / total * std::log(x / total);
  }
  EXPECT_NEAR(st.effective_rank, std::exp(h), 1e-14);
  // Energies 16, 20, 21, 22, 22.25 of 22.25: 90% needs 20.025 -> k = 3; 99% needs
  // 22.0275 and 99.9% 22.228 -> k = 5.
  EXPECT_EQ(st.energy_rank_90, 3);
  EXPECT_EQ(st.energy_rank_99, 5);
  EXPECT_EQ(st.energy_rank_999, 5);
  EXPECT_EQ(lowrank::energy_rank(s, 0.98), 4);
  EXPECT_EQ(st.break_even_rank, 3);  // 3 * 15 = 45 < 54, 4 * 15 = 60 >= 54
  // The zero matrix.
  const auto zero = lowrank::spectrum_stats({0, 0}, 2, 2);
  EXPECT_EQ(zero.frobenius, 0);
  EXPECT_EQ(zero.effective_rank, 0);
  EXPECT_EQ(zero.energy_rank_90, 0);
  // Break-even ranks of LLaMA-7B's shapes (wave2.md 8.1).
  EXPECT_EQ(lowrank::break_even_rank(4096, 4096), 2047);
  EXPECT_EQ(lowrank::break_even_rank(11008, 4096), 2985);
  EXPECT_EQ(lowrank::break_even_rank(1, 100), 0);
  // Bad spectra.
  EXPECT_NE(error_message([] {
              (void)lowrank::spectrum_stats({1, 2}, 3, 3);
            }).find("descending"),
            std::string::npos);
  EXPECT_NE(error_message([] {
              (void)lowrank::spectrum_stats({1, 1, 1, 1}, 3, 3);
            }).find("at most min(rows, cols) = 3"),
            std::string::npos);
}

TEST(checkpoint_spectrum, WeLoreRule) {
  // s^ = (s - 1) / 9: 1, 0.5, 0.1, 0.0111, 0.
  const std::vector<double> s = {10, 5.5, 1.9, 1.1, 1};
  EXPECT_EQ(lowrank::welore_prune_count(s, 0.0225), 2);
  EXPECT_EQ(lowrank::welore_prune_count(s, 0.115), 3);
  EXPECT_EQ(lowrank::welore_prune_count(s, 0.6), 4);
  EXPECT_EQ(lowrank::welore_prune_count({3, 3, 3}, 0.5), 0);
  EXPECT_TRUE(lowrank::welore_is_low_rank(s, 0.115, 0.4999));    // 3 / 5 > 0.4999
  EXPECT_FALSE(lowrank::welore_is_low_rank(s, 0.0225, 0.4999));  // 2 / 5
  EXPECT_DOUBLE_EQ(lowrank::welore_tau(50), 0.175);
  EXPECT_NE(error_message([] { (void)lowrank::welore_tau(15); }).find("one of WeLore's"),
            std::string::npos);
}

// numpy's figures (float64, from the stored values) on a fixture of F32, F16, BF16 and F64
// matrices: the singular values agree to a few eps of s_1 (both are backward-stable SVDs of
// the same double matrix), the statistics to 1e-12 relative, the integer ranks exactly.
TEST(checkpoint_spectrum, AgreesWithNumpyOnTheFixture) {
  const std::filesystem::path dir = LOWRANK_TEST_CHECKPOINT_FIXTURE_DIR;
  std::ifstream in(dir / "spectra_expected.json");
  ASSERT_TRUE(in.good());
  const auto expected = nlohmann::json::parse(in);
  const auto c = lowrank::io::checkpoint::open(dir / "spectra.safetensors");
  std::vector<double> taus = expected.at("welore_taus").get<std::vector<double>>();
  int checked = 0;
  for (const auto& e : c.tensors()) {
    if (e.info.shape.size() != 2) {
      EXPECT_FALSE(expected.at("tensors").contains(e.name));
      continue;
    }
    SCOPED_TRACE(e.name);
    const auto& x = expected.at("tensors").at(e.name);
    const MatrixXd w = c.matrix<double>(e.name);
    const auto s = lowrank::spectrum_of<double>(w);
    const auto ref = x.at("singular_values").get<std::vector<double>>();
    ASSERT_EQ(s.size(), ref.size());
    for (std::size_t i = 0; i < s.size(); ++i) EXPECT_NEAR(s[i], ref[i], 1e-13 * ref[0]) << i;
    const auto st = lowrank::spectrum_stats(s, w.rows(), w.cols());
    EXPECT_EQ(st.rows, x.at("rows").get<int>());
    EXPECT_NEAR(st.frobenius, x.at("fro").get<double>(), 1e-12 * st.frobenius);
    EXPECT_NEAR(st.spectral, x.at("spectral").get<double>(), 1e-12 * st.spectral);
    EXPECT_NEAR(st.stable_rank, x.at("stable_rank").get<double>(), 1e-12 * st.stable_rank);
    EXPECT_NEAR(st.effective_rank, x.at("effective_rank").get<double>(), 1e-9 * st.effective_rank);
    EXPECT_EQ(st.energy_rank_90, x.at("energy_rank_90").get<int>());
    EXPECT_EQ(st.energy_rank_99, x.at("energy_rank_99").get<int>());
    EXPECT_EQ(st.energy_rank_999, x.at("energy_rank_999").get<int>());
    EXPECT_EQ(st.break_even_rank, x.at("break_even_rank").get<int>());
    const auto prune = x.at("welore_k_prune").get<std::vector<int>>();
    for (std::size_t t = 0; t < taus.size(); ++t) {
      // A value within rounding of tau may fall either side: compare on numpy's values.
      EXPECT_EQ(lowrank::welore_prune_count(ref, taus[t]), prune[t]) << taus[t];
    }
    ++checked;
  }
  EXPECT_EQ(checked, 5);
}

TEST(checkpoint_spectrum, IntruderDimensions) {
  // Base: 12 x 8 with a decaying spectrum. Tuned: the base plus one strong new direction
  // orthogonal to every base left singular vector (there is room: 12 > 8).
  const MatrixXd base = with_spectrum(12, 8, {8, 7, 6, 5, 4, 3, 2, 1}, 5);
  Eigen::JacobiSVD<MatrixXd> b(base, Eigen::ComputeThinU);
  const MatrixXd u0 = b.matrixU();
  VectorXd outside = orthonormal(12, 1, 9).col(0);
  outside -= u0 * (u0.transpose() * outside);
  outside.normalize();
  const MatrixXd tuned = base + 20 * outside * orthonormal(8, 1, 10).col(0).transpose();
  Eigen::JacobiSVD<MatrixXd> t(tuned, Eigen::ComputeThinU);
  const auto r = lowrank::intruder_dimensions<double>(u0, t.matrixU(), 10, 0.5);
  ASSERT_EQ(r.max_abs_cos.size(), 8u);  // min(top_k, columns)
  ASSERT_EQ(r.intruders.size(), 1u);
  EXPECT_EQ(r.intruders[0], 0);  // the new direction is the largest
  // Not exactly 0: the new term's right vector mixes with the base's through W W^T.
  EXPECT_LT(r.max_abs_cos[0], 0.5);
  for (std::size_t j = 1; j < r.max_abs_cos.size(); ++j) EXPECT_GE(r.max_abs_cos[j], 0.5) << j;
  // The base against itself: every |cos| is 1.
  const auto same = lowrank::intruder_dimensions<double>(u0, u0);
  EXPECT_TRUE(same.intruders.empty());
  for (const double c : same.max_abs_cos) EXPECT_NEAR(c, 1, 1e-12);
  EXPECT_NE(error_message([&] {
              (void)lowrank::intruder_dimensions<double>(u0, u0, 0);
            }).find("'top_k' is 0"),
            std::string::npos);
}

// PEFT's reduce_intruder_dimension on the fixture's LoRA model (tools/make_checkpoint_fixtures.py,
// PEFT 0.21.2): the same intruders, and the same mitigated update s B' A' to float32 rounding
// (PEFT's SVDs are float32; the fixture's own float64 check agrees to 1e-6 relative).
TEST(checkpoint_spectrum, ReduceIntruderDimensionMatchesPeft) {
  const std::filesystem::path dir = LOWRANK_TEST_CHECKPOINT_FIXTURE_DIR;
  std::ifstream in(dir / "intruder_expected.json");
  const auto expected = nlohmann::json::parse(in);
  const auto base = lowrank::io::checkpoint::open(dir / "intruder_base.safetensors");
  const auto adapter = lowrank::io::read_peft_adapter<double>(dir / "intruder_adapter");
  ASSERT_EQ(adapter.modules.size(), 2u);
  for (const auto& m : adapter.modules) {
    SCOPED_TRACE(m.name);
    const auto& x = expected.at("modules").at(m.name);
    const MatrixXd w0 = base.matrix<double>(m.name + ".weight");
    const auto r = lowrank::reduce_intruder_dimension<double>(
        w0, m.b, m.a, m.scaling(), expected.at("top_k").get<int>(),
        expected.at("epsilon").get<double>(), expected.at("lambda").get<double>());
    std::vector<int> intruders(r.intruders.intruders.begin(), r.intruders.intruders.end());
    EXPECT_EQ(intruders, x.at("intruders").get<std::vector<int>>());
    const auto rows = x.at("delta_after").get<std::vector<std::vector<double>>>();
    MatrixXd want(static_cast<Eigen::Index>(rows.size()),
                  static_cast<Eigen::Index>(rows[0].size()));
    for (Eigen::Index i = 0; i < want.rows(); ++i) {
      for (Eigen::Index j = 0; j < want.cols(); ++j) {
        want(i, j) = rows[static_cast<std::size_t>(i)][static_cast<std::size_t>(j)];
      }
    }
    const MatrixXd got = m.scaling() * r.b * r.a;
    EXPECT_EQ(r.b.cols(), x.at("rank_after").get<int>());
    EXPECT_LT((got - want).norm(), 1e-5 * want.norm());
  }
  // Without intruders (the base against itself: lambda has nothing to act on).
  const auto& q = adapter.modules[0];
  const MatrixXd w0 = base.matrix<double>(q.name + ".weight");
  const auto none = lowrank::reduce_intruder_dimension<double>(w0, q.b * 0, q.a, 1.0);
  EXPECT_TRUE(none.intruders.intruders.empty());
  EXPECT_TRUE(io_test::same_matrix(none.a, q.a));
  EXPECT_NE(error_message([&] {
              (void)lowrank::reduce_intruder_dimension<double>(w0, q.b, q.a, 1.0, 10, 0.5, 1.5);
            }).find("the share kept, in [0, 1]"),
            std::string::npos);
}

// Inputs with a strongly anisotropic covariance: X = Z D, D = diag(2^-j).
MatrixXd anisotropic_inputs(Eigen::Index tokens, Eigen::Index features, unsigned seed) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> normal;
  MatrixXd x(tokens, features);
  for (Eigen::Index j = 0; j < features; ++j) {
    for (Eigen::Index i = 0; i < tokens; ++i)
      x(i, j) = normal(gen) * std::pow(2.0, -0.5 * static_cast<double>(j));
  }
  return x;
}

TEST(checkpoint_compress, ActivationStatsAccumulateTheGram) {
  const MatrixXd x = anisotropic_inputs(50, 7, 3);
  lowrank::activation_stats stats(7);
  stats.add(x.topRows(20));
  stats.add(x.bottomRows(30).cast<float>().cast<double>().eval());
  stats.add(Eigen::MatrixXf(x.topRows(0).cast<float>()));
  EXPECT_EQ(stats.count(), 50);
  MatrixXd expected = x.topRows(20).transpose() * x.topRows(20);
  const MatrixXd rest = x.bottomRows(30).cast<float>().cast<double>();
  expected += rest.transpose() * rest;
  EXPECT_LT((stats.gram() - expected).norm(), 1e-13 * expected.norm());
  EXPECT_NE(error_message([&] { stats.add(MatrixXd::Zero(2, 6)); }).find("7 columns"),
            std::string::npos);
  MatrixXd bad = MatrixXd::Zero(1, 7);
  bad(0, 3) = NAN;
  EXPECT_THROW(stats.add(bad), lowrank::numerical_error);
  EXPECT_EQ(stats.count(), 50);
}

TEST(checkpoint_compress, WhiteningAndItsFallback) {
  const MatrixXd x = anisotropic_inputs(40, 6, 4);
  const MatrixXd g = x.transpose() * x;
  const auto w = lowrank::whiten_gram(g);
  EXPECT_EQ(w.shift, 0);
  EXPECT_LT((w.l * w.l.transpose() - g).norm(), 1e-13 * g.norm());
  // Fewer tokens than features: semidefinite, SVD-LLM's fallback shifts it.
  const MatrixXd few = anisotropic_inputs(3, 6, 5);
  const MatrixXd singular = few.transpose() * few;
  const auto shifted = lowrank::whiten_gram(singular);
  EXPECT_GT(shifted.shift, 0);
  EXPECT_LT(shifted.shift, 1e-5 * singular.diagonal().mean());
  EXPECT_LT(
      (shifted.l * shifted.l.transpose() - singular - shifted.shift * MatrixXd::Identity(6, 6))
          .norm(),
      1e-12 * singular.norm());
  // Not a Gram: a clearly negative eigenvalue, an asymmetric or non-finite matrix.
  MatrixXd negative = g;
  negative(0, 0) = -g(0, 0);
  EXPECT_NE(error_message([&] {
              (void)lowrank::whiten_gram(negative);
            }).find("a positive semidefinite matrix (X^T X)"),
            std::string::npos);
  MatrixXd asymmetric = g;
  asymmetric(0, 1) += 0.1 * g.norm();
  EXPECT_NE(
      error_message([&] { (void)lowrank::whiten_gram(asymmetric); }).find("a symmetric matrix"),
      std::string::npos);
  MatrixXd nan = g;
  nan(2, 2) = NAN;
  EXPECT_THROW((void)lowrank::whiten_gram(nan), lowrank::numerical_error);
  EXPECT_THROW((void)lowrank::whiten_gram(MatrixXd::Zero(3, 3)), lowrank::numerical_error);
}

// Activation-aware truncation minimises the layer's output error among rank-k matrices:
// its error equals the Eckart-Young tail of W L's spectrum, and plain SVD (optimal for the
// weight error) does strictly worse on the output.
TEST(checkpoint_compress, ActivationAwareTruncationMinimisesTheOutputError) {
  const MatrixXd w = with_spectrum(10, 8, {5, 4, 3, 2.5, 2, 1.5, 1, 0.5}, 11);
  const MatrixXd x = anisotropic_inputs(200, 8, 12);
  const MatrixXd g = x.transpose() * x;
  const auto white = lowrank::whiten_gram(g);
  const lowrank::index_t k = 3;
  const auto aware = lowrank::factor_weight<double>(w, k, &white);
  const auto plain = lowrank::factor_weight<double>(w, k);
  const auto output_error = [&](const MatrixXd& approx) {
    return (x * (w - approx).transpose()).norm();
  };
  const double aware_error = output_error(aware.u * aware.v);
  const double plain_error = output_error(plain.u * plain.v);
  // The closed form: the tail of W L's singular values.
  const auto s = lowrank::spectrum_of<double>(MatrixXd(w * white.l));
  double tail = 0;
  for (std::size_t i = k; i < s.size(); ++i) tail += s[i] * s[i];
  EXPECT_NEAR(aware_error, std::sqrt(tail), 1e-10 * aware_error);
  EXPECT_LT(aware_error, 0.9 * plain_error);
  // The measured relative errors: of the output (whitened) and of the weight.
  EXPECT_NEAR(aware.output_relative_error, aware_error / (x * w.transpose()).norm(), 1e-10);
  EXPECT_NEAR(plain.relative_error, (w - plain.u * plain.v).norm() / w.norm(), 1e-12);
  EXPECT_GT(aware.relative_error, plain.relative_error);  // plain SVD wins on the weight
  // Bad input.
  EXPECT_NE(error_message([&] { (void)lowrank::factor_weight<double>(w, 9); }).find("[1, 8]"),
            std::string::npos);
  const auto small = lowrank::whiten_gram(MatrixXd::Identity(3, 3));
  EXPECT_NE(error_message([&] {
              (void)lowrank::factor_weight<double>(w, 2, &small);
            }).find("8 x 8 (W's columns)"),
            std::string::npos);
}

// A set of matrices with different decays, as a model's layers have.
std::vector<lowrank::matrix_spectrum> model_spectra() {
  std::vector<lowrank::matrix_spectrum> out;
  const std::vector<std::pair<int, int>> shapes = {
      {64, 64}, {64, 64}, {128, 64}, {64, 128}, {1, 64}};
  for (std::size_t j = 0; j < shapes.size(); ++j) {
    lowrank::matrix_spectrum m;
    m.name = "m" + std::to_string(j);
    m.rows = shapes[j].first;
    m.cols = shapes[j].second;
    const auto p = std::min(m.rows, m.cols);
    for (lowrank::index_t i = 0; i < p; ++i) {
      // Fast, slow, flat-ish and cliff spectra.
      const double x = static_cast<double>(i) + 1.0;
      m.singular_values.push_back(j == 0   ? std::pow(0.8, x)
                                  : j == 1 ? 1 / std::sqrt(x)
                                  : j == 2 ? (i < 8 ? 10.0 : 0.1)
                                           : 1 / x);
    }
    out.push_back(m);
  }
  return out;
}

TEST(checkpoint_compress, EveryAllocationKeepsTheBudget) {
  const auto spectra = model_spectra();
  for (const double budget : {0.2, 0.35, 0.5, 0.8, 1.0}) {
    for (const auto allocation :
         {lowrank::rank_allocation::uniform, lowrank::rank_allocation::energy,
          lowrank::rank_allocation::welore, lowrank::rank_allocation::global}) {
      SCOPED_TRACE(std::string(lowrank::name(allocation)) + " at " + std::to_string(budget));
      const auto plan = lowrank::plan_compression(spectra, budget, allocation);
      EXPECT_EQ(plan.original_parameters, 64 * 64 * 2 + 128 * 64 * 2 + 64);
      EXPECT_LE(static_cast<double>(plan.parameters),
                budget * static_cast<double>(plan.original_parameters));
      std::int64_t total = 0;
      for (const auto& e : plan.entries) {
        total += e.parameters;
        if (e.factored) {
          EXPECT_GE(e.rank, 1);
          EXPECT_LE(e.rank, lowrank::break_even_rank(e.rows, e.cols));
          EXPECT_EQ(e.parameters, std::int64_t{e.rank} * (e.rows + e.cols));
        } else {
          EXPECT_EQ(e.parameters, std::int64_t{e.rows} * e.cols);
          EXPECT_EQ(e.relative_error, 0);
        }
      }
      EXPECT_EQ(total, plan.parameters);
      EXPECT_FALSE(plan.entries[4].factored);  // 1 x 64 never shrinks
    }
  }
  // Uniform is SVD-LLM's per-matrix rank.
  const auto uniform = lowrank::plan_compression(spectra, 0.5, lowrank::rank_allocation::uniform);
  EXPECT_EQ(uniform.entries[0].rank, 16);  // floor(0.5 * 4096 / 128)
  EXPECT_EQ(uniform.entries[2].rank, 21);  // floor(0.5 * 8192 / 192)
}

// The global allocation's total squared error is at most uniform's at the same budget, and
// strictly lower here, where the spectra decay differently.
TEST(checkpoint_compress, GlobalAllocationBeatsUniform) {
  const auto spectra = model_spectra();
  for (const double budget : {0.2, 0.35, 0.5, 0.8}) {
    const auto uniform =
        lowrank::plan_compression(spectra, budget, lowrank::rank_allocation::uniform);
    const auto global =
        lowrank::plan_compression(spectra, budget, lowrank::rank_allocation::global);
    EXPECT_LT(global.squared_error_sum, uniform.squared_error_sum) << budget;
  }
}

TEST(checkpoint_compress, PlanRefusesBadBudgets) {
  const auto spectra = model_spectra();
  for (const double budget : {0.0, -0.5, 1.5, static_cast<double>(NAN)}) {
    EXPECT_NE(error_message([&] {
                (void)lowrank::plan_compression(spectra, budget, lowrank::rank_allocation::global);
              }).find("a fraction of the parameters in (0, 1]"),
              std::string::npos)
        << budget;
  }
  EXPECT_NE(error_message([&] {
              (void)lowrank::plan_compression(spectra, 0.01, lowrank::rank_allocation::uniform);
            }).find("every matrix at rank 1 already keeps"),
            std::string::npos);
  EXPECT_NE(error_message([&] {
              (void)lowrank::plan_compression({}, 0.5, lowrank::rank_allocation::uniform);
            }).find("at least one matrix"),
            std::string::npos);
}

// Compress then reconstruct: the measured error of the factors equals the plan's prediction.
TEST(checkpoint_compress, FactorsMatchThePlan) {
  std::vector<lowrank::matrix_spectrum> spectra;
  std::vector<MatrixXd> weights;
  for (unsigned j = 0; j < 3; ++j) {
    std::vector<double> s;
    for (int i = 0; i < 20; ++i) s.push_back(std::pow(0.7 + 0.1 * j, i));
    weights.push_back(with_spectrum(30, 20, s, 20 + j));
    spectra.push_back(
        {"w" + std::to_string(j), 30, 20, lowrank::spectrum_of<double>(weights.back()), 0});
  }
  const auto plan = lowrank::plan_compression(spectra, 0.3, lowrank::rank_allocation::global);
  for (std::size_t j = 0; j < 3; ++j) {
    const auto& e = plan.entries[j];
    ASSERT_TRUE(e.factored);
    const auto f = lowrank::factor_weight<double>(weights[j], e.rank);
    EXPECT_EQ(f.u.cols(), e.rank);
    EXPECT_NEAR(f.relative_error, e.relative_error, 1e-10) << j;
    // The randomized route (q = 2, p = 10): within 1e-4 of the optimum's error, relative (the
    // slowest of these spectra, 0.9^i, leaves it 3e-6 above).
    lowrank::factor_options how;
    how.randomized = true;
    const auto r = lowrank::factor_weight<double>(weights[j], e.rank, nullptr, how);
    EXPECT_LE(r.relative_error, e.relative_error * (1 + 1e-4)) << j;
    EXPECT_GE(r.relative_error, e.relative_error - 1e-12) << j;  // never beats Eckart-Young
  }
}

TEST(checkpoint_compress, EoraCorrectsTheCompressionErrorInTheWhitenedNorm) {
  const MatrixXd w = with_spectrum(12, 10, {6, 5, 4, 3, 2.5, 2, 1.5, 1, 0.7, 0.4}, 30);
  const auto x = anisotropic_inputs(300, 10, 31);
  const MatrixXd g = x.transpose() * x;
  // A lossy version: rounded to a coarse grid.
  const MatrixXd wc = (w * 4).array().round().matrix() / 4;
  const lowrank::index_t r = 3;
  const auto eora = lowrank::eora_correction<double>(w, wc, r, &g);
  const auto plain = lowrank::eora_correction<double>(w, wc, r);
  const auto out_error = [&](const MatrixXd& approx) {
    return (x * (w - approx).transpose()).norm();
  };
  const double before = out_error(wc);
  const double with_eora = out_error(wc + eora.b * eora.a);
  const double with_plain = out_error(wc + plain.b * plain.a);
  EXPECT_LT(with_eora, before);
  EXPECT_LT(with_eora, with_plain);
  // The optimum: the tail of (W - W_c) S's spectrum, S S^T = X^T X (a positive definite Gram:
  // no eigenvalue is clamped).
  const Eigen::SelfAdjointEigenSolver<MatrixXd> eig(g);
  const MatrixXd s = eig.eigenvectors() * eig.eigenvalues().cwiseSqrt().asDiagonal();
  const auto sv = lowrank::spectrum_of<double>(MatrixXd((w - wc) * s));
  double tail = 0;
  for (std::size_t i = r; i < sv.size(); ++i) tail += sv[i] * sv[i];
  EXPECT_NEAR(with_eora, std::sqrt(tail), 1e-9 * with_eora);
  // Without a Gram: the truncated SVD of W - W_c.
  const auto d = lowrank::spectrum_of<double>(MatrixXd(w - wc));
  double dtail = 0;
  for (std::size_t i = r; i < d.size(); ++i) dtail += d[i] * d[i];
  EXPECT_NEAR((w - wc - plain.b * plain.a).norm(), std::sqrt(dtail), 1e-12);
  EXPECT_NE(error_message([&] {
              (void)lowrank::eora_correction<double>(w, MatrixXd(wc.leftCols(3)), r);
            }).find("12 x 10 (W's shape)"),
            std::string::npos);
}

}  // namespace
}  // namespace checkpoint_compress_tests
