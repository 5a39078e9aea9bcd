// LoRA, rsLoRA, DoRA and PiSSA against PEFT itself: the fixtures under
// tests/adapters/fixtures/peft were computed by PEFT in float64
// (tools/make_peft_fixtures.py); their inputs are float32 values, so each
// test runs in float and in double.
//
// Tolerances: in double, the only differences are summation orders: 1e-12
// relative (Frobenius). In float, each output is a few dot products of
// length <= 12 of O(1) values, so its error is a few float ulps of the
// result's scale: 2e-6 relative (Frobenius) leaves a margin of ~5.
#include <unistd.h>

#include <gtest/gtest.h>

#include <Eigen/Core>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>

#include "lowrank/adapters/dora.hpp"
#include "lowrank/adapters/lora.hpp"
#include "lowrank/backend/cpu/ops.hpp"
#include "lowrank/io/npy.hpp"
#include "lowrank/io/peft.hpp"

namespace lowrank::test::peft_fixture_tests {
namespace {

template <class T>
using mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;

const std::filesystem::path fixtures =
    std::filesystem::path(LOWRANK_TEST_ADAPTER_FIXTURE_DIR) / "peft";

template <class T>
mat<T> load(const std::string& dir, const std::string& name) {
  return io::read_npy<double>(fixtures / dir / (name + ".npy")).template cast<T>();
}

nlohmann::json case_of(const std::string& dir) {
  std::ifstream in(fixtures / dir / "case.json");
  return nlohmann::json::parse(in);
}

template <class T>
double tolerance() {
  return sizeof(T) == 4 ? 2e-6 : 1e-12;
}

/// ||a - b||_F / ||b||_F over the entries where b is finite.
template <class T>
double relative_error(const mat<T>& a, const mat<double>& b) {
  double num = 0, den = 0;
  for (index_t j = 0; j < b.cols(); ++j) {
    for (index_t i = 0; i < b.rows(); ++i) {
      if (!std::isfinite(b(i, j))) continue;
      const double d = double(a(i, j)) - b(i, j);
      num += d * d;
      den += b(i, j) * b(i, j);
    }
  }
  return std::sqrt(num / den);
}

/// The fixture's layer: from its W, b, A, B and case.json.
template <class T>
struct fixture_layer {
  explicit fixture_layer(const std::string& name)
      : dir(name),
        info(case_of(name)),
        w(load<T>(name, "W")),
        b(load<T>(name, "b")),
        x(load<T>(name, "X")),
        g(load<T>(name, "G")) {}
  lora_options options() const {
    return {.rank = info["r"].get<index_t>(),
            .alpha = info["alpha"].get<double>(),
            .rslora = info["use_rslora"].get<bool>()};
  }
  lora<T, cpu> make_lora(context<cpu>& ctx) {
    const mat<T> a = load<T>(dir, "A");
    const mat<T> bb = load<T>(dir, "B");
    return lora<T, cpu>::from_factors(ctx, view(w), vector_view<T, cpu>(b.data(), b.rows()),
                                      view(a), view(bb), options());
  }
  std::string dir;
  nlohmann::json info;
  mat<T> w, b, x, g;
};

template <class T>
class peft_reference : public ::testing::Test {};
using scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(peft_reference, scalars);

TYPED_TEST(peft_reference, lora_and_rslora_match_peft) {
  using T = TypeParam;
  context<cpu> ctx(2);
  for (const std::string name : {"lora", "rslora"}) {
    SCOPED_TRACE(name);
    fixture_layer<T> f(name);
    auto layer = f.make_lora(ctx);
    EXPECT_DOUBLE_EQ(layer.scaling(), f.info["scaling"].template get<double>());
    mat<T> y(f.x.rows(), f.w.rows()), dx(f.x.rows(), f.w.cols());
    layer.forward(ctx, view(f.x), view(y));
    layer.backward(ctx, view(f.g), view(dx));
    EXPECT_LT(relative_error<T>(y, load<double>(name, "Y")), tolerance<T>());
    EXPECT_LT(relative_error<T>(dx, load<double>(name, "dX")), tolerance<T>());
    EXPECT_LT(relative_error<T>(as_eigen(layer.grad_a()), load<double>(name, "dA")),
              tolerance<T>());
    EXPECT_LT(relative_error<T>(as_eigen(layer.grad_b()), load<double>(name, "dB")),
              tolerance<T>());
    // merge_and_unload's weight: ours is rounded once from the extended sum.
    const mat<T> original = f.w;
    layer.merge(ctx);
    const mat<double> merged = load<double>(name, "W_merged");
    const double eps = std::numeric_limits<T>::epsilon();
    for (index_t j = 0; j < merged.cols(); ++j) {
      for (index_t i = 0; i < merged.rows(); ++i) {
        EXPECT_LE(std::abs(double(f.w(i, j)) - merged(i, j)),
                  0.5 * eps * std::abs(merged(i, j)) + 1e-15)
            << i << ", " << j;
      }
    }
    layer.unmerge(ctx);
    EXPECT_EQ(f.w, original);
  }
}

template <class T>
dora<T, cpu> make_dora(context<cpu>& ctx, fixture_layer<T>& f) {
  dora<T, cpu> layer(ctx, f.make_lora(ctx));
  as_eigen(layer.magnitude()) = load<T>(f.dir, "m");
  return layer;
}

TYPED_TEST(peft_reference, dora_matches_peft) {
  using T = TypeParam;
  context<cpu> ctx(2);
  fixture_layer<T> f("dora");
  auto layer = make_dora(ctx, f);
  mat<T> y(f.x.rows(), f.w.rows()), dx(f.x.rows(), f.w.cols());
  layer.forward(ctx, view(f.x), view(y));
  layer.backward(ctx, view(f.g), view(dx));
  // The norm is a difference of O(1) terms (factored form): a few more ulps.
  const double tol = 4 * tolerance<T>();
  EXPECT_LT(relative_error<T>(y, load<double>("dora", "Y")), tol);
  EXPECT_LT(relative_error<T>(dx, load<double>("dora", "dX")), tol);
  EXPECT_LT(relative_error<T>(as_eigen(layer.grad_a()), load<double>("dora", "dA")), tol);
  EXPECT_LT(relative_error<T>(as_eigen(layer.grad_b()), load<double>("dora", "dB")), tol);
  EXPECT_LT(relative_error<T>(as_eigen(layer.grad_magnitude()), load<double>("dora", "dm")), tol);
  const mat<T> original = f.w;
  layer.merge(ctx);
  EXPECT_LT(relative_error<T>(f.w, load<double>("dora", "W_merged")), tol);
  layer.unmerge(ctx);
  EXPECT_EQ(f.w, original);
}

// PEFT's output is NaN in the zero row's column (0 / 0) and its gradients are
// NaN everywhere; ours are finite, and equal PEFT's wherever PEFT's are finite.
TYPED_TEST(peft_reference, dora_zero_row_is_finite_where_peft_is_not) {
  using T = TypeParam;
  context<cpu> ctx(1);
  fixture_layer<T> f("dora_zero_row");
  EXPECT_FALSE(f.info["peft_output_finite"].template get<bool>());
  auto layer = make_dora(ctx, f);
  mat<T> y(f.x.rows(), f.w.rows()), dx(f.x.rows(), f.w.cols());
  layer.forward(ctx, view(f.x), view(y));
  layer.backward(ctx, view(f.g), view(dx));
  EXPECT_TRUE(y.allFinite());
  EXPECT_TRUE(dx.allFinite());
  EXPECT_TRUE(as_eigen(layer.grad_a()).allFinite());
  EXPECT_TRUE(as_eigen(layer.grad_magnitude()).allFinite());
  const mat<double> peft_y = load<double>("dora_zero_row", "Y");
  EXPECT_FALSE(peft_y.allFinite());
  EXPECT_LT(relative_error<T>(y, peft_y), 4 * tolerance<T>());
  const index_t zero_row = f.info["zero_row"].template get<index_t>();
  EXPECT_TRUE((y.col(zero_row).transpose().array() == f.b(zero_row, 0)).all());
}

// PiSSA: PEFT's (float32) SVD and ours agree on s B A and W_res up to the
// singular vectors' signs, which the product does not see. PEFT computed in
// float32: 1e-5 relative covers its rounding.
TYPED_TEST(peft_reference, pissa_matches_peft) {
  using T = TypeParam;
  context<cpu> ctx(1);
  const auto info = case_of("pissa");
  mat<T> w = load<T>("pissa", "W");
  lora<T, cpu> layer(ctx, view(w), {},
                     {.rank = info["r"].get<index_t>(),
                      .alpha = info["alpha"].get<double>(),
                      .init = lora_init::pissa});
  const double s = layer.scaling();
  const mat<double> ours =
      s * as_eigen(layer.b()).template cast<double>() * as_eigen(layer.a()).template cast<double>();
  const mat<double> peft = s * load<double>("pissa", "B") * load<double>("pissa", "A");
  EXPECT_LT((ours - peft).norm() / peft.norm(), 1e-5);
  EXPECT_LT(relative_error<T>(w, load<double>("pissa", "W_res")), 1e-5);
}

// A PEFT-saved adapter drives lowrank's layers: every module (ranks and
// alphas from rank_pattern / alpha_pattern) becomes a lora whose scaling is
// PEFT's and whose update is s B A; the DoRA file gives dora layers with its
// magnitudes. A layer's factors written back give the same file content.
TEST(peft_saved, adapters_build_lowrank_layers) {
  context<cpu> ctx(1);
  const auto adapter = io::read_peft_adapter<float>(fixtures / "saved" / "lora_f32");
  ASSERT_EQ(adapter.modules.size(), 4u);
  io::peft_adapter<float> back{adapter.config, {}};
  for (const auto& m : adapter.modules) {
    SCOPED_TRACE(m.name);
    mat<float> w = mat<float>::Zero(m.b.rows(), m.a.cols());
    auto layer = lora<float, cpu>::from_factors(ctx, view(w), {}, view(m.a), view(m.b),
                                                {.alpha = m.alpha, .rslora = m.use_rslora});
    EXPECT_EQ(layer.rank(), m.rank);
    EXPECT_DOUBLE_EQ(layer.scaling(), m.scaling());
    // Zero W: the merged weight is s B A itself.
    layer.merge(ctx);
    const mat<double> dw = m.scaling() * m.b.cast<double>() * m.a.cast<double>();
    EXPECT_LT((w.cast<double>() - dw).norm(), 1e-6 * dw.norm());
    layer.unmerge(ctx);
    back.modules.push_back({m.name,
                            layer.rank(),
                            layer.options().alpha,
                            m.use_rslora,
                            as_eigen(layer.a()),
                            as_eigen(layer.b()),
                            {}});
  }
  const auto dir = std::filesystem::temp_directory_path() /
                   ("lowrank_peft_fixture_roundtrip_" + std::to_string(::getpid()));
  io::write_peft_adapter(dir, back);
  const auto again = io::read_peft_adapter<float>(dir);
  std::filesystem::remove_all(dir);
  for (std::size_t i = 0; i < again.modules.size(); ++i) {
    EXPECT_EQ(again.modules[i].a, adapter.modules[i].a);
    EXPECT_EQ(again.modules[i].b, adapter.modules[i].b);
  }
  const auto with_dora = io::read_peft_adapter<float>(fixtures / "saved" / "dora_f16");
  for (const auto& m : with_dora.modules) {
    mat<float> w = mat<float>::Ones(m.b.rows(), m.a.cols());
    dora<float, cpu> layer(
        ctx, lora<float, cpu>::from_factors(ctx, view(w), {}, view(m.a), view(m.b),
                                            {.alpha = m.alpha, .rslora = m.use_rslora}));
    as_eigen(layer.magnitude()) = m.magnitude;
    EXPECT_EQ(as_eigen(layer.magnitude()), m.magnitude);
  }
}

}  // namespace
}  // namespace lowrank::test::peft_fixture_tests
