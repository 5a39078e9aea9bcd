// Recipe: fine-tune a frozen MLP with LoRA adapters, then merge them for inference.
//
// Question answered: "I have a pretrained network whose weights I must not
// change; how do I train LoRA adapters on it in C++ (forward, backward, an
// optimizer over the adapters' parameters), and how do I fold the adapters
// into the weights afterwards, and take them out again?"
//
// The model is a two-layer MLP, Y = relu(X W1^T + b1) W2^T + b2, with frozen
// random "pretrained" weights. The task is regression onto a teacher: the
// same MLP with a low-rank change to each weight, so adapters of a higher
// rank can fit it exactly. Each layer gets a lowrank::lora adapter (PyTorch
// nn.Linear layout: W is out x in, a batch is N x in, one sample per row),
// trained with a hand-written Adam over layer.parameters(). Then merge()
// folds s B A into each W (the merged model is a plain MLP and gives the same
// outputs), and unmerge() restores the pretrained W bit for bit.
//
//   lora_finetune                                  # 400 steps, 512 samples, 32 -> 64 -> 16
//   lora_finetune --steps 150 --samples 128        # the CI run
//   lora_finetune --in 48 --hidden 96 --out 24 --rank 8 --lr 0.005
//
// Exits with 1 if the loss did not fall below a tenth of its first value, if
// the merged model's outputs differ from the adapted model's beyond float
// rounding, or if unmerge() did not restore the weights exactly.

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <lowrank/adapters/lora.hpp>
#include <lowrank/lowrank.hpp>
#include <string>
#include <vector>

namespace {

using matrix = Eigen::MatrixXf;
using vector = Eigen::VectorXf;
using ops = lowrank::ops<lowrank::cpu>;

/// A Gaussian matrix with entries of standard deviation `scale` from Philox
/// stream (seed, stream): the same values on every machine.
matrix gaussian(lowrank::context<lowrank::cpu>& ctx, Eigen::Index rows, Eigen::Index cols,
                float scale, std::uint64_t stream) {
  matrix m(rows, cols);
  ops::fill_random(ctx, lowrank::distribution::gaussian, {2024, stream}, lowrank::view(m));
  return scale * m;
}

/// A bias as the view lora takes (a contiguous vector).
lowrank::vector_view<float, lowrank::cpu> bias_view(vector& b) { return {b.data(), b.size()}; }

/// Adam (Kingma & Ba, PyTorch's defaults but the learning rate) over the
/// (value, grad) views that an adapter's parameters() lists. The moments are
/// stored per parameter, in the same order, so that the list can be fetched
/// again each step (it is a list of views, cheap to rebuild).
class adam {
 public:
  explicit adam(float lr) : lr_(lr) {}

  void step(std::vector<lowrank::parameter<float, lowrank::cpu>> params) {
    if (m_.empty()) {
      for (const auto& p : params) {
        m_.push_back(matrix::Zero(p.value.rows(), p.value.cols()));
        v_.push_back(matrix::Zero(p.value.rows(), p.value.cols()));
      }
    }
    ++t_;
    const float c1 = 1 - std::pow(beta1_, float(t_));
    const float c2 = 1 - std::pow(beta2_, float(t_));
    for (std::size_t i = 0; i < params.size(); ++i) {
      auto value = lowrank::as_eigen(params[i].value);
      const auto grad = lowrank::as_eigen(params[i].grad);
      m_[i] = beta1_ * m_[i] + (1 - beta1_) * grad;
      v_[i] = beta2_ * v_[i] + (1 - beta2_) * grad.cwiseAbs2();
      value.array() -= lr_ * (m_[i].array() / c1) / ((v_[i].array() / c2).sqrt() + eps_);
    }
  }

 private:
  float lr_;
  float beta1_ = 0.9f;
  float beta2_ = 0.999f;
  float eps_ = 1e-8f;
  long t_ = 0;
  std::vector<matrix> m_, v_;
};

/// The plain MLP on plain weights (no adapters): what a merged model runs.
matrix mlp(const matrix& x, const matrix& w1, const vector& b1, const matrix& w2,
           const vector& b2) {
  const matrix h = ((x * w1.transpose()).rowwise() + b1.transpose()).cwiseMax(0.0f);
  return (h * w2.transpose()).rowwise() + b2.transpose();
}

bool same_bits(const matrix& a, const matrix& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), sizeof(float) * std::size_t(a.size())) == 0;
}

}  // namespace

int main(int argc, char** argv) {
  long steps = 400;
  Eigen::Index samples = 512;
  Eigen::Index in = 32;
  Eigen::Index hidden = 64;
  Eigen::Index out = 16;
  Eigen::Index rank = 4;
  float lr = 1e-2f;
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
    else if (flag == "--lr")
      lr = std::strtof(value, nullptr);
    else {
      std::fprintf(stderr,
                   "usage: lora_finetune [--steps S] [--samples N] [--in D] [--hidden H] [--out O]"
                   " [--rank R] [--lr LR]\n");
      return 2;
    }
  }
  if (argc % 2 == 0 || steps < 1 || samples < 1 || in < 2 || hidden < 2 || out < 1 || !(lr > 0)) {
    std::fprintf(stderr, "lora_finetune: need steps, samples >= 1, in, hidden >= 2, lr > 0\n");
    return 2;
  }

  try {
    lowrank::context<lowrank::cpu> ctx;

    // 1. The frozen "pretrained" model: W1 (hidden x in), W2 (out x hidden),
    //    scaled like PyTorch's default init so activations stay O(1).
    matrix w1 = gaussian(ctx, hidden, in, 1 / std::sqrt(float(in)), 0);
    matrix w2 = gaussian(ctx, out, hidden, 1 / std::sqrt(float(hidden)), 1);
    vector b1 = gaussian(ctx, hidden, 1, 0.1f, 2);
    vector b2 = gaussian(ctx, out, 1, 0.1f, 3);
    const matrix w1_pretrained = w1;  // kept to check unmerge() at the end
    const matrix w2_pretrained = w2;

    // 2. The task: a teacher whose weights differ by a rank-2 change each, so
    //    rank-r adapters (r >= 2) can represent it exactly.
    const Eigen::Index change = 2;
    const matrix w1_teacher = w1 + gaussian(ctx, hidden, change, 0.5f, 4) *
                                       gaussian(ctx, change, in, 1 / std::sqrt(float(in)), 5);
    const matrix w2_teacher =
        w2 + gaussian(ctx, out, change, 0.5f, 6) *
                 gaussian(ctx, change, hidden, 1 / std::sqrt(float(hidden)), 7);
    const matrix x = gaussian(ctx, samples, in, 1, 8);  // N x in, one sample per row
    const matrix target = mlp(x, w1_teacher, b1, w2_teacher, b2);

    // 3. One LoRA adapter per layer. The adapters refer to W and b (they must
    //    outlive them) and never write them, except merge()/unmerge(). PEFT's
    //    default init (B = 0) makes the adapted model start as the pretrained
    //    one. `layer` gives each adapter its own random streams.
    lowrank::lora_options options{.rank = rank, .alpha = 2.0 * double(rank)};
    options.layer = 0;
    lowrank::lora<float, lowrank::cpu> layer1(ctx, lowrank::view(w1), bias_view(b1), options);
    options.layer = 1;
    lowrank::lora<float, lowrank::cpu> layer2(ctx, lowrank::view(w2), bias_view(b2), options);
    adam optimizer1(lr);
    adam optimizer2(lr);

    // Activations and gradients, allocated once: the adapters keep their own
    // workspaces, so the training loop below allocates nothing.
    matrix z1(samples, hidden);  // X W1^T + b1 + adapter
    matrix h1(samples, hidden);  // relu(z1)
    matrix y(samples, out);
    matrix dy(samples, out);
    matrix dh1(samples, hidden);

    // 4. Training: full-batch steps on the mean squared error.
    auto forward = [&] {
      layer1.forward(ctx, lowrank::view(std::as_const(x)), lowrank::view(z1));
      h1 = z1.cwiseMax(0.0f);
      // layer2 keeps a view of h1 for its backward: h1 must not change until then.
      layer2.forward(ctx, lowrank::view(std::as_const(h1)), lowrank::view(y));
    };
    const float norm = 1.0f / float(samples * out);
    double first_loss = 0;
    double loss = 0;
    for (long step = 0; step < steps; ++step) {
      forward();
      loss = norm * (y - target).squaredNorm();
      if (step == 0) first_loss = loss;
      if (step % std::max(1L, steps / 10) == 0) std::printf("step %4ld  loss %.3e\n", step, loss);

      // dL/dY of L = mean((Y - T)^2), then back through layer 2, the ReLU and
      // layer 1 (whose dX nobody needs: pass an empty view to skip that GEMM).
      dy = 2 * norm * (y - target);
      layer1.zero_grad(ctx);
      layer2.zero_grad(ctx);
      layer2.backward(ctx, lowrank::view(std::as_const(dy)), lowrank::view(dh1));
      dh1 = (z1.array() > 0).select(dh1, 0.0f);
      layer1.backward(ctx, lowrank::view(std::as_const(dh1)), {});

      // Only lora_A and lora_B train (add train_bias = true for the biases too).
      optimizer1.step(layer1.parameters());
      optimizer2.step(layer2.parameters());
    }
    forward();
    loss = norm * (y - target).squaredNorm();
    std::printf("step %4ld  loss %.3e  (%.2e of the first)\n", steps, loss, loss / first_loss);

    // 5. Inference: evaluation mode (no dropout), then merge: W += s B A in
    //    double, rounded once. The merged W1, W2 are ordinary weights: a plain
    //    MLP (or any framework) runs them with no adapter code.
    layer1.train(false);
    layer2.train(false);
    forward();
    const matrix y_adapted = y;
    layer1.merge(ctx);
    layer2.merge(ctx);
    const matrix y_merged = mlp(x, w1, b1, w2, b2);
    const double merged_difference = (y_merged - y_adapted).cwiseAbs().maxCoeff();
    const double scale = std::max(1.0, double(y_adapted.cwiseAbs().maxCoeff()));
    std::printf("merged model vs adapted model: max |difference| = %.3g (outputs up to %.3g)\n",
                merged_difference, scale);

    // 6. unmerge() restores the pretrained weights exactly (the adapters are
    //    usable again, e.g. to keep training or to swap in another adapter).
    layer1.unmerge(ctx);
    layer2.unmerge(ctx);
    const bool restored = same_bits(w1, w1_pretrained) && same_bits(w2, w2_pretrained);
    std::printf("unmerge restores W1 and W2 bit for bit: %s\n", restored ? "yes" : "NO");

    // The merged outputs differ from the adapted ones by float rounding only:
    // a few ulps of each sum of `hidden` or `in` products, far below 1e-4.
    const bool learned = loss < 0.1 * first_loss;
    const bool same_outputs = merged_difference <= 1e-4 * scale;
    if (!learned) std::fprintf(stderr, "lora_finetune: the loss did not fall below 1/10\n");
    if (!same_outputs) std::fprintf(stderr, "lora_finetune: the merged outputs differ\n");
    if (!restored) std::fprintf(stderr, "lora_finetune: unmerge() did not restore W\n");
    return learned && same_outputs && restored ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lora_finetune: %s\n", e.what());
    return 1;
  }
}
