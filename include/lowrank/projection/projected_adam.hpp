#pragma once
/// @file
/// `lowrank::projected_adam<T, Backend>`: Adam with low-rank gradient
/// projection (GaLore), over a list of weights, with plain AdamW for the
/// weights that are not projected, so that one object trains a whole model
/// (docs/algorithms.md, "Gradient projection").
///
/// **Step** of a projected weight W (m x n) with gradient G, its projector P
/// (projection/projector.hpp) and moments M, V of R's shape:
/// ```
/// if P.due(t): R = P.refresh(G) (and its projection); on a new basis apply
///              the moment policy
/// else:        R = P.project(G)
/// M = b1 M + (1 - b1) R ;  V = b2 V + (1 - b2) R (.) R ;  t += 1
/// galore:    N = M / (sqrt(V) + eps),          W -= lr sqrt(1 - b2^t) / (1 - b1^t) scale back(N),
///            then W -= lr wd W                 (galore_torch/adamw.py, exactly)
/// decoupled: W -= lr wd W first, then N = M^ / (sqrt(V^) + eps) with the bias-corrected
///            M^ = M / (1 - b1^t), V^ = V / (1 - b2^t), W -= lr scale back(N)
///            (DCT-AdamW, LDAdam: PyTorch's AdamW in the subspace)
/// ```
/// A plain weight takes the same step with R = G and back(N) = N (scale 1):
/// galore-torch's AdamW for its parameters without "rank". The step counter t
/// is the weight's own (galore-torch's `state["step"]`); `step(ctx, i, G)`
/// is one logical step of weight i, callable as soon as its gradient is
/// complete (a backward hook), so a trainer never holds all full gradients at
/// once. Call it once per optimizer step, after gradient accumulation
/// (galore-torch's per-layer mode stepped once per micro-batch: its #78).
///
/// **Moment policy** when a refresh changes the basis (the moments live in the
/// old coordinates): `keep` leaves them (galore-torch), `reset` zeroes them
/// and restarts the bias-correction clock, `rotate` maps them to the new
/// coordinates with the projector's transitions C (r x r): M <- C_L M,
/// M C_R^T or C_L M C_R^T, and V likewise followed by |V| (DCT-AdamW).
///
/// **Fira** (`residual = fira`): the part of G outside the subspace joins the
/// update: S = diag(phi) (G - back(R)) (right side; per column for the left
/// side) with phi_i = ||N_i|| / (||R_i|| + 1e-8) over the projected
/// dimension, limited in growth: when ||S|| > gamma ||S_prev|| (gamma =
/// `fira_limit`, 1.01), S is scaled to gamma ||S_prev||; then W -= step_size
/// S with the step size above. `fira_reference` uses the residual
/// G - scale back(R) of Fira's code (with scale = 0.25 it keeps 75% of the
/// in-subspace gradient); `fira` the paper's G - back(R). Fira needs a
/// one-sided projector.
///
/// **Non-finite gradients.** A gradient with a NaN or Inf entry changes
/// nothing (weight, moments, basis, counters) except `skipped_steps(i)`, and
/// the step says so; a refresh whose factorisation fails keeps the old basis
/// (projector::skipped_refreshes); without any basis yet the step is skipped.
///
/// **Memory.** State per projected weight: M, V (2 |R| scalars, |R| = r max(m,
/// n) for a one-sided projector) and the projector's state; per plain weight
/// 2 m n; `state_bytes()` sums them, `adamw_state_bytes()` is what AdamW
/// would hold (2 m n per weight). A step takes R and N (2 |R| scalars) from the
/// context's workspace, and for Fira S and phi (m n + max(m, n)); a refresh
/// what its projector says (projector::refresh_workspace_bytes).
///
/// **Checkpoints** (`save`, `load`): the whole state as `.safetensors`:
/// tensors `slot.<i>.exp_avg`, `slot.<i>.exp_avg_sq`, `slot.<i>.basis_left`,
/// `slot.<i>.basis_right` (F32 for float, F64 for double; a quantized
/// projector's codes, scales and zero points instead, and the lazy rule's
/// first vector: projector::save_state) and the rest as
/// metadata strings (options, sides, ranks, counters, Fira's norm, the
/// learning rate), no pickled objects. Resume is exact: N steps equal k
/// steps, save, load into an optimizer built with the same weights and
/// options, N - k steps, bit for bit on the same backend and build. A file for
/// other weights, shapes or options is refused with a clear error and the
/// live state is left as it was; the file is written to a temporary and
/// renamed.
///
/// **Errors.** lowrank::invalid_argument for options, indices and shapes (the
/// message names the function, the argument, its value and what was
/// expected), also for files (the readers' and writers' messages,
/// io/safetensors.hpp). A throwing call changes nothing.

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "lowrank/core/concepts.hpp"
#include "lowrank/core/error.hpp"
#include "lowrank/core/matrix.hpp"
#include "lowrank/core/matrix_view.hpp"
#include "lowrank/core/validate.hpp"
#include "lowrank/io/safetensors.hpp"
#include "lowrank/projection/backend.hpp"
#include "lowrank/projection/detail/checkpoint.hpp"
#include "lowrank/projection/projector.hpp"

namespace lowrank {

/// Where eps and weight decay go (see the file comment).
enum class adam_semantics { galore, decoupled };

/// What happens to the moments when the basis changes (see the file comment).
enum class moment_policy { keep, reset, rotate };

/// The residual added to the projected update (see the file comment).
enum class residual_mode { none, fira, fira_reference };

/// What `projected_adam::step` did.
enum class step_outcome {
  applied,             ///< the weight and its state advanced one step
  skipped_non_finite,  ///< the gradient had a NaN or Inf entry: nothing changed
  skipped_no_basis,    ///< the first refresh failed: nothing changed
};

/// Options of a projected Adam optimizer (galore-torch's defaults).
struct projected_adam_options {
  double lr = 1e-3;         ///< >= 0, finite
  double beta1 = 0.9;       ///< in [0, 1)
  double beta2 = 0.999;     ///< in [0, 1)
  double eps = 1e-6;        ///< > 0, finite
  double weight_decay = 0;  ///< >= 0, finite
  adam_semantics semantics = adam_semantics::galore;
  moment_policy moments = moment_policy::keep;
  residual_mode residual = residual_mode::none;
  double fira_limit = 1.01;  ///< Fira's gamma, >= 1, finite
};

template <scalar T, class Backend = cpu>
requires projection_backend_for<Backend, T>
class projected_adam {
 public:
  using scalar_type = T;
  using backend = Backend;

  /// @throws lowrank::invalid_argument for options out of their ranges.
  explicit projected_adam(const projected_adam_options& options = {})
      : options_(checked(options, "lowrank::projected_adam::projected_adam")) {}

  projected_adam(projected_adam&&) noexcept = default;
  projected_adam& operator=(projected_adam&&) noexcept = default;
  projected_adam(const projected_adam&) = delete;
  projected_adam& operator=(const projected_adam&) = delete;

  // --- Weights --------------------------------------------------------------------

  /// Adds a weight W (m x n, a view that must outlive the optimizer) trained
  /// with a projector of `options`; returns its index.
  /// @throws lowrank::invalid_argument as projector's constructor, or for
  ///   Fira with a two-sided projector.
  index_t add(context<Backend>& ctx, matrix_view<T, Backend> weight,
              const projector_options& options) {
    projector<T, Backend> p(weight.rows(), weight.cols(), options);
    if (options_.residual != residual_mode::none && p.side() == projection_side::two_sided) {
      detail::throw_invalid_argument("lowrank::projected_adam::add", "options.side", "two_sided",
                                     "a one-sided projector (Fira's residual needs one)");
    }
    slot s;
    s.weight = weight;
    s.m = zeros(ctx, p.projected_rows(), p.projected_cols());
    s.v = zeros(ctx, p.projected_rows(), p.projected_cols());
    s.proj.emplace(std::move(p));
    slots_.push_back(std::move(s));
    return index_t(slots_.size()) - 1;
  }

  /// Adds a weight trained with plain AdamW (a bias or a norm as an n x 1
  /// view, an embedding, ...); returns its index.
  /// @throws lowrank::invalid_argument for an empty weight.
  index_t add_plain(context<Backend>& ctx, matrix_view<T, Backend> weight) {
    detail::require_non_empty("lowrank::projected_adam::add_plain", "weight", weight);
    slot s;
    s.weight = weight;
    s.m = zeros(ctx, weight.rows(), weight.cols());
    s.v = zeros(ctx, weight.rows(), weight.cols());
    slots_.push_back(std::move(s));
    return index_t(slots_.size()) - 1;
  }

  [[nodiscard]] index_t size() const noexcept { return index_t(slots_.size()); }
  [[nodiscard]] const projected_adam_options& options() const noexcept { return options_; }
  [[nodiscard]] double learning_rate() const noexcept { return options_.lr; }
  /// Sets the learning rate (a schedule).
  /// @throws lowrank::invalid_argument if lr is negative or not finite.
  void set_learning_rate(double lr) {
    if (!(lr >= 0 && std::isfinite(lr))) {
      detail::throw_invalid_argument("lowrank::projected_adam::set_learning_rate", "lr", lr,
                                     "a finite value >= 0");
    }
    options_.lr = lr;
  }

  /// Weight i's projector, or null for a plain weight.
  [[nodiscard]] const projector<T, Backend>* projector_of(index_t i) const {
    const auto& s = at(i, "lowrank::projected_adam::projector_of");
    return s.proj ? &*s.proj : nullptr;
  }
  [[nodiscard]] matrix_view<const T, Backend> first_moment(index_t i) const {
    return at(i, "lowrank::projected_adam::first_moment").m.view();
  }
  [[nodiscard]] matrix_view<const T, Backend> second_moment(index_t i) const {
    return at(i, "lowrank::projected_adam::second_moment").v.view();
  }
  /// Steps applied to weight i (galore-torch's state["step"]).
  [[nodiscard]] std::uint64_t steps(index_t i) const {
    return at(i, "lowrank::projected_adam::steps").steps;
  }
  /// Steps of weight i skipped for a non-finite gradient or a missing basis.
  [[nodiscard]] std::uint64_t skipped_steps(index_t i) const {
    return at(i, "lowrank::projected_adam::skipped_steps").skipped;
  }

  /// Bytes of optimizer state: moments and projector states (see the file comment).
  [[nodiscard]] std::size_t state_bytes() const noexcept {
    std::size_t total = 0;
    for (const auto& s : slots_) {
      total += sizeof(T) * std::size_t(s.m.size() + s.v.size());
      if (s.proj) total += s.proj->state_bytes();
    }
    return total;
  }
  /// Bytes AdamW would hold for the same weights: 2 m n each.
  [[nodiscard]] std::size_t adamw_state_bytes() const noexcept {
    std::size_t total = 0;
    for (const auto& s : slots_) total += 2 * sizeof(T) * std::size_t(s.weight.size());
    return total;
  }
  /// Bytes a step of weight i takes from the context's workspace, refresh
  /// excluded (projector::refresh_workspace_bytes).
  [[nodiscard]] std::size_t step_workspace_bytes(index_t i) const {
    const auto& s = at(i, "lowrank::projected_adam::step_workspace_bytes");
    if (!s.proj) return 0;
    std::size_t bytes = 2 * sizeof(T) * std::size_t(s.m.size());
    if (options_.residual != residual_mode::none) {
      bytes +=
          sizeof(T) * std::size_t(s.weight.size() + std::max(s.weight.rows(), s.weight.cols()));
    }
    return bytes;
  }

  // --- Steps ----------------------------------------------------------------------

  /// One step of weight i with gradient G (the weight's shape; see the file
  /// comment).
  /// @throws lowrank::invalid_argument for an index out of range, a gradient
  ///   of another shape or one overlapping the weight.
  step_outcome step(context<Backend>& ctx, index_t i, matrix_view<const T, Backend> grad) {
    const char* fn = "lowrank::projected_adam::step";
    auto& s = at(i, fn);
    detail::require_shape(fn, "grad", grad, s.weight.rows(), s.weight.cols());
    detail::require_apart(fn, "grad", grad, "the weight", s.weight);
    if (!std::isfinite(ops<Backend>::max_abs(ctx, grad))) {
      ++s.skipped;
      return step_outcome::skipped_non_finite;
    }
    // R and N (projected weights only), taken before a refresh so that the
    // refresh can write R (a dct projector reads it out of its transform).
    auto ws = ctx.workspace();
    const index_t pr = s.proj ? s.proj->projected_rows() : 0;
    const index_t pc = s.proj ? s.proj->projected_cols() : 0;
    matrix_view<T, Backend> r(ws.template take<T>(std::size_t(pr * pc)), pr, pc);
    matrix_view<T, Backend> n(ws.template take<T>(std::size_t(pr * pc)), pr, pc);
    bool projected = false;
    if (s.proj) {
      auto& p = *s.proj;
      if (p.due(s.steps)) {
        const bool had = p.has_basis();
        const auto outcome = p.refresh(ctx, grad, r);
        projected = p.has_basis();
        if (had &&
            (outcome == refresh_outcome::refreshed || outcome == refresh_outcome::fell_back)) {
          on_new_basis(ctx, s);
        }
      }
      if (!p.has_basis()) {
        ++s.skipped;
        return step_outcome::skipped_no_basis;
      }
    }
    const bool galore = options_.semantics == adam_semantics::galore;
    const double decay = 1 - options_.lr * options_.weight_decay;
    if (!galore && options_.weight_decay > 0) {
      ops<Backend>::affine(ctx, static_cast<T>(decay), T(0), s.weight);
    }
    ++s.steps;
    ++s.moment_steps;
    const double t = double(s.moment_steps);
    const double c1 = 1 - std::pow(options_.beta1, t);
    const double c2 = 1 - std::pow(options_.beta2, t);
    const double ms = galore ? 1 : 1 / c1;
    const double vs = galore ? 1 : 1 / std::sqrt(c2);
    const T step_size = static_cast<T>(galore ? options_.lr * std::sqrt(c2) / c1 : options_.lr);
    if (!s.proj) {
      ops<Backend>::adam_moments(ctx, options_.beta1, options_.beta2, grad, s.m.view(), s.v.view());
      ops<Backend>::adam_direction(ctx, ms, vs, options_.eps, as_const(s.m.view()),
                                   as_const(s.v.view()), T(-step_size), T(1), s.weight);
    } else {
      const auto& p = *s.proj;
      if (!projected) p.project(ctx, grad, r);
      ops<Backend>::adam_moments(ctx, options_.beta1, options_.beta2, as_const(r), s.m.view(),
                                 s.v.view());
      ops<Backend>::adam_direction(ctx, ms, vs, options_.eps, as_const(s.m.view()),
                                   as_const(s.v.view()), T(1), T(0), n);
      p.project_back(ctx, as_const(n), T(-step_size), T(1), s.weight);
      if (options_.residual != residual_mode::none) {
        fira(ctx, s, grad, as_const(r), as_const(n), step_size);
      }
    }
    if (galore && options_.weight_decay > 0) {
      ops<Backend>::affine(ctx, static_cast<T>(decay), T(0), s.weight);
    }
    return step_outcome::applied;
  }

  // --- Checkpoints ----------------------------------------------------------------

  /// Writes the whole state to `file` (see the file comment).
  /// @throws lowrank::invalid_argument (function lowrank::io::write_safetensors)
  ///   if the file cannot be written; the previous file stays as it was.
  void save(context<Backend>& ctx, const std::filesystem::path& file) const {
    std::vector<io::tensor_to_write> tensors;
    std::map<std::string, std::string> meta;
    meta["format"] = "lowrank.projected_adam";
    meta["version"] = "1";
    meta["scalar"] = std::is_same_v<T, float> ? "float" : "double";
    meta["options"] = describe(options_);
    meta["lr"] = detail::hex(options_.lr);
    meta["slots"] = std::to_string(slots_.size());
    const io::dtype type = std::is_same_v<T, float> ? io::dtype::float32 : io::dtype::float64;
    const auto add_tensor = [&](const std::string& name, matrix_view<const T, Backend> x) {
      Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> host(x.rows(), x.cols());
      if (x.size() > 0) ops<Backend>::download(ctx, x, view(host));
      tensors.push_back({name, type, host.template cast<double>(), false});
    };
    for (std::size_t i = 0; i < slots_.size(); ++i) {
      const auto& s = slots_[i];
      const std::string key = "slot." + std::to_string(i) + ".";
      meta[key + "layout"] = layout_of(s);
      meta[key + "counters"] = std::to_string(s.steps) + " " + std::to_string(s.moment_steps) +
                               " " + std::to_string(s.skipped) + " " + detail::hex(s.fira_norm);
      add_tensor(key + "exp_avg", s.m.view());
      add_tensor(key + "exp_avg_sq", s.v.view());
      if (s.proj) s.proj->save_state(ctx, key, tensors, meta);
    }
    io::write_safetensors(file, tensors, meta);
  }

  /// Replaces the state by the one saved in `file`, which must come from an
  /// optimizer with the same weights (shapes, kinds, projector options) and
  /// options (the learning rate excepted: it is restored).
  /// @throws lowrank::invalid_argument (function
  ///   lowrank::projected_adam::load, argument `file`) for a file of another
  ///   optimizer, and the reader's errors (io/safetensors.hpp) for a
  ///   malformed file; the live state is unchanged then.
  void load(context<Backend>& ctx, const std::filesystem::path& file) {
    const auto f = io::safetensors_file::read(file);
    const detail::checkpoint_source src{"lowrank::projected_adam::load",
                                        "the file " + file.string(), &f};
    src.expect("format", "lowrank.projected_adam");
    src.expect("version", "1");
    src.expect("scalar", std::is_same_v<T, float> ? "float" : "double");
    src.expect("options", describe(options_));
    src.expect("slots", std::to_string(slots_.size()));
    const double lr = detail::unhex(src, src.need("lr"));
    if (!(lr >= 0 && std::isfinite(lr)))
      src.fail("with lr = " + detail::hex(lr), "a finite lr >= 0");
    const auto matrix_of = [&](const std::string& name, index_t rows, index_t cols) {
      if (!f.contains(name)) {
        src.fail("without tensor '" + name + "'",
                 "a tensor of " + std::to_string(rows) + " x " + std::to_string(cols));
      }
      auto host = f.template matrix<T>(name);
      if (host.rows() != rows || host.cols() != cols) {
        src.fail("with tensor '" + name + "' of " + detail::shape_of(host),
                 std::to_string(rows) + " x " + std::to_string(cols));
      }
      matrix<T, Backend> x(ctx, rows, cols);
      if (x.size() > 0) ops<Backend>::upload(ctx, as_const(view(host)), x.view());
      return x;
    };
    // Everything is read and checked into `loaded` before anything changes.
    std::vector<slot> loaded;
    loaded.reserve(slots_.size());
    for (std::size_t i = 0; i < slots_.size(); ++i) {
      const auto& live = slots_[i];
      const std::string key = "slot." + std::to_string(i) + ".";
      src.expect(key + "layout", layout_of(live));
      slot s;
      s.weight = live.weight;
      const auto counters = detail::words(src, key + "counters", 4);
      s.steps = detail::unsigned_of(src, counters[0]);
      s.moment_steps = detail::unsigned_of(src, counters[1]);
      s.skipped = detail::unsigned_of(src, counters[2]);
      s.fira_norm = detail::unhex(src, counters[3]);
      s.m = matrix_of(key + "exp_avg", live.m.rows(), live.m.cols());
      s.v = matrix_of(key + "exp_avg_sq", live.v.rows(), live.v.cols());
      if (live.proj) {
        projector<T, Backend> p(live.proj->rows(), live.proj->cols(), live.proj->options());
        p.load_state(ctx, key, src);
        s.proj.emplace(std::move(p));
      }
      loaded.push_back(std::move(s));
    }
    slots_.swap(loaded);
    options_.lr = lr;
  }

 private:
  struct slot {
    matrix_view<T, Backend> weight;
    std::optional<projector<T, Backend>> proj;  // empty: plain AdamW
    matrix<T, Backend> m, v;                    // the moments, R's shape
    std::uint64_t steps = 0;                    // steps applied
    std::uint64_t moment_steps = 0;             // the bias-correction clock
    std::uint64_t skipped = 0;
    double fira_norm = -1;  // ||S|| of the last step; < 0: none yet
  };

  static const projected_adam_options& checked(const projected_adam_options& o, const char* fn) {
    if (!(o.lr >= 0 && std::isfinite(o.lr))) {
      detail::throw_invalid_argument(fn, "options.lr", o.lr, "a finite value >= 0");
    }
    if (!(o.beta1 >= 0 && o.beta1 < 1)) {
      detail::throw_invalid_argument(fn, "options.beta1", o.beta1, "a value in [0, 1)");
    }
    if (!(o.beta2 >= 0 && o.beta2 < 1)) {
      detail::throw_invalid_argument(fn, "options.beta2", o.beta2, "a value in [0, 1)");
    }
    if (!(o.eps > 0 && std::isfinite(o.eps))) {
      detail::throw_invalid_argument(fn, "options.eps", o.eps, "a finite value > 0");
    }
    if (!(o.weight_decay >= 0 && std::isfinite(o.weight_decay))) {
      detail::throw_invalid_argument(fn, "options.weight_decay", o.weight_decay,
                                     "a finite value >= 0");
    }
    if (!(o.fira_limit >= 1 && std::isfinite(o.fira_limit))) {
      detail::throw_invalid_argument(fn, "options.fira_limit", o.fira_limit, "a finite value >= 1");
    }
    return o;
  }

  slot& at(index_t i, const char* fn) {
    detail::require_in_range(fn, "i", i, 0, index_t(slots_.size()) - 1, "size() - 1");
    return slots_[std::size_t(i)];
  }
  const slot& at(index_t i, const char* fn) const {
    detail::require_in_range(fn, "i", i, 0, index_t(slots_.size()) - 1, "size() - 1");
    return slots_[std::size_t(i)];
  }

  static matrix<T, Backend> zeros(context<Backend>& ctx, index_t rows, index_t cols) {
    matrix<T, Backend> x(ctx, rows, cols);
    ops<Backend>::fill(ctx, x.view(), T(0));
    return x;
  }

  /// The moment policy, after a refresh that replaced a basis.
  void on_new_basis(context<Backend>& ctx, slot& s) {
    switch (options_.moments) {
      case moment_policy::keep:
        return;
      case moment_policy::reset:
        ops<Backend>::fill(ctx, s.m.view(), T(0));
        ops<Backend>::fill(ctx, s.v.view(), T(0));
        s.moment_steps = 0;
        return;
      case moment_policy::rotate:
        rotate(ctx, *s.proj, s.m.view());
        rotate(ctx, *s.proj, s.v.view());
        ops<Backend>::abs_values(ctx, s.v.view());
        return;
    }
  }

  /// X <- C_L X, X C_R^T or C_L X C_R^T (the projector's transitions).
  static void rotate(context<Backend>& ctx, const projector<T, Backend>& p,
                     matrix_view<T, Backend> x) {
    auto ws = ctx.workspace();
    matrix_view<T, Backend> tmp(ws.template take<T>(std::size_t(x.size())), x.rows(), x.cols());
    if (p.projects_left()) {
      ops<Backend>::gemm(ctx, transpose::no, transpose::no, T(1), p.transition_left(), as_const(x),
                         T(0), tmp);
      ops<Backend>::copy(ctx, as_const(tmp), x);
    }
    if (p.projects_right()) {
      ops<Backend>::gemm(ctx, transpose::no, transpose::yes, T(1), as_const(x),
                         p.transition_right(), T(0), tmp);
      ops<Backend>::copy(ctx, as_const(tmp), x);
    }
  }

  /// Fira's residual step: W -= step_size S (see the file comment).
  void fira(context<Backend>& ctx, slot& s, matrix_view<const T, Backend> grad,
            matrix_view<const T, Backend> r, matrix_view<const T, Backend> n, T step_size) {
    const auto& p = *s.proj;
    const bool rows = p.side() == projection_side::right;  // one factor per row of G
    const index_t count = rows ? grad.rows() : grad.cols();
    auto ws = ctx.workspace();
    matrix_view<T, Backend> res(ws.template take<T>(std::size_t(grad.size())), grad.rows(),
                                grad.cols());
    vector_view<T, Backend> phi(ws.template take<T>(std::size_t(count)), count);
    vector<double, Backend> nn(ctx, count);
    vector<double, Backend> rr(ctx, count);
    ops<Backend>::copy(ctx, grad, res);
    const T c = options_.residual == residual_mode::fira_reference
                    ? static_cast<T>(-p.options().scale)
                    : T(-1);
    p.reconstruct(ctx, r, c, T(1), res);
    if (rows) {
      ops<Backend>::row_dots(ctx, n, n, nn.view());
      ops<Backend>::row_dots(ctx, r, r, rr.view());
    } else {
      ops<Backend>::column_dots(ctx, n, n, nn.view());
      ops<Backend>::column_dots(ctx, r, r, rr.view());
    }
    ops<Backend>::norm_ratio(ctx, as_const(nn.view()), as_const(rr.view()), 1e-8, phi);
    if (rows) {
      ops<Backend>::scale_rows(ctx, as_const(phi), res);
    } else {
      ops<Backend>::scale_columns(ctx, as_const(phi), res);
    }
    const double norm = std::sqrt(ops<Backend>::squared_norm(ctx, as_const(res)));
    if (s.fira_norm >= 0) {
      const double gamma = options_.fira_limit;
      const double limit = std::max(norm / (s.fira_norm + 1e-8), gamma) / gamma;
      if (limit != 1) ops<Backend>::affine(ctx, static_cast<T>(1 / limit), T(0), res);
      s.fira_norm = norm / limit;
    } else {
      s.fira_norm = norm;
    }
    ops<Backend>::axpby(ctx, T(-step_size), as_const(res), T(1), s.weight);
  }

  /// The options a checkpoint must share with the optimizer loading it.
  static std::string describe(const projected_adam_options& o) {
    std::string text =
        "beta1=" + detail::hex(o.beta1) + " beta2=" + detail::hex(o.beta2) +
        " eps=" + detail::hex(o.eps) + " weight_decay=" + detail::hex(o.weight_decay) +
        " semantics=" + std::to_string(int(o.semantics)) +
        " moments=" + std::to_string(int(o.moments)) +
        " residual=" + std::to_string(int(o.residual)) + " fira_limit=" + detail::hex(o.fira_limit);
    return text;
  }
  static std::string layout_of(const slot& s) {
    std::string text = detail::shape_of(s.weight);
    if (!s.proj) return text + " plain";
    const auto& o = s.proj->options();
    return text + " projected rank=" + std::to_string(o.rank) +
           " side=" + std::to_string(int(o.side)) + " method=" + std::to_string(int(o.method)) +
           " gap=" + std::to_string(o.update_gap) + " stagger=" + std::to_string(int(o.stagger)) +
           " scale=" + detail::hex(o.scale) + " seed=" + std::to_string(o.seed) +
           " layer=" + std::to_string(o.layer) + " p=" + std::to_string(o.oversampling) +
           " q=" + std::to_string(o.power_iterations) +
           " warm=" + std::to_string(o.warm_iterations) +
           " overlap=" + detail::hex(o.warm_min_overlap) +
           " bits=" + std::to_string(o.quantize_bits) +
           " group=" + std::to_string(o.quantize_group) + " lazy=" + std::to_string(int(o.lazy)) +
           " queue=" + std::to_string(o.lazy_queue) +
           " threshold=" + detail::hex(o.lazy_threshold) + " growth=" + detail::hex(o.lazy_growth) +
           " abs=" + std::to_string(int(o.lazy_abs_cosine)) +
           " max_gap=" + std::to_string(o.max_gap) +
           (o.method == refresh_method::dct ? " dct_norm=" + std::to_string(int(o.dct_norm))
                                            : std::string());
  }

  projected_adam_options options_;
  std::vector<slot> slots_;
};

}  // namespace lowrank
