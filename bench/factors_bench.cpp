// How does an SLTrain layer's training step compare with the reference's
// algorithm and with a dense layer, and what do the sparse operations cost?
//
// SLTrain's layer (factors/sparse_plus_low_rank.hpp) computes W = s B A + S in
// factored form: Y = s (X A^T) B^T + X S^T + b by GEMMs and a sparse product,
// dvalues by a sampled product (SDDMM), dX = s (G B) A + G S. The reference
// (andyjm3/SLTrain sparse-lora/sparse_linear.cpp) forms W = B (s A) and
// scatters S into it in the forward, forms W again in the backward, then dX =
// G W, dW = G^T X (out x in), dB = dW (s A)^T, d(sA) = B^T dW, dvalues =
// dW[support], db = 1^T G. At out = in = 4096, N = 512, r = 128, density
// 0.03, float, the counters are medians of per-iteration ratios, both sides
// timed in the same iteration, one after the other:
//
//   sltrain_step
//     speedup_reference  the reference's step / ours (target >= 1.5)
//     ratio_dense        ours / a dense layer's step (Y = X W^T + b, dX = G W,
//                        dW = G^T X, db) (target <= 0.5)
//     ours_ms, reference_ms, dense_ms
//     *_param_MB         parameters (+ the support's int32 indices for ours,
//                        int64 for the reference)
//     *_temp_MB          per-step temporaries: ours H, G B (N x r each) and the
//                        sparse products' scratch (a packed N x in copy of the
//                        batch, nnz sums): O(N (in + out) + nnz); the reference W
//                        and dW (out x in each); dense none beyond its dW
//                        (counted with the parameters' gradients)
//   lost_step          the LOST form (channel_sparse_low_rank, k = 122 channels: as
//                      many sparse parameters): lost_over_sltrain, lost_over_dense
//   sltrain_routes
//     dense_over_factored  our dense route's step / our factored route's (the
//                        cost model's check: > 1 means factored is right)
//     seed_over_indices  the step with `support_storage::seed` (the support
//                        drawn again every forward) / with the indices
//   compression (a 512 x 384 layer with a 1/k spectrum and 1% outliers, at the
//     parameter budget of a rank-32 SVD: r (m + n)): relative Frobenius errors
//     err_svd            the rank-32 truncated SVD
//     err_svd_sparse     rank 24 + the 7168 largest residual entries (low_rank_plus_sparse)
//     err_rpca_budget    robust PCA's L cut to rank 24 + the 7168 largest residual entries
//     err_rpca           robust PCA itself (its own parameter count: rpca_params_over_budget)
//   sparse_flop_cost
//     X S^T, X S and the SDDMM at the same shape: seconds per flop of each /
//     seconds per flop of the GEMM X A^T (N x in x r): the cost model's kappa
//     (detail::sparse_flop_cost<cpu>)
//
// Products go through ops<cpu>::gemm: lowrank's own threads (the context's
// default, one per core) over a single-threaded BLAS, as adapters_bench does.
//
//   lowrank_bench_factors --benchmark_counters_tabular=true

#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <Eigen/QR>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <lowrank/factors/channel_sparse.hpp>
#include <lowrank/factors/sparse_plus_low_rank.hpp>
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
using layer_t = lowrank::sparse_plus_low_rank<float, lowrank::cpu>;

constexpr index_t features = 4096;  // out = in
constexpr index_t batch = 512;      // N
constexpr index_t rank = 128;
constexpr double density = 0.03;
constexpr double mb = 1.0 / (1024.0 * 1024.0);

/// A batch, an upstream gradient and the outputs, Gaussian.
struct problem {
  explicit problem(lowrank::context<lowrank::cpu>& ctx)
      : x(batch, features), g(batch, features), y(batch, features), dx(batch, features) {
    ops::fill_random(ctx, lowrank::distribution::gaussian, {2, 0}, lowrank::view(x));
    ops::fill_random(ctx, lowrank::distribution::gaussian, {2, 1}, lowrank::view(g));
  }
  matrix x, g, y, dx;
};

/// SLTrain's layer with a trained-looking B.
layer_t make_layer(lowrank::context<lowrank::cpu>& ctx, lowrank::factor_route route,
                   lowrank::support_storage storage = lowrank::support_storage::indices) {
  layer_t layer(ctx, features, features,
                {.rank = rank,
                 .alpha = 32,
                 .density = density,
                 .storage = storage,
                 .route = route,
                 .seed = 1});
  ops::fill_random(ctx, lowrank::distribution::gaussian, {2, 7}, layer.b());
  lowrank::as_eigen(layer.b()) *= 1e-2f;
  return layer;
}

void step(lowrank::context<lowrank::cpu>& ctx, layer_t& layer, problem& p) {
  layer.zero_grad(ctx);
  layer.forward(ctx, lowrank::view(std::as_const(p.x)), lowrank::view(p.y));
  layer.backward(ctx, lowrank::view(std::as_const(p.g)), lowrank::view(p.dx));
}

/// The reference's algorithm (sparse_linear.cpp), with its int64 flat indices.
struct reference {
  reference(lowrank::context<lowrank::cpu>& ctx, layer_t& layer, problem& p)
      : prob(&p),
        a_s(lowrank::as_eigen(std::as_const(layer).a()) * float(layer.scaling())),
        b(lowrank::as_eigen(std::as_const(layer).b())),
        values(lowrank::as_eigen(std::as_const(layer).values().as_matrix()).col(0)),
        bias(lowrank::as_eigen(std::as_const(layer).bias().as_matrix()).col(0)),
        index(layer.support_copy(ctx).flat_indices(ctx)),
        w(features, features),
        dw(features, features),
        grad_a(rank, features),
        grad_b(features, rank),
        grad_values(values.size()),
        grad_bias(features) {}

  /// W = B A_s, then W.view(-1).scatter_add_(index, values) (row-major flat
  /// positions into our column-major W: (p / in, p % in)).
  void form_w(lowrank::context<lowrank::cpu>& ctx) {
    ops::gemm<float>(ctx, transpose::no, transpose::no, 1, lowrank::view(std::as_const(b)),
                     lowrank::view(std::as_const(a_s)), 0, lowrank::view(w));
    for (std::size_t k = 0; k < index.size(); ++k) {
      w(index[k] / features, index[k] % features) += values(index_t(k));
    }
  }

  void step(lowrank::context<lowrank::cpu>& ctx) {
    form_w(ctx);  // forward
    ops::gemm<float>(ctx, transpose::no, transpose::yes, 1, lowrank::view(std::as_const(prob->x)),
                     lowrank::view(std::as_const(w)), 0, lowrank::view(prob->y));
    prob->y.rowwise() += bias.transpose();
    form_w(ctx);  // backward: W again
    ops::gemm<float>(ctx, transpose::no, transpose::no, 1, lowrank::view(std::as_const(prob->g)),
                     lowrank::view(std::as_const(w)), 0, lowrank::view(prob->dx));
    ops::gemm<float>(ctx, transpose::yes, transpose::no, 1, lowrank::view(std::as_const(prob->g)),
                     lowrank::view(std::as_const(prob->x)), 0, lowrank::view(dw));
    ops::gemm<float>(ctx, transpose::no, transpose::yes, 1, lowrank::view(std::as_const(dw)),
                     lowrank::view(std::as_const(a_s)), 0, lowrank::view(grad_b));
    ops::gemm<float>(ctx, transpose::yes, transpose::no, 1, lowrank::view(std::as_const(b)),
                     lowrank::view(std::as_const(dw)), 0, lowrank::view(grad_a));
    for (std::size_t k = 0; k < index.size(); ++k) {
      grad_values(index_t(k)) = dw(index[k] / features, index[k] % features);
    }
    grad_bias = prob->g.colwise().sum().transpose();
  }

  problem* prob;
  matrix a_s, b;
  vector values, bias;
  std::vector<std::int64_t> index;
  matrix w, dw, grad_a, grad_b;
  vector grad_values, grad_bias;
};

/// A dense layer of the same shape: Y = X W^T + b, dX = G W, dW = G^T X, db.
struct dense_layer {
  explicit dense_layer(lowrank::context<lowrank::cpu>& ctx, problem& p)
      : prob(&p),
        w(features, features),
        dw(features, features),
        bias(features),
        grad_bias(features) {
    ops::fill_random(ctx, lowrank::distribution::gaussian, {2, 9}, lowrank::view(w));
    w *= 1.0f / 64;
    bias.setZero();
  }
  void step(lowrank::context<lowrank::cpu>& ctx) {
    ops::gemm<float>(ctx, transpose::no, transpose::yes, 1, lowrank::view(std::as_const(prob->x)),
                     lowrank::view(std::as_const(w)), 0, lowrank::view(prob->y));
    prob->y.rowwise() += bias.transpose();
    ops::gemm<float>(ctx, transpose::no, transpose::no, 1, lowrank::view(std::as_const(prob->g)),
                     lowrank::view(std::as_const(w)), 0, lowrank::view(prob->dx));
    ops::gemm<float>(ctx, transpose::yes, transpose::no, 1, lowrank::view(std::as_const(prob->g)),
                     lowrank::view(std::as_const(prob->x)), 1, lowrank::view(dw));
    grad_bias = prob->g.colwise().sum().transpose();
  }
  problem* prob;
  matrix w, dw;
  vector bias, grad_bias;
};

void sltrain_step(benchmark::State& state) {
  set_blas_threads(1);
  lowrank::context<lowrank::cpu> ctx;
  problem p(ctx);
  auto layer = make_layer(ctx, lowrank::factor_route::factored);
  reference ref(ctx, layer, p);
  dense_layer dense(ctx, p);
  step(ctx, layer, p);
  ref.step(ctx);
  dense.step(ctx);
  std::vector<double> ours, theirs, dense_times;
  for (auto _ : state) {
    ours.push_back(time_of([&] { step(ctx, layer, p); }));
    theirs.push_back(time_of([&] { ref.step(ctx); }));
    dense_times.push_back(time_of([&] { dense.step(ctx); }));
    benchmark::DoNotOptimize(p.dx.data());
    state.SetIterationTime(ours.back());
  }
  state.counters["speedup_reference"] = median_ratio(theirs, ours);
  state.counters["ratio_dense"] = median_ratio(ours, dense_times);
  state.counters["ours_ms"] = 1e3 * median(ours);
  state.counters["reference_ms"] = 1e3 * median(theirs);
  state.counters["dense_ms"] = 1e3 * median(dense_times);
  const double nnz = double(layer.nnz());
  const double lowrank_params = double(rank) * 2 * features + nnz + features;
  state.counters["ours_param_MB"] = mb * double(layer.persistent_bytes());
  // The reference: parameters and gradients in float, the support in int64.
  state.counters["reference_param_MB"] = mb * (2 * 4 * lowrank_params + 8 * nnz);
  state.counters["dense_param_MB"] = mb * 2 * 4 * (double(features) * features + features);
  // The layer's H and GB, plus the CPU sparse products' scratch from the context: a
  // packed copy of the batch (N x in, N rounded up to 64) and the SDDMM's nnz sums.
  state.counters["ours_temp_MB"] =
      mb * (double(layer.workspace_bytes()) + 4.0 * (double(batch) * features + nnz));
  state.counters["reference_temp_MB"] = mb * 2 * 4 * double(features) * features;
  state.counters["threads"] = ctx.threads();
  state.SetLabel("float, out = in = 4096, N = 512, r = 128, density 0.03");
}

/// The LOST form at the same shape, with as many sparse parameters: k = 0.03 in
/// channels (a dense out x k block), against the SLTrain layer and the dense layer.
void lost_step(benchmark::State& state) {
  set_blas_threads(1);
  lowrank::context<lowrank::cpu> ctx;
  problem p(ctx);
  auto layer = make_layer(ctx, lowrank::factor_route::factored);
  lowrank::channel_sparse_low_rank<float> lost(
      ctx, features, features,
      {.rank = rank, .alpha = 32, .channels = index_t(density * features), .seed = 1});
  dense_layer dense(ctx, p);
  auto lost_step_once = [&] {
    lost.zero_grad(ctx);
    lost.forward(ctx, lowrank::view(std::as_const(p.x)), lowrank::view(p.y));
    lost.backward(ctx, lowrank::view(std::as_const(p.g)), lowrank::view(p.dx));
  };
  lost_step_once();
  step(ctx, layer, p);
  std::vector<double> l, s, d;
  for (auto _ : state) {
    l.push_back(time_of(lost_step_once));
    s.push_back(time_of([&] { step(ctx, layer, p); }));
    d.push_back(time_of([&] { dense.step(ctx); }));
    benchmark::DoNotOptimize(p.dx.data());
    state.SetIterationTime(l.back());
  }
  state.counters["lost_over_sltrain"] = median_ratio(l, s);
  state.counters["lost_over_dense"] = median_ratio(l, d);
  state.counters["lost_ms"] = 1e3 * median(l);
  state.SetLabel("float, out = in = 4096, N = 512, r = 128, k = 122 channels");
}

void sltrain_routes(benchmark::State& state) {
  set_blas_threads(1);
  lowrank::context<lowrank::cpu> ctx;
  problem p(ctx);
  auto factored = make_layer(ctx, lowrank::factor_route::factored);
  auto dense = make_layer(ctx, lowrank::factor_route::dense);
  auto seeded = make_layer(ctx, lowrank::factor_route::factored, lowrank::support_storage::seed);
  step(ctx, factored, p);
  step(ctx, dense, p);
  step(ctx, seeded, p);
  std::vector<double> f, d, s;
  for (auto _ : state) {
    f.push_back(time_of([&] { step(ctx, factored, p); }));
    d.push_back(time_of([&] { step(ctx, dense, p); }));
    s.push_back(time_of([&] { step(ctx, seeded, p); }));
    benchmark::DoNotOptimize(p.dx.data());
    state.SetIterationTime(f.back());
  }
  state.counters["dense_over_factored"] = median_ratio(d, f);
  state.counters["seed_over_indices"] = median_ratio(s, f);
  state.counters["automatic_is_factored"] =
      factored.route_for(batch) == lowrank::factor_route::factored ? 1 : 0;
  state.SetLabel("float, out = in = 4096, N = 512, r = 128, density 0.03");
}

void sparse_flop_cost(benchmark::State& state) {
  set_blas_threads(1);
  lowrank::context<lowrank::cpu> ctx;
  problem p(ctx);
  auto layer = make_layer(ctx, lowrank::factor_route::factored);
  const auto support = layer.support_copy(ctx);
  matrix h(batch, rank);
  vector dv(layer.nnz());
  const auto values = std::as_const(layer).values();
  std::vector<double> gemm, times, times_t, sddmm;
  for (auto _ : state) {
    gemm.push_back(time_of([&] {
      ops::gemm<float>(ctx, transpose::no, transpose::yes, 1, lowrank::view(std::as_const(p.x)),
                       std::as_const(layer).a(), 0, lowrank::view(h));
    }));
    times.push_back(time_of([&] {
      ops::sparse_times<float>(ctx, transpose::no, 1, support.view(), values,
                               lowrank::view(std::as_const(p.x)), lowrank::view(p.y));
    }));
    times_t.push_back(time_of([&] {
      ops::sparse_times<float>(ctx, transpose::yes, 1, support.view(), values,
                               lowrank::view(std::as_const(p.g)), lowrank::view(p.dx));
    }));
    sddmm.push_back(time_of([&] {
      ops::sampled_product<float>(ctx, 1, lowrank::view(std::as_const(p.g)),
                                  lowrank::view(std::as_const(p.x)), support.view(), 0,
                                  {dv.data(), dv.size()});
    }));
    benchmark::DoNotOptimize(dv.data());
    state.SetIterationTime(times.back());
  }
  // Per flop: the GEMM does 2 N in r, each sparse operation 2 N nnz.
  const double per = double(rank) * features / double(layer.nnz());
  state.counters["kappa_x_st"] = per * median_ratio(times, gemm);
  state.counters["kappa_x_s"] = per * median_ratio(times_t, gemm);
  state.counters["kappa_sddmm"] = per * median_ratio(sddmm, gemm);
  state.counters["gemm_ms"] = 1e3 * median(gemm);
  state.counters["x_st_ms"] = 1e3 * median(times);
  state.counters["x_s_ms"] = 1e3 * median(times_t);
  state.counters["sddmm_ms"] = 1e3 * median(sddmm);
  state.SetLabel("float, N = 512, 4096 x 4096 at density 0.03 vs GEMM 512 x 4096 x 128");
}

/// A trained-looking layer with outliers: W = U diag(1 / k) V^T (rank 128, Gaussian U, V
/// orthonormalised) plus 1% of its entries set to +-5 max |L| (a fixed rule).
matrix layer_with_outliers(lowrank::context<lowrank::cpu>& ctx, index_t m, index_t n) {
  matrix u(m, 128), v(n, 128);
  ops::fill_random(ctx, lowrank::distribution::gaussian, {3, 0}, lowrank::view(u));
  ops::fill_random(ctx, lowrank::distribution::gaussian, {3, 1}, lowrank::view(v));
  const matrix qu = Eigen::HouseholderQR<matrix>(u).householderQ() * matrix::Identity(m, 128);
  const matrix qv = Eigen::HouseholderQR<matrix>(v).householderQ() * matrix::Identity(n, 128);
  vector s(128);
  for (index_t k = 0; k < 128; ++k) s(k) = 1.0f / float(k + 1);
  matrix w = qu * s.asDiagonal() * qv.transpose();
  const float big = 5 * w.cwiseAbs().maxCoeff();
  for (index_t p = 0; p < m * n; p += 97) w.data()[(p * 7919) % (m * n)] = (p % 2 ? big : -big);
  return w;
}

/// ||W - L_r - S||_F / ||W||_F for L_r the first r terms of `low` and S the nnz largest
/// entries of W - L_r.
double split_error(const matrix& w, const lowrank::low_rank<float>& low, index_t r, index_t nnz) {
  const matrix l = low.u.leftCols(r) * low.s.head(r).asDiagonal() * low.v.leftCols(r).transpose();
  matrix residual = w - l;
  std::vector<float> mags(residual.data(), residual.data() + residual.size());
  for (float& x : mags) x = std::abs(x);
  std::nth_element(mags.begin(), mags.end() - nnz, mags.end());
  double dropped = 0;
  for (auto it = mags.begin(); it != mags.end() - nnz; ++it) dropped += double(*it) * double(*it);
  return std::sqrt(dropped) / double(w.norm());
}

void compression(benchmark::State& state) {
  set_blas_threads(1);
  lowrank::context<lowrank::cpu> ctx;
  constexpr index_t m = 512, n = 384, budget = 32 * (m + n);
  constexpr index_t rank_split = 24, nnz = budget - rank_split * (m + n);
  const matrix w = layer_with_outliers(ctx, m, n);
  const auto wv = lowrank::view(w);
  double svd = 0, split = 0, rpca = 0, rpca_split = 0, rpca_params = 0, iterations = 0;
  for (auto _ : state) {
    const auto low = lowrank::truncated_svd(ctx, wv, 32);
    svd = split_error(w, low, 32, 0);
    split = lowrank::low_rank_plus_sparse(ctx, wv, rank_split, nnz).error;
    const auto r = lowrank::robust_pca(ctx, wv, {.tolerance = 1e-6});
    rpca = r.factor.error;
    rpca_params = double(r.factor.parameters);
    iterations = double(r.iterations);
    rpca_split = split_error(w, r.factor.low, std::min(rank_split, r.factor.low.rank()), nnz);
  }
  state.counters["err_svd"] = svd;
  state.counters["err_svd_sparse"] = split;
  state.counters["err_rpca_budget"] = rpca_split;
  state.counters["err_rpca"] = rpca;
  state.counters["rpca_params_over_budget"] = rpca_params / double(budget);
  state.counters["rpca_iterations"] = iterations;
  state.SetLabel(
      "512 x 384, rank-128 1/k spectrum + 1% outliers; budget = rank 32: SVD r 32 | "
      "SVD r 24 + 7168 sparse | RPCA's L cut to r 24 + 7168 sparse | RPCA itself");
}

}  // namespace

BENCHMARK(compression)->Unit(benchmark::kMillisecond)->Iterations(1);
BENCHMARK(sltrain_step)->UseManualTime()->Unit(benchmark::kMillisecond)->Iterations(7);
BENCHMARK(lost_step)->UseManualTime()->Unit(benchmark::kMillisecond)->Iterations(5);
BENCHMARK(sltrain_routes)->UseManualTime()->Unit(benchmark::kMillisecond)->Iterations(5);
BENCHMARK(sparse_flop_cost)->UseManualTime()->Unit(benchmark::kMillisecond)->Iterations(9);

BENCHMARK_MAIN();
