// What does a GaLore step cost beyond its projections, and how fast is each
// refresh method at keeping the right subspace?
//
// Before the benchmarks, a table: optimizer state of AdamW and of GaLore
// (projected_adam, fp32 moments) for the 2-D weights of a LLaMA-7B-like
// model (32 layers of q, k, v, o 4096 x 4096, gate and up 11008 x 4096, down
// 4096 x 11008; embeddings and norms excluded), from the objects' own
// state_bytes() formulas.
//
//   refresh/m/n/r   a slowly drifting gradient sequence (a fixed rank-r
//                   signal, singular values 0.995^i, plus Gaussian noise of 1%
//                   of its norm; 8 of its right singular vectors rotated by
//                   0.01 rad a step towards spare directions, so the leading
//                   r-subspace is well defined and moves a little); the
//                   refresh of G_1 after a basis from G_0, by
//                   each method, float. Counters: <method>_ms, and
//                   overlap_<method> = ||V_exact^T V||_F^2 / r against the
//                   exact SVD's basis of the same G_1; warm_speedup =
//                   exact_ms / warm_ms (target >= 20 at overlap >= 0.99).
//   step/m/n/r      projected_adam steps without refresh, against the two
//                   GEMMs a step cannot avoid (R = G V and W += N V^T), each
//                   pair timed back to back. Counters: ratio_step (target
//                   <= 1.2), ratio_amortised = (step + warm refresh / 200) /
//                   GEMMs (target <= 1.3), step_ms, gemm_ms.
//
// All products go through ops<cpu>::gemm (lowrank's threads over a
// single-threaded BLAS), as the other CPU benchmarks.
//
//   lowrank_bench_projection --benchmark_counters_tabular=true
//   lowrank_bench_projection --benchmark_filter='refresh/4096'

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <lowrank/lowrank.hpp>
#include <vector>

#include "support.hpp"

namespace {

using lowrank::index_t;
using lowrank::bench::median;
using lowrank::bench::set_blas_threads;
using lowrank::bench::time_of;
using matrix = Eigen::MatrixXf;
using ops = lowrank::ops<lowrank::cpu>;

/// The drifting gradient sequence of the file comment: G_t (m x n).
class drifting_gradient {
 public:
  drifting_gradient(lowrank::context<lowrank::cpu>& ctx, index_t m, index_t n, index_t r)
      : ctx_(ctx), u_(m, r), v_(n, r + 8), noise_(m, n), s_(r) {
    ops::fill_random(ctx, lowrank::distribution::gaussian, {11, 0}, lowrank::view(u_));
    ops::fill_random(ctx, lowrank::distribution::gaussian, {11, 1}, lowrank::view(v_));
    ops::fill_random(ctx, lowrank::distribution::gaussian, {11, 2}, lowrank::view(noise_));
    lowrank::orthonormalize(ctx, lowrank::view(u_));
    lowrank::orthonormalize(ctx, lowrank::view(v_));
    for (index_t i = 0; i < s_.size(); ++i) s_(i) = float(std::pow(0.995, double(i)));
    // 1% of the signal's norm, spread over every entry.
    noise_ *= 0.01f * s_.norm() / noise_.norm();
  }
  matrix at(int t) const {
    const index_t k = s_.size();
    matrix v = v_.leftCols(k);
    const float a = 0.01f * float(t);
    for (index_t j = 0; j < 8; ++j) {
      v.col(j) = std::cos(a) * v_.col(j) + std::sin(a) * v_.col(k + j);
    }
    matrix g = noise_;
    const matrix us = u_ * s_.asDiagonal();
    ops::gemm(ctx_, lowrank::transpose::no, lowrank::transpose::yes, 1.0f, lowrank::view(us),
              lowrank::view(v), 1.0f, lowrank::view(g));
    return g;
  }

 private:
  lowrank::context<lowrank::cpu>& ctx_;
  matrix u_, v_, noise_;
  Eigen::VectorXf s_;
};

matrix right_basis(const lowrank::projector<float>& p) {
  const auto v = p.right_basis();
  matrix out(v.rows(), v.cols());
  for (index_t j = 0; j < v.cols(); ++j) {
    for (index_t i = 0; i < v.rows(); ++i) out(i, j) = v(i, j);
  }
  return out;
}

void refresh(benchmark::State& state) {
  const index_t m = state.range(0), n = state.range(1), r = state.range(2);
  set_blas_threads(1);
  lowrank::context<lowrank::cpu> ctx;
  const drifting_gradient seq(ctx, m, n, r);
  const matrix g0 = seq.at(0);
  const matrix g1 = seq.at(1);
  for (auto _ : state) {
    matrix exact_basis;
    for (const auto method : {lowrank::refresh_method::exact, lowrank::refresh_method::randomized,
                              lowrank::refresh_method::warm, lowrank::refresh_method::random}) {
      const char* name = method == lowrank::refresh_method::exact        ? "exact"
                         : method == lowrank::refresh_method::randomized ? "randomized"
                         : method == lowrank::refresh_method::warm       ? "warm"
                                                                         : "random";
      lowrank::projector<float> p(m, n, {.rank = r, .method = method, .update_gap = 1});
      p.refresh(ctx, lowrank::as_const(lowrank::view(g0)));
      // The exact SVD once; the others three times, the median.
      std::vector<double> times;
      for (int rep = 0; rep < (method == lowrank::refresh_method::exact ? 1 : 3); ++rep) {
        lowrank::projector<float> q(m, n, {.rank = r, .method = method, .update_gap = 1});
        q.refresh(ctx, lowrank::as_const(lowrank::view(g0)));
        times.push_back(time_of([&] { q.refresh(ctx, lowrank::as_const(lowrank::view(g1))); }));
        if (rep == 0) p = std::move(q);
      }
      const double ms = 1e3 * median(times);
      state.counters[std::string(name) + "_ms"] = ms;
      const matrix basis = right_basis(p);
      if (method == lowrank::refresh_method::exact) {
        exact_basis = basis;
      } else {
        state.counters[std::string("overlap_") + name] =
            double((exact_basis.transpose() * basis).squaredNorm()) / double(r);
      }
    }
    state.counters["warm_speedup"] = state.counters["exact_ms"] / state.counters["warm_ms"];
    state.SetIterationTime(1);
  }
}

void step(benchmark::State& state) {
  const index_t m = state.range(0), n = state.range(1), r = state.range(2);
  set_blas_threads(1);
  lowrank::context<lowrank::cpu> ctx;
  const drifting_gradient seq(ctx, m, n, r);
  const matrix g = seq.at(0);
  matrix w = matrix::Zero(m, n);
  lowrank::projected_adam<float> opt({.lr = 1e-3});
  const auto i =
      opt.add(ctx, lowrank::view(w),
              {.rank = r, .method = lowrank::refresh_method::warm, .update_gap = 1 << 30});
  opt.step(ctx, i, lowrank::as_const(lowrank::view(g)));  // the first basis, not timed
  const auto& p = *opt.projector_of(i);
  matrix rr(p.projected_rows(), p.projected_cols());
  matrix basis = right_basis(p);
  // One warm refresh, for the amortised figure.
  lowrank::projector<float> warm(m, n, {.rank = r, .method = lowrank::refresh_method::warm});
  warm.refresh(ctx, lowrank::as_const(lowrank::view(g)));
  const matrix g1 = seq.at(1);
  const double refresh_s =
      time_of([&] { warm.refresh(ctx, lowrank::as_const(lowrank::view(g1))); });
  std::vector<double> steps, gemms;
  for (auto _ : state) {
    const double t_step = time_of([&] { opt.step(ctx, i, lowrank::as_const(lowrank::view(g))); });
    const double t_gemm = time_of([&] {
      ops::gemm(ctx, lowrank::transpose::no, lowrank::transpose::no, 1.0f, lowrank::view(g),
                lowrank::view(basis), 0.0f, lowrank::view(rr));
      ops::gemm(ctx, lowrank::transpose::no, lowrank::transpose::yes, -1e-3f, lowrank::view(rr),
                lowrank::view(basis), 1.0f, lowrank::view(w));
    });
    steps.push_back(t_step);
    gemms.push_back(t_gemm);
    state.SetIterationTime(t_step);
  }
  std::vector<double> ratios(steps.size()), amortised(steps.size());
  for (std::size_t k = 0; k < steps.size(); ++k) {
    ratios[k] = steps[k] / gemms[k];
    amortised[k] = (steps[k] + refresh_s / 200) / gemms[k];
  }
  state.counters["ratio_step"] = median(ratios);
  state.counters["ratio_amortised"] = median(amortised);
  state.counters["step_ms"] = 1e3 * median(steps);
  state.counters["gemm_ms"] = 1e3 * median(gemms);
  state.counters["warm_refresh_ms"] = 1e3 * refresh_s;
}

/// The state table of the file comment.
void print_state_table() {
  struct shape {
    index_t m, n, count;
  };
  const shape shapes[] = {{4096, 4096, 4 * 32}, {11008, 4096, 2 * 32}, {4096, 11008, 32}};
  double adamw = 0;
  for (const auto& s : shapes) adamw += 2.0 * 4 * double(s.m * s.n * s.count);
  std::printf("Optimizer state for LLaMA-7B-like 2-D weights (fp32 moments):\n");
  std::printf("%10s %14s %10s\n", "rank", "state GiB", "of AdamW");
  std::printf("%10s %14.2f %9.1f%%\n", "AdamW", adamw / (1 << 30), 100.0);
  for (const index_t r : {128, 256, 512, 1024}) {
    double bytes = 0;
    for (const auto& s : shapes) {
      const lowrank::projector<float> p(s.m, s.n, {.rank = r});
      const double moments = 2.0 * 4 * double(p.projected_rows() * p.projected_cols());
      bytes += double(s.count) * (moments + double(p.state_bytes()));
    }
    std::printf("%10ld %14.2f %9.1f%%\n", long(r), bytes / (1 << 30), 100.0 * bytes / adamw);
  }
  std::printf("\n");
}

}  // namespace

BENCHMARK(refresh)
    ->Args({4096, 4096, 256})
    ->Args({11008, 4096, 512})
    ->Iterations(1)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(step)
    ->Args({4096, 4096, 256})
    ->Args({11008, 4096, 512})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond)
    ->Iterations(8);

int main(int argc, char** argv) {
  print_state_table();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
