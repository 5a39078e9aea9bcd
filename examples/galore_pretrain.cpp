// Recipe: pre-train an MLP from scratch with GaLore and Fira, against AdamW.
//
// Question answered: "How do I train every weight matrix of my C++ model with
// Adam-quality updates while the optimizer keeps only r / min(m, n) of Adam's
// state, and what does it cost in loss?"
//
// The model is a two-layer MLP, Y = relu(X W1^T + b1) W2^T + b2 (PyTorch
// nn.Linear layout: W is out x in, a batch is N x in), trained from a random
// start to imitate a fixed random teacher MLP (mean squared error, full
// batch, hand-written backward). Three runs from the same start:
//   - AdamW: lowrank::projected_adam with every parameter plain (add_plain);
//   - GaLore: W1 and W2 projected (rank r, `warm` refresh every T steps,
//     scale 0.25: galore-torch's recipe), biases plain;
//   - Fira: GaLore plus the scaled residual outside the subspace.
// Each weight steps as soon as its gradient is ready (per-layer steps, as a
// backward hook would call them). The loss curves print side by side, with
// each run's optimizer state in bytes; --csv writes them (the README's plot is
// made from it by tools/plot_galore_pretrain.py).
//
//   galore_pretrain                                  # 600 steps, 64 -> 256 -> 64, rank 16
//   galore_pretrain --steps 150 --samples 128        # the CI run
//   galore_pretrain --rank 8 --gap 100 --csv losses.csv
//
// Exits with 1 if a run's loss did not fall below half of its first value.

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <lowrank/lowrank.hpp>
#include <string>
#include <vector>

namespace {

using matrix = Eigen::MatrixXf;
using vector = Eigen::VectorXf;
using ops = lowrank::ops<lowrank::cpu>;

/// A Gaussian matrix of standard deviation `scale` from Philox stream (seed, stream).
matrix gaussian(lowrank::context<lowrank::cpu>& ctx, Eigen::Index rows, Eigen::Index cols,
                float scale, std::uint64_t stream) {
  matrix m(rows, cols);
  ops::fill_random(ctx, lowrank::distribution::gaussian, {7, stream}, lowrank::view(m));
  return scale * m;
}

struct mlp {
  matrix w1, w2;
  matrix b1, b2;  // column vectors (n x 1), as the optimizer takes them

  matrix forward(const matrix& x, matrix* pre = nullptr, matrix* h = nullptr) const {
    const matrix a = (x * w1.transpose()).rowwise() + b1.col(0).transpose();
    const matrix r = a.cwiseMax(0.0f);
    if (pre != nullptr) *pre = a;
    if (h != nullptr) *h = r;
    return (r * w2.transpose()).rowwise() + b2.col(0).transpose();
  }
};

enum class method { adamw, galore, fira };
const char* name(method m) {
  return m == method::adamw ? "AdamW" : m == method::galore ? "GaLore" : "Fira";
}

struct run_result {
  std::vector<float> loss;
  std::size_t state_bytes = 0;
  std::size_t adamw_bytes = 0;
};

run_result train(lowrank::context<lowrank::cpu>& ctx, method how, const mlp& start, const matrix& x,
                 const matrix& target, long steps, Eigen::Index rank, long gap, double lr) {
  mlp net = start;
  lowrank::projected_adam<float> opt({.lr = lr,
                                      .residual = how == method::fira
                                                      ? lowrank::residual_mode::fira
                                                      : lowrank::residual_mode::none});
  const lowrank::projector_options projected{
      .rank = rank, .method = lowrank::refresh_method::warm, .update_gap = gap, .scale = 0.25};
  const auto add = [&](matrix& w, std::uint64_t layer) {
    if (how == method::adamw) return opt.add_plain(ctx, lowrank::view(w));
    auto o = projected;
    o.layer = layer;
    return opt.add(ctx, lowrank::view(w), o);
  };
  const auto i1 = add(net.w1, 0);
  const auto i2 = add(net.w2, 1);
  const auto ib1 = opt.add_plain(ctx, lowrank::view(net.b1));
  const auto ib2 = opt.add_plain(ctx, lowrank::view(net.b2));
  run_result result;
  const float n = float(x.rows());
  for (long step = 0; step < steps; ++step) {
    matrix pre, h;
    const matrix y = net.forward(x, &pre, &h);
    const matrix dy = (y - target) / n;
    result.loss.push_back(0.5f * (y - target).squaredNorm() / n);
    // Backward, layer 2 first; each parameter steps once its gradient is done.
    const matrix dw2 = dy.transpose() * h;
    const matrix db2 = dy.colwise().sum().transpose();
    const matrix dpre = (dy * net.w2).cwiseProduct((pre.array() > 0).cast<float>().matrix());
    opt.step(ctx, i2, lowrank::as_const(lowrank::view(dw2)));
    opt.step(ctx, ib2, lowrank::as_const(lowrank::view(db2)));
    const matrix dw1 = dpre.transpose() * x;
    const matrix db1 = dpre.colwise().sum().transpose();
    opt.step(ctx, i1, lowrank::as_const(lowrank::view(dw1)));
    opt.step(ctx, ib1, lowrank::as_const(lowrank::view(db1)));
  }
  result.state_bytes = opt.state_bytes();
  result.adamw_bytes = opt.adamw_state_bytes();
  return result;
}

}  // namespace

int main(int argc, char** argv) {
  long steps = 600;
  Eigen::Index samples = 512, in = 64, hidden = 256, out = 64, rank = 16;
  long gap = 50;
  double lr = 3e-3;
  std::string csv;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    const char* value = argv[i + 1];
    if (flag == "--steps")
      steps = std::atol(value);
    else if (flag == "--samples")
      samples = std::atol(value);
    else if (flag == "--in")
      in = std::atol(value);
    else if (flag == "--hidden")
      hidden = std::atol(value);
    else if (flag == "--out")
      out = std::atol(value);
    else if (flag == "--rank")
      rank = std::atol(value);
    else if (flag == "--gap")
      gap = std::atol(value);
    else if (flag == "--lr")
      lr = std::strtod(value, nullptr);
    else if (flag == "--csv")
      csv = value;
    else {
      std::fprintf(
          stderr,
          "usage: galore_pretrain [--steps S] [--samples N] [--in D] [--hidden H] [--out O]"
          " [--rank R] [--gap T] [--lr LR] [--csv FILE]\n");
      return 2;
    }
  }
  if (argc % 2 == 0 || steps < 1 || samples < 1 || in < 2 || hidden < 2 || out < 2 || rank < 1 ||
      gap < 1 || !(lr > 0)) {
    std::fprintf(stderr,
                 "galore_pretrain: need steps, samples, rank, gap >= 1, in, hidden, out >= 2, "
                 "lr > 0\n");
    return 2;
  }
  try {
    lowrank::context<lowrank::cpu> ctx;
    // The teacher, the data, and the student's start (He-style scales).
    mlp teacher{gaussian(ctx, hidden, in, 2.0f / std::sqrt(float(in)), 1),
                gaussian(ctx, out, hidden, 1.0f / std::sqrt(float(hidden)), 2),
                gaussian(ctx, hidden, 1, 0.1f, 3), gaussian(ctx, out, 1, 0.1f, 4)};
    const matrix x = gaussian(ctx, samples, in, 1.0f, 5);
    const matrix target = teacher.forward(x);
    const mlp start{gaussian(ctx, hidden, in, std::sqrt(2.0f / float(in)), 6),
                    gaussian(ctx, out, hidden, std::sqrt(1.0f / float(hidden)), 7),
                    matrix::Zero(hidden, 1), matrix::Zero(out, 1)};

    std::vector<run_result> runs;
    for (const method m : {method::adamw, method::galore, method::fira}) {
      runs.push_back(train(ctx, m, start, x, target, steps, rank, gap, lr));
    }
    std::printf(
        "MLP %ld -> %ld -> %ld, %ld samples, %ld steps, lr %g; GaLore / Fira rank %ld, "
        "warm refresh every %ld steps\n",
        long(in), long(hidden), long(out), long(samples), steps, lr, long(rank), gap);
    std::printf("%8s %12s %12s %12s\n", "step", "AdamW", "GaLore", "Fira");
    const long every = std::max(1L, steps / 12);
    for (long s = 0; s < steps; ++s) {
      if (s % every == 0 || s == steps - 1) {
        std::printf("%8ld %12.6f %12.6f %12.6f\n", s, double(runs[0].loss[std::size_t(s)]),
                    double(runs[1].loss[std::size_t(s)]), double(runs[2].loss[std::size_t(s)]));
      }
    }
    std::printf("optimizer state: AdamW %zu bytes, GaLore %zu bytes (%.1f%%), Fira %zu bytes\n",
                runs[0].state_bytes, runs[1].state_bytes,
                100.0 * double(runs[1].state_bytes) / double(runs[0].state_bytes),
                runs[2].state_bytes);
    if (!csv.empty()) {
      std::FILE* f = std::fopen(csv.c_str(), "w");
      if (f == nullptr) {
        std::fprintf(stderr, "galore_pretrain: cannot write %s\n", csv.c_str());
        return 2;
      }
      std::fprintf(f, "step,adamw,galore,fira\n");
      for (long s = 0; s < steps; ++s) {
        const auto k = std::size_t(s);
        std::fprintf(f, "%ld,%.8g,%.8g,%.8g\n", s, double(runs[0].loss[k]), double(runs[1].loss[k]),
                     double(runs[2].loss[k]));
      }
      std::fclose(f);
    }
    bool ok = true;
    for (std::size_t r = 0; r < runs.size(); ++r) {
      if (!(runs[r].loss.back() < 0.5f * runs[r].loss.front())) {
        std::fprintf(stderr, "galore_pretrain: %s's loss did not halve (%g -> %g)\n",
                     name(method(r)), double(runs[r].loss.front()), double(runs[r].loss.back()));
        ok = false;
      }
    }
    return ok ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "galore_pretrain: %s\n", e.what());
    return 1;
  }
}
