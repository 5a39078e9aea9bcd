// Rank selection by energy and by tolerance on singular values.

#include <gtest/gtest.h>

#include <cmath>

#include "lowrank/lowrank.hpp"

namespace lowrank {
namespace rank_selection_tests {
namespace {

TEST(rank_selection, energy) {
  const Eigen::VectorXd s = (Eigen::VectorXd(4) << 4, 2, 1, 1).finished();  // energies 16 4 1 1
  EXPECT_EQ(rank_for_energy(s, 16.0 / 22), 1);
  EXPECT_EQ(rank_for_energy(s, 16.0 / 22 + 1e-9), 2);
  EXPECT_EQ(rank_for_energy(s, 21.0 / 22), 3);
  EXPECT_EQ(rank_for_energy(s, 1.0), 4);
  EXPECT_EQ(rank_for_energy(Eigen::VectorXd::Zero(3), 0.5), 0);
  const Eigen::VectorXf sf = s.cast<float>();
  EXPECT_EQ(rank_for_energy(sf, 0.9), 2);
}

TEST(rank_selection, tolerance) {
  const Eigen::VectorXd s = (Eigen::VectorXd(4) << 4, 2, 1, 1).finished();
  // Residuals sqrt(22 - kept): k = 0: sqrt(22), 1: sqrt(6), 2: sqrt(2), 3: 1, 4: 0.
  EXPECT_EQ(rank_for_tolerance(s, std::sqrt(6.5 / 22)), 1);
  EXPECT_EQ(rank_for_tolerance(s, std::sqrt(5.5 / 22)), 2);
  EXPECT_EQ(rank_for_tolerance(s, 0.0), 4);
  // A truncated spectrum with the true ||A||_F^2 = 30: the tail holds 8 more,
  // residuals 30 - kept = 30, 14, 10, 9, 8.
  EXPECT_EQ(rank_for_tolerance(s, std::sqrt(8.5 / 30), 30.0), 4);
  EXPECT_EQ(rank_for_tolerance(s, std::sqrt(10.5 / 30), 30.0), 2);
  EXPECT_EQ(rank_for_tolerance(s, std::sqrt(14.5 / 30), 30.0), 1);
  EXPECT_EQ(rank_for_tolerance(s, std::sqrt(7.0 / 30), 30.0), 4);  // too short a spectrum
}

TEST(rank_selection, invalid_input_throws) {
  const Eigen::VectorXd s = (Eigen::VectorXd(3) << 3, 2, 1).finished();
  EXPECT_THROW((void)rank_for_energy(s, 0.0), invalid_argument);
  EXPECT_THROW((void)rank_for_energy(s, 1.5), invalid_argument);
  EXPECT_THROW((void)rank_for_tolerance(s, 1.0), invalid_argument);
  EXPECT_THROW((void)rank_for_tolerance(s, -0.1), invalid_argument);
  EXPECT_THROW((void)rank_for_tolerance(s, 0.1, 5.0), invalid_argument);  // total < sum s^2 = 14
  const Eigen::VectorXd increasing = (Eigen::VectorXd(3) << 1, 2, 3).finished();
  EXPECT_THROW((void)rank_for_energy(increasing, 0.5), invalid_argument);
  const Eigen::VectorXd negative = (Eigen::VectorXd(2) << 1, -1).finished();
  EXPECT_THROW((void)rank_for_tolerance(negative, 0.5), invalid_argument);
  const Eigen::VectorXd nan = (Eigen::VectorXd(2) << std::nan(""), 1).finished();
  EXPECT_THROW((void)rank_for_energy(nan, 0.5), invalid_argument);
}

}  // namespace
}  // namespace rank_selection_tests
}  // namespace lowrank
