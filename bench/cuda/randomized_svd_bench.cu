// How close is lowrank's randomized SVD on a GPU to the cost of its GEMMs, and
// how does it compare with cuSOLVER's own randomized SVD (cusolverDnXgesvdr)?
//
// For each size (float, q = 2, p = 10) it times, in the same run:
//   - lowrank::randomized_svd on the GPU (end to end, host work included);
//   - the 2q + 2 GEMM passes (m x n) x (n x (k + p)) with cuBLAS;
//   - cusolverDnXgesvdr with the same k, p and q (on a copy of A: it
//     overwrites its input);
// and reports the ratios of the medians as counters:
//   ratio_gemm      lowrank / GEMM passes
//   vs_gesvdr       gesvdr / lowrank (> 1: lowrank is faster)
//   err, err_gesvdr ||A - U S V^T||_F / ||A||_F of each (lowrank must be equal
//                   or better: error_ok = 1)
//   krylov_ms, krylov_err  lowrank::block_krylov_svd with its defaults
// The matrix is A = L diag(0.97^i) R^T + 1e-3 N (rank 512 plus noise).
//
//   lowrank_bench_randomized_svd_cuda --benchmark_counters_tabular=true

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <lowrank/cuda.hpp>
#include <string>
#include <vector>

namespace {

using lowrank::index_t;
using lowrank::transpose;
using device_matrix = lowrank::matrix<float, lowrank::cuda>;
using device_vector = lowrank::vector<float, lowrank::cuda>;
using ops = lowrank::ops<lowrank::cuda>;
using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point start) {
  return std::chrono::duration<double>(clock_type::now() - start).count();
}

double median(std::vector<double> v) {
  std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
  return v[v.size() / 2];
}

/// A = L diag(0.97^i) R^T + 1e-3 N, generated on the device.
device_matrix test_matrix(lowrank::context<lowrank::cuda>& ctx, index_t m, index_t n) {
  const index_t r = std::min<index_t>(512, std::min(m, n));
  device_matrix a(ctx, m, n);
  device_matrix left(ctx, m, r);
  device_matrix right(ctx, n, r);
  ops::fill_random(ctx, lowrank::distribution::gaussian, {5, 0}, a.view());
  ops::fill_random(ctx, lowrank::distribution::gaussian, {5, 1}, left.view());
  ops::fill_random(ctx, lowrank::distribution::gaussian, {5, 2}, right.view());
  Eigen::VectorXf decay(r);
  for (index_t i = 0; i < r; ++i) decay(i) = std::pow(0.97f, float(i)) / std::sqrt(float(n));
  const device_vector d(ctx, decay);
  ops::scale_columns(ctx, d.view(), left.view());
  ops::gemm<float>(ctx, transpose::no, transpose::yes, 1.0f, left.view(), right.view(), 1e-3f,
                   a.view());
  return a;
}

/// ||A - U diag(s) V^T||_F / ||A||_F on the device.
double relative_error(lowrank::context<lowrank::cuda>& ctx, const device_matrix& a,
                      const device_matrix& u, const device_vector& s, const device_matrix& v) {
  device_matrix us(ctx, u.rows(), u.cols());
  ops::copy<float>(ctx, u.view(), us.view());
  ops::scale_columns(ctx, s.view(), us.view());
  device_matrix residual(ctx, a.rows(), a.cols());
  ops::copy<float>(ctx, a.view(), residual.view());
  ops::gemm<float>(ctx, transpose::no, transpose::yes, -1.0f, us.view(), v.view(), 1.0f,
                   residual.view());
  return std::sqrt(ops::squared_norm(ctx, residual.view()) / ops::squared_norm(ctx, a.view()));
}

/// cusolverDnXgesvdr on a copy of A; returns the seconds of the call alone.
double run_gesvdr(lowrank::context<lowrank::cuda>& ctx, const device_matrix& a, index_t k,
                  index_t p, index_t q, device_matrix& work_a, device_matrix& u, device_vector& s,
                  device_matrix& v) {
  using lowrank::detail::check;
  cusolverDnParams_t params = nullptr;
  check(cusolverDnCreateParams(&params), "cusolverDnCreateParams");
  ops::copy<float>(ctx, a.view(), work_a.view());
  const index_t m = a.rows();
  const index_t n = a.cols();
  std::size_t device_bytes = 0;
  std::size_t host_bytes = 0;
  check(
      cusolverDnXgesvdr_bufferSize(ctx.solver(), params, 'S', 'S', m, n, k, p, q, CUDA_R_32F,
                                   work_a.data(), m, CUDA_R_32F, s.data(), CUDA_R_32F, u.data(), m,
                                   CUDA_R_32F, v.data(), n, CUDA_R_32F, &device_bytes, &host_bytes),
      "cusolverDnXgesvdr_bufferSize");
  auto ws = ctx.workspace();
  void* device_work = ws.take<std::byte>(device_bytes);
  std::vector<char> host_work(std::max<std::size_t>(host_bytes, 1));
  ctx.synchronize();
  const auto start = clock_type::now();
  check(cusolverDnXgesvdr(ctx.solver(), params, 'S', 'S', m, n, k, p, q, CUDA_R_32F, work_a.data(),
                          m, CUDA_R_32F, s.data(), CUDA_R_32F, u.data(), m, CUDA_R_32F, v.data(), n,
                          CUDA_R_32F, device_work, device_bytes, host_work.data(), host_bytes,
                          ctx.info()),
        "cusolverDnXgesvdr");
  ctx.synchronize();
  const double elapsed = seconds_since(start);
  int info = 0;
  check(cudaMemcpy(&info, ctx.info(), sizeof info, cudaMemcpyDeviceToHost), "cudaMemcpy");
  lowrank::detail::check_info(info, "cusolverDnXgesvdr");
  cusolverDnDestroyParams(params);
  return elapsed;
}

void randomized_svd_cuda(benchmark::State& state) {
  if (!lowrank::context<lowrank::cuda>::device_available()) {
    state.SkipWithError("no CUDA device visible");
    return;
  }
  const index_t m = state.range(0);
  const index_t n = state.range(1);
  const index_t k = state.range(2);
  const index_t p = 10;
  const index_t q = 2;
  const index_t l = k + p;
  lowrank::context<lowrank::cuda> ctx;
  const device_matrix a = test_matrix(ctx, m, n);

  // The floor: 2q + 2 passes, A X and A^T Y in turn.
  device_matrix x(ctx, n, l);
  device_matrix y(ctx, m, l);
  device_matrix z(ctx, n, l);
  ops::fill_random(ctx, lowrank::distribution::gaussian, {1, 0}, x.view());
  auto passes = [&] {
    for (index_t pass = 0; pass < q + 1; ++pass) {
      ops::gemm<float>(ctx, transpose::no, transpose::no, 1.0f, a.view(), x.view(), 0.0f, y.view());
      ops::gemm<float>(ctx, transpose::yes, transpose::no, 1.0f, a.view(), y.view(), 0.0f,
                       z.view());
    }
    ctx.synchronize();
  };
  passes();
  std::vector<double> floor_times;
  for (int r = 0; r < 7; ++r) {
    const auto start = clock_type::now();
    passes();
    floor_times.push_back(seconds_since(start));
  }

  // cuSOLVER's randomized SVD, same k, p, q.
  device_matrix work_a(ctx, m, n);
  device_matrix gu(ctx, m, l);
  device_matrix gv(ctx, n, l);
  device_vector gs(ctx, l);
  run_gesvdr(ctx, a, k, p, q, work_a, gu, gs, gv);
  std::vector<double> gesvdr_times;
  for (int r = 0; r < 5; ++r)
    gesvdr_times.push_back(run_gesvdr(ctx, a, k, p, q, work_a, gu, gs, gv));
  device_matrix gu_k(ctx, m, k);
  device_matrix gv_k(ctx, n, k);
  device_vector gs_k(ctx, k);
  ops::copy<float>(ctx, gu.view().left_cols(k), gu_k.view());
  ops::copy<float>(ctx, gv.view().left_cols(k), gv_k.view());
  ops::copy<float>(ctx, lowrank::matrix_view<const float, lowrank::cuda>(gs.data(), k, 1),
                   lowrank::matrix_view<float, lowrank::cuda>(gs_k.data(), k, 1));
  const double err_gesvdr = relative_error(ctx, a, gu_k, gs_k, gv_k);

  double err = 0;
  std::vector<double> times;
  for (auto _ : state) {
    const auto start = clock_type::now();
    auto r = lowrank::randomized_svd(ctx, a.view(), k, {.oversampling = p, .power_iterations = q});
    ctx.synchronize();
    const double elapsed = seconds_since(start);
    times.push_back(elapsed);
    state.SetIterationTime(elapsed);
    if (times.size() == 1) err = relative_error(ctx, a, r.u, r.s, r.v);
  }
  const double ours = median(times);

  // Block Krylov with its defaults (b = k, d = 3: 6 k column-products against
  // ours 6 (k + p)), timed and measured beside it.
  std::vector<double> krylov_times;
  double krylov_err = 0;
  for (int r = 0; r < 5; ++r) {
    const auto start = clock_type::now();
    auto kr = lowrank::block_krylov_svd(ctx, a.view(), k);
    ctx.synchronize();
    krylov_times.push_back(seconds_since(start));
    if (r == 0) krylov_err = relative_error(ctx, a, kr.u, kr.s, kr.v);
  }
  state.counters["krylov_ms"] = 1e3 * median(krylov_times);
  state.counters["krylov_err"] = krylov_err;
  state.counters["ratio_gemm"] = ours / median(floor_times);
  state.counters["vs_gesvdr"] = median(gesvdr_times) / ours;
  state.counters["err"] = err;
  state.counters["err_gesvdr"] = err_gesvdr;
  state.counters["error_ok"] = err <= err_gesvdr * (1 + 1e-3) ? 1 : 0;
  state.counters["gemm_ms"] = 1e3 * median(floor_times);
  state.counters["gesvdr_ms"] = 1e3 * median(gesvdr_times);
}

BENCHMARK(randomized_svd_cuda)
    ->ArgNames({"m", "n", "k"})
    ->Args({4096, 4096, 64})
    ->Args({4096, 4096, 256})
    ->Args({8192, 8192, 64})
    ->Args({8192, 8192, 256})
    ->Args({16384, 4096, 64})
    ->Args({16384, 4096, 256})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond)
    ->MinTime(1.0);

/// Median milliseconds of `fn` (synchronised) over `reps` calls, after one warm-up.
template <class F>
double median_ms(lowrank::context<lowrank::cuda>& ctx, int reps, F&& fn) {
  fn();
  ctx.synchronize();
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    const auto start = clock_type::now();
    fn();
    ctx.synchronize();
    t.push_back(seconds_since(start));
  }
  return 1e3 * median(t);
}

// The small steps of a randomized SVD with l = k + p columns, each timed
// alone (milliseconds, median): the Cholesky QR factor of an l x l Gram
// matrix (ops::cholesky_factor), the l x l SVD (ops::svd), one Cholesky QR
// pass and CholQR2 on a 4096 x l block (orthonormalize), and a bare stream
// synchronisation; also the SVD's method and Jacobi sweeps
// (context<cuda>::svd_report). It shows where the time beyond the GEMM
// passes goes.
void small_steps_cuda(benchmark::State& state) {
  if (!lowrank::context<lowrank::cuda>::device_available()) {
    state.SkipWithError("no CUDA device visible");
    return;
  }
  const index_t l = state.range(0);
  const index_t rows = 4096;
  lowrank::context<lowrank::cuda> ctx;
  device_matrix y0(ctx, rows, l);
  ops::fill_random(ctx, lowrank::distribution::gaussian, {7, 0}, y0.view());
  device_matrix y(ctx, rows, l);
  device_matrix g(ctx, l, l);
  ops::gram<float>(ctx, y0.view(), g.view());
  lowrank::matrix<double, lowrank::cuda> r(ctx, l, l);
  lowrank::matrix<double, lowrank::cuda> r_inv(ctx, l, l);
  device_matrix rf(ctx, l, l);
  device_matrix u(ctx, l, l);
  device_matrix v(ctx, l, l);
  device_vector s(ctx, l);
  const double cholesky = median_ms(ctx, 20, [&] {
    if (!ops::cholesky_factor<float>(ctx, g.view(), 0.0, r.view(), r_inv.view()).ok) {
      state.SkipWithError("cholesky_factor failed");
    }
  });
  ops::convert(ctx, r.view(), rf.view());
  const double svd =
      median_ms(ctx, 20, [&] { ops::svd<float>(ctx, rf.view(), u.view(), s.view(), v.view()); });
  const lowrank::cuda_svd_report svd_report = ctx.svd_report();
  const auto orth = [&](lowrank::orth_accuracy accuracy) {
    return median_ms(ctx, 20, [&] {
      ops::copy<float>(ctx, y0.view(), y.view());
      lowrank::orthonormalize(ctx, y.view(), accuracy);
    });
  };
  const double copy = median_ms(ctx, 20, [&] { ops::copy<float>(ctx, y0.view(), y.view()); });
  const double basis = orth(lowrank::orth_accuracy::basis) - copy;
  const double orthonormal = orth(lowrank::orth_accuracy::orthonormal) - copy;
  const double sync = median_ms(ctx, 50, [] {});
  for (auto _ : state) {
    state.SetIterationTime(1e-3 * cholesky);
  }
  state.counters["cholesky_ms"] = cholesky;
  state.counters["svd_ms"] = svd;
  // 1 Jacobi, 2 syevd + QR, 3 gesvd; the Jacobi kernel's sweeps (0: not run).
  state.counters["svd_method"] = double(svd_report.method);
  state.counters["svd_sweeps"] = svd_report.jacobi_sweeps;
  state.counters["cholqr_ms"] = basis;
  state.counters["cholqr2_ms"] = orthonormal;
  state.counters["sync_ms"] = sync;
}

BENCHMARK(small_steps_cuda)
    ->ArgNames({"l"})
    ->Arg(74)
    ->Arg(138)
    ->Arg(266)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond)
    ->Iterations(1);

}  // namespace

BENCHMARK_MAIN();
