// The DCT (basis/dct.hpp) and the SVD-free DCT projector.
//
// Before the benchmarks, a table: the time of the GEMM route and of the FFT
// route for 512 rows of length n, float, over n from 32 to 2048, and the
// cross-over the cost model (dct_route_for) should match.
//
//   transform/n     512 rows of length n, float, each route timed back to
//                   back (median of 5): gemm_ms, fft_ms and, when FFTW was
//                   found at build time, fftw_ms (FFTW's REDFT10 with
//                   FFTW_MEASURE on the same rows, one thread per call:
//                   lowrank's two threads each run half the rows through
//                   it) and fft_over_fftw (target <= 2). n = 1024, 4096,
//                   11008 (= 2^8 43: not a power of two).
//   refresh/kind    the projector's refresh at 4096 x 4096, r = 256, float:
//                   dct_ms, exact_ms, warm_ms (from the previous step's
//                   basis) and the captured energy ||G Q_I||_F^2 / ||G||_F^2
//                   of each basis (energy_dct, energy_exact = the SVD's
//                   optimum, energy_warm). kind 0: G = dY^T X with X's rows
//                   an AR(1) process along the input features (rho = 0.95,
//                   smooth, as activations with correlated neighbouring
//                   features are), 512 tokens; kind 1: a random rank-256
//                   signal plus 1% noise (the singular vectors are random
//                   directions: the DCT's worst case).
//
// FFTW is GPL: it is only ever linked into this benchmark, when installed,
// to measure against; the library never uses it.
//
//   lowrank_bench_dct --benchmark_counters_tabular=true

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <lowrank/lowrank.hpp>
#include <vector>

#if defined(LOWRANK_BENCH_HAVE_FFTW)
#include <fftw3.h>
#endif

#include "support.hpp"

namespace {

using lowrank::index_t;
using lowrank::bench::median;
using lowrank::bench::set_blas_threads;
using lowrank::bench::time_of;
using matrix = Eigen::MatrixXf;
using ops = lowrank::ops<lowrank::cpu>;

double route_ms(lowrank::context<lowrank::cpu>& ctx, const matrix& x, matrix& y,
                lowrank::dct_route route, int reps) {
  lowrank::dct(ctx, lowrank::as_const(lowrank::view(x)), lowrank::view(y), lowrank::dct_axis::rows,
               route);  // warm: plans, the cached C
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    t.push_back(time_of([&] {
      lowrank::dct(ctx, lowrank::as_const(lowrank::view(x)), lowrank::view(y),
                   lowrank::dct_axis::rows, route);
    }));
  }
  return 1e3 * median(t);
}

void transform(benchmark::State& state) {
  const index_t n = state.range(0);
  const index_t rows = 512;
  set_blas_threads(1);
  lowrank::context<lowrank::cpu> ctx;
  matrix x = matrix::Random(rows, n);
  matrix y(rows, n);
  double gemm = 0, fft = 0, fftw = 0;
  for (auto _ : state) {
    gemm = route_ms(ctx, x, y, lowrank::dct_route::gemm, n > 4096 ? 1 : 5);
    fft = route_ms(ctx, x, y, lowrank::dct_route::fft, 5);
#if defined(LOWRANK_BENCH_HAVE_FFTW)
    // The rows as FFTW sees them: transposed, each vector contiguous; two
    // plans (one per half of the rows) run on lowrank's two threads.
    matrix xt = x.transpose();
    matrix yt(n, rows);
    const int len = int(n);
    const int half = int(rows / 2);
    fftwf_r2r_kind kind = FFTW_REDFT10;
    fftwf_plan plan = fftwf_plan_many_r2r(1, &len, half, xt.data(), nullptr, 1, len, yt.data(),
                                          nullptr, 1, len, &kind, FFTW_MEASURE);
    xt = x.transpose();  // FFTW_MEASURE overwrote the input
    std::vector<double> t;
    for (int i = 0; i < 6; ++i) {
      const double s = time_of([&] {
        ctx.pool().run(2, [&](index_t part) {
          fftwf_execute_r2r(plan, xt.data() + part * half * len, yt.data() + part * half * len);
        });
      });
      if (i > 0) t.push_back(s);
    }
    fftwf_destroy_plan(plan);
    fftw = 1e3 * median(t);
#endif
  }
  state.counters["gemm_ms"] = gemm;
  state.counters["fft_ms"] = fft;
  state.counters["auto_is_fft"] =
      lowrank::dct_route_for<lowrank::cpu>(n, rows) == lowrank::dct_route::fft;
  if (fftw > 0) {
    state.counters["fftw_ms"] = fftw;
    state.counters["fft_over_fftw"] = fft / fftw;
  }
}

/// The cross-over table (printed once, before the benchmarks).
void crossover_table() {
  set_blas_threads(1);
  lowrank::context<lowrank::cpu> ctx;
  std::printf("DCT of 512 rows, float: GEMM route vs FFT route (median of 5, ms)\n");
  std::printf("%8s %10s %10s %8s %s\n", "n", "gemm", "fft", "faster", "model");
  for (const index_t n : {32, 64, 128, 192, 256, 384, 512, 768, 1024, 2048}) {
    matrix x = matrix::Random(512, n);
    matrix y(512, n);
    const double g = route_ms(ctx, x, y, lowrank::dct_route::gemm, 5);
    const double f = route_ms(ctx, x, y, lowrank::dct_route::fft, 5);
    const bool model = lowrank::dct_route_for<lowrank::cpu>(n, 512) == lowrank::dct_route::fft;
    std::printf("%8td %10.3f %10.3f %8s %s\n", n, g, f, f < g ? "fft" : "gemm",
                model ? "fft" : "gemm");
  }
  std::printf("\n");
}

/// A 4096 x 4096 gradient of the file comment's kind.
matrix gradient(lowrank::context<lowrank::cpu>& ctx, index_t m, index_t n, int kind, int step) {
  matrix g(m, n);
  if (kind == 0) {
    const index_t tokens = 512;
    matrix x(tokens, n);
    matrix dy(tokens, m);
    ops::fill_random(ctx, lowrank::distribution::gaussian, {21, std::uint64_t(2 * step)},
                     lowrank::view(x));
    ops::fill_random(ctx, lowrank::distribution::gaussian, {21, std::uint64_t(2 * step + 1)},
                     lowrank::view(dy));
    const float rho = 0.95f;
    const float c = std::sqrt(1 - rho * rho);
    for (index_t j = 1; j < n; ++j) x.col(j) = rho * x.col(j - 1) + c * x.col(j);
    ops::gemm(ctx, lowrank::transpose::yes, lowrank::transpose::no, 1.0f,
              lowrank::as_const(lowrank::view(dy)), lowrank::as_const(lowrank::view(x)), 0.0f,
              lowrank::view(g));
  } else {
    const index_t r = 256;
    matrix u(m, r);
    matrix v(n, r);
    ops::fill_random(ctx, lowrank::distribution::gaussian, {22, 0}, lowrank::view(u));
    ops::fill_random(ctx, lowrank::distribution::gaussian, {22, 1}, lowrank::view(v));
    ops::fill_random(ctx, lowrank::distribution::gaussian, {22, std::uint64_t(2 + step)},
                     lowrank::view(g));
    for (index_t i = 0; i < r; ++i) u.col(i) *= float(std::pow(0.99, double(i)));
    const float signal = (u * v.transpose()).norm();
    g *= 0.01f * signal / g.norm();
    ops::gemm(ctx, lowrank::transpose::no, lowrank::transpose::yes, 1.0f,
              lowrank::as_const(lowrank::view(u)), lowrank::as_const(lowrank::view(v)), 1.0f,
              lowrank::view(g));
  }
  return g;
}

void refresh(benchmark::State& state) {
  const int kind = int(state.range(0));
  const index_t m = 4096, n = 4096, r = 256;
  set_blas_threads(1);
  lowrank::context<lowrank::cpu> ctx;
  const matrix g0 = gradient(ctx, m, n, kind, 0);
  const matrix g1 = gradient(ctx, m, n, kind, 1);
  const double total = double(g1.squaredNorm());
  const auto energy = [&](const lowrank::projector<float>& p) {
    // ||G V||^2 / ||G||^2 for the right basis V (n x r).
    const auto v = p.basis_copy(ctx, false);
    const matrix gv = g1 * v;
    return double(gv.squaredNorm()) / total;
  };
  for (auto _ : state) {
    for (const auto method : {lowrank::refresh_method::dct, lowrank::refresh_method::exact,
                              lowrank::refresh_method::warm}) {
      const char* name = method == lowrank::refresh_method::dct     ? "dct"
                         : method == lowrank::refresh_method::exact ? "exact"
                                                                    : "warm";
      lowrank::projector<float> p(m, n, {.rank = r, .method = method, .update_gap = 1});
      p.refresh(ctx, lowrank::as_const(lowrank::view(g0)));
      const double ms =
          1e3 * time_of([&] { p.refresh(ctx, lowrank::as_const(lowrank::view(g1))); });
      state.counters[std::string(name) + "_ms"] = ms;
      state.counters[std::string("energy_") + name] = energy(p);
    }
  }
}

BENCHMARK(transform)->Arg(1024)->Arg(4096)->Arg(11008)->Iterations(1)->Unit(
    benchmark::kMillisecond);
BENCHMARK(refresh)->Arg(0)->Arg(1)->Iterations(1)->Unit(benchmark::kMillisecond);

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  crossover_table();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
