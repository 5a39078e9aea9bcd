// How close is lowrank's randomized SVD to the cost of the GEMMs it must do?
//
// A rank-k randomized SVD with l = k + p columns and q power iterations makes
// 2q + 2 passes over A, each an (m x n) x (n x l) product. This benchmark times
// randomized_svd (float, q = 2, p = 10) and, in the same run, those 2q + 2
// products, and reports as counters:
//   ratio_blas  median time / (the median of the passes as plain BLAS calls,
//               on the BLAS's own threads, measured before)
//   ratio_own   the median over iterations of time / (the passes through
//               lowrank's gemm, on lowrank's threads, timed in the same iteration)
// lowrank runs on its own threads over a single-threaded BLAS (its
// reproducible configuration, backend/cpu/context.hpp); the BLAS floor runs
// with the BLAS's thread count set to the same number of threads.
//
//   lowrank_bench_randomized_svd --benchmark_counters_tabular=true

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <lowrank/lowrank.hpp>
#include <thread>
#include <vector>

#include "support.hpp"

namespace {

using lowrank::index_t;
using lowrank::bench::set_blas_threads;
using matrix = Eigen::MatrixXf;
using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point start) {
  return std::chrono::duration<double>(clock_type::now() - start).count();
}

void randomized_svd(benchmark::State& state) {
  const index_t n = state.range(0);
  const index_t k = state.range(1);
  const index_t p = 10;
  const index_t q = 2;
  const index_t l = k + p;
  const int threads = lowrank::context<lowrank::cpu>::default_threads();

  lowrank::context<lowrank::cpu> ctx(threads);
  matrix a(n, n);
  lowrank::ops<lowrank::cpu>::fill_random(ctx, lowrank::distribution::gaussian, {1, 0},
                                          lowrank::view(a));
  matrix x(n, l);
  lowrank::ops<lowrank::cpu>::fill_random(ctx, lowrank::distribution::gaussian, {1, 1},
                                          lowrank::view(x));
  matrix y(n, l);
  matrix z(n, l);

  // The 2q + 2 passes: A X and A^T Y in turn (X fixed, so nothing overflows).
  auto blas_passes = [&] {
    for (index_t pass = 0; pass < q + 1; ++pass) {
      y.noalias() = a * x;
      z.noalias() = a.transpose() * y;
    }
  };
  auto own_passes = [&] {
    using ops = lowrank::ops<lowrank::cpu>;
    for (index_t pass = 0; pass < q + 1; ++pass) {
      ops::gemm<float>(ctx, lowrank::transpose::no, lowrank::transpose::no, 1, lowrank::view(a),
                       lowrank::view(std::as_const(x)), 0, lowrank::view(y));
      ops::gemm<float>(ctx, lowrank::transpose::yes, lowrank::transpose::no, 1, lowrank::view(a),
                       lowrank::view(std::as_const(y)), 0, lowrank::view(z));
    }
  };

  // The floors first, each as the median of 7 runs, with a pause after the
  // BLAS's own threads (OpenBLAS's idle workers spin for a while and would
  // steal cores from what runs next).
  auto median_of = [](int runs, auto&& body) {
    std::vector<double> times;
    for (int r = 0; r < runs; ++r) {
      const auto start = clock_type::now();
      body();
      times.push_back(seconds_since(start));
    }
    std::nth_element(times.begin(), times.begin() + runs / 2, times.end());
    return times[static_cast<std::size_t>(runs / 2)];
  };
  set_blas_threads(threads);
  blas_passes();
  const double blas_floor = median_of(7, blas_passes);
  set_blas_threads(1);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  own_passes();

  // Each iteration times the passes through lowrank's gemm and then the SVD,
  // and ratio_own is the median of the per-iteration ratios: on a shared
  // machine whose speed drifts (CPU steal), the pair sees the same load.
  std::vector<double> times;
  std::vector<double> ratios;
  for (auto _ : state) {
    const auto floor_start = clock_type::now();
    own_passes();
    const double floor = seconds_since(floor_start);
    const auto start = clock_type::now();
    auto r = lowrank::randomized_svd(ctx, lowrank::view(a), k,
                                     {.oversampling = p, .power_iterations = q, .seed = 0});
    benchmark::DoNotOptimize(r.s.data());
    const double elapsed = seconds_since(start);
    times.push_back(elapsed);
    ratios.push_back(elapsed / floor);
    state.SetIterationTime(elapsed);
  }
  auto median = [](std::vector<double>& v) {
    std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2), v.end());
    return v[v.size() / 2];
  };
  const double time = median(times);
  set_blas_threads(threads);
  state.counters["ratio_blas"] = time / blas_floor;
  state.counters["ratio_own"] = median(ratios);
  state.counters["gemm_ms"] = 1e3 * blas_floor;
  state.counters["threads"] = threads;
  state.SetLabel("float, k + p = " + std::to_string(l) + ", q = 2");
}

BENCHMARK(randomized_svd)
    ->ArgNames({"n", "k"})
    ->Args({2048, 64})
    ->Args({2048, 128})
    ->Args({4096, 64})
    ->Args({4096, 128})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond)
    ->MinTime(2.0);

}  // namespace

BENCHMARK_MAIN();
