// Recipe: pre-train an MLP whose layers are SLTrain's sparse-plus-low-rank
// factors (or the LOST form's channel-sparse ones), against dense layers.
//
// Question answered: "How do I train a model from scratch with a fraction of
// the weights, each layer W = s B A + S (a rank-r product plus a fixed random
// sparse support), and what does it cost in loss?"
//
// The model is a two-layer MLP, Y = relu(X W1^T + b1) W2^T + b2 (PyTorch
// nn.Linear layout: W is out x in, a batch is N x in), trained from scratch to
// imitate a fixed random teacher MLP (mean squared error, full batch). Two
// runs, all with lowrank::projected_adam's plain AdamW on every parameter:
//   - dense: W1, W2, b1, b2 (backward written by hand);
//   - SLTrain: two lowrank::sparse_plus_low_rank layers (rank r, density d,
//     alpha 32: SLTrain's 60M recipe), whose forward and backward compute in
//     factored form and whose parameters() an optimizer steps as they are;
//   - the LOST form: two lowrank::channel_sparse_low_rank layers (rank r and
//     a dense block on d x in input channels: as many sparse parameters).
// The loss curves print side by side with each model's parameter count.
//
//   sltrain_pretrain                                # 600 steps, 64 -> 256 -> 64, r 16, d 0.05
//   sltrain_pretrain --steps 200 --samples 128      # the CI run
//   sltrain_pretrain --rank 8 --density 0.1
//
// Exits with 1 if a run's loss did not fall below half of its first value.

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <lowrank/lowrank.hpp>
#include <string>
#include <vector>

namespace {

using matrix = Eigen::MatrixXf;
using ops = lowrank::ops<lowrank::cpu>;
using sltrain = lowrank::sparse_plus_low_rank<float>;
using lost = lowrank::channel_sparse_low_rank<float>;

/// A Gaussian matrix of standard deviation `scale` from Philox stream (seed, stream).
matrix gaussian(lowrank::context<lowrank::cpu>& ctx, Eigen::Index rows, Eigen::Index cols,
                float scale, std::uint64_t stream) {
  matrix m(rows, cols);
  ops::fill_random(ctx, lowrank::distribution::gaussian, {7, stream}, lowrank::view(m));
  return scale * m;
}

struct problem {
  matrix x, target;
  Eigen::Index in, hidden, out;
};

/// The dense MLP and its AdamW run.
std::vector<float> train_dense(lowrank::context<lowrank::cpu>& ctx, const problem& p, long steps,
                               double lr, long& parameters) {
  matrix w1 = gaussian(ctx, p.hidden, p.in, 1.0f / std::sqrt(float(p.in)), 6);
  matrix w2 = gaussian(ctx, p.out, p.hidden, 1.0f / std::sqrt(float(p.hidden)), 7);
  matrix b1 = matrix::Zero(p.hidden, 1), b2 = matrix::Zero(p.out, 1);
  parameters = long(w1.size() + w2.size() + b1.size() + b2.size());
  lowrank::projected_adam<float> opt({.lr = lr});
  const auto i1 = opt.add_plain(ctx, lowrank::view(w1));
  const auto i2 = opt.add_plain(ctx, lowrank::view(w2));
  const auto ib1 = opt.add_plain(ctx, lowrank::view(b1));
  const auto ib2 = opt.add_plain(ctx, lowrank::view(b2));
  std::vector<float> loss;
  const float n = float(p.x.rows());
  for (long step = 0; step < steps; ++step) {
    const matrix pre = (p.x * w1.transpose()).rowwise() + b1.col(0).transpose();
    const matrix h = pre.cwiseMax(0.0f);
    const matrix y = (h * w2.transpose()).rowwise() + b2.col(0).transpose();
    const matrix dy = (y - p.target) / n;
    loss.push_back(0.5f * (y - p.target).squaredNorm() / n);
    const matrix dw2 = dy.transpose() * h;
    const matrix db2 = dy.colwise().sum().transpose();
    const matrix dpre = (dy * w2).cwiseProduct((pre.array() > 0).cast<float>().matrix());
    const matrix dw1 = dpre.transpose() * p.x;
    const matrix db1 = dpre.colwise().sum().transpose();
    opt.step(ctx, i2, lowrank::as_const(lowrank::view(dw2)));
    opt.step(ctx, ib2, lowrank::as_const(lowrank::view(db2)));
    opt.step(ctx, i1, lowrank::as_const(lowrank::view(dw1)));
    opt.step(ctx, ib1, lowrank::as_const(lowrank::view(db1)));
  }
  return loss;
}

/// An MLP of two factor layers (SLTrain's or the LOST form) and its AdamW run.
template <class Layer>
std::vector<float> train_factored(lowrank::context<lowrank::cpu>& ctx, const problem& p, long steps,
                                  double lr, Layer& l1, Layer& l2, long& parameters) {
  parameters = long(l1.parameter_count() + l2.parameter_count());
  lowrank::projected_adam<float> opt({.lr = lr});
  // Every trainable tensor of both layers (lora_A, lora_B, sparse_value, bias).
  struct slot {
    lowrank::index_t id;
    lowrank::matrix_view<float, lowrank::cpu> grad;
  };
  std::vector<slot> slots;
  for (Layer* layer : {&l1, &l2}) {
    for (const auto& param : layer->parameters()) {
      slots.push_back({opt.add_plain(ctx, param.value), param.grad});
    }
  }
  matrix pre(p.x.rows(), p.hidden), h(p.x.rows(), p.hidden), y(p.x.rows(), p.out);
  matrix dh(p.x.rows(), p.hidden), dy(p.x.rows(), p.out);
  std::vector<float> loss;
  const float n = float(p.x.rows());
  for (long step = 0; step < steps; ++step) {
    l1.zero_grad(ctx);
    l2.zero_grad(ctx);
    l1.forward(ctx, lowrank::view(p.x), lowrank::view(pre));
    h = pre.cwiseMax(0.0f);
    l2.forward(ctx, lowrank::view(std::as_const(h)), lowrank::view(y));
    dy = (y - p.target) / n;
    loss.push_back(0.5f * (y - p.target).squaredNorm() / n);
    l2.backward(ctx, lowrank::view(std::as_const(dy)), lowrank::view(dh));
    dh = dh.cwiseProduct((pre.array() > 0).cast<float>().matrix());
    l1.backward(ctx, lowrank::view(std::as_const(dh)), {});  // no dX for the input
    for (const slot& s : slots) opt.step(ctx, s.id, lowrank::as_const(s.grad));
  }
  return loss;
}

}  // namespace

int main(int argc, char** argv) {
  long steps = 600;
  Eigen::Index samples = 512, in = 64, hidden = 256, out = 64, rank = 16;
  double density = 0.05, lr = 3e-3;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    const char* value = argv[i + 1];
    if (flag == "--steps")
      steps = std::atol(value);
    else if (flag == "--samples")
      samples = std::atol(value);
    else if (flag == "--hidden")
      hidden = std::atol(value);
    else if (flag == "--rank")
      rank = std::atol(value);
    else if (flag == "--density")
      density = std::strtod(value, nullptr);
    else if (flag == "--lr")
      lr = std::strtod(value, nullptr);
    else {
      std::fprintf(stderr,
                   "usage: sltrain_pretrain [--steps S] [--samples N] [--hidden H] [--rank R]"
                   " [--density D] [--lr LR]\n");
      return 2;
    }
  }
  if (argc % 2 == 0 || steps < 1 || samples < 1 || hidden < 2 || !(lr > 0)) {
    std::fprintf(stderr, "sltrain_pretrain: need steps, samples >= 1, hidden >= 2, lr > 0\n");
    return 2;
  }
  try {
    lowrank::context<lowrank::cpu> ctx;
    const matrix t1 = gaussian(ctx, hidden, in, 2.0f / std::sqrt(float(in)), 1);
    const matrix t2 = gaussian(ctx, out, hidden, 1.0f / std::sqrt(float(hidden)), 2);
    problem p{gaussian(ctx, samples, in, 1.0f, 5), matrix(), in, hidden, out};
    p.target = (p.x * t1.transpose()).cwiseMax(0.0f) * t2.transpose();

    long dense_params = 0, sltrain_params = 0, lost_params = 0;
    const auto dense = train_dense(ctx, p, steps, lr, dense_params);
    // Each layer its own random streams (support, initial A, values): layer 0 and 1.
    // Invalid rank or density throw lowrank::invalid_argument, printed below.
    const lowrank::sparse_plus_low_rank_options o{.rank = rank, .alpha = 32, .density = density};
    sltrain s1(ctx, hidden, in, o);
    sltrain s2(ctx, out, hidden, {.rank = rank, .alpha = 32, .density = density, .layer = 1});
    const auto sparse = train_factored(ctx, p, steps, lr, s1, s2, sltrain_params);
    // The LOST form with as many sparse parameters: k = density x in channels.
    auto channels = [&](Eigen::Index n) {
      return std::max<Eigen::Index>(1, Eigen::Index(density * double(n)));
    };
    lost c1(ctx, hidden, in, {.rank = rank, .alpha = 32, .channels = channels(in)});
    lost c2(ctx, out, hidden,
            {.rank = rank, .alpha = 32, .channels = channels(hidden), .layer = 1});
    const auto block = train_factored(ctx, p, steps, lr, c1, c2, lost_params);
    std::printf(
        "MLP %ld -> %ld -> %ld, %ld samples, %ld steps, AdamW lr %g; SLTrain rank %ld, "
        "density %g\n",
        long(in), long(hidden), long(out), long(samples), steps, lr, long(rank), density);
    std::printf("%8s %12s %12s %12s\n", "step", "dense", "SLTrain", "LOST form");
    const long every = std::max(1L, steps / 12);
    for (long s = 0; s < steps; ++s) {
      if (s % every == 0 || s == steps - 1) {
        const auto k = std::size_t(s);
        std::printf("%8ld %12.6f %12.6f %12.6f\n", s, double(dense[k]), double(sparse[k]),
                    double(block[k]));
      }
    }
    std::printf("parameters: dense %ld, SLTrain %ld (%.1f%%), LOST form %ld (%.1f%%)\n",
                dense_params, sltrain_params, 100.0 * double(sltrain_params) / double(dense_params),
                lost_params, 100.0 * double(lost_params) / double(dense_params));
    bool ok = true;
    const char* names[] = {"dense", "SLTrain", "LOST form"};
    int i = 0;
    for (const auto* run : {&dense, &sparse, &block}) {
      if (!(run->back() < 0.5f * run->front())) {
        std::fprintf(stderr, "sltrain_pretrain: %s's loss did not halve (%g -> %g)\n", names[i],
                     double(run->front()), double(run->back()));
        ok = false;
      }
      ++i;
    }
    return ok ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sltrain_pretrain: %s\n", e.what());
    return 1;
  }
}
