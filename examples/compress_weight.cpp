// Recipe: compress a layer's weight to a parameter budget with the randomized SVD.
//
// Question answered: "I may keep a fraction of this weight's parameters; what
// is the best rank, how much accuracy do I lose, and how do I run the
// compressed layer?" The weight W (out x in, PyTorch's nn.Linear layout) is
// replaced by two thin factors, W ~ L R with L = U sqrt(S) (out x k) and
// R = sqrt(S) V^T (k x in): k (out + in) parameters instead of out * in.
//
//   compress_weight                         # a synthetic 1024 x 768 weight, budget 0.25
//   compress_weight --npy W.npy --budget 0.1
//   compress_weight --rows 256 --cols 192 --budget 0.25

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <lowrank/io/npy.hpp>
#include <lowrank/lowrank.hpp>
#include <string>

namespace {

using matrix = Eigen::MatrixXf;

/// A synthetic weight whose spectrum decays like a trained layer's: Gaussian
/// factors scaled by a power law, plus a little noise (all from Philox).
matrix synthetic_weight(lowrank::context<lowrank::cpu>& ctx, Eigen::Index out, Eigen::Index in) {
  using ops = lowrank::ops<lowrank::cpu>;
  const Eigen::Index r = std::min(out, in);
  matrix left(out, r);
  matrix right(in, r);
  matrix noise(out, in);
  ops::fill_random(ctx, lowrank::distribution::gaussian, {42, 0}, lowrank::view(left));
  ops::fill_random(ctx, lowrank::distribution::gaussian, {42, 1}, lowrank::view(right));
  ops::fill_random(ctx, lowrank::distribution::gaussian, {42, 2}, lowrank::view(noise));
  Eigen::VectorXf scale(r);
  for (Eigen::Index i = 0; i < r; ++i) scale(i) = std::pow(float(i + 1), -0.8f) / float(r);
  return left * scale.asDiagonal() * right.transpose() + 1e-3f * noise;
}

}  // namespace

int main(int argc, char** argv) {
  Eigen::Index rows = 1024;
  Eigen::Index cols = 768;
  double budget = 0.25;
  std::string npy;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--rows")
      rows = std::atol(argv[i + 1]);
    else if (flag == "--cols")
      cols = std::atol(argv[i + 1]);
    else if (flag == "--budget")
      budget = std::atof(argv[i + 1]);
    else if (flag == "--npy")
      npy = argv[i + 1];
    else {
      std::fprintf(stderr,
                   "usage: compress_weight [--npy W.npy | --rows M --cols N] [--budget F]\n");
      return 2;
    }
  }
  if (!(budget > 0 && budget < 1) || rows < 2 || cols < 2) {
    std::fprintf(stderr, "compress_weight: need 0 < budget < 1 and a matrix of at least 2 x 2\n");
    return 2;
  }

  try {
    lowrank::context<lowrank::cpu> ctx;
    const matrix w =
        npy.empty() ? synthetic_weight(ctx, rows, cols) : lowrank::io::read_npy<float>(npy);
    const Eigen::Index out = w.rows();
    const Eigen::Index in = w.cols();

    // The largest rank whose two factors fit the budget: k (out + in) <= budget out in.
    const Eigen::Index k = std::clamp<Eigen::Index>(
        static_cast<Eigen::Index>(budget * double(out) * double(in) / double(out + in)), 1,
        std::min(out, in));

    // Randomized SVD: 2q + 2 = 6 passes over W, near the Eckart-Young optimum.
    const auto f = lowrank::randomized_svd(ctx, lowrank::view(w), k,
                                           {.oversampling = 10, .power_iterations = 2, .seed = 0});

    // The two factors of the compressed layer.
    const Eigen::VectorXf root = f.s.cwiseSqrt();
    const matrix left = f.u * root.asDiagonal();               // out x k
    const matrix right = root.asDiagonal() * f.v.transpose();  // k x in

    const double error = (w - left * right).norm() / w.norm();
    // What no rank-k factorisation can beat, from the exact SVD (slow; for the report only).
    const auto exact = lowrank::truncated_svd(ctx, lowrank::view(w), k);
    const double optimum = (w - exact.reconstruct()).norm() / w.norm();

    // The compressed layer applied to a batch X (N x in): Y = X W^T ~ (X R^T) L^T.
    matrix x(32, in);
    lowrank::ops<lowrank::cpu>::fill_random(ctx, lowrank::distribution::gaussian, {7, 0},
                                            lowrank::view(x));
    const matrix y_dense = x * w.transpose();
    const matrix y_low = (x * right.transpose()) * left.transpose();
    const double output_error = (y_dense - y_low).norm() / y_dense.norm();

    std::printf("weight %ld x %ld, budget %.0f%% of %ld parameters\n", long(out), long(in),
                100 * budget, long(out * in));
    std::printf("rank %ld: %ld parameters (%.1f%%), %.2fx smaller\n", long(k), long(k * (out + in)),
                100.0 * double(k * (out + in)) / double(out * in),
                double(out * in) / double(k * (out + in)));
    std::printf("relative error ||W - L R||_F / ||W||_F = %.5f (optimum %.5f, ratio %.4f)\n", error,
                optimum, error / optimum);
    std::printf("relative error of the layer's outputs on a random batch = %.5f\n", output_error);
    return error <= 1.05 * optimum + 1e-6 ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "compress_weight: %s\n", e.what());
    return 1;
  }
}
