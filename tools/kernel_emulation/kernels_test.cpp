// Checks the one-block kernels (cholesky_fused, jacobi_svd) run on the CPU by
// emulate.hpp against Eigen in double: the factor R and R^{-1} of a Gram
// matrix, the breakdown reports, and the SVD's singular values, orthonormal
// factors and reconstruction, with the kernel's status. Built and run by
// tools/kernel_emulation/run; exits non-zero on a failed check.
#include "emulate.hpp"
// clang-format off: the order matters (emulate.hpp defines the CUDA words).
#include "lowrank/backend/cuda/kernels/cholesky.cuh"
#include "lowrank/backend/cuda/kernels/jacobi.cuh"
// clang-format on

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <string>

#include "support/test_matrices.hpp"

namespace lowrank::detail::kernels {
// The dynamic shared memory of one launch (`extern __shared__` in the kernels).
alignas(16) double shared_matrix[40000];
alignas(16) double jacobi_shared[40000];
}  // namespace lowrank::detail::kernels

namespace {

namespace k = lowrank::detail::kernels;
using lowrank::index_t;
int failures = 0;

void check(bool ok, const char* what, double value, double bound) {
  std::printf("  %-44s %11.3e (bound %9.3e)%s\n", what, value, bound, ok ? "" : "  FAILED");
  if (!ok) ++failures;
}

template <class T>
using host = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;

template <class T>
host<T> random_matrix(index_t m, index_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> u(-1, 1);
  host<T> a(m, n);
  for (index_t j = 0; j < n; ++j)
    for (index_t i = 0; i < m; ++i) a(i, j) = T(u(gen));
  return a;
}

template <class T>
void cholesky(index_t n, double shift) {
  std::printf("cholesky_fused<%s> n = %ld, shift %g\n", sizeof(T) == 4 ? "float" : "double",
              long(n), shift);
  const host<T> y = random_matrix<T>(3 * n, n, unsigned(n));
  const host<T> g = y.transpose() * y;
  Eigen::MatrixXd r(n, n), ri(n, n);
  r.setConstant(std::numeric_limits<double>::quiet_NaN());
  ri = r;
  k::cholesky_device_status status{};
  emulation::launch(k::cholesky_threads, k::cholesky_fused<T>, g.data(), index_t(n), n, shift,
                    double(std::numeric_limits<T>::max()), r.data(), index_t(n), ri.data(),
                    index_t(n), &status);
  Eigen::MatrixXd a = g.template cast<double>().template selfadjointView<Eigen::Lower>();
  const double deviation = (a - Eigen::MatrixXd::Identity(n, n)).norm();
  a.diagonal().array() += shift * a.trace();
  const Eigen::MatrixXd ref = a.llt().matrixU();
  const Eigen::MatrixXd ref_inv =
      ref.triangularView<Eigen::Upper>().solve(Eigen::MatrixXd::Identity(n, n));
  const bool ok = status.input_finite == 1 && status.potrf_info == 0 && status.diagonal_ok == 1 &&
                  status.inverse_ok == 1;
  check(ok, "status ok", ok ? 0 : 1, 0);
  check(std::abs(status.deviation - deviation) <= 1e-12 * deviation, "deviation error",
        std::abs(status.deviation - deviation), 1e-12 * deviation);
  check((r - ref).norm() <= 1e-11 * ref.norm(), "||R - R_eigen|| / ||R||",
        (r - ref).norm() / ref.norm(), 1e-11);
  check((ri - ref_inv).norm() <= 1e-11 * ref_inv.norm(), "||R^-1 - eigen|| / ||R^-1||",
        (ri - ref_inv).norm() / ref_inv.norm(), 1e-11);
  const double lower = r.triangularView<Eigen::StrictlyLower>().toDenseMatrix().norm() +
                       ri.triangularView<Eigen::StrictlyLower>().toDenseMatrix().norm();
  check(lower == 0, "zeros below the diagonals", lower, 0);
}

template <class T>
void cholesky_breakdown(index_t n) {
  std::printf("cholesky_fused<%s> n = %ld, breakdown\n", sizeof(T) == 4 ? "float" : "double",
              long(n));
  Eigen::MatrixXd r(n, n), ri(n, n);
  host<T> g = host<T>::Identity(n, n);
  g(n / 2, n / 2) = T(-1);
  k::cholesky_device_status status{};
  emulation::launch(k::cholesky_threads, k::cholesky_fused<T>, g.data(), index_t(n), n, 0.0,
                    double(std::numeric_limits<T>::max()), r.data(), index_t(n), ri.data(),
                    index_t(n), &status);
  check(status.potrf_info == n / 2 + 1, "indefinite: potrf_info - (n/2 + 1)",
        double(status.potrf_info - (n / 2 + 1)), 0);
  check(status.deviation == 2.0, "indefinite: deviation - 2", status.deviation - 2.0, 0);
  g = host<T>::Identity(n, n);
  g(n - 1, 0) = std::numeric_limits<T>::quiet_NaN();
  status = {};
  emulation::launch(k::cholesky_threads, k::cholesky_fused<T>, g.data(), index_t(n), n, 0.0,
                    double(std::numeric_limits<T>::max()), r.data(), index_t(n), ri.data(),
                    index_t(n), &status);
  check(status.input_finite == 0, "NaN: input_finite", status.input_finite, 0);
}

enum class kind { random, rank_30, zero_column, graded_triangle };

/// The SVD of A (rows x cols) by the kernel, on X = A^T when A is wide or
/// `by_rows`, else on X = A; returns the sweeps.
template <class T>
int jacobi(index_t rows, index_t cols, kind what, bool by_rows = false) {
  const char* name = what == kind::rank_30           ? ", rank 30"
                     : what == kind::zero_column     ? ", zero column"
                     : what == kind::graded_triangle ? ", R of a QR, s_i = 0.85^i"
                                                     : "";
  std::printf("jacobi_svd<%s> %ld x %ld%s%s\n", sizeof(T) == 4 ? "float" : "double", long(rows),
              long(cols), name, by_rows ? ", by rows" : "");
  host<T> a = random_matrix<T>(rows, cols, unsigned(rows * 1000 + cols));
  if (what == kind::rank_30) {
    a = random_matrix<T>(rows, 30, 1) * random_matrix<T>(30, cols, 2);
  } else if (what == kind::zero_column) {
    a.col(5).setZero();
  } else if (what == kind::graded_triangle) {
    // The matrix of the CUDA test (tests/backend/cuda/cross_backend_test.cu).
    Eigen::VectorXd graded(cols);
    for (index_t i = 0; i < cols; ++i) graded(i) = std::pow(0.85, double(i));
    const Eigen::MatrixXd dense = lowrank::test::make_matrix(graded, rows, cols, 85);
    a = Eigen::MatrixXd(dense.householderQr().matrixQR().triangularView<Eigen::Upper>())
            .template cast<T>();
  }
  const bool transposed = rows < cols || by_rows;
  const index_t m = transposed ? cols : rows;
  const index_t n = transposed ? rows : cols;
  host<T> u(m, n), v(n, n);
  Eigen::Matrix<T, Eigen::Dynamic, 1> s(n);
  k::jacobi_svd_status status{};
  const double tol = std::sqrt(double(m)) * double(std::numeric_limits<T>::epsilon());
  emulation::launch(k::jacobi_threads, k::jacobi_svd<T>, a.data(), rows, transposed, m, n, tol, 30,
                    u.data(), m, s.data(), v.data(), n, &status);
  std::printf("  sweeps %d, converged %d, zero columns %d\n", status.sweeps, status.converged,
              status.zero_columns);
  if (what == kind::zero_column) {
    check(status.zero_columns > 0, "zero column reported", status.zero_columns, 0);
    return status.sweeps;
  }
  check(status.converged == 1 && status.zero_columns == 0, "converged, no zero column",
        status.converged == 1 ? 0 : 1, 0);
  const Eigen::MatrixXd x = transposed ? Eigen::MatrixXd(a.transpose().template cast<double>())
                                       : Eigen::MatrixXd(a.template cast<double>());
  const Eigen::VectorXd reference = Eigen::JacobiSVD<Eigen::MatrixXd>(x).singularValues();
  const Eigen::VectorXd sd = s.template cast<double>();
  const double n_eps = double(std::numeric_limits<T>::epsilon()) * double(m);
  const double bound = 10 * n_eps;
  check((sd - reference).cwiseAbs().maxCoeff() <= bound * reference(0), "max |s - s_eigen| / s_1",
        (sd - reference).cwiseAbs().maxCoeff() / reference(0), bound);
  bool descending = true;
  for (index_t i = 1; i < n; ++i) descending = descending && sd(i) <= sd(i - 1);
  check(descending, "descending", descending ? 0 : 1, 0);
  const Eigen::MatrixXd ud = u.template cast<double>();
  const Eigen::MatrixXd vd = v.template cast<double>();
  const auto orth = [](const Eigen::MatrixXd& q) {
    return (q.transpose() * q - Eigen::MatrixXd::Identity(q.cols(), q.cols()))
        .cwiseAbs()
        .maxCoeff();
  };
  check(orth(ud) <= bound, "max |U^T U - I|", orth(ud), bound);
  check(orth(vd) <= bound, "max |V^T V - I|", orth(vd), bound);
  const double residual = (ud * sd.asDiagonal() * vd.transpose() - x).norm() / x.norm();
  check(residual <= bound, "||U S V^T - X|| / ||X||", residual, bound);
  return status.sweeps;
}

template <class T>
void all(bool factor, bool svd) {
  if (factor) {
    for (const index_t n : {index_t(1), index_t(2), index_t(17), index_t(74), index_t(128)}) {
      for (const double shift : {0.0, 1e-6}) cholesky<T>(n, shift);
    }
    cholesky_breakdown<T>(74);
  }
  if (!svd) return;
  jacobi<T>(74, 74, kind::random);
  jacobi<T>(75, 75, kind::random);
  jacobi<T>(100, 60, kind::random);
  jacobi<T>(60, 100, kind::random);
  jacobi<T>(74, 74, kind::rank_30);
  jacobi<T>(74, 74, kind::zero_column);
  // A QR's triangular factor: by rows (as ops<cuda>::svd takes a square
  // matrix) in far fewer sweeps than by columns.
  const int by_columns = jacobi<T>(74, 74, kind::graded_triangle, false);
  const int by_rows = jacobi<T>(74, 74, kind::graded_triangle, true);
  check(by_rows <= 13 && by_rows < by_columns, "graded triangle: sweeps by rows", by_rows,
        std::min(13, by_columns - 1));
}

}  // namespace

int main(int argc, char** argv) {
  const std::string only = argc > 1 ? argv[1] : "";
  const bool factor = only.empty() || only == "cholesky";
  const bool svd = only.empty() || only == "jacobi";
  all<float>(factor, svd);
  all<double>(factor, svd);
  std::printf("%s: %d failed checks\n", failures == 0 ? "PASSED" : "FAILED", failures);
  return failures == 0 ? 0 : 1;
}
