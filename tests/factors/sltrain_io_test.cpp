// SLTrain layers to and from .safetensors (io/sltrain.hpp): round trips with
// the support as indices or as a seed, the reference fixture read as SLTrain's
// state dict (F64 tensors, an I64 sparse_index), integer tensors of every
// width, and malformed files (nothing built, a clear error).
#include <unistd.h>

#include <gtest/gtest.h>

#include <Eigen/Core>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "lowrank/io/sltrain.hpp"
#include "support/backends.hpp"
#include "support/factors.hpp"

namespace lowrank::test::sltrain_io_tests {
namespace {

using matd = Eigen::MatrixXd;

template <class Config>
class sltrain_io_test : public backend_test<Config> {};
TYPED_TEST_SUITE(sltrain_io_test, test_configs, config_names);

/// A file in this process's scratch directory (its own: ctest may run tests
/// in parallel processes), which is removed at exit.
std::filesystem::path scratch(const std::string& name) {
  static const struct directory {
    std::filesystem::path path = std::filesystem::temp_directory_path() /
                                 ("lowrank_sltrain_io_test_" + std::to_string(::getpid()));
    directory() { std::filesystem::create_directories(path); }
    ~directory() {
      std::error_code ignored;
      std::filesystem::remove_all(path, ignored);
    }
  } dir;
  return dir.path / name;
}

TYPED_TEST(sltrain_io_test, round_trips_with_indices_and_with_a_seed) {
  using B = typename TypeParam::backend;
  using T = typename TypeParam::scalar;
  auto ctx = make_context<B>(2);
  for (const support_storage storage : {support_storage::indices, support_storage::seed}) {
    sparse_plus_low_rank_options o{
        .rank = 4, .alpha = 12, .density = 0.1, .storage = storage, .seed = 3, .layer = 5};
    sparse_plus_low_rank<T, B> layer(ctx, 20, 30, o);
    const host_matrix<T> bh = host_matrix<T>::Random(20, 4);
    ops<B>::upload(ctx, view(bh), layer.b());
    const auto file =
        scratch(storage == support_storage::seed ? "seed.safetensors" : "indices.safetensors");
    io::save_sltrain(ctx, file, layer,
                     {.type = std::is_same_v<T, float> ? io::dtype::float32 : io::dtype::float64,
                      .prefix = "model.mlp."});
    const auto f = io::safetensors_file::read(file);
    EXPECT_EQ(f.contains("model.mlp.sparse_index"), storage == support_storage::indices);
    if (storage == support_storage::indices) {
      EXPECT_EQ(f.tensors().at("model.mlp.sparse_index").dtype_name, "I32");
    }
    auto back = io::load_sltrain<T, B>(ctx, file, {}, "model.mlp.");
    EXPECT_EQ(back.options().storage, storage);
    EXPECT_EQ(back.scaling(), 3.0);
    EXPECT_EQ(back.nnz(), layer.nnz());
    EXPECT_EQ(back.support_copy(ctx).flat_indices(ctx), layer.support_copy(ctx).flat_indices(ctx));
    EXPECT_TRUE(host(ctx, as_const(back.a())) == host(ctx, as_const(layer.a())));
    EXPECT_TRUE(host(ctx, as_const(back.b())) == host(ctx, as_const(layer.b())));
    EXPECT_TRUE(host(ctx, as_const(back.values().as_matrix())) ==
                host(ctx, as_const(layer.values().as_matrix())));
    EXPECT_TRUE(host(ctx, as_const(back.bias().as_matrix())) ==
                host(ctx, as_const(layer.bias().as_matrix())));
  }
}

TYPED_TEST(sltrain_io_test, reads_the_reference_state_dict) {
  using B = typename TypeParam::backend;
  using T = typename TypeParam::scalar;
  auto ctx = make_context<B>(2);
  const std::string file =
      std::string(LOWRANK_TEST_FACTORS_FIXTURE_DIR) + "/sltrain_small.safetensors";
  auto layer = io::load_sltrain<T, B>(ctx, file);  // lora_alpha = 6 from the metadata
  EXPECT_EQ(layer.scaling(), 2.0);
  const auto f = io::safetensors_file::read(file);
  const host_matrix<T> x = f.matrix<T>("x");
  const auto xb = to_backend<B, T>(ctx, x);
  matrix<T, B> y(ctx, x.rows(), 7);
  layer.forward(ctx, xb.view(), y.view());
  const matd want = f.matrix<double>("y");
  EXPECT_LT((host(ctx, as_const(y.view())) - want).norm(), 100 * eps<T> * want.norm());
}

TEST(sltrain_io, integer_tensors_of_every_width) {
  const auto file = scratch("integers.safetensors");
  io::write_safetensors(
      file, {{"w", io::dtype::float32, Eigen::MatrixXd::Ones(2, 2), false}}, {},
      {{"a", {-3, 0, 2147483647}, true}, {"b", {-(std::int64_t{1} << 40), 7}, false}});
  const auto f = io::safetensors_file::read(file);
  EXPECT_EQ(f.tensors().at("a").dtype_name, "I32");
  EXPECT_EQ(f.integers("a"), (std::vector<std::int64_t>{-3, 0, 2147483647}));
  EXPECT_EQ(f.integers("b"), (std::vector<std::int64_t>{-(std::int64_t{1} << 40), 7}));
  EXPECT_THROW((void)f.integers("w"), invalid_argument);
  EXPECT_THROW(io::write_safetensors(scratch("bad.safetensors"), {}, {},
                                     {{"a", {std::int64_t{1} << 31}, true}}),
               invalid_argument);
  EXPECT_THROW(
      io::write_safetensors(scratch("bad.safetensors"),
                            {{"a", io::dtype::float32, Eigen::MatrixXd::Ones(1, 1), false}}, {},
                            {{"a", {1}, false}}),
      invalid_argument);
  EXPECT_FALSE(std::filesystem::exists(scratch("bad.safetensors")));
}

TEST(sltrain_io, malformed_files_build_nothing) {
  context<cpu> ctx;
  const Eigen::MatrixXd a = Eigen::MatrixXd::Random(2, 5), b = Eigen::MatrixXd::Random(4, 2);
  const Eigen::MatrixXd v = Eigen::MatrixXd::Random(3, 1);
  auto write = [&](std::vector<std::int64_t> index, bool with_b) {
    std::vector<io::tensor_to_write> t{{"lora_A", io::dtype::float32, a, false},
                                       {"sparse_value", io::dtype::float32, v, true}};
    if (with_b) t.push_back({"lora_B", io::dtype::float32, b, false});
    io::write_safetensors(scratch("m.safetensors"), t, {}, {{"sparse_index", index, false}});
    return scratch("m.safetensors");
  };
  EXPECT_NO_THROW((void)io::load_sltrain<float>(ctx, write({1, 7, 19}, true)));
  for (const auto& index : std::vector<std::vector<std::int64_t>>{
           {7, 1, 19}, {1, 1, 19}, {1, 7, 20}, {-1, 7, 19}, {1, 7}}) {
    EXPECT_THROW((void)io::load_sltrain<float>(ctx, write(index, true)), invalid_argument);
  }
  try {
    (void)io::load_sltrain<float>(ctx, write({1, 7, 19}, false));
    FAIL();
  } catch (const invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("lora_B"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace lowrank::test::sltrain_io_tests
