// The factors family's algorithms that tests/factors/ runs on the CPU only
// (to keep CI's CUDA compile time down), compiled for CUDA by explicit
// instantiation, and run against the CPU where a GPU is visible: the LOST
// form's forward and backward, low rank plus sparse, robust PCA and the
// SLTrain state-dict reader. (tests/factors/sparse_plus_low_rank_test.cpp
// builds as CUDA too and compares the supports, the sparse products and the
// SLTrain layer.) Cases skip without a GPU (and fail under
// LOWRANK_TEST_REQUIRE_DEVICE=1).

#include <unistd.h>

#include <gtest/gtest.h>

#include <Eigen/Core>
#include <filesystem>
#include <string>

#include "lowrank/factors/channel_sparse.hpp"
#include "lowrank/factors/compress.hpp"
#include "lowrank/io/sltrain.hpp"
#include "support/backends.hpp"
#include "support/factors.hpp"

// Every member and function, for both scalars: a CUDA compile error shows here.
template class lowrank::channel_sparse_low_rank<float, lowrank::cuda>;
template class lowrank::channel_sparse_low_rank<double, lowrank::cuda>;
template lowrank::sparse_low_rank_factor<float, lowrank::cuda> lowrank::low_rank_plus_sparse(
    lowrank::context<lowrank::cuda>&, lowrank::matrix_view<const float, lowrank::cuda>,
    lowrank::index_t, lowrank::index_t, const lowrank::low_rank_plus_sparse_options&);
template lowrank::robust_pca_result<float, lowrank::cuda> lowrank::robust_pca(
    lowrank::context<lowrank::cuda>&, lowrank::matrix_view<const float, lowrank::cuda>,
    const lowrank::robust_pca_options&);
template void lowrank::io::save_sltrain(lowrank::context<lowrank::cuda>&,
                                        const std::filesystem::path&,
                                        const lowrank::sparse_plus_low_rank<float, lowrank::cuda>&,
                                        const lowrank::io::sltrain_save_options&);

namespace lowrank::test::factors_cross_backend_tests {
namespace {

using matd = Eigen::MatrixXd;
class factors_algorithms_cuda_vs_cpu : public backend_test<config<cuda, double>> {};

TEST_F(factors_algorithms_cuda_vs_cpu, lost_form_compression_and_state_dicts_agree) {
  context<cpu> c;
  context<cuda> g;
  const matd w = matd::Random(40, 30);
  const auto wc = upload<double>(c, w);
  const auto wg = upload<double>(g, w);
  // The LOST form from a weight: the same channels, forward and backward to rounding.
  const channel_sparse_options o{.rank = 4, .alpha = 8, .channels = 5};
  auto lc = channel_sparse_low_rank<double>::from_weight(c, wc.view(), o);
  auto lg = channel_sparse_low_rank<double, cuda>::from_weight(g, wg.view(), o);
  EXPECT_EQ(lc.channels(), lg.channels());
  const matd x = matd::Random(9, 30), dy = matd::Random(9, 40);
  const auto xc = upload<double>(c, x);
  const auto xg = upload<double>(g, x);
  const auto gc = upload<double>(c, dy);
  const auto gg = upload<double>(g, dy);
  matrix<double, cpu> yc(c, 9, 40), dxc(c, 9, 30);
  matrix<double, cuda> yg(g, 9, 40), dxg(g, 9, 30);
  lc.forward(c, xc.view(), yc.view());
  lg.forward(g, xg.view(), yg.view());
  lc.backward(c, gc.view(), dxc.view());
  lg.backward(g, gg.view(), dxg.view());
  auto near = [](const matd& a, const matd& b) { return (a - b).norm() <= 1e-12 * (1 + a.norm()); };
  EXPECT_TRUE(near(host(c, as_const(yc.view())), host(g, as_const(yg.view()))));
  EXPECT_TRUE(near(host(c, as_const(dxc.view())), host(g, as_const(dxg.view()))));
  // Low rank plus sparse: the same support, errors to rounding.
  const auto fc = low_rank_plus_sparse(c, as_const(wc.view()), 3, 50);
  const auto fg = low_rank_plus_sparse(g, as_const(wg.view()), 3, 50);
  EXPECT_EQ(fc.support.flat_indices(c), fg.support.flat_indices(g));
  EXPECT_NEAR(fc.error, fg.error, 1e-12);
  // Robust PCA on a planted matrix: the same rank, the same support, errors to rounding.
  const matd planted = matd::Random(30, 2) * matd::Random(2, 20);
  matd corrupted = planted;
  for (index_t k = 0; k < 600; k += 37) corrupted.data()[k] += 5;
  const auto rc = robust_pca(c, as_const(upload<double>(c, corrupted).view()));
  const auto rg = robust_pca(g, as_const(upload<double>(g, corrupted).view()));
  EXPECT_EQ(rc.factor.low.rank(), rg.factor.low.rank());
  EXPECT_EQ(rc.factor.support.flat_indices(c), rg.factor.support.flat_indices(g));
  EXPECT_NEAR(rc.residual, rg.residual, 1e-9);
  // An SLTrain state dict written from the CPU reads back on the GPU.
  const auto file = std::filesystem::temp_directory_path() /
                    ("lowrank_factors_cuda_" + std::to_string(::getpid()) + ".safetensors");
  sparse_plus_low_rank<double> layer(c, 12, 20, {.rank = 2, .alpha = 4, .density = 0.2});
  io::save_sltrain(c, file, layer, {.type = io::dtype::float64});
  auto back = io::load_sltrain<double, cuda>(g, file);
  EXPECT_EQ(back.support_copy(g).flat_indices(g), layer.support_copy(c).flat_indices(c));
  EXPECT_TRUE(host(g, as_const(back.a())) == host(c, as_const(layer.a())));
  std::filesystem::remove(file);
}

}  // namespace
}  // namespace lowrank::test::factors_cross_backend_tests
