#pragma once
/// @file
/// `lowrank::channel_sparse_low_rank<T, Backend>`: the LOST-form linear
/// layer, a weight that is a low-rank product plus a channel-sparse part: a
/// dense block on k selected input channels (LOST, arXiv 2508.02668, whose
/// code could not be obtained; docs/algorithms.md, "Factors").
///
/// **Math** (PyTorch `nn.Linear` shapes: X is N x in, Y is N x out, A is r x
/// in, B is out x r, V is out x k, s = alpha / r; P is the in x k selection
/// of the input channels c_1 < ... < c_k, P(c_i, i) = 1):
///
///     W = s B A + V P^T,      Y = X W^T + b = s (X A^T) B^T + X[:, c] V^T + b.
///
/// Column c_i of W holds s (B A)(:, c_i) + V(:, i); the other columns hold
/// s B A only. The forward gathers the k input columns X[:, c] (N x k,
/// `gather_columns`) and multiplies by V^T (a GEMM): the out x in matrix
/// is never formed.
///
/// **Backward** (G = dL/dY, H = X A^T and X[:, c] saved by the forward, GB =
/// G B, GV = G V): dB += s G^T H, dA += s GB^T X, dV += G^T X[:, c], db +=
/// 1^T G, dX = s GB A + GV scattered into the columns c (`scatter_add_columns`:
/// dX(:, c_i) += GV(:, i)). Gradients accumulate until zero_grad().
///
/// **Initialisation for pre-training** (the constructor): A ~ U(+-1/sqrt(in))
/// (SLTrain's kaiming_uniform bound), B = 0, V ~ U(+-1/sqrt(in)), bias ~
/// U(+-1/sqrt(out)), and the channels a uniformly random k-subset of [0, in),
/// sorted: the column indices of `sparse_support::random(1, in, k)`
/// (factors/sparse.hpp), the family's generator. Streams: `factor_stream(seed,
/// layer, kind)` with kinds init_a (A), support (the channels), values (V),
/// bias. So W = V P^T at step 0, as SLTrain's W = S.
///
/// **Initialisation from a weight** (`from_weight`, LOST's): W = U S V^T by
/// the truncated SVD (decomp/truncated_svd.hpp) of its min(2 r, min(out,
/// in)) leading triplets. Following the paper's abstract ("applies singular
/// value decomposition to weight matrices, preserving the dominant low-rank
/// components, while allocating the remaining singular values to construct
/// channel-wise sparse components"):
/// - the low-rank part is the top r triplets, split evenly: B = U_r
///   diag(sqrt(S_r / s)), A = diag(sqrt(S_r / s)) V_r^T, so that s B A = U_r
///   S_r V_r^T (the Eckart-Young truncation; the candidate code below splits
///   sqrt(S_r) without the 1/s);
/// - the remaining spectrum picks the channels. The paper's exact rule is
///   not known to us; ours is the rule of an unattributed candidate
///   implementation that matches the paper's description: the residual of
///   the next k' = min(r, min(out, in) - r) triplets, R =
///   U[:, r:r+k'] diag(S[r:r+k']) V[:, r:r+k']^T, scores each input channel
///   by its column norm, score_c = sqrt(sum_{j in [r, r+k')} S_j^2 V(c,
///   j)^2), and the channels are the k highest scores (ties to the lower
///   index), sorted. With k' = 0 (r = min(out, in)) every score is 0 and the
///   channels are 0, ..., k - 1.
/// - V = (W - s B A)[:, c]: OUR reading. The residual's columns make the
///   factor the best approximation of W given the low-rank part and the
///   channels: ||W - W_factor||_F^2 = ||W - s B A||_F^2 - sum_i ||(W - s B
///   A)(:, c_i)||^2, never above the rank-r truncation error. The candidate
///   code instead initialises V from the ORIGINAL W's columns and runs in
///   adapter mode (the frozen W stays in the forward, and a fixed gamma = 0.5
///   mixes the two paths: W + s (gamma B A + (1 - gamma) V P^T), optionally
///   with a SiLU between A and B); neither is done here.
/// The bias is 0 when options.bias is set, absent otherwise.
///
/// **Costs.** Forward: 2 N r (in + out) + 2 N k out flops (two GEMMs for
/// the low-rank part, one for the block) and a gather of N k entries.
/// Backward: 4 N r (in + out) + 4 N k out flops and a scatter of N k
/// additions. Per step 6 N r (in + out) + 6 N k out, against 6 N in out for
/// the dense layer. from_weight: one thin SVD of W (O(out in min(out, in))),
/// O((out + in) r^2 + out r k) more, and an O(in log k) selection on the host.
///
/// **Memory.** Parameters A, B, V, bias and as many gradients: 2 (r (in +
/// out) + out k + out) scalars, and the channels: k indices in the backend's
/// memory and k on the host. Per-step temporaries: H (N x r) and X[:, c] (N
/// x k), kept from the forward to the backward, which reuses them for GB and
/// GV: N r + N k scalars (they grow to the largest batch). The layer keeps
/// a view of the forward's X for the backward (the caller keeps X
/// unchanged, as autograd keeps saved tensors).
///
/// **Errors.** lowrank::invalid_argument (the message names the function,
/// the argument, its value and what was expected) for out or in < 1, a rank
/// outside [1, min(out, in)], a channel count outside [1, in], alpha <= 0,
/// layer >= 2^30, channels that are not sorted, distinct and in [0, in),
/// shapes, a backward without a forward; lowrank::numerical_error for a
/// non-finite W given to from_weight or tensors given to from_tensors. A
/// throwing call leaves the layer and the caller's data as they were.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "lowrank/adapters/base.hpp"
#include "lowrank/core/backend.hpp"
#include "lowrank/core/concepts.hpp"
#include "lowrank/core/error.hpp"
#include "lowrank/core/matrix.hpp"
#include "lowrank/core/matrix_view.hpp"
#include "lowrank/core/validate.hpp"
#include "lowrank/decomp/low_rank.hpp"
#include "lowrank/decomp/truncated_svd.hpp"
#include "lowrank/factors/backend.hpp"
#include "lowrank/factors/sparse.hpp"

namespace lowrank {

/// The options of a channel-sparse low-rank layer (the candidate LOST code's
/// names in brackets).
struct channel_sparse_options {
  index_t rank = 128;       ///< r, 1 <= r <= min(out, in)
  double alpha = 32;        ///< s = alpha / r, > 0
  index_t channels = 64;    ///< k, the input channels of the sparse part, 1 <= k <= in
                            ///< [k_cols = max(1, int(sparsity in)), sparsity 0.05]
  bool bias = true;         ///< a trainable bias
  std::uint64_t seed = 0;   ///< the layer's random streams (factors/sparse.hpp)
  std::uint64_t layer = 0;  ///< this layer's index in the model, < 2^30
};

template <scalar T, class Backend = cpu>
requires factors_backend_for<Backend, T>
class channel_sparse_low_rank {
 public:
  using scalar_type = T;
  using backend = Backend;

  /// A new layer for pre-training, initialised as the file comment says.
  /// @throws lowrank::invalid_argument for out or in < 1, rank not in [1,
  ///   min(out, in)], channels not in [1, in], alpha <= 0 or not finite,
  ///   layer >= 2^30.
  channel_sparse_low_rank(context<Backend>& ctx, index_t out, index_t in,
                          const channel_sparse_options& options = {})
      : channel_sparse_low_rank(ctx, out, in, options, "lowrank::channel_sparse_low_rank") {
    const auto bound = T(1 / std::sqrt(double(in_)));
    uniform(ctx, factor_stream_kind::init_a, bound, a());
    ops<Backend>::fill(ctx, b(), T(0));
    uniform(ctx, factor_stream_kind::values, bound, values());
    const sparse_support<Backend> drawn = sparse_support<Backend>::random(
        ctx, 1, in_, channel_count(),
        factor_stream(options_.seed, options_.layer, factor_stream_kind::support));
    const std::vector<std::int32_t> columns = drawn.col_indices(ctx);
    set_channels(ctx, std::vector<index_t>(columns.begin(), columns.end()));
    if (options_.bias) {
      make_bias(ctx);
      uniform(ctx, factor_stream_kind::bias, T(1 / std::sqrt(double(out))),
              bias_.view().as_matrix());
    }
  }

  /// LOST's initialisation from a weight W (out x in; file comment): s B A
  /// the rank-r truncation of W, the channels by the scores of the next
  /// min(r, min(out, in) - r) singular triplets, V = (W - s B A)[:, c], the
  /// bias 0 (options.bias) or absent. options.seed and layer are kept but
  /// draw nothing.
  /// @throws lowrank::invalid_argument as the constructor, or for an empty
  ///   W; lowrank::numerical_error for a non-finite entry of W (or an SVD
  ///   that does not converge).
  [[nodiscard]] static channel_sparse_low_rank from_weight(context<Backend>& ctx,
                                                           matrix_view<const T, Backend> w,
                                                           const channel_sparse_options& options) {
    const char* fn = "lowrank::channel_sparse_low_rank::from_weight";
    detail::require_non_empty(fn, "w", w);
    channel_sparse_low_rank layer(ctx, w.rows(), w.cols(), options, fn);
    detail::require_finite(ctx, fn, "w", w);
    const index_t out = layer.out_, in = layer.in_, r = layer.rank(), k = layer.channel_count();
    const index_t m = std::min(out, in);
    const index_t next = std::min(r, m - r);  // k'
    const low_rank<T, Backend> svd = truncated_svd(ctx, w, r + next);
    std::vector<T> sv(std::size_t(r + next));
    ops<Backend>::download(ctx, svd.s.view().as_matrix(),
                           matrix_view<T, cpu>(sv.data(), r + next, 1));
    // B = U_r diag(d), A = diag(d) V_r^T, d = sqrt(S_r / s).
    const double sc = layer.scaling();
    std::vector<T> d(static_cast<std::size_t>(r));
    std::vector<T> d_diag(std::size_t(r * r), T(0));
    for (index_t j = 0; j < r; ++j) {
      d[std::size_t(j)] = T(std::sqrt(double(sv[std::size_t(j)]) / sc));
      d_diag[std::size_t(j * r + j)] = d[std::size_t(j)];
    }
    vector<T, Backend> d_dev(ctx, r);
    ops<Backend>::upload(ctx, matrix_view<const T, cpu>(d.data(), r, 1), d_dev.view().as_matrix());
    ops<Backend>::copy(ctx, svd.u.view().left_cols(r), layer.b());
    ops<Backend>::scale_columns(ctx, as_const(d_dev.view()), layer.b());
    matrix<T, Backend> d_mat(ctx, r, r);
    ops<Backend>::upload(ctx, matrix_view<const T, cpu>(d_diag.data(), r, r), d_mat.view());
    ops<Backend>::gemm(ctx, transpose::no, transpose::yes, T(1), as_const(d_mat.view()),
                       svd.v.view().left_cols(r), T(0), layer.a());
    // score_c^2 = sum_j S_j^2 V(c, j)^2 over the next k' triplets.
    std::vector<double> scores(std::size_t(in), 0.0);
    if (next > 0) {
      matrix<T, Backend> vs(ctx, in, next);
      ops<Backend>::copy(ctx, svd.v.view().middle_cols(r, next), vs.view());
      ops<Backend>::scale_columns(ctx, svd.s.view().segment(r, next), vs.view());
      vector<double, Backend> sq(ctx, in);
      ops<Backend>::row_dots(ctx, as_const(vs.view()), as_const(vs.view()), sq.view());
      ops<Backend>::download(ctx, as_const(sq.view()).as_matrix(),
                             matrix_view<double, cpu>(scores.data(), in, 1));
    }
    layer.set_channels(ctx, top_channels(scores, k));
    // V = W[:, c] - s B A[:, c].
    const vector_view<const index_t, Backend> idx = layer.channel_indices();
    ops<Backend>::gather_columns(ctx, w, idx, vector_view<const T, Backend>(), layer.values());
    matrix<T, Backend> ac(ctx, r, k);
    ops<Backend>::gather_columns(ctx, as_const(layer.a()), idx, vector_view<const T, Backend>(),
                                 ac.view());
    ops<Backend>::gemm(ctx, transpose::no, transpose::no, T(-sc), as_const(layer.b()),
                       as_const(ac.view()), T(1), layer.values());
    if (options.bias) {
      layer.make_bias(ctx);
      ops<Backend>::fill(ctx, layer.bias_.view().as_matrix(), T(0));
    }
    return layer;
  }

  /// A layer with the given tensors: A (r x in), B (out x r), V (out x k),
  /// the channels (k host indices, sorted, distinct, in [0, in)) and the bias
  /// (out entries, or empty for none). options.rank, channels and bias are
  /// taken from the tensors.
  /// @throws lowrank::invalid_argument for shapes that disagree or channels
  ///   that are not sorted, distinct and in [0, in); lowrank::numerical_error
  ///   for non-finite tensors.
  [[nodiscard]] static channel_sparse_low_rank from_tensors(
      context<Backend>& ctx, matrix_view<const T, Backend> a, matrix_view<const T, Backend> b,
      matrix_view<const T, Backend> values, std::span<const index_t> channels,
      vector_view<const T, Backend> bias, channel_sparse_options options) {
    const char* fn = "lowrank::channel_sparse_low_rank::from_tensors";
    options.rank = a.rows();
    options.channels = static_cast<index_t>(channels.size());
    options.bias = !bias.empty();
    channel_sparse_low_rank layer(ctx, b.rows(), a.cols(), options, fn);
    const index_t out = layer.out_, in = layer.in_;
    detail::require_shape(fn, "b", b, out, layer.rank());
    detail::require_shape(fn, "values", values, out, layer.channel_count());
    if (!bias.empty()) detail::require_shape(fn, "bias", bias.as_matrix(), out, 1);
    for (std::size_t i = 0; i < channels.size(); ++i) {
      const index_t c = channels[i];
      if (c < 0 || c >= in || (i > 0 && c <= channels[i - 1])) {
        detail::throw_invalid_argument(
            fn, "channels", "channel " + std::to_string(c) + " at entry " + std::to_string(i),
            "channels in [0, in = " + std::to_string(in) + "), strictly increasing");
      }
    }
    detail::require_finite(ctx, fn, "a", a);
    detail::require_finite(ctx, fn, "b", b);
    detail::require_finite(ctx, fn, "values", values);
    if (!bias.empty()) detail::require_finite(ctx, fn, "bias", bias.as_matrix());
    ops<Backend>::copy(ctx, a, layer.a());
    ops<Backend>::copy(ctx, b, layer.b());
    ops<Backend>::copy(ctx, values, layer.values());
    layer.set_channels(ctx, std::vector<index_t>(channels.begin(), channels.end()));
    if (!bias.empty()) {
      layer.make_bias(ctx);
      ops<Backend>::copy(ctx, bias.as_matrix(), layer.bias_.view().as_matrix());
    }
    return layer;
  }

  channel_sparse_low_rank(channel_sparse_low_rank&&) noexcept = default;
  channel_sparse_low_rank& operator=(channel_sparse_low_rank&&) noexcept = default;
  channel_sparse_low_rank(const channel_sparse_low_rank&) = delete;
  channel_sparse_low_rank& operator=(const channel_sparse_low_rank&) = delete;

  // --- Shape, options and parameters -------------------------------------------

  [[nodiscard]] const channel_sparse_options& options() const noexcept { return options_; }
  [[nodiscard]] index_t out_features() const noexcept { return out_; }
  [[nodiscard]] index_t in_features() const noexcept { return in_; }
  [[nodiscard]] index_t rank() const noexcept { return options_.rank; }
  /// k, the number of input channels of the sparse part.
  [[nodiscard]] index_t channel_count() const noexcept { return options_.channels; }
  /// s = alpha / r.
  [[nodiscard]] double scaling() const noexcept { return options_.alpha / double(rank()); }
  /// The channels c_1 < ... < c_k (host memory).
  [[nodiscard]] const std::vector<index_t>& channels() const noexcept { return channels_; }
  /// The channels in the backend's memory (the index vector of the kernels).
  [[nodiscard]] vector_view<const index_t, Backend> channel_indices() const noexcept {
    return channel_idx_.view();
  }

  [[nodiscard]] matrix_view<T, Backend> a() noexcept { return a_.view(); }
  [[nodiscard]] matrix_view<T, Backend> b() noexcept { return b_.view(); }
  /// V, out x k: column i is the weight column of input channel c_i.
  [[nodiscard]] matrix_view<T, Backend> values() noexcept { return values_.view(); }
  [[nodiscard]] vector_view<T, Backend> bias() noexcept { return bias_.view(); }
  [[nodiscard]] matrix_view<const T, Backend> a() const noexcept { return a_.view(); }
  [[nodiscard]] matrix_view<const T, Backend> b() const noexcept { return b_.view(); }
  [[nodiscard]] matrix_view<const T, Backend> values() const noexcept { return values_.view(); }
  [[nodiscard]] vector_view<const T, Backend> bias() const noexcept { return bias_.view(); }
  [[nodiscard]] matrix_view<T, Backend> grad_a() noexcept { return grad_a_.view(); }
  [[nodiscard]] matrix_view<T, Backend> grad_b() noexcept { return grad_b_.view(); }
  [[nodiscard]] matrix_view<T, Backend> grad_values() noexcept { return grad_values_.view(); }
  [[nodiscard]] vector_view<T, Backend> grad_bias() noexcept { return grad_bias_.view(); }

  /// The trainable parameters with their gradients: lora_A, lora_B,
  /// sparse_value (V, out x k), and bias when the layer has one.
  [[nodiscard]] std::vector<parameter<T, Backend>> parameters() {
    std::vector<parameter<T, Backend>> list{{"lora_A", a(), grad_a()},
                                            {"lora_B", b(), grad_b()},
                                            {"sparse_value", values(), grad_values()}};
    if (bias_.size() > 0) list.push_back({"bias", bias().as_matrix(), grad_bias().as_matrix()});
    return list;
  }

  /// Sets every gradient to zero.
  void zero_grad(context<Backend>& ctx) {
    ops<Backend>::fill(ctx, grad_a(), T(0));
    ops<Backend>::fill(ctx, grad_b(), T(0));
    ops<Backend>::fill(ctx, grad_values(), T(0));
    if (grad_bias_.size() > 0) ops<Backend>::fill(ctx, grad_bias().as_matrix(), T(0));
  }

  /// The number of trainable scalars: r (in + out) + out k (+ out).
  [[nodiscard]] index_t parameter_count() const noexcept {
    return rank() * (in_ + out_) + out_ * channel_count() + bias_.size();
  }
  /// Bytes the layer keeps between steps: parameters, gradients, the channels
  /// (in the backend's memory).
  [[nodiscard]] std::size_t persistent_bytes() const noexcept {
    return 2 * sizeof(T) * std::size_t(parameter_count()) +
           sizeof(index_t) * std::size_t(channel_count());
  }
  /// Bytes of per-step temporaries held now (they grow to the largest batch).
  [[nodiscard]] std::size_t workspace_bytes() const noexcept { return h_.bytes() + xc_.bytes(); }

  // --- Forward and backward ----------------------------------------------------

  /// Y = s (X A^T) B^T + X[:, c] V^T + b. X is N x in, Y is N x out. Keeps a
  /// view of X, H = X A^T and X[:, c] for backward.
  /// @throws lowrank::invalid_argument for wrong shapes or a Y that overlaps X.
  void forward(context<Backend>& ctx, matrix_view<const T, Backend> x, matrix_view<T, Backend> y) {
    const char* fn = "lowrank::channel_sparse_low_rank::forward";
    if (x.cols() != in_) {
      detail::throw_invalid_argument(fn, "x.cols()", x.cols(), "in = " + std::to_string(in_));
    }
    detail::require_shape(fn, "y", y, x.rows(), out_);
    detail::require_apart(fn, "y", y, "x", x);
    pending_ = false;
    const index_t n = x.rows();
    const auto h = h_.rows(ctx, n, rank());
    const auto xc = xc_.rows(ctx, n, channel_count());
    ops<Backend>::gemm(ctx, transpose::no, transpose::yes, T(1), x, a(), T(0), h);
    ops<Backend>::gather_columns(ctx, x, channel_indices(), vector_view<const T, Backend>(), xc);
    ops<Backend>::gemm(ctx, transpose::no, transpose::yes, static_cast<T>(scaling()), as_const(h),
                       b(), T(0), y);
    ops<Backend>::gemm(ctx, transpose::no, transpose::yes, T(1), as_const(xc), values(), T(1), y);
    if (bias_.size() > 0) ops<Backend>::add_row_vector(ctx, T(1), bias(), y);
    saved_x_ = x;
    pending_ = true;
  }

  /// Accumulates dA, dB, dV (and db) from G = dL/dY (N x out) of the last
  /// forward, and writes dX = s G B A + (G V) P^T into `dx` (N x in; pass an
  /// empty view to skip it).
  /// @throws lowrank::invalid_argument without a forward since the last
  ///   backward, for a G of another shape than that forward's Y, or a dx of
  ///   the wrong shape or overlapping G.
  void backward(context<Backend>& ctx, matrix_view<const T, Backend> dy,
                matrix_view<T, Backend> dx) {
    const char* fn = "lowrank::channel_sparse_low_rank::backward";
    if (!pending_) {
      detail::throw_invalid_argument(fn, "this", "a layer without a pending forward",
                                     "forward() before each backward()");
    }
    const index_t n = saved_x_.rows();
    detail::require_shape(fn, "dy", dy, n, out_);
    if (!dx.empty()) detail::require_shape(fn, "dx", dx, n, in_);
    detail::require_apart(fn, "dx", dx, "dy", dy);
    const auto sc = static_cast<T>(scaling());
    // H is spent after dB: its storage takes GB; X[:, c] after dV: GV.
    const auto h = h_.rows(ctx, n, rank());
    ops<Backend>::gemm(ctx, transpose::yes, transpose::no, sc, dy, as_const(h), T(1), grad_b());
    const auto gb = h_.rows(ctx, n, rank());
    ops<Backend>::gemm(ctx, transpose::no, transpose::no, T(1), dy, b(), T(0), gb);
    ops<Backend>::gemm(ctx, transpose::yes, transpose::no, sc, as_const(gb), saved_x_, T(1),
                       grad_a());
    const auto xc = xc_.rows(ctx, n, channel_count());
    ops<Backend>::gemm(ctx, transpose::yes, transpose::no, T(1), dy, as_const(xc), T(1),
                       grad_values());
    if (!dx.empty()) {
      const auto gv = xc_.rows(ctx, n, channel_count());
      ops<Backend>::gemm(ctx, transpose::no, transpose::no, T(1), dy, values(), T(0), gv);
      ops<Backend>::gemm(ctx, transpose::no, transpose::no, sc, as_const(gb), a(), T(0), dx);
      ops<Backend>::scatter_add_columns(ctx, T(1), as_const(gv), channel_indices(),
                                        vector_view<const T, Backend>(), dx);
    }
    if (grad_bias_.size() > 0) ops<Backend>::add_column_sums(ctx, T(1), dy, grad_bias());
    pending_ = false;
  }

  // --- Merge ---------------------------------------------------------------------

  /// W = s B A + V P^T into `w` (out x in): s B A in extended precision
  /// rounded once, then V's column i added to column c_i.
  /// @throws lowrank::invalid_argument for a w of another shape.
  void dense_weight(context<Backend>& ctx, matrix_view<T, Backend> w) const {
    const char* fn = "lowrank::channel_sparse_low_rank::dense_weight";
    detail::require_shape(fn, "w", w, out_, in_);
    ops<Backend>::fill(ctx, w, T(0));
    ops<Backend>::merge_low_rank(ctx, scaling(), b(), a(), vector_view<const double, Backend>(), w,
                                 false, nullptr);
    ops<Backend>::scatter_add_columns(ctx, T(1), values(), channel_indices(),
                                      vector_view<const T, Backend>(), w);
  }

 private:
  /// Checks the options and allocates the parameters and zero gradients (the
  /// channels, values and bias are the caller's to set).
  channel_sparse_low_rank(context<Backend>& ctx, index_t out, index_t in,
                          const channel_sparse_options& options, const char* fn)
      : options_(options), out_(out), in_(in) {
    if (out < 1) detail::throw_invalid_argument(fn, "out", out, ">= 1");
    if (in < 1) detail::throw_invalid_argument(fn, "in", in, ">= 1");
    if (options.rank < 1 || options.rank > std::min(out, in)) {
      detail::throw_invalid_argument(
          fn, "options.rank", options.rank,
          "in [1, min(out, in)] = [1, " + std::to_string(std::min(out, in)) + "]");
    }
    if (options.channels < 1 || options.channels > in) {
      detail::throw_invalid_argument(fn, "options.channels", options.channels,
                                     "in [1, in] = [1, " + std::to_string(in) + "]");
    }
    if (!(options.alpha > 0) || !std::isfinite(options.alpha)) {
      detail::throw_invalid_argument(fn, "options.alpha", options.alpha, "finite and > 0");
    }
    if (options.layer >= max_stream_layers) {
      detail::throw_invalid_argument(fn, "options.layer", options.layer, "< 2^30");
    }
    const index_t r = rank(), k = channel_count();
    a_ = matrix<T, Backend>(ctx, r, in);
    b_ = matrix<T, Backend>(ctx, out, r);
    values_ = matrix<T, Backend>(ctx, out, k);
    grad_a_ = matrix<T, Backend>(ctx, r, in);
    grad_b_ = matrix<T, Backend>(ctx, out, r);
    grad_values_ = matrix<T, Backend>(ctx, out, k);
    channel_idx_ = vector<index_t, Backend>(ctx, k);
    ops<Backend>::fill(ctx, grad_a(), T(0));
    ops<Backend>::fill(ctx, grad_b(), T(0));
    ops<Backend>::fill(ctx, grad_values(), T(0));
  }

  /// The k largest scores' indices (ties to the lower index), increasing.
  static std::vector<index_t> top_channels(const std::vector<double>& scores, index_t k) {
    std::vector<index_t> order(scores.size());
    std::iota(order.begin(), order.end(), index_t{0});
    std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](index_t p, index_t q) {
      const double x = scores[std::size_t(p)], y = scores[std::size_t(q)];
      return x > y || (x == y && p < q);
    });
    order.resize(std::size_t(k));
    std::sort(order.begin(), order.end());
    return order;
  }

  /// The channels (checked by the caller) on the host and in the backend.
  void set_channels(context<Backend>& ctx, std::vector<index_t> host) {
    ops<Backend>::upload_indices(ctx, vector_view<const index_t, cpu>(host.data(), channel_count()),
                                 channel_idx_.view());
    channels_ = std::move(host);
  }

  /// A bias and its zero gradient (out entries).
  void make_bias(context<Backend>& ctx) {
    bias_ = vector<T, Backend>(ctx, out_);
    grad_bias_ = vector<T, Backend>(ctx, out_);
    ops<Backend>::fill(ctx, grad_bias_.view().as_matrix(), T(0));
  }

  /// X ~ U(-bound, bound): 2 bound u - bound from the layer's stream of `kind`.
  void uniform(context<Backend>& ctx, factor_stream_kind kind, T bound, matrix_view<T, Backend> x) {
    if (x.size() == 0) return;
    ops<Backend>::fill_random(ctx, distribution::uniform,
                              factor_stream(options_.seed, options_.layer, kind), x, 0, 0);
    ops<Backend>::affine(ctx, T(2) * bound, -bound, x);
  }

  channel_sparse_options options_;
  index_t out_ = 0;
  index_t in_ = 0;
  std::vector<index_t> channels_;
  vector<index_t, Backend> channel_idx_;
  matrix<T, Backend> a_, b_, values_, grad_a_, grad_b_, grad_values_;
  vector<T, Backend> bias_, grad_bias_;
  // The pending forward: its X; H = X A^T and X[:, c] live in the workspaces.
  matrix_view<const T, Backend> saved_x_;
  bool pending_ = false;
  detail::batch_workspace<T, Backend> h_, xc_;
};

}  // namespace lowrank
