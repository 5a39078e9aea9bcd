// How does a LoCA training step compare with LoRA's, and with the reference's
// dense route?
//
// LoCA (adapters/loca.hpp) computes its update dW = alpha C_out^T S C_in in
// factored form: DCTs of the batch's rows, gathers and scatters of k columns,
// and sampled products for the gradients, never an out x in matrix. The
// reference (TL-UESTC/LoCA, default mode) forms dW by two dense GEMMs with the
// DCT matrices, applies it by a third, and in backward forms dL/ddW = G^T X
// and K = C_out (dL/ddW) C_in^T by three more. For out = in = 4096, N = 512,
// k = 1000 (the paper's n_frequency), alpha = 1, a frozen bias, float, this
// benchmark reports as counters the medians of per-iteration ratios, both
// sides measured in the same iteration, one after the other:
//
//   loca_step/phase:coefficients, loca_step/phase:locations
//                LoCA forward + backward (with dX) in each phase of its schedule
//                  ratio_lora   / LoRA r = 16's forward + backward on the same
//                                 layer (target <= 1.3 in the coefficients' phase)
//                  loca_ms, lora_ms
//   loca_vs_dense
//                  speedup_dense  the reference's dense route (forward +
//                                 backward, implemented here with ops<cpu>::gemm)
//                                 / LoCA's (target >= 10)
//                  dense_ms, loca_ms
//   loca_routes/k:K
//                LoCA's two routes at k = K (coefficients' phase)
//                  basis_over_transform  the basis route's step / the
//                                 transform route's: the automatic route takes
//                                 the basis below k = 480 here (loca_route_for)
//
// All products go through ops<cpu>::gemm: lowrank's own threads (the
// context's default, one per core) over a single-threaded BLAS, as
// adapters_bench does.
//
//   lowrank_bench_loca --benchmark_counters_tabular=true

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <lowrank/adapters/loca.hpp>
#include <lowrank/adapters/lora.hpp>
#include <lowrank/lowrank.hpp>
#include <string>
#include <utility>
#include <vector>

#include "support.hpp"

namespace {

using lowrank::index_t;
using lowrank::transpose;
using lowrank::bench::median;
using lowrank::bench::median_ratio;
using lowrank::bench::set_blas_threads;
using lowrank::bench::time_of;
using matrix = Eigen::MatrixXf;
using vector = Eigen::VectorXf;
using ops = lowrank::ops<lowrank::cpu>;
using lora = lowrank::lora<float, lowrank::cpu>;
using loca = lowrank::loca<float, lowrank::cpu>;

constexpr index_t features = 4096;  // out = in
constexpr index_t batch = 512;      // N
constexpr index_t frequencies = 1000;

/// A frozen layer, a batch, an upstream gradient and the outputs, all Gaussian.
struct problem {
  explicit problem(lowrank::context<lowrank::cpu>& ctx)
      : w(features, features),
        bias(features),
        x(batch, features),
        g(batch, features),
        y(batch, features),
        dx(batch, features) {
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

/// LoRA r = 16, alpha = 32, with a trained-looking B.
lora make_lora(lowrank::context<lowrank::cpu>& ctx, problem& p) {
  lora adapter(ctx, lowrank::view(p.w), p.bias_view(), {.rank = 16, .alpha = 32});
  ops::fill_random(ctx, lowrank::distribution::gaussian, {1, 7}, adapter.b());
  lowrank::as_eigen(adapter.b()) *= 1e-2f;
  return adapter;
}

/// LoCA with k coefficients (trained-looking values), locations learnt
/// during the first 1000 optimizer steps.
loca make_loca(lowrank::context<lowrank::cpu>& ctx, problem& p, index_t k,
               lowrank::loca_route route = lowrank::loca_route::automatic) {
  loca adapter(ctx, lowrank::view(p.w), p.bias_view(),
               {.n_frequency = k, .learn_location_until = 1000, .route = route});
  ops::fill_random(ctx, lowrank::distribution::gaussian, {1, 8}, adapter.coefficients());
  lowrank::as_eigen(adapter.coefficients()) *= 1e-2f;
  return adapter;
}

template <class Adapter>
void step(lowrank::context<lowrank::cpu>& ctx, Adapter& adapter, problem& p) {
  adapter.forward(ctx, lowrank::view(std::as_const(p.x)), lowrank::view(p.y));
  adapter.backward(ctx, lowrank::view(std::as_const(p.g)), lowrank::view(p.dx));
}

/// LoCA against LoRA on the same layer, in the coefficients' phase (arg 0)
/// or the locations' phase (arg 1).
void loca_step(benchmark::State& state) {
  set_blas_threads(1);
  lowrank::context<lowrank::cpu> ctx;
  problem p(ctx);
  auto base = make_lora(ctx, p);
  auto adapter = make_loca(ctx, p, frequencies);
  const bool locations = state.range(0) == 1;
  adapter.set_optimizer_steps(locations ? 10 : 0);
  step(ctx, base, p);
  step(ctx, adapter, p);
  std::vector<double> lora_times, loca_times;
  for (auto _ : state) {
    lora_times.push_back(time_of([&] { step(ctx, base, p); }));
    loca_times.push_back(time_of([&] {
      adapter.zero_grad(ctx);
      step(ctx, adapter, p);
    }));
    benchmark::DoNotOptimize(p.dx.data());
    state.SetIterationTime(loca_times.back());
  }
  state.counters["ratio_lora"] = median_ratio(loca_times, lora_times);
  state.counters["loca_ms"] = 1e3 * median(loca_times);
  state.counters["lora_ms"] = 1e3 * median(lora_times);
  state.counters["threads"] = ctx.threads();
  state.SetLabel(std::string("float, out = in = 4096, N = 512, k = 1000 vs r = 16, ") +
                 (locations ? "locations' phase" : "coefficients' phase"));
}

/// The reference's dense route: dW = alpha C^T S C by two GEMMs, Y = X (W +
/// dW)^T + b; backward K = alpha C (G^T X) C^T by three GEMMs, da = K[r, c],
/// dX = G (W + dW). C^T is the context's cached DCT matrix (Q, columns the
/// basis vectors), as the reference caches C.
struct dense_route {
  dense_route(lowrank::context<lowrank::cpu>& ctx, problem& p, const loca& adapter)
      : prob(&p),
        q(features, features),
        s(matrix::Zero(features, features)),
        t(features, features),
        w_total(features, features),
        k(features, features),
        da(adapter.n_frequency()) {
    std::vector<index_t> all(static_cast<std::size_t>(features));
    for (index_t i = 0; i < features; ++i) all[std::size_t(i)] = i;
    q = lowrank::dct_basis<float>(ctx, features, all);
    loc = adapter.integer_locations(ctx);
    a = lowrank::as_eigen(adapter.coefficients()).col(0);
    alpha = float(adapter.alpha());
  }

  void forward(lowrank::context<lowrank::cpu>& ctx) {
    s.setZero();
    for (std::size_t i = 0; i < loc.rows.size(); ++i) {
      s(loc.rows[i], loc.cols[i]) += a(index_t(i));  // sparse_coo_tensor(...).to_dense()
    }
    // T = C^T S = Q S; dW = alpha T C = alpha T Q^T; W' = W + dW.
    ops::gemm<float>(ctx, transpose::no, transpose::no, 1, lowrank::view(std::as_const(q)),
                     lowrank::view(std::as_const(s)), 0, lowrank::view(t));
    w_total = prob->w;
    ops::gemm<float>(ctx, transpose::no, transpose::yes, alpha, lowrank::view(std::as_const(t)),
                     lowrank::view(std::as_const(q)), 1, lowrank::view(w_total));
    ops::gemm<float>(ctx, transpose::no, transpose::yes, 1, lowrank::view(std::as_const(prob->x)),
                     lowrank::view(std::as_const(w_total)), 0, lowrank::view(prob->y));
    prob->y.rowwise() += prob->bias.transpose();
  }

  void backward(lowrank::context<lowrank::cpu>& ctx) {
    // dL/ddW = G^T X; K = alpha C (G^T X) C^T = alpha Q^T (G^T X) Q.
    ops::gemm<float>(ctx, transpose::yes, transpose::no, 1, lowrank::view(std::as_const(prob->g)),
                     lowrank::view(std::as_const(prob->x)), 0, lowrank::view(t));
    ops::gemm<float>(ctx, transpose::yes, transpose::no, 1, lowrank::view(std::as_const(q)),
                     lowrank::view(std::as_const(t)), 0, lowrank::view(k));
    ops::gemm<float>(ctx, transpose::no, transpose::no, alpha, lowrank::view(std::as_const(k)),
                     lowrank::view(std::as_const(q)), 0, lowrank::view(t));
    for (std::size_t i = 0; i < loc.rows.size(); ++i) da(index_t(i)) = t(loc.rows[i], loc.cols[i]);
    ops::gemm<float>(ctx, transpose::no, transpose::no, 1, lowrank::view(std::as_const(prob->g)),
                     lowrank::view(std::as_const(w_total)), 0, lowrank::view(prob->dx));
  }

  problem* prob;
  matrix q, s, t, w_total, k;
  vector a, da;
  lowrank::loca_indices loc;
  float alpha = 1;
};

void loca_vs_dense(benchmark::State& state) {
  set_blas_threads(1);
  lowrank::context<lowrank::cpu> ctx;
  problem p(ctx);
  auto adapter = make_loca(ctx, p, frequencies);
  dense_route dense(ctx, p, adapter);
  step(ctx, adapter, p);
  // The routes agree (a check of the bench itself): dX and da.
  adapter.zero_grad(ctx);
  step(ctx, adapter, p);
  const matrix dx_factored = p.dx;
  dense.forward(ctx);
  dense.backward(ctx);
  const double dx_error = (p.dx - dx_factored).norm() / p.dx.norm();
  const double da_error =
      (dense.da - lowrank::as_eigen(adapter.grad_coefficients()).col(0)).norm() / dense.da.norm();
  std::vector<double> dense_times, loca_times;
  for (auto _ : state) {
    dense_times.push_back(time_of([&] {
      dense.forward(ctx);
      dense.backward(ctx);
    }));
    loca_times.push_back(time_of([&] {
      adapter.zero_grad(ctx);
      step(ctx, adapter, p);
    }));
    benchmark::DoNotOptimize(p.dx.data());
    state.SetIterationTime(loca_times.back());
  }
  state.counters["speedup_dense"] = median_ratio(dense_times, loca_times);
  state.counters["dense_ms"] = 1e3 * median(dense_times);
  state.counters["loca_ms"] = 1e3 * median(loca_times);
  state.counters["dx_rel_diff"] = dx_error;
  state.counters["da_rel_diff"] = da_error;
  state.counters["threads"] = ctx.threads();
  state.SetLabel("float, out = in = 4096, N = 512, k = 1000, coefficients' phase");
}

/// The two routes at k = state.range(0), coefficients' phase.
void loca_routes(benchmark::State& state) {
  set_blas_threads(1);
  lowrank::context<lowrank::cpu> ctx;
  problem p(ctx);
  const index_t k = state.range(0);
  auto by_transform = make_loca(ctx, p, k, lowrank::loca_route::transform);
  auto by_basis = make_loca(ctx, p, k, lowrank::loca_route::basis);
  step(ctx, by_transform, p);
  step(ctx, by_basis, p);
  std::vector<double> transform_times, basis_times;
  for (auto _ : state) {
    transform_times.push_back(time_of([&] { step(ctx, by_transform, p); }));
    basis_times.push_back(time_of([&] { step(ctx, by_basis, p); }));
    benchmark::DoNotOptimize(p.dx.data());
    state.SetIterationTime(basis_times.back());
  }
  state.counters["basis_over_transform"] = median_ratio(basis_times, transform_times);
  state.counters["transform_ms"] = 1e3 * median(transform_times);
  state.counters["basis_ms"] = 1e3 * median(basis_times);
  state.counters["automatic_is_basis"] =
      lowrank::loca_route_for<lowrank::cpu>(features, features, k) == lowrank::loca_route::basis;
  state.SetLabel("float, out = in = 4096, N = 512");
}

BENCHMARK(loca_step)
    ->ArgName("phase")
    ->Arg(0)
    ->Arg(1)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond)
    ->MinTime(2.0);
BENCHMARK(loca_vs_dense)->UseManualTime()->Unit(benchmark::kMillisecond)->Iterations(3);
BENCHMARK(loca_routes)
    ->ArgName("k")
    ->Arg(256)
    ->Arg(512)
    ->Arg(768)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond)
    ->MinTime(1.0);

}  // namespace

BENCHMARK_MAIN();
