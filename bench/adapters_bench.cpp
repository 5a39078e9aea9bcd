// How close is a training step through an adapter to the dense GEMMs it must do?
//
// A LoRA step on a frozen nn.Linear (W out x in, a batch X of N rows) must at
// least do the base layer's two dense products: Y = X W^T in forward and
// dX = G W in backward, each 2 N out in flops; the adapter adds
// 6 N r (in + out) flops and some element-wise work. For out = in = 4096,
// N = 512, r = 16 (alpha = 32, no dropout, a frozen bias), float, this
// benchmark reports as counters the medians of per-iteration ratios, both
// sides measured in the same iteration, one after the other (so a change of
// load on the machine hits both alike):
//
//   lora_step    LoRA forward + backward (with dX)
//                  ratio_gemm  / the two base GEMMs (target <= 1.10)
//                  fwd_ratio, bwd_ratio  each pass / its base GEMM
//   dora_step    DoRA forward + backward
//                  ratio_lora  / LoRA's forward + backward (target <= 1.15)
//   multi_lora_forward/adapters:k
//                a mixed batch of N rows, each row's adapter one of k, in one
//                multi_lora forward
//                  speedup       (the same rows group by group through k
//                                separate lora forwards, each with its own
//                                base GEMM; the rows are grouped beforehand,
//                                so this baseline pays no gather or scatter)
//                                / multi_lora
//                  ratio_single  multi_lora / one lora forward of all N rows
//   lora_merge, dora_merge
//                merge() then unmerge() into W, for reference
//                  merge_ms, unmerge_ms
//
// All products go through ops<cpu>::gemm: lowrank's own threads (the
// context's default, one per core) over a single-threaded BLAS, as
// randomized_svd_bench does.
//
//   lowrank_bench_adapters --benchmark_counters_tabular=true

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <lowrank/adapters/dora.hpp>
#include <lowrank/adapters/lora.hpp>
#include <lowrank/adapters/multi_lora.hpp>
#include <lowrank/lowrank.hpp>
#include <string>
#include <utility>
#include <vector>

#include "support.hpp"

namespace {

using lowrank::index_t;
using lowrank::bench::median;
using lowrank::bench::median_ratio;
using lowrank::bench::set_blas_threads;
using lowrank::bench::time_of;
using matrix = Eigen::MatrixXf;
using vector = Eigen::VectorXf;
using ops = lowrank::ops<lowrank::cpu>;
using lora = lowrank::lora<float, lowrank::cpu>;
using dora = lowrank::dora<float, lowrank::cpu>;

constexpr index_t features = 4096;  // out = in
constexpr index_t batch = 512;      // N
constexpr index_t rank = 16;        // r

/// A frozen layer, a batch, an upstream gradient and the outputs, all Gaussian.
struct problem {
  explicit problem(lowrank::context<lowrank::cpu>& ctx, index_t n = batch)
      : w(features, features),
        bias(features),
        x(n, features),
        g(n, features),
        y(n, features),
        dx(n, features) {
    ops::fill_random(ctx, lowrank::distribution::gaussian, {1, 0}, lowrank::view(w));
    ops::fill_random(ctx, lowrank::distribution::gaussian, {1, 1}, lowrank::view(bias));
    ops::fill_random(ctx, lowrank::distribution::gaussian, {1, 2}, lowrank::view(x));
    ops::fill_random(ctx, lowrank::distribution::gaussian, {1, 3}, lowrank::view(g));
    w *= 1.0f / 64;  // 1 / sqrt(in): outputs of order 1
  }
  [[nodiscard]] lowrank::vector_view<float, lowrank::cpu> bias_view() {
    return {bias.data(), bias.size()};
  }
  matrix w;
  vector bias;
  matrix x, g, y, dx;
};

/// The options of every adapter here: r = 16, alpha = 32, no dropout.
lowrank::lora_options options(std::uint64_t layer = 0) {
  return {.rank = rank, .alpha = 2.0 * rank, .layer = layer};
}

/// B = 0 after PEFT's init; give it values, as after some training.
template <class Adapter>
void train_b(lowrank::context<lowrank::cpu>& ctx, Adapter& adapter, std::uint64_t seed) {
  ops::fill_random(ctx, lowrank::distribution::gaussian, {seed, 7}, adapter.b());
  lowrank::as_eigen(adapter.b()) *= 1e-2f;
}

template <class Adapter>
void step(lowrank::context<lowrank::cpu>& ctx, Adapter& adapter, problem& p) {
  adapter.forward(ctx, lowrank::view(std::as_const(p.x)), lowrank::view(p.y));
  adapter.backward(ctx, lowrank::view(std::as_const(p.g)), lowrank::view(p.dx));
}

void lora_step(benchmark::State& state) {
  set_blas_threads(1);
  lowrank::context<lowrank::cpu> ctx;
  problem p(ctx);
  lora adapter(ctx, lowrank::view(p.w), p.bias_view(), options());
  train_b(ctx, adapter, 1);

  auto base_forward = [&] {
    ops::gemm<float>(ctx, lowrank::transpose::no, lowrank::transpose::yes, 1,
                     lowrank::view(std::as_const(p.x)), lowrank::view(std::as_const(p.w)), 0,
                     lowrank::view(p.y));
  };
  auto base_backward = [&] {
    ops::gemm<float>(ctx, lowrank::transpose::no, lowrank::transpose::no, 1,
                     lowrank::view(std::as_const(p.g)), lowrank::view(std::as_const(p.w)), 0,
                     lowrank::view(p.dx));
  };
  // Warm up: the adapter's workspaces, the BLAS's buffers, the pages.
  base_forward();
  base_backward();
  step(ctx, adapter, p);

  std::vector<double> gemm_fwd, gemm_bwd, fwd, bwd, total;
  for (auto _ : state) {
    gemm_fwd.push_back(time_of(base_forward));
    gemm_bwd.push_back(time_of(base_backward));
    fwd.push_back(time_of(
        [&] { adapter.forward(ctx, lowrank::view(std::as_const(p.x)), lowrank::view(p.y)); }));
    bwd.push_back(time_of(
        [&] { adapter.backward(ctx, lowrank::view(std::as_const(p.g)), lowrank::view(p.dx)); }));
    total.push_back(fwd.back() + bwd.back());
    benchmark::DoNotOptimize(p.dx.data());
    state.SetIterationTime(total.back());
  }
  std::vector<double> gemm_total(gemm_fwd.size());
  for (std::size_t i = 0; i < gemm_total.size(); ++i) gemm_total[i] = gemm_fwd[i] + gemm_bwd[i];
  state.counters["ratio_gemm"] = median_ratio(total, gemm_total);
  state.counters["fwd_ratio"] = median_ratio(fwd, gemm_fwd);
  state.counters["bwd_ratio"] = median_ratio(bwd, gemm_bwd);
  state.counters["gemm_ms"] = 1e3 * median(gemm_total);
  state.counters["threads"] = ctx.threads();
  state.SetLabel("float, out = in = 4096, N = 512, r = 16, bias, no dropout");
}

void dora_step(benchmark::State& state) {
  set_blas_threads(1);
  lowrank::context<lowrank::cpu> ctx;
  problem p(ctx);
  // Two copies of W: each adapter refers to its own (neither writes it here).
  matrix w2 = p.w;
  lora base(ctx, lowrank::view(p.w), p.bias_view(), options());
  dora adapter(ctx, lowrank::view(w2), p.bias_view(), options());
  train_b(ctx, base, 1);
  train_b(ctx, adapter, 1);
  step(ctx, base, p);
  step(ctx, adapter, p);

  std::vector<double> lora_times, dora_times;
  for (auto _ : state) {
    lora_times.push_back(time_of([&] { step(ctx, base, p); }));
    dora_times.push_back(time_of([&] { step(ctx, adapter, p); }));
    benchmark::DoNotOptimize(p.dx.data());
    state.SetIterationTime(dora_times.back());
  }
  state.counters["ratio_lora"] = median_ratio(dora_times, lora_times);
  state.counters["lora_ms"] = 1e3 * median(lora_times);
  state.counters["threads"] = ctx.threads();
  state.SetLabel("float, out = in = 4096, N = 512, r = 16, bias, no dropout");
}

/// A mixed batch over k adapters: one multi_lora forward against k lora
/// forwards, one per group of rows (evaluation mode, as when serving).
void multi_lora_forward(benchmark::State& state) {
  set_blas_threads(1);
  const auto k = static_cast<std::int32_t>(state.range(0));
  lowrank::context<lowrank::cpu> ctx;
  problem p(ctx);
  std::vector<lora> adapters;
  lowrank::multi_lora<float, lowrank::cpu> multi(ctx, lowrank::view(std::as_const(p.w)),
                                                 p.bias_view());
  for (std::int32_t a = 0; a < k; ++a) {
    adapters.emplace_back(ctx, lowrank::view(p.w), p.bias_view(), options(std::uint64_t(a)));
    train_b(ctx, adapters.back(), std::uint64_t(a) + 1);
    adapters.back().train(false);
    multi.add_adapter(ctx, adapters.back());
  }
  // Each row's adapter, scattered over the batch (a fixed LCG), and the same
  // rows grouped by adapter for the baseline (grouped outside the timing).
  std::vector<std::int32_t> ids(static_cast<std::size_t>(batch));
  std::uint32_t state_lcg = 12345;
  for (auto& id : ids) {
    state_lcg = state_lcg * 1664525u + 1013904223u;
    id = static_cast<std::int32_t>((state_lcg >> 8) % std::uint32_t(k));
  }
  std::vector<matrix> xs(static_cast<std::size_t>(k)), ys(static_cast<std::size_t>(k));
  for (std::int32_t a = 0; a < k; ++a) {
    std::vector<index_t> rows;
    for (index_t i = 0; i < batch; ++i) {
      if (ids[std::size_t(i)] == a) rows.push_back(i);
    }
    auto& xa = xs[std::size_t(a)];
    xa.resize(index_t(rows.size()), features);
    for (std::size_t j = 0; j < rows.size(); ++j) xa.row(index_t(j)) = p.x.row(rows[j]);
    ys[std::size_t(a)].resize(index_t(rows.size()), features);
  }
  auto grouped = [&] {
    for (std::size_t a = 0; a < adapters.size(); ++a) {
      adapters[a].forward(ctx, lowrank::view(std::as_const(xs[a])), lowrank::view(ys[a]));
    }
  };
  auto mixed = [&] {
    multi.forward(ctx, lowrank::view(std::as_const(p.x)), ids, lowrank::view(p.y));
  };
  auto single = [&] {
    adapters[0].forward(ctx, lowrank::view(std::as_const(p.x)), lowrank::view(p.y));
  };
  grouped();
  mixed();
  single();

  std::vector<double> grouped_times, mixed_times, single_times;
  for (auto _ : state) {
    grouped_times.push_back(time_of(grouped));
    single_times.push_back(time_of(single));
    mixed_times.push_back(time_of(mixed));
    benchmark::DoNotOptimize(p.y.data());
    state.SetIterationTime(mixed_times.back());
  }
  state.counters["speedup"] = median_ratio(grouped_times, mixed_times);
  state.counters["ratio_single"] = median_ratio(mixed_times, single_times);
  state.counters["grouped_ms"] = 1e3 * median(grouped_times);
  state.counters["threads"] = ctx.threads();
  state.SetLabel("float, out = in = 4096, N = 512, r = 16, bias, forward only");
}

/// merge() + unmerge() of an adapter (LoRA or DoRA) into a 4096 x 4096 W.
template <class Adapter>
void merge_cycle(benchmark::State& state) {
  set_blas_threads(1);
  lowrank::context<lowrank::cpu> ctx;
  problem p(ctx, 1);
  Adapter adapter(ctx, lowrank::view(p.w), p.bias_view(), options());
  train_b(ctx, adapter, 1);
  std::vector<double> merges, unmerges;
  for (auto _ : state) {
    merges.push_back(time_of([&] { adapter.merge(ctx); }));
    unmerges.push_back(time_of([&] { adapter.unmerge(ctx); }));
    state.SetIterationTime(merges.back() + unmerges.back());
  }
  state.counters["merge_ms"] = 1e3 * median(merges);
  state.counters["unmerge_ms"] = 1e3 * median(unmerges);
  state.counters["threads"] = ctx.threads();
  state.SetLabel("float, 4096 x 4096, r = 16");
}

BENCHMARK(lora_step)->UseManualTime()->Unit(benchmark::kMillisecond)->MinTime(2.0);
BENCHMARK(dora_step)->UseManualTime()->Unit(benchmark::kMillisecond)->MinTime(2.0);
BENCHMARK(multi_lora_forward)
    ->ArgName("adapters")
    ->Arg(4)
    ->Arg(16)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond)
    ->MinTime(1.0);
BENCHMARK(merge_cycle<lora>)
    ->Name("lora_merge")
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond)
    ->MinTime(1.0);
BENCHMARK(merge_cycle<dora>)
    ->Name("dora_merge")
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond)
    ->MinTime(1.0);

}  // namespace

BENCHMARK_MAIN();
