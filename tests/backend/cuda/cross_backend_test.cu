// The CUDA backend against the CPU backend: the same random numbers from the
// same seed (uniform and Rademacher bits identical, Gaussians within a few
// ulp), each operation of ops<cuda> against ops<cpu>, the SVDs from the same
// seed, and the error model. Cases that need a GPU skip without one (and fail
// under LOWRANK_TEST_REQUIRE_DEVICE=1).

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <system_error>

#include "support/backends.hpp"
#include "support/test_matrices.hpp"

namespace lowrank::test::cross_backend_tests {
namespace {

template <class T>
class cross_backend : public backend_test<config<cuda, T>> {};
using scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(cross_backend, scalars);

template <class T>
host_matrix<T> download(context<cuda>& ctx, const matrix<T, cuda>& m) {
  host_matrix<T> out(m.rows(), m.cols());
  ops<cuda>::download(ctx, m.view(), view(out));
  return out;
}

// Uniform and Rademacher: the same bits on both backends, for a block drawn
// at an offset that is not a multiple of rows_per_block.
TYPED_TEST(cross_backend, uniform_and_rademacher_bits_identical) {
  using T = TypeParam;
  context<cuda> gpu;
  context<cpu> host(2);
  for (const auto d : {distribution::uniform, distribution::rademacher}) {
    host_matrix<T> expected(301, 17);
    ops<cpu>::fill_random(host, d, {42, 7}, view(expected), 5, 3);
    matrix<T, cuda> x(gpu, 301, 17);
    ops<cuda>::fill_random(gpu, d, {42, 7}, x.view(), 5, 3);
    const host_matrix<T> got = download(gpu, x);
    EXPECT_EQ(std::memcmp(got.data(), expected.data(), sizeof(T) * std::size_t(got.size())), 0);
  }
}

// Gaussians: within a few ulp of the value (the device's log / sin / cos are
// not the host's), plus an absolute 4 ulp of 1 where the value is near zero.
TYPED_TEST(cross_backend, gaussians_within_a_few_ulp) {
  using T = TypeParam;
  context<cuda> gpu;
  context<cpu> host(2);
  host_matrix<T> expected(1000, 33);
  ops<cpu>::fill_random(host, distribution::gaussian, {9, 1}, view(expected), 3, 0);
  matrix<T, cuda> x(gpu, 1000, 33);
  ops<cuda>::fill_random(gpu, distribution::gaussian, {9, 1}, x.view(), 3, 0);
  const host_matrix<T> got = download(gpu, x);
  const T ulp = std::numeric_limits<T>::epsilon();
  for (index_t j = 0; j < got.cols(); ++j) {
    for (index_t i = 0; i < got.rows(); ++i) {
      ASSERT_NEAR(got(i, j), expected(i, j), 4 * ulp * (std::abs(expected(i, j)) + 1))
          << "(" << i << ", " << j << ")";
    }
  }
}

// Every operation against the CPU's, to rounding (different BLAS: products
// agree to k eps |A| |B|).
TYPED_TEST(cross_backend, operations_match_the_cpu) {
  using T = TypeParam;
  context<cuda> gpu;
  context<cpu> host(2);
  const double eps = std::numeric_limits<T>::epsilon();
  const host_matrix<T> a = host_matrix<T>::Random(120, 40);
  const host_matrix<T> b = host_matrix<T>::Random(120, 30);
  const matrix<T, cuda> ga(gpu, a);
  const matrix<T, cuda> gb(gpu, b);

  // gemm A^T B
  matrix<T, cuda> gc(gpu, 40, 30);
  ops<cuda>::gemm(gpu, transpose::yes, transpose::no, T(1), ga.view(), gb.view(), T(0), gc.view());
  const host_matrix<T> c = a.transpose() * b;
  EXPECT_LE((download(gpu, gc) - c).cwiseAbs().maxCoeff(), 200 * eps * 120);

  // gram (lower triangle)
  matrix<T, cuda> gg(gpu, 40, 40);
  ops<cuda>::gram(gpu, ga.view(), gg.view());
  const host_matrix<T> g = download(gpu, gg);
  const host_matrix<T> g_ref = a.transpose() * a;
  EXPECT_LE((host_matrix<T>(g.template triangularView<Eigen::Lower>()) -
             host_matrix<T>(g_ref.template triangularView<Eigen::Lower>()))
                .cwiseAbs()
                .maxCoeff(),
            200 * eps * 120);

  // multiply_right
  const host_matrix<T> r = host_matrix<T>::Random(40, 40);
  matrix<T, cuda> gy(gpu, a);
  const matrix<T, cuda> gr(gpu, r);
  ops<cuda>::multiply_right(gpu, gr.view(), gy.view());
  EXPECT_LE((download(gpu, gy) - a * r).cwiseAbs().maxCoeff(), 200 * eps * 40);

  // Householder QR: orthonormal Q, Y = Q R
  matrix<T, cuda> gq(gpu, a);
  matrix<T, cuda> gqr(gpu, 40, 40);
  ops<cuda>::householder_orthonormalize(gpu, gq.view(), gqr.view());
  const Eigen::MatrixXd q = download(gpu, gq).template cast<double>();
  const Eigen::MatrixXd qr = download(gpu, gqr).template cast<double>();
  EXPECT_LE(orthonormality_error(q), 100 * eps * 120);
  EXPECT_LE((q * qr - a.template cast<double>()).cwiseAbs().maxCoeff(), 100 * eps * 120);

  // svd of a tall and a wide matrix
  for (const bool wide : {false, true}) {
    const host_matrix<T> m = wide ? host_matrix<T>(a.transpose()) : a;
    const index_t k = std::min(m.rows(), m.cols());
    const matrix<T, cuda> gm(gpu, m);
    matrix<T, cuda> gu(gpu, m.rows(), k);
    matrix<T, cuda> gv(gpu, m.cols(), k);
    vector<T, cuda> gs(gpu, k);
    ops<cuda>::svd(gpu, gm.view(), gu.view(), gs.view(), gv.view());
    const Eigen::MatrixXd u = download(gpu, gu).template cast<double>();
    const Eigen::MatrixXd v = download(gpu, gv).template cast<double>();
    const Eigen::VectorXd s = gs.to_eigen().template cast<double>();
    EXPECT_LE(orthonormality_error(u), 100 * eps * 120);
    EXPECT_LE(orthonormality_error(v), 100 * eps * 120);
    EXPECT_LE((u * s.asDiagonal() * v.transpose() - m.template cast<double>()).norm(),
              100 * eps * 120 * m.template cast<double>().norm());
  }

  // reductions
  context<cpu> one(1);
  EXPECT_NEAR(ops<cuda>::squared_norm(gpu, ga.view()), ops<cpu>::squared_norm(one, view(a)),
              1e-12 * ops<cpu>::squared_norm(one, view(a)));
  vector<double, cuda> norms(gpu, 40);
  ops<cuda>::column_squared_norms(gpu, ga.view(), norms.view());
  const Eigen::VectorXd host_norms = a.template cast<double>().colwise().squaredNorm().transpose();
  EXPECT_LE((norms.to_eigen() - host_norms).cwiseAbs().maxCoeff(), 1e-12 * host_norms.maxCoeff());
  EXPECT_EQ(ops<cuda>::max_abs(gpu, ga.view()), ops<cpu>::max_abs(one, view(a)));
  EXPECT_NEAR(ops<cuda>::squared_norm(gpu, ga.view(), 0.25),
              ops<cpu>::squared_norm(one, view(a), 0.25),
              1e-12 * ops<cpu>::squared_norm(one, view(a)));
  EXPECT_EQ(ops<cuda>::find_non_finite(gpu, ga.view()), -1);
  host_matrix<T> bad = a;
  bad(7, 9) = std::numeric_limits<T>::infinity();
  bad(100, 30) = std::numeric_limits<T>::quiet_NaN();
  const matrix<T, cuda> gbad(gpu, bad);
  EXPECT_EQ(ops<cuda>::find_non_finite(gpu, gbad.view()), 7 + 9 * 120);
  vector<T, cuda> signs(gpu, 40);
  ops<cuda>::signs_of_largest(gpu, ga.view(), signs.view());
  Eigen::Matrix<T, Eigen::Dynamic, 1> host_signs(40);
  ops<cpu>::signs_of_largest(one, view(a), vector_view<T, cpu>(host_signs.data(), 40));
  EXPECT_EQ(signs.to_eigen(), host_signs);
}

// The small factorisations the algorithms run on the device: the Cholesky QR
// factor (in double on both backends: R agrees to the conditioning of the
// factorisation, cond(R) eps_double n, here < 1e-11 relative), its breakdown
// report, convert (bit-identical), and the SVD by both of its methods
// (ops<cuda>::svd: an eigendecomposition in double for small float
// matrices, gesvd otherwise), whose singular values agree with the CPU's to n eps s_1 (Weyl)
// and whose factors are orthonormal to n eps.
TYPED_TEST(cross_backend, small_factorizations_match_the_cpu) {
  using T = TypeParam;
  context<cuda> gpu;
  context<cpu> host(2);
  const double eps = std::numeric_limits<T>::epsilon();
  // 74 and 128: the one-kernel factor (cholesky_fused); 129 and 200: potrf + trtri.
  for (const index_t n : {index_t(74), index_t(128), index_t(129), index_t(200)}) {
    const host_matrix<T> y = host_matrix<T>::Random(3 * n, n);
    const host_matrix<T> g = y.transpose() * y;
    const matrix<T, cuda> gg(gpu, g);
    for (const double shift : {0.0, 1e-6}) {
      matrix<double, cuda> gr(gpu, n, n);
      matrix<double, cuda> gri(gpu, n, n);
      const auto on_gpu = ops<cuda>::cholesky_factor(gpu, gg.view(), shift, gr.view(), gri.view());
      Eigen::MatrixXd r(n, n);
      Eigen::MatrixXd ri(n, n);
      const auto on_cpu = ops<cpu>::cholesky_factor(host, view(g), shift, view(r), view(ri));
      ASSERT_TRUE(on_gpu.ok && on_cpu.ok) << "n " << n << ", shift " << shift;
      EXPECT_NEAR(on_gpu.deviation, on_cpu.deviation, 1e-12 * on_cpu.deviation) << "n " << n;
      EXPECT_LE((gr.to_eigen() - r).norm(), 1e-11 * r.norm()) << "n " << n;
      EXPECT_LE((gri.to_eigen() - ri).norm(), 1e-11 * ri.norm()) << "n " << n;
      EXPECT_EQ(Eigen::MatrixXd(gr.to_eigen().template triangularView<Eigen::StrictlyLower>()),
                Eigen::MatrixXd::Zero(n, n))
          << "n " << n;
      EXPECT_EQ(Eigen::MatrixXd(gri.to_eigen().template triangularView<Eigen::StrictlyLower>()),
                Eigen::MatrixXd::Zero(n, n))
          << "n " << n;
    }
    // Breakdown, on both paths: an indefinite G (a negative pivot at n / 2)
    // and a NaN.
    host_matrix<T> indefinite = host_matrix<T>::Identity(n, n);
    indefinite(n / 2, n / 2) = T(-1);
    const matrix<T, cuda> gi(gpu, indefinite);
    matrix<double, cuda> rb(gpu, n, n);
    matrix<double, cuda> rib(gpu, n, n);
    const auto broken = ops<cuda>::cholesky_factor(gpu, gi.view(), 0.0, rb.view(), rib.view());
    EXPECT_FALSE(broken.ok) << "n " << n;
    EXPECT_DOUBLE_EQ(broken.deviation, 2.0) << "n " << n;
    host_matrix<T> not_finite = host_matrix<T>::Identity(n, n);
    not_finite(n - 1, 0) = std::numeric_limits<T>::quiet_NaN();
    const matrix<T, cuda> gn(gpu, not_finite);
    EXPECT_FALSE(ops<cuda>::cholesky_factor(gpu, gn.view(), 0.0, rb.view(), rib.view()).ok)
        << "n " << n;
  }

  const Eigen::MatrixXd d = Eigen::MatrixXd::Random(9, 7) * 1e3;
  const matrix<double, cuda> gd(gpu, d);
  matrix<T, cuda> gt(gpu, 9, 7);
  ops<cuda>::convert(gpu, gd.view(), gt.view());
  EXPECT_EQ(gt.to_eigen(), host_matrix<T>(d.template cast<T>()));

  // Jacobi (kernels/jacobi.cuh): 74^2, 75^2 (an odd count of columns),
  // 100 x 60, 60 x 100, the rank-30 74^2, a 74^2 with a zero row and a zero
  // column (a zero singular value whichever way it is rotated: handed on to
  // the next method), and the triangular factor of a QR with singular values
  // 0.85^i (by rows, as ops<cuda>::svd rotates a square matrix, 8 to 10
  // sweeps; by columns it would take 18: tools/jacobi_sweeps.py); then the
  // other methods.
  enum class kind { random, rank_30, zero_row_and_column, graded_triangle };
  struct shape {
    index_t m;
    index_t n;
    kind k = kind::random;
  };
  for (const shape sh :
       {shape{74, 74}, shape{75, 75}, shape{100, 60}, shape{60, 100}, shape{74, 74, kind::rank_30},
        shape{74, 74, kind::zero_row_and_column}, shape{74, 74, kind::graded_triangle},
        shape{200, 200}, shape{300, 140}, shape{140, 300}, shape{600, 500}}) {
    host_matrix<T> m = host_matrix<T>::Random(sh.m, sh.n);
    if (sh.k == kind::rank_30) {
      m = host_matrix<T>::Random(sh.m, 30) * host_matrix<T>::Random(30, sh.n);
    } else if (sh.k == kind::zero_row_and_column) {
      m.row(3).setZero();
      m.col(5).setZero();
    } else if (sh.k == kind::graded_triangle) {
      // The matrix tools/kernel_emulation checks on the CPU (same seed).
      Eigen::VectorXd graded(sh.n);
      for (index_t i = 0; i < sh.n; ++i) graded(i) = std::pow(0.85, double(i));
      const Eigen::MatrixXd a = make_matrix(graded, sh.m, sh.n, 85);
      m = Eigen::MatrixXd(a.householderQr().matrixQR().triangularView<Eigen::Upper>())
              .template cast<T>();
    }
    const index_t k = std::min(sh.m, sh.n);
    const matrix<T, cuda> gm(gpu, m);
    matrix<T, cuda> gu(gpu, sh.m, k);
    matrix<T, cuda> gv(gpu, sh.n, k);
    vector<T, cuda> gs(gpu, k);
    ops<cuda>::svd(gpu, gm.view(), gu.view(), gs.view(), gv.view());
    // The method that ran: Jacobi wherever it fits, converged, except for the
    // zero row and column, which it hands on.
    const cuda_svd_report report = gpu.svd_report();
    const cuda_svd_method after_jacobi = ops<cuda>::svd_by_eigen<T>(std::max(sh.m, sh.n), k)
                                             ? cuda_svd_method::eigen
                                             : cuda_svd_method::gesvd;
    if (ops<cuda>::svd_by_jacobi(gpu, sh.m, sh.n)) {
      EXPECT_GT(report.jacobi_sweeps, 0) << sh.m << " x " << sh.n;
      EXPECT_LE(report.jacobi_sweeps, ops<cuda>::jacobi_max_sweeps) << sh.m << " x " << sh.n;
      const bool zero = sh.k == kind::zero_row_and_column;
      EXPECT_EQ(report.jacobi_handed_on(), zero) << sh.m << " x " << sh.n;
      EXPECT_EQ(report.method, zero ? after_jacobi : cuda_svd_method::jacobi)
          << sh.m << " x " << sh.n << ", " << report.jacobi_sweeps << " sweeps";
      if (sh.k == kind::graded_triangle) {
        EXPECT_LE(report.jacobi_sweeps, 13) << "graded triangle: rotated by rows?";
      }
    } else {
      EXPECT_EQ(report.jacobi_sweeps, 0) << sh.m << " x " << sh.n;
      EXPECT_EQ(report.method, after_jacobi) << sh.m << " x " << sh.n;
    }
    host_matrix<T> u(sh.m, k);
    host_matrix<T> v(sh.n, k);
    Eigen::Matrix<T, Eigen::Dynamic, 1> s(k);
    ops<cpu>::svd(host, view(m), view(u), vector_view<T, cpu>(s.data(), k), view(v));
    const Eigen::VectorXd sg = gs.to_eigen().template cast<double>();
    const double n_eps = eps * double(std::max(sh.m, sh.n));
    EXPECT_LE((sg - s.template cast<double>()).cwiseAbs().maxCoeff(), 10 * n_eps * s(0))
        << sh.m << " x " << sh.n;
    const Eigen::MatrixXd ug = download(gpu, gu).template cast<double>();
    const Eigen::MatrixXd vg = download(gpu, gv).template cast<double>();
    EXPECT_LE(orthonormality_error(ug), 10 * n_eps) << sh.m << " x " << sh.n;
    EXPECT_LE(orthonormality_error(vg), 10 * n_eps) << sh.m << " x " << sh.n;
    EXPECT_LE((ug * sg.asDiagonal() * vg.transpose() - m.template cast<double>()).norm(),
              10 * n_eps * m.template cast<double>().norm())
        << sh.m << " x " << sh.n;
  }
}

// The same seed gives the same decomposition on both backends, to rounding:
// singular values within a few eps of s_1 (times the dimension), and the
// same rank-k approximation.
TYPED_TEST(cross_backend, randomized_svd_agrees_with_the_cpu) {
  using T = TypeParam;
  context<cuda> gpu;
  context<cpu> host(2);
  const double eps = std::numeric_limits<T>::epsilon();
  for (const auto& [m, n] : {std::pair<index_t, index_t>{300, 200}, {200, 300}}) {
    const Eigen::MatrixXd ad =
        make_matrix(make_spectrum(spectrum_kind::fast_decay, std::min(m, n), 0), m, n, 5);
    const host_matrix<T> a = ad.cast<T>();
    const matrix<T, cuda> ga(gpu, a);
    const auto g = randomized_svd(gpu, ga.view(), 20, {.seed = 3});
    const auto c = randomized_svd(host, view(a), 20, {.seed = 3});
    const Eigen::VectorXd gs = g.s.to_eigen().template cast<double>();
    const Eigen::VectorXd cs = c.s.template cast<double>();
    EXPECT_LE((gs - cs).cwiseAbs().maxCoeff(), 1000 * eps * cs(0));
    const Eigen::MatrixXd gapprox = g.u.to_eigen().template cast<double>() * gs.asDiagonal() *
                                    g.v.to_eigen().template cast<double>().transpose();
    const Eigen::MatrixXd capprox =
        c.u.template cast<double>() * cs.asDiagonal() * c.v.template cast<double>().transpose();
    EXPECT_LE((gapprox - capprox).norm(), 1000 * eps * ad.norm());

    const auto gt =
        randomized_svd(gpu, ga.view(), fixed_accuracy{.relative_error = 0.05, .seed = 3});
    const auto ct =
        randomized_svd(host, view(a), fixed_accuracy{.relative_error = 0.05, .seed = 3});
    EXPECT_EQ(gt.rank(), ct.rank());
    EXPECT_NEAR(gt.relative_error_estimate, ct.relative_error_estimate, 1e-3);
  }
}

// Errors: CUDA statuses become std::system_error in the library's categories
// (no device needed); a bad argument on the GPU path is invalid_argument.
TEST(cuda_errors, statuses_become_system_errors) {
  try {
    detail::check(cudaErrorInvalidValue, "lowrank::test: cudaSomething");
    ADD_FAILURE() << "no exception";
  } catch (const std::system_error& e) {
    EXPECT_EQ(&e.code().category(), &cuda_category());
    EXPECT_NE(std::string(e.what()).find("lowrank::test: cudaSomething"), std::string::npos);
  }
  EXPECT_THROW(detail::check(CUBLAS_STATUS_INVALID_VALUE, "x"), std::system_error);
  EXPECT_THROW(detail::check(CUSOLVER_STATUS_EXECUTION_FAILED, "x"), std::system_error);
  EXPECT_THROW(detail::check_info(3, "x"), numerical_error);
  EXPECT_STREQ(cublas_category().name(), "cublas");
  EXPECT_STREQ(cusolver_category().name(), "cusolver");
}

TYPED_TEST(cross_backend, invalid_input_throws_before_any_kernel) {
  using T = TypeParam;
  context<cuda> gpu;
  const matrix<T, cuda> a(gpu, host_matrix<T>(host_matrix<T>::Random(30, 20)));
  EXPECT_THROW((void)randomized_svd(gpu, a.view(), 0), invalid_argument);
  EXPECT_THROW((void)truncated_svd(gpu, a.view(), 21), invalid_argument);
  matrix<T, cuda> x(gpu, 4, 4);
  EXPECT_THROW(ops<cuda>::fill_random(gpu, distribution::gaussian, {}, x.view(), -1, 0),
               invalid_argument);
}

// A family's resource on the CUDA context: made once from the context, bound
// to its stream, destroyed with it; workspace frames on the device hand out
// pieces that do not overlap while their frames are open.
struct stream_bound_resource {
  cudaStream_t stream;
  explicit stream_bound_resource(context<cuda>& ctx) : stream(ctx.stream()) {}
};

TEST(cuda_context, resources_and_workspace_frames) {
  if (!context<cuda>::device_available()) {
    if (device_required()) FAIL() << "no CUDA device visible, and LOWRANK_TEST_REQUIRE_DEVICE=1";
    GTEST_SKIP() << "no CUDA device visible";
  }
  context<cuda> gpu;
  auto& r = gpu.resource<stream_bound_resource>();
  EXPECT_EQ(r.stream, gpu.stream());
  EXPECT_EQ(&r, &gpu.resource<stream_bound_resource>());
  auto outer = gpu.workspace();
  auto* a = outer.take<float>(1000);
  {
    auto inner = gpu.workspace();
    auto* b = inner.take<double>(1 << 20);  // beyond the first block: a new one
    const auto* ab = reinterpret_cast<const char*>(a);
    const auto* bb = reinterpret_cast<const char*>(b);
    EXPECT_TRUE(ab + 4000 <= bb || bb + 8 * (1 << 20) <= ab);
    detail::check(cudaMemsetAsync(b, 0, 8 * (1 << 20), gpu.stream()), "cudaMemsetAsync");
  }
  detail::check(cudaMemsetAsync(a, 0, 4000, gpu.stream()), "cudaMemsetAsync");
  gpu.synchronize();
}

}  // namespace
}  // namespace lowrank::test::cross_backend_tests
