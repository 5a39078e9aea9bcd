// Tests of lowrank/io/peft.hpp: adapter directories saved by PEFT itself (an independent
// reference, made by tools/make_peft_fixtures.py) read and compared with .npy copies, and
// rewritten byte for byte; an adapter written here and loaded by PEFT (cpp_saved/); round
// trips; the pattern-matching rule; and every error.

#include "lowrank/io/peft.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <Eigen/Core>
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <iterator>
#include <limits>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "io_test_support.hpp"
#include "lowrank/io/npy.hpp"
#include "lowrank/io/safetensors.hpp"

#ifndef LOWRANK_TEST_ADAPTER_FIXTURE_DIR
#error "LOWRANK_TEST_ADAPTER_FIXTURE_DIR must name tests/adapters/fixtures (a string literal)"
#endif

namespace peft_tests {
namespace {

namespace fs = std::filesystem;
using lowrank::io::dtype;
using lowrank::io::peft_adapter;
using lowrank::io::peft_config;
using lowrank::io::peft_module;
using lowrank::io::read_peft_adapter;
using lowrank::io::write_peft_adapter;
using json = nlohmann::json;

template <class T>
using matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;

constexpr std::string_view read_function = "lowrank::io::read_peft_adapter";
constexpr std::string_view write_function = "lowrank::io::write_peft_adapter";

fs::path fixture(std::string_view name) {
  return fs::path(LOWRANK_TEST_ADAPTER_FIXTURE_DIR) / "peft" / name;
}

const std::vector<std::string> module_names = {"layers.0.q_proj", "layers.0.v_proj",
                                               "layers.1.q_proj", "layers.1.v_proj"};

std::string read_text(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_text(const fs::path& file, std::string_view text) {
  std::ofstream out(file, std::ios::binary);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  ASSERT_TRUE(out.good()) << file;
}

// A fresh directory under the system's temporary directory, removed at the end.
class scratch_dir {
 public:
  scratch_dir() {
    // Unique to this test (ctest runs the tests in parallel processes) and this call.
    static std::atomic<int> counter{0};
    const ::testing::TestInfo* test = ::testing::UnitTest::GetInstance()->current_test_info();
    const std::size_t tag =
        std::hash<std::string>{}(std::string(test->test_suite_name()) + "." + test->name()) ^
        std::random_device{}();
    path_ = fs::temp_directory_path() /
            ("lowrank_peft_test_" + std::to_string(tag) + "_" + std::to_string(counter++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  scratch_dir(const scratch_dir&) = delete;
  scratch_dir& operator=(const scratch_dir&) = delete;
  ~scratch_dir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  [[nodiscard]] const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// The message of the lowrank::invalid_argument that `f` throws ("" and a failure if none).
template <class F>
std::string invalid_argument_message(F f) {
  try {
    f();
  } catch (const lowrank::invalid_argument& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw something other than lowrank::invalid_argument: " << e.what();
    return "";
  }
  ADD_FAILURE() << "did not throw";
  return "";
}

template <class F>
std::string numerical_error_message(F f) {
  try {
    f();
  } catch (const lowrank::numerical_error& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw something other than lowrank::numerical_error: " << e.what();
    return "";
  }
  ADD_FAILURE() << "did not throw";
  return "";
}

// Reading `dir` throws lowrank::invalid_argument naming read_peft_adapter, argument 'dir',
// and containing `detail`.
void expect_read_error(const fs::path& dir, std::string_view detail) {
  const std::string message =
      invalid_argument_message([&] { static_cast<void>(read_peft_adapter<float>(dir)); });
  EXPECT_TRUE(message.starts_with(std::string(read_function) + ": argument 'dir' is \""))
      << message;
  EXPECT_NE(message.find(detail), std::string::npos) << "'" << detail << "' not in: " << message;
}

template <class T>
void expect_write_error(const fs::path& dir, const peft_adapter<T>& adapter,
                        std::string_view detail, std::string_view argument = "adapter",
                        dtype stored = dtype::float32) {
  const std::string message =
      invalid_argument_message([&] { write_peft_adapter(dir, adapter, stored); });
  EXPECT_TRUE(message.starts_with(std::string(write_function) + ": argument '" +
                                  std::string(argument) + "' is "))
      << message;
  EXPECT_NE(message.find(detail), std::string::npos) << "'" << detail << "' not in: " << message;
}

// The config of saved/lora_f32 (see tools/make_peft_fixtures.py).
peft_config lora_f32_config() {
  peft_config config;
  config.r = 4;
  config.lora_alpha = 8;
  config.target_modules = {"q_proj", "v_proj"};
  config.rank_pattern = {{"layers.1.q_proj", 2}};
  config.alpha_pattern = {{"v_proj", 16}};
  return config;
}

// An adapter from the .npy copies of a saved fixture, with `config`.
template <class T>
peft_adapter<T> adapter_from_npy(std::string_view saved, const peft_config& config) {
  peft_adapter<T> adapter;
  adapter.config = config;
  const fs::path npy = fixture("saved") / saved / "npy";
  for (const std::string& name : module_names) {
    peft_module<T> m;
    m.name = name;
    m.rank = lowrank::io::peft_rank(config, name);
    m.alpha = lowrank::io::peft_alpha(config, name);
    m.use_rslora = config.use_rslora;
    m.a = lowrank::io::read_npy<T>(npy / (name + ".A.npy"));
    m.b = lowrank::io::read_npy<T>(npy / (name + ".B.npy"));
    if (config.use_dora) m.magnitude = lowrank::io::read_npy<T>(npy / (name + ".m.npy")).col(0);
    adapter.modules.push_back(std::move(m));
  }
  return adapter;
}

// A small adapter with deterministic values exact in every storage dtype.
peft_adapter<double> small_adapter(bool use_dora = false, bool use_rslora = false) {
  peft_adapter<double> adapter;
  peft_config& c = adapter.config;
  c.r = 3;
  c.lora_alpha = 6;
  c.use_dora = use_dora;
  c.use_rslora = use_rslora;
  c.lora_dropout = 0.05;
  c.rank_pattern = {{"second", 2}};
  c.alpha_pattern = {{"block\\.[0-9]+\\.second", 1.5}};
  c.extra = {{"peft_type", "LORA"}, {"task_type", "CAUSAL_LM"}, {"base_model_name_or_path", "x"}};
  const std::vector<std::pair<std::string, Eigen::Index>> names = {{"block.0.first", 5},
                                                                   {"block.0.second", 4}};
  double v = 0.25;
  for (const auto& [name, out] : names) {
    peft_module<double> m;
    m.name = name;
    m.rank = lowrank::io::peft_rank(c, name);
    m.alpha = lowrank::io::peft_alpha(c, name);
    m.use_rslora = use_rslora;
    m.a.resize(m.rank, 7);
    m.b.resize(out, m.rank);
    for (Eigen::Index k = 0; k < m.a.size(); ++k) m.a(k) = (v += 0.125) - 2;
    for (Eigen::Index k = 0; k < m.b.size(); ++k) m.b(k) = 1 - (v += 0.0625);
    if (use_dora) {
      m.magnitude = Eigen::VectorXd::LinSpaced(out, 0.5, 0.5 + 0.25 * static_cast<double>(out - 1));
    }
    adapter.modules.push_back(std::move(m));
  }
  return adapter;
}

template <class T>
class peft_read_test : public ::testing::Test {};
using element_types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(peft_read_test, element_types);

// --------------------------------------------------------------- PEFT-saved fixtures

TYPED_TEST(peft_read_test, reads_lora_f32_saved_by_peft) {
  using T = TypeParam;
  const fs::path dir = fixture("saved/lora_f32");
  const peft_adapter<T> adapter = read_peft_adapter<T>(dir);
  const peft_config& c = adapter.config;
  EXPECT_EQ(c.r, 4);
  EXPECT_EQ(c.lora_alpha, 8.0);
  EXPECT_FALSE(c.use_rslora);
  EXPECT_FALSE(c.use_dora);
  EXPECT_EQ(c.lora_dropout, 0.0);
  // PEFT saves its set of target modules in the set's order.
  std::vector<std::string> targets = c.target_modules;
  std::sort(targets.begin(), targets.end());
  EXPECT_EQ(targets, (std::vector<std::string>{"q_proj", "v_proj"}));
  EXPECT_EQ(c.rank_pattern,
            (std::vector<std::pair<std::string, lowrank::index_t>>{{"layers.1.q_proj", 2}}));
  EXPECT_EQ(c.alpha_pattern, (std::vector<std::pair<std::string, double>>{{"v_proj", 16.0}}));
  EXPECT_EQ(c.extra.at("peft_type"), "LORA");
  EXPECT_EQ(c.extra.at("bias"), "none");
  EXPECT_TRUE(c.extra.contains("peft_version"));
  EXPECT_FALSE(c.extra.contains("r"));

  ASSERT_EQ(adapter.modules.size(), 4U);
  // PEFT: rank_pattern {"layers.1.q_proj": 2}, alpha_pattern {"v_proj": 16}, r 4, alpha 8.
  const std::vector<std::pair<lowrank::index_t, double>> expected = {
      {4, 8}, {4, 16}, {2, 8}, {4, 16}};
  const std::vector<lowrank::index_t> outs = {10, 6, 10, 6};
  for (std::size_t k = 0; k < 4; ++k) {
    const peft_module<T>& m = adapter.modules[k];
    SCOPED_TRACE(m.name);
    EXPECT_EQ(m.name, module_names[k]);
    EXPECT_EQ(m.rank, expected[k].first);
    EXPECT_EQ(m.alpha, expected[k].second);
    EXPECT_EQ(m.scaling(), expected[k].second / static_cast<double>(expected[k].first));
    EXPECT_EQ(m.a.rows(), m.rank);
    EXPECT_EQ(m.a.cols(), 12);
    EXPECT_EQ(m.b.rows(), outs[k]);
    EXPECT_EQ(m.b.cols(), m.rank);
    EXPECT_EQ(m.magnitude.size(), 0);
    const fs::path npy = dir / "npy";
    EXPECT_EQ(m.a, lowrank::io::read_npy<T>(npy / (m.name + ".A.npy")));
    EXPECT_EQ(m.b, lowrank::io::read_npy<T>(npy / (m.name + ".B.npy")));
  }
}

TYPED_TEST(peft_read_test, reads_dora_f16_saved_by_peft) {
  using T = TypeParam;
  const fs::path dir = fixture("saved/dora_f16");
  const peft_adapter<T> adapter = read_peft_adapter<T>(dir);
  EXPECT_TRUE(adapter.config.use_dora);
  ASSERT_EQ(adapter.modules.size(), 4U);
  for (const peft_module<T>& m : adapter.modules) {
    SCOPED_TRACE(m.name);
    EXPECT_EQ(m.rank, 4);
    EXPECT_EQ(m.alpha, 8.0);
    EXPECT_EQ(m.scaling(), 2.0);
    const fs::path npy = dir / "npy";
    EXPECT_EQ(m.a, lowrank::io::read_npy<T>(npy / (m.name + ".A.npy")));
    EXPECT_EQ(m.b, lowrank::io::read_npy<T>(npy / (m.name + ".B.npy")));
    const matrix<T> magnitude = lowrank::io::read_npy<T>(npy / (m.name + ".m.npy"));
    ASSERT_EQ(magnitude.cols(), 1);
    EXPECT_EQ(m.magnitude, magnitude.col(0));
    EXPECT_EQ(m.magnitude.size(), m.b.rows());
    EXPECT_TRUE((m.magnitude.array() > 0).all());
  }
}

TYPED_TEST(peft_read_test, reads_lora_bf16_saved_by_peft) {
  using T = TypeParam;
  const fs::path dir = fixture("saved/lora_bf16");
  const peft_adapter<T> adapter = read_peft_adapter<T>(dir);
  EXPECT_FALSE(adapter.config.use_dora);
  ASSERT_EQ(adapter.modules.size(), 4U);
  for (const peft_module<T>& m : adapter.modules) {
    SCOPED_TRACE(m.name);
    EXPECT_EQ(m.a, lowrank::io::read_npy<T>(dir / "npy" / (m.name + ".A.npy")));
    EXPECT_EQ(m.b, lowrank::io::read_npy<T>(dir / "npy" / (m.name + ".B.npy")));
  }
}

// Reading PEFT's directory and writing it back in its dtype gives PEFT's bytes: the same
// tensor layout and header, and the same JSON text (sorted keys, indent 2).
TEST(peft_write_test, rewrites_peft_files_byte_for_byte) {
  for (const auto& [saved, stored] :
       std::vector<std::pair<std::string, dtype>>{{"lora_f32", dtype::float32},
                                                  {"dora_f16", dtype::float16},
                                                  {"lora_bf16", dtype::bfloat16}}) {
    SCOPED_TRACE(saved);
    const fs::path dir = fixture("saved") / saved;
    const scratch_dir out;
    write_peft_adapter(out.path(), read_peft_adapter<double>(dir), stored);
    EXPECT_EQ(read_text(out.path() / "adapter_model.safetensors"),
              read_text(dir / "adapter_model.safetensors"));
    EXPECT_EQ(read_text(out.path() / "adapter_config.json"),
              read_text(dir / "adapter_config.json"));
    // float reads the same values.
    const scratch_dir out_float;
    write_peft_adapter(out_float.path(), read_peft_adapter<float>(dir), stored);
    EXPECT_EQ(read_text(out_float.path() / "adapter_model.safetensors"),
              read_text(dir / "adapter_model.safetensors"));
  }
}

// --------------------------------------------------------------- C++ -> PEFT

// The adapter of saved/lora_f32's .npy copies, written by lowrank, is committed as
// cpp_saved/ and was loaded by PEFT (tools/make_peft_fixtures.py wrote peft_check.json).
// With LOWRANK_WRITE_PEFT_FIXTURE=<dir> this test also writes it into <dir>.
TEST(peft_write_test, cpp_saved_fixture_loads_in_peft) {
  const peft_adapter<float> adapter = adapter_from_npy<float>("lora_f32", lora_f32_config());
  if (const char* target = std::getenv("LOWRANK_WRITE_PEFT_FIXTURE"); target && *target) {
    write_peft_adapter(target, adapter);
  }
  const scratch_dir out;
  write_peft_adapter(out.path(), adapter);
  const fs::path committed = fixture("cpp_saved");
  ASSERT_TRUE(fs::exists(committed / "adapter_model.safetensors"))
      << "run this test with LOWRANK_WRITE_PEFT_FIXTURE=" << committed
      << ", then tools/make_peft_fixtures.py --check-only";
  EXPECT_EQ(read_text(out.path() / "adapter_model.safetensors"),
            read_text(committed / "adapter_model.safetensors"));
  EXPECT_EQ(json::parse(read_text(out.path() / "adapter_config.json")),
            json::parse(read_text(committed / "adapter_config.json")));

  const json check = json::parse(read_text(committed / "peft_check.json"));
  EXPECT_EQ(check.at("loaded"), true);
  EXPECT_LT(check.at("max_abs_error").get<double>(), 1e-12);  // float32 values, float64 forward
  EXPECT_TRUE(check.at("peft_version").is_string());

  // And it reads back as written.
  const peft_adapter<float> back = read_peft_adapter<float>(committed);
  ASSERT_EQ(back.modules.size(), adapter.modules.size());
  for (std::size_t k = 0; k < back.modules.size(); ++k) {
    EXPECT_EQ(back.modules[k].a, adapter.modules[k].a);
    EXPECT_EQ(back.modules[k].b, adapter.modules[k].b);
    EXPECT_EQ(back.modules[k].rank, adapter.modules[k].rank);
    EXPECT_EQ(back.modules[k].alpha, adapter.modules[k].alpha);
  }
}

// --------------------------------------------------------------- round trips

template <class T>
void expect_same_adapter(const peft_adapter<T>& got, const peft_adapter<T>& want) {
  const peft_config& g = got.config;
  const peft_config& w = want.config;
  EXPECT_EQ(g.r, w.r);
  EXPECT_EQ(g.lora_alpha, w.lora_alpha);
  EXPECT_EQ(g.use_rslora, w.use_rslora);
  EXPECT_EQ(g.use_dora, w.use_dora);
  EXPECT_EQ(g.lora_dropout, w.lora_dropout);
  EXPECT_EQ(g.rank_pattern, w.rank_pattern);
  EXPECT_EQ(g.alpha_pattern, w.alpha_pattern);
  ASSERT_EQ(got.modules.size(), want.modules.size());
  for (std::size_t k = 0; k < got.modules.size(); ++k) {
    const peft_module<T>& a = got.modules[k];
    const peft_module<T>& b = want.modules[k];
    SCOPED_TRACE(b.name);
    EXPECT_EQ(a.name, b.name);
    EXPECT_EQ(a.rank, b.rank);
    EXPECT_EQ(a.alpha, b.alpha);
    EXPECT_EQ(a.use_rslora, b.use_rslora);
    EXPECT_EQ(a.scaling(), b.scaling());
    EXPECT_EQ(a.a, b.a);
    EXPECT_EQ(a.b, b.b);
    EXPECT_EQ(a.magnitude, b.magnitude);
  }
}

TEST(peft_write_test, round_trips_every_dtype_and_variant) {
  for (const bool dora : {false, true}) {
    for (const bool rslora : {false, true}) {
      for (const dtype stored : {dtype::float32, dtype::float16, dtype::bfloat16, dtype::float64}) {
        SCOPED_TRACE(std::string("dora ") + (dora ? "on" : "off") + ", rslora " +
                     (rslora ? "on" : "off") + ", " + std::string(lowrank::io::name(stored)));
        const peft_adapter<double> adapter = small_adapter(dora, rslora);
        const scratch_dir out;
        write_peft_adapter(out.path(), adapter, stored);
        const peft_adapter<double> back = read_peft_adapter<double>(out.path());
        expect_same_adapter(back, adapter);  // the values are exact in every dtype
        EXPECT_EQ(back.config.extra.at("task_type"), "CAUSAL_LM");
        EXPECT_EQ(back.config.extra.at("base_model_name_or_path"), "x");
        EXPECT_EQ(back.config.extra.at("peft_type"), "LORA");
        // No temporaries left behind.
        EXPECT_EQ(std::distance(fs::directory_iterator(out.path()), fs::directory_iterator()), 2);
        // What the writer derived: target_modules from the module names.
        EXPECT_EQ(back.config.target_modules, (std::vector<std::string>{"first", "second"}));
        const lowrank::io::safetensors_file f =
            lowrank::io::safetensors_file::read(out.path() / "adapter_model.safetensors");
        EXPECT_EQ(f.metadata().at("format"), "pt");
        for (const auto& [tensor, info] : f.tensors()) EXPECT_EQ(info.type, stored) << tensor;
        if (dora) {
          EXPECT_EQ(f.tensors().at("base_model.model.block.0.first.lora_magnitude_vector").shape,
                    (std::vector<std::int64_t>{5}));
        }
      }
    }
  }
}

TEST(peft_write_test, rounds_once_to_the_stored_dtype) {
  peft_adapter<double> adapter = small_adapter();
  adapter.modules[0].a(0, 0) = 1.0 / 3.0;
  adapter.modules[0].b(1, 1) = 65504.0;  // the largest finite F16
  for (const dtype stored : {dtype::float32, dtype::float16, dtype::bfloat16}) {
    const scratch_dir out;
    write_peft_adapter(out.path(), adapter, stored);
    const peft_adapter<double> back = read_peft_adapter<double>(out.path());
    const double third = back.modules[0].a(0, 0);
    switch (stored) {
      case dtype::float32:
        EXPECT_EQ(third, static_cast<double>(1.0f / 3.0f));
        break;
      case dtype::float16:
        EXPECT_EQ(third, 0x1.554p-2);  // binary16 nearest to 1/3
        break;
      default:
        EXPECT_EQ(third, 0x1.56p-2);  // bfloat16 nearest to 1/3
        break;
    }
    EXPECT_EQ(back.modules[0].b(1, 1), stored == dtype::bfloat16 ? 65536.0 : 65504.0);
  }
}

// Every field of a PEFT config survives read -> write -> read, and the JSON is equal.
TEST(peft_write_test, keeps_every_config_field) {
  const fs::path dir = fixture("saved/dora_f16");
  const peft_adapter<float> adapter = read_peft_adapter<float>(dir);
  const scratch_dir out;
  write_peft_adapter(out.path(), adapter, dtype::float16);
  EXPECT_EQ(json::parse(read_text(out.path() / "adapter_config.json")),
            json::parse(read_text(dir / "adapter_config.json")));
  // Non-ASCII text survives too (written as \u escapes, as Python's json.dumps does).
  peft_adapter<double> small = small_adapter();
  small.config.extra["base_model_name_or_path"] = "modèle/ü";
  const scratch_dir out2;
  write_peft_adapter(out2.path(), small);
  EXPECT_NE(read_text(out2.path() / "adapter_config.json").find("mod\\u00e8le/\\u00fc"),
            std::string::npos);
  EXPECT_EQ(read_peft_adapter<double>(out2.path()).config.extra.at("base_model_name_or_path"),
            "modèle/ü");
}

TEST(peft_write_test, replaces_an_adapter_and_creates_the_directory) {
  const scratch_dir out;
  const fs::path dir = out.path() / "a" / "b";
  write_peft_adapter(dir, small_adapter(true));
  write_peft_adapter(dir, small_adapter(false));
  EXPECT_FALSE(read_peft_adapter<double>(dir).config.use_dora);
}

// --------------------------------------------------------------- pattern matching

// PEFT's get_pattern_key: keys in order, the first with re.match(rf"(.*\.)?({key})$", name).
// Every expectation here was checked against peft.utils.other.get_pattern_key (PEFT 0.21.2).
TEST(peft_pattern_test, matches_as_peft_get_pattern_key) {
  peft_config c;
  c.r = 8;
  c.lora_alpha = 16;
  c.rank_pattern = {{"q_proj", 2}, {"layers.1.q_proj", 3}, {"model\\.layers\\.[0-9]+\\.mlp", 5}};
  c.alpha_pattern = {{"layers.1.q_proj", 7}, {"q_proj", 1}};
  using lowrank::io::peft_alpha;
  using lowrank::io::peft_rank;
  EXPECT_EQ(peft_rank(c, "layers.0.q_proj"), 2);
  EXPECT_EQ(peft_rank(c, "layers.1.q_proj"), 2);  // the first key that matches wins
  EXPECT_EQ(peft_alpha(c, "layers.1.q_proj"), 7.0);
  EXPECT_EQ(peft_alpha(c, "layers.0.q_proj"), 1.0);
  EXPECT_EQ(peft_rank(c, "q_proj"), 2);               // (.*\.)? may be empty
  EXPECT_EQ(peft_rank(c, "layers.0.xq_proj"), 8);     // a whole component
  EXPECT_EQ(peft_rank(c, "layers.0.q_proj.lin"), 8);  // anchored at the end
  EXPECT_EQ(peft_rank(c, "layers.0.q_projx"), 8);
  EXPECT_EQ(peft_rank(c, "model.layers.12.mlp"), 5);  // a regular expression
  EXPECT_EQ(peft_rank(c, "x.model.layers.12.mlp"), 5);
  EXPECT_EQ(peft_rank(c, "model.layers.x.mlp"), 8);
  EXPECT_EQ(peft_alpha(c, "layers.0.v_proj"), 16.0);
  // "." in a key is any character: "layers.1.q_proj" matches "layersX1Xq_proj", and
  // "q_proj" does not (no "." before it).
  EXPECT_EQ(peft_rank(c, "layersX1Xq_proj"), 3);
  EXPECT_EQ(peft_alpha(c, "layersX1Xq_proj"), 7.0);
  c.rank_pattern = {{"v_proj|o_proj", 6}};  // alternation inside the group
  EXPECT_EQ(peft_rank(c, "a.o_proj"), 6);
  EXPECT_EQ(peft_rank(c, "a.v_proj"), 6);
  EXPECT_EQ(peft_rank(c, "a.k_proj"), 8);

  c.rank_pattern = {{"q_proj[", 2}};
  const std::string message =
      invalid_argument_message([&] { static_cast<void>(peft_rank(c, "q_proj")); });
  EXPECT_TRUE(message.starts_with("lowrank::io::peft_rank: argument 'config' is ")) << message;
  EXPECT_NE(message.find("'q_proj['"), std::string::npos) << message;
}

// Python's `re` itself is the reference: tests/io/fixtures/peft_patterns.jsonl holds keys,
// modules and what PEFT's re.match(rf"(.*\.)?({key})$", module) gives (match, no match, or
// an error), made by tools/make_peft_pattern_fixtures.py from a grammar of the supported
// syntax and from random characters.
TEST(peft_pattern_test, matches_as_python_re) {
  std::ifstream in(fs::path(LOWRANK_TEST_FIXTURE_DIR) / "peft_patterns.jsonl");
  ASSERT_TRUE(in.good());
  std::size_t cases = 0;
  std::size_t unsupported = 0;
  std::size_t matches = 0;
  for (std::string line; std::getline(in, line);) {
    const json c = json::parse(line);
    const std::string key = c.at(0);
    const std::string module = c.at(1);
    const std::string expected = c.at(2);
    SCOPED_TRACE(line);
    ++cases;
    std::string got;
    try {
      got = lowrank::io::detail::peft_regex(key).matches(module) ? "match" : "no match";
    } catch (const lowrank::io::detail::peft_regex_error& e) {
      if (e.unsupported) {
        ++unsupported;
        continue;
      }
      got = "error";
    }
    matches += got == "match" ? 1 : 0;
    EXPECT_EQ(got, expected);
  }
  EXPECT_EQ(cases, 2500U);
  EXPECT_LT(unsupported, 100U);  // backreferences, lookaround, possessive, \w on non-ASCII ...
  EXPECT_GT(matches, 1000U);
}

// Runs f on another thread and gives it `limit`; false when it has not returned by then
// (the thread is then left running: the test has failed anyway).
template <class F>
bool finishes_within(std::chrono::seconds limit, F f) {
  auto done = std::make_shared<std::promise<void>>();
  std::future<void> finished = done->get_future();
  std::thread([f, done] {
    f();
    done->set_value();
  }).detach();
  return finished.wait_for(limit) == std::future_status::ready;
}

// std::regex backtracks: "(a*)*b" takes exponential time, and a long name overflows its
// stack. Matching is now linear in the name, names and keys are at most 4096 bytes, and the
// syntax that needs backtracking (or that lowrank does not implement) is refused by name.
TEST(peft_pattern_test, nested_quantifiers_long_names_and_unsupported_syntax) {
  peft_config c;
  c.rank_pattern = {{"(a*)*b", 2}, {"(x|y)*", 3}};
  const std::string as = "m." + std::string(4000, 'a');
  const std::string xs = "m." + std::string(4000, 'x');
  lowrank::index_t a_rank = 0;
  lowrank::index_t x_rank = 0;
  EXPECT_TRUE(finishes_within(std::chrono::seconds(10), [c, as, xs, &a_rank, &x_rank] {
    a_rank = lowrank::io::peft_rank(c, as);
    x_rank = lowrank::io::peft_rank(c, xs);
  }));
  EXPECT_EQ(a_rank, 8);
  EXPECT_EQ(x_rank, 3);
  EXPECT_EQ(lowrank::io::peft_rank(c, "m." + std::string(4000, 'a') + "b"), 2);

  const std::string longer = "m." + std::string(20000, 'x');
  EXPECT_TRUE(finishes_within(std::chrono::seconds(10), [c, longer] {
    const std::string message =
        invalid_argument_message([&] { static_cast<void>(lowrank::io::peft_rank(c, longer)); });
    EXPECT_EQ(message,
              "lowrank::io::peft_rank: argument 'module' is a name of 20002 bytes; expected a "
              "module name of at most 4096 bytes");
  }));
  c.rank_pattern = {{std::string(4097, 'q'), 2}};
  EXPECT_NE(invalid_argument_message([&] {
              static_cast<void>(lowrank::io::peft_rank(c, "q"));
            }).find("rank_pattern with the key 'qqq"),
            std::string::npos);

  const std::vector<std::pair<std::string, std::string>> refused = {
      {"q(?=_proj)", "which uses a lookaround assertion at position 1"},
      {"(?<!k)_proj", "which uses a lookaround assertion at position 0"},
      {"(q)_\\1", "which uses a backreference at position 4"},
      {"(?P<n>q)(?P=n)", "which uses a backreference (?P=...) at position 8"},
      {"(?i)q_proj", "which uses the group extension (?i"},
      {"q_proj*+", "which uses a possessive quantifier at position 7"},
      {"\\bq_proj", "which uses the assertion \\b at position 0"},
      {"q{1001}", "which uses a repeat count over 1000 at position 1"},
      {"((((q{100}){100}){100}){100})", "instructions once compiled"},
      {std::string(101, '(') + std::string(101, ')'), "groups nested more than 100 deep"},
      {"q_proj{2,1}", "which is not a regular expression (min repeat greater than max repeat"},
      {"*q", "which is not a regular expression (nothing to repeat at position 0)"},
      {"q)", "which is not a regular expression (unbalanced parenthesis at position 1)"},
      {"[q-a]", "which is not a regular expression (bad character range at position 1)"},
      {"\\q", "which is not a regular expression (bad escape \\q at position 0)"},
  };
  for (const auto& [key, detail] : refused) {
    SCOPED_TRACE(key);
    c.rank_pattern = {{key, 2}};
    const std::string message =
        invalid_argument_message([&] { static_cast<void>(lowrank::io::peft_rank(c, "q_proj")); });
    EXPECT_TRUE(
        message.starts_with("lowrank::io::peft_rank: argument 'config' is a config with "
                            "rank_pattern with the key '"))
        << message;
    EXPECT_NE(message.find(detail), std::string::npos) << message;
  }

  // \w is ASCII here and Unicode in Python: a non-ASCII name against it is refused.
  c.rank_pattern = {{"\\w+_proj", 2}};
  EXPECT_EQ(lowrank::io::peft_rank(c, "layers.0.q_proj"), 2);
  EXPECT_NE(invalid_argument_message([&] {
              static_cast<void>(lowrank::io::peft_rank(c, "layers.0.\xc3\xa9_proj"));
            }).find("with a non-ASCII module name ('layers.0.\\xc3\\xa9_proj')"),
            std::string::npos);
  c.rank_pattern = {{"layers\\.0\\..*", 2}};  // no class escape: matched by code point
  EXPECT_EQ(lowrank::io::peft_rank(c, "layers.0.\xc3\xa9_proj"), 2);
}

// The file's key order decides between two keys that match one module, as in PEFT, and
// the writer keeps the order, so that what it writes means what the adapter says.
TEST(peft_pattern_test, keeps_the_key_order_of_the_file) {
  peft_adapter<double> adapter = small_adapter();  // block.0.second has rank 2 ("second")
  adapter.config.rank_pattern = {{"second", 2}, {"block.0.second", 1}};
  ASSERT_EQ(lowrank::io::peft_rank(adapter.config, "block.0.second"), 2);
  const scratch_dir out;
  write_peft_adapter(out.path(), adapter);
  const std::string text = read_text(out.path() / "adapter_config.json");
  EXPECT_LT(text.find("\"second\": 2"), text.find("\"block.0.second\": 1")) << text;
  const peft_adapter<double> back = read_peft_adapter<double>(out.path());
  EXPECT_EQ(back.config.rank_pattern, adapter.config.rank_pattern);
  EXPECT_EQ(back.modules[1].rank, 2);

  // Sorted (as PEFT writes), "block.0.second" would come first and give rank 1, which the
  // tensors contradict.
  const scratch_dir sorted;
  fs::copy(out.path() / "adapter_model.safetensors", sorted.path());
  write_text(sorted.path() / "adapter_config.json",
             json::parse(text).dump(2));  // nlohmann::json sorts the keys
  expect_read_error(sorted.path(),
                    "the module 'block.0.second' whose lora_A.weight has shape [2, 7]; expected "
                    "shape [1, in]");
}

// --------------------------------------------------------------- read errors

// A directory with `config` as adapter_config.json and `tensors` as adapter_model.safetensors.
class bad_dir {
 public:
  bad_dir(const std::string& config, const std::vector<lowrank::io::tensor_to_write>& tensors) {
    write_text(dir_.path() / "adapter_config.json", config);
    lowrank::io::write_safetensors(dir_.path() / "adapter_model.safetensors", tensors);
  }
  [[nodiscard]] const fs::path& path() const { return dir_.path(); }

 private:
  scratch_dir dir_;
};

std::string config_json(const json& changes = json::object(), bool dora = false) {
  json c = {{"peft_type", "LORA"},
            {"r", 2},
            {"lora_alpha", 4},
            {"use_dora", dora},
            {"use_rslora", false},
            {"target_modules", {"q"}},
            {"rank_pattern", json::object()},
            {"alpha_pattern", json::object()}};
  for (const auto& [key, value] : changes.items()) {
    if (value.is_string() && value == "<erase>") {
      c.erase(key);
    } else {
      c[key] = value;
    }
  }
  return c.dump(2);
}

lowrank::io::tensor_to_write tensor(const std::string& name, Eigen::Index rows, Eigen::Index cols,
                                    dtype type = dtype::float32, bool vector = false) {
  return {name, type, Eigen::MatrixXd::Constant(rows, cols, 0.5), vector};
}

std::vector<lowrank::io::tensor_to_write> good_tensors(bool dora = false) {
  std::vector<lowrank::io::tensor_to_write> t = {
      tensor("base_model.model.m.q.lora_A.weight", 2, 3),
      tensor("base_model.model.m.q.lora_B.weight", 5, 2)};
  if (dora)
    t.push_back(tensor("base_model.model.m.q.lora_magnitude_vector", 5, 1, dtype::float32, true));
  return t;
}

TEST(peft_read_error_test, the_good_directories_read) {
  const bad_dir lora(config_json(), good_tensors());
  EXPECT_EQ(read_peft_adapter<float>(lora.path()).modules.at(0).b.rows(), 5);
  const bad_dir dora(config_json({}, true), good_tensors(true));
  EXPECT_EQ(read_peft_adapter<float>(dora.path()).modules.at(0).magnitude.size(), 5);
}

TEST(peft_read_error_test, files) {
  const scratch_dir out;
  expect_read_error(out.path() / "missing", "which does not exist");
  write_text(out.path() / "file", "x");
  expect_read_error(out.path() / "file", "which is not a directory");
  expect_read_error(out.path(), "with no adapter_config.json");
  write_text(out.path() / "adapter_config.json", config_json());
  expect_read_error(out.path(), "with no adapter_model.safetensors");
  write_text(out.path() / "adapter_model.bin", "pickle");
  expect_read_error(out.path(), "with adapter_model.bin but no adapter_model.safetensors");
  write_text(out.path() / "adapter_model.safetensors", "short");
  expect_read_error(
      out.path(),
      "whose adapter_model.safetensors is invalid (lowrank::io::safetensors_file::read");
  fs::remove(out.path() / "adapter_config.json");
  fs::create_directory(out.path() / "adapter_config.json");
  expect_read_error(out.path(), "whose adapter_config.json is not a regular file");
}

// Only regular files are read: a FIFO would block the reader forever and /dev/zero would be
// read until memory runs out; both are refused at once.
TEST(peft_read_error_test, special_files_are_refused_promptly) {
  const bad_dir dir(config_json(), good_tensors());
  const fs::path weights = dir.path() / "adapter_model.safetensors";
  const fs::path config = dir.path() / "adapter_config.json";
  const auto read = [&] { static_cast<void>(read_peft_adapter<float>(dir.path())); };
  fs::rename(weights, dir.path() / "weights");
  ASSERT_EQ(::mkfifo(weights.c_str(), 0600), 0);
  std::string message = io_test::prompt_error_message(read, weights);
  EXPECT_NE(message.find("whose adapter_model.safetensors is not a regular file"),
            std::string::npos)
      << message;
  fs::remove(weights);
  fs::create_symlink("/dev/zero", weights);
  message = io_test::prompt_error_message(read);
  EXPECT_NE(message.find("whose adapter_model.safetensors is not a regular file"),
            std::string::npos)
      << message;
  fs::remove(weights);
  fs::rename(dir.path() / "weights", weights);

  fs::remove(config);
  ASSERT_EQ(::mkfifo(config.c_str(), 0600), 0);
  message = io_test::prompt_error_message(read, config);
  EXPECT_NE(message.find("whose adapter_config.json is not a regular file (it is a FIFO)"),
            std::string::npos)
      << message;
  fs::remove(config);
  fs::create_symlink("/dev/zero", config);
  message = io_test::prompt_error_message(read);
  EXPECT_NE(
      message.find("whose adapter_config.json is not a regular file (it is a character device)"),
      std::string::npos)
      << message;
}

TEST(peft_read_error_test, bad_json) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"{\"peft_type\": \"LORA\", ", "is not JSON"},
      {"[1, 2]", "a JSON object"},
      {"{\"peft_type\": \"LORA\", \"r\": 2, \"r\": 3}", "the key 'r' twice"},
      {"{\"peft_type\": \"LORA\", \"r\": NaN}", "is not JSON"},
      {"", "is not JSON"},
  };
  for (const auto& [text, detail] : cases) {
    SCOPED_TRACE(text);
    scratch_dir out;
    write_text(out.path() / "adapter_config.json", text);
    lowrank::io::write_safetensors(out.path() / "adapter_model.safetensors", good_tensors());
    expect_read_error(out.path(), detail);
  }
}

// The reader copies and writes the config's unknown fields recursively: a config nested
// deeper than 64 is refused before any of that (and before nlohmann's parser builds it).
TEST(peft_read_error_test, deeply_nested_config) {
  const auto nested = [](int depth) {
    return std::string(static_cast<std::size_t>(depth), '[') +
           std::string(static_cast<std::size_t>(depth), ']');
  };
  const auto with_field = [](const std::string& value) {
    std::string text = config_json();
    return text.substr(0, text.rfind('}')) + ", \"deep\": " + value + "}";
  };
  for (const int depth : {64, 100000}) {  // the root object, then these arrays
    SCOPED_TRACE(depth);
    const bad_dir dir(with_field(nested(depth)), good_tensors());
    const bool done = finishes_within(std::chrono::seconds(10), [path = dir.path()] {
      expect_read_error(path,
                        "whose adapter_config.json nests objects and arrays more than 64 deep; "
                        "expected an adapter_config.json nested at most 64 deep");
    });
    EXPECT_TRUE(done);
  }
  // 63 arrays in the root object: read, and written back the same.
  const bad_dir fine(with_field(nested(63) + ", \"s\": \"[[[{{{\\\"\""), good_tensors());
  const peft_adapter<double> adapter = read_peft_adapter<double>(fine.path());
  EXPECT_EQ(adapter.config.extra.at("s"), "[[[{{{\"");
  const scratch_dir out;
  write_peft_adapter(out.path(), adapter);
  EXPECT_EQ(read_peft_adapter<double>(out.path()).config.extra, adapter.config.extra);
  // The writer refuses an extra nested deeper than a file may be.
  peft_adapter<double> deep = small_adapter();
  deep.config.extra["deep"] = json::parse(nested(64));
  expect_write_error(out.path(), deep, "config.extra nesting objects and arrays more than 64 deep");
}

// A module name over 4096 bytes (std::regex overflowed its stack on long names) is refused.
TEST(peft_read_error_test, long_module_name) {
  const std::string module = "m." + std::string(20000, 'q');
  const bad_dir dir(config_json({{"rank_pattern", {{"(q|x)*", 2}}}}),
                    {tensor("base_model.model." + module + ".lora_A.weight", 2, 3),
                     tensor("base_model.model." + module + ".lora_B.weight", 5, 2)});
  EXPECT_TRUE(finishes_within(std::chrono::seconds(10), [path = dir.path()] {
    expect_read_error(path,
                      "whose module name is 20002 bytes long; expected module names of at most "
                      "4096 bytes");
  }));
}

TEST(peft_read_error_test, bad_config_fields) {
  const std::vector<std::pair<json, std::string>> cases = {
      {{{"peft_type", "<erase>"}}, "no peft_type"},
      {{{"peft_type", "LOHA"}}, "peft_type \"LOHA\""},
      {{{"r", 0}}, "r 0; expected r >= 1"},
      {{{"r", -2}}, "r -2"},
      {{{"r", 2.0}}, "r = 2.0; expected a JSON integer"},
      {{{"r", "2"}}, "r = \"2\""},
      {{{"lora_alpha", "4"}}, "lora_alpha = \"4\"; expected a JSON number"},
      {{{"lora_alpha", nullptr}}, "lora_alpha = null"},
      {{{"lora_dropout", 1.5}}, "lora_dropout 1.5"},
      {{{"use_dora", "yes"}}, "use_dora = \"yes\"; expected true or false"},
      {{{"use_rslora", 1}}, "use_rslora = 1"},
      {{{"rank_pattern", json::array()}}, "rank_pattern = []"},
      {{{"rank_pattern", {{"q", 0}}}}, "rank_pattern['q'] 0"},
      {{{"rank_pattern", {{"q", 1.5}}}}, "rank_pattern['q'] = 1.5"},
      {{{"alpha_pattern", {{"q", "big"}}}}, "alpha_pattern['q'] = \"big\""},
      {{{"target_modules", {"q", 3}}}, "target_modules = [\"q\",3]"},
      {{{"bias", "all"}}, "bias \"all\""},
      {{{"lora_bias", true}}, "lora_bias true"},
      {{{"use_qalora", true}}, "use_qalora true"},
      {{{"target_parameters", {"experts.w"}}}, "target_parameters [\"experts.w\"]"},
      {{{"kasa_config", json::object({{"x", 1}})}}, "kasa_config {\"x\":1}"},
      {{{"rank_pattern", {{"nothing", 1}}}},
       "rank_pattern key 'nothing', which matches none of its 1 modules"},
      {{{"alpha_pattern", {{"p$", 1}}}}, "alpha_pattern key 'p$', which matches none"},
      {{{"rank_pattern", {{"q(", 1}}}},
       "rank_pattern with the key 'q(', which is not a regular expression"},
  };
  for (const auto& [changes, detail] : cases) {
    SCOPED_TRACE(changes.dump());
    const bad_dir dir(config_json(changes), good_tensors());
    expect_read_error(dir.path(), detail);
  }
  // Off and absent are fine: null / false variants, string target_modules (kept in extra).
  const bad_dir fine(config_json({{"lora_bias", false},
                                  {"use_bdlora", nullptr},
                                  {"target_parameters", nullptr},
                                  {"target_modules", ".*\\.q"},
                                  {"bias", "none"},
                                  {"rank_pattern", nullptr},
                                  {"r", "<erase>"},
                                  {"lora_alpha", "<erase>"}}),
                     {tensor("base_model.model.m.q.lora_A.weight", 8, 3),
                      tensor("base_model.model.m.q.lora_B.weight", 5, 8)});
  const peft_adapter<double> adapter = read_peft_adapter<double>(fine.path());
  EXPECT_EQ(adapter.config.r, 8);  // PEFT's defaults
  EXPECT_EQ(adapter.config.lora_alpha, 8.0);
  EXPECT_TRUE(adapter.config.target_modules.empty());
  EXPECT_EQ(adapter.config.extra.at("target_modules"), ".*\\.q");
  // ... and written back as they were.
  const scratch_dir out;
  write_peft_adapter(out.path(), adapter);
  const json written = json::parse(read_text(out.path() / "adapter_config.json"));
  EXPECT_EQ(written.at("target_modules"), ".*\\.q");
  EXPECT_EQ(written.at("use_bdlora"), nullptr);
}

TEST(peft_read_error_test, bad_tensors) {
  using tensors = std::vector<lowrank::io::tensor_to_write>;
  const std::string a = "base_model.model.m.q.lora_A.weight";
  const std::string b = "base_model.model.m.q.lora_B.weight";
  const std::string m = "base_model.model.m.q.lora_magnitude_vector";
  struct bad {
    bool dora;
    tensors t;
    std::string detail;
  };
  const std::vector<bad> cases = {
      {false, {tensor(a, 2, 3)}, "the module 'm.q' without lora_B.weight"},
      {false, {tensor(b, 5, 2)}, "the module 'm.q' without lora_A.weight"},
      {true, {tensor(a, 2, 3), tensor(b, 5, 2)}, "without lora_magnitude_vector"},
      {false,
       {tensor(a, 2, 3), tensor(b, 5, 2), tensor(m, 5, 1, dtype::float32, true)},
       "the tensor 'base_model.model.m.q.lora_magnitude_vector'"},
      {false,
       {tensor(a, 2, 3), tensor(b, 5, 2),
        tensor("base_model.model.m.q.lora_B.bias", 5, 1, dtype::float32, true)},
       "the tensor 'base_model.model.m.q.lora_B.bias'"},
      {false,
       {tensor("model.m.q.lora_A.weight", 2, 3), tensor(b, 5, 2)},
       "the tensor 'model.m.q.lora_A.weight'"},
      {false,
       {tensor("base_model.model.m.q.lora_A.default.weight", 2, 3), tensor(b, 5, 2)},
       "the tensor 'base_model.model.m.q.lora_A.default.weight'"},
      {false,
       {tensor("base_model.model..lora_A.weight", 2, 3)},
       "the tensor 'base_model.model..lora_A.weight'"},
      {false,
       {tensor(a, 3, 3), tensor(b, 5, 2)},
       "whose lora_A.weight has shape [3, 3]; expected shape [2, in]"},
      {false,
       {tensor(a, 2, 3), tensor(b, 5, 3)},
       "whose lora_B.weight has shape [5, 3]; expected shape [out, 2]"},
      {false,
       {tensor(a, 2, 1, dtype::float32, true), tensor(b, 5, 2)},
       "whose lora_A.weight has shape [2]"},
      {false, {tensor(a, 2, 0), tensor(b, 5, 2)}, "whose lora_A.weight has shape [2, 0]"},
      {true,
       {tensor(a, 2, 3), tensor(b, 5, 2), tensor(m, 4, 1, dtype::float32, true)},
       "whose lora_magnitude_vector has shape [4]; expected shape [5]"},
      {true,
       {tensor(a, 2, 3), tensor(b, 5, 2), tensor(m, 5, 1)},
       "whose lora_magnitude_vector has shape [5, 1]"},
      {false, {}, "has no LoRA tensors"},
      {false,
       {tensor(a, 2, 3), tensor(b, 5, 2), tensor("base_model.model.m.k.lora_A.weight", 2, 3)},
       "the module 'm.k' without lora_B.weight"},
  };
  for (const bad& c : cases) {
    SCOPED_TRACE(c.detail);
    const bad_dir dir(config_json({}, c.dora), c.t);
    expect_read_error(dir.path(), c.detail);
  }
}

TEST(peft_read_error_test, unknown_dtype) {
  // An I32 tensor named like a factor: written by hand (write_safetensors writes floats).
  const scratch_dir out;
  write_text(out.path() / "adapter_config.json", config_json());
  const std::string header =
      R"({"base_model.model.m.q.lora_A.weight":{"dtype":"I32","shape":[2,3],"data_offsets":[0,24]},)"
      R"("base_model.model.m.q.lora_B.weight":{"dtype":"F32","shape":[5,2],"data_offsets":[24,64]}})";
  std::string file;
  for (int i = 0; i < 8; ++i) file += static_cast<char>((header.size() >> (8 * i)) & 0xff);
  file += header;
  file += std::string(64, '\0');
  write_text(out.path() / "adapter_model.safetensors", file);
  expect_read_error(out.path(), "of dtype 'I32'; expected tensors of dtype F32, F16, BF16 or F64");
}

TEST(peft_read_error_test, non_finite_values) {
  std::vector<lowrank::io::tensor_to_write> t = good_tensors();
  t[1].values(3, 1) = std::numeric_limits<double>::quiet_NaN();
  const bad_dir nan(config_json(), t);
  std::string message =
      numerical_error_message([&] { static_cast<void>(read_peft_adapter<double>(nan.path())); });
  EXPECT_TRUE(message.starts_with(std::string(read_function) + ": argument 'dir' is ")) << message;
  EXPECT_NE(message.find("lora_B.weight', which holds a value that is not finite"),
            std::string::npos)
      << message;

  // F64 beyond float's range: finite as double, infinite as float.
  t = good_tensors();
  t[0].type = dtype::float64;
  t[0].values(1, 2) = 1e300;
  const bad_dir big(config_json(), t);
  EXPECT_EQ(read_peft_adapter<double>(big.path()).modules[0].a(1, 2), 1e300);
  message =
      numerical_error_message([&] { static_cast<void>(read_peft_adapter<float>(big.path())); });
  EXPECT_NE(message.find("not finite as float"), std::string::npos) << message;
}

// --------------------------------------------------------------- write errors

TEST(peft_write_error_test, adapter) {
  const scratch_dir out;
  const fs::path dir = out.path() / "adapter";
  using edit = std::function<void(peft_adapter<double>&)>;
  const std::vector<std::pair<edit, std::string>> cases = {
      {[](auto& a) { a.modules.clear(); }, "no modules"},
      {[](auto& a) { a.modules[0].rank = 2; },
       "the module 'block.0.first' of rank 2; expected the rank the config gives it: 3"},
      {[](auto& a) { a.modules[1].alpha = 6; },
       "the module 'block.0.second' of alpha 6; expected the alpha the config gives it: 1.5"},
      {[](auto& a) { a.modules[0].use_rslora = true; }, "with use_rslora true"},
      {[](auto& a) { a.modules[0].a.resize(2, 7); }, "(A 2 x 7, B 5 x 3, magnitude 0)"},
      {[](auto& a) { a.modules[0].b.resize(5, 2); }, "(A 3 x 7, B 5 x 2, magnitude 0)"},
      {[](auto& a) { a.modules[0].a.resize(3, 0); }, "(A 3 x 0"},
      {[](auto& a) { a.modules[0].magnitude = Eigen::VectorXd::Ones(5); },
       "an empty magnitude (use_dora is false)"},
      {[](auto& a) { a.config.use_dora = true; }, "a magnitude of out = B's rows entries"},
      {[](auto& a) {
         a.modules[1].name = "block.0.first";
         a.modules[1] = a.modules[0];
       },
       "the module 'block.0.first' twice"},
      {[](auto& a) { a.modules[0].name = ""; }, "the module '' as a name"},
      {[](auto& a) { a.modules[0].name = "block..first"; }, "as a name"},
      {[](auto& a) { a.config.rank_pattern.emplace_back("third", 1); },
       "config.rank_pattern key 'third', which matches none of its 2 modules"},
      {[](auto& a) { a.config.alpha_pattern.emplace_back("(", 1); },
       "config.alpha_pattern with the key '(', which is not a regular expression"},
      {[](auto& a) { a.config.rank_pattern.emplace_back("second", 2); },
       "config.rank_pattern with the key 'second' twice"},
      {[](auto& a) { a.config.r = 0; }, "config.r 0; expected r >= 1"},
      {[](auto& a) { a.config.lora_alpha = std::nan(""); }, "config.lora_alpha nan"},
      {[](auto& a) { a.config.lora_dropout = -0.5; }, "config.lora_dropout -0.5"},
      {[](auto& a) { a.config.rank_pattern[0].second = 0; }, "config.rank_pattern['second'] 0"},
      {[](auto& a) { a.config.alpha_pattern[0].second = INFINITY; },
       "config.alpha_pattern['block\\\\.[0-9]+\\\\.second'] inf"},
      {[](auto& a) { a.config.extra = json::array(); }, "config.extra []; expected a JSON object"},
      {[](auto& a) { a.config.extra["r"] = 4; }, "config.extra with the field 'r'"},
      {[](auto& a) { a.config.extra["peft_type"] = "LOHA"; }, "config.peft_type \"LOHA\""},
      {[](auto& a) { a.config.extra["use_qalora"] = true; }, "config.use_qalora true"},
      {[](auto& a) { a.config.extra["target_modules"] = {"x"}; },
       "config.extra target_modules [\"x\"]"},
      {[](auto& a) {
         a.config.target_modules = {"first"};
         a.config.extra["target_modules"] = "x";
       },
       "target_modules both"},
      {[](auto& a) { a.config.target_modules = {""}; }, "config.target_modules with an empty name"},
      {[](auto& a) { a.config.extra["base_model_name_or_path"] = "\xff"; },
       "cannot be written as JSON"},
  };
  for (const auto& [change, detail] : cases) {
    SCOPED_TRACE(detail);
    peft_adapter<double> adapter = small_adapter();
    change(adapter);
    expect_write_error(dir, adapter, detail);
    EXPECT_FALSE(fs::exists(dir));  // validated before any file is touched
  }
}

TEST(peft_write_error_test, stored_dtype_and_values) {
  const scratch_dir out;
  const fs::path dir = out.path() / "adapter";
  write_peft_adapter(dir, small_adapter());
  const std::string config_before = read_text(dir / "adapter_config.json");
  const std::string weights_before = read_text(dir / "adapter_model.safetensors");

  expect_write_error(dir, small_adapter(), "9", "stored", static_cast<dtype>(9));
  peft_adapter<double> big = small_adapter();
  big.modules[1].b(2, 1) = 65520.0;  // rounds to infinity in F16
  expect_write_error(dir, big,
                     "F16 for an adapter of 2 modules with the module 'block.0.second' whose "
                     "tensor 'base_model.model.block.0.second.lora_B.weight' holds 65520 at (2, 1)",
                     "stored", dtype::float16);
  big.modules[1].b(2, 1) = 1e39;
  expect_write_error(dir, big, "F32 for", "stored", dtype::float32);
  write_peft_adapter(out.path() / "f64", big, dtype::float64);  // fine in F64
  big.modules[1].b(2, 1) = 0x1.fffffefffffffp127;               // rounds to FLT_MAX
  write_peft_adapter(out.path() / "f32", big, dtype::float32);

  peft_adapter<double> nan = small_adapter(true);
  nan.modules[0].magnitude(2) = std::numeric_limits<double>::quiet_NaN();
  const std::string message = numerical_error_message([&] { write_peft_adapter(dir, nan); });
  EXPECT_TRUE(message.starts_with(std::string(write_function) + ": argument 'adapter' is "))
      << message;
  EXPECT_NE(message.find("lora_magnitude_vector' holds nan at (2, 0)"), std::string::npos)
      << message;

  // Nothing changed, nothing left behind.
  EXPECT_EQ(read_text(dir / "adapter_config.json"), config_before);
  EXPECT_EQ(read_text(dir / "adapter_model.safetensors"), weights_before);
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator()), 2);
}

TEST(peft_write_error_test, directory) {
  const scratch_dir out;
  write_text(out.path() / "file", "x");
  const std::string message =
      invalid_argument_message([&] { write_peft_adapter(out.path() / "file", small_adapter()); });
  EXPECT_TRUE(message.starts_with(std::string(write_function) + ": argument 'dir' is ")) << message;
  EXPECT_NE(message.find("which is not a directory and cannot be created"), std::string::npos)
      << message;

  // A directory where the weights go is refused before anything is written, and the
  // config is not replaced either.
  const fs::path dir = out.path() / "adapter";
  write_peft_adapter(dir, small_adapter(true));
  const std::string config_before = read_text(dir / "adapter_config.json");
  fs::remove(dir / "adapter_model.safetensors");
  fs::create_directory(dir / "adapter_model.safetensors");
  write_text(dir / "adapter_model.safetensors" / "x", "keep");
  const std::string failed =
      invalid_argument_message([&] { write_peft_adapter(dir, small_adapter(false)); });
  EXPECT_TRUE(failed.starts_with(std::string(write_function) + ": argument 'dir' is ")) << failed;
  EXPECT_NE(failed.find("whose adapter_model.safetensors is a directory, not a regular file"),
            std::string::npos)
      << failed;
  EXPECT_EQ(read_text(dir / "adapter_config.json"), config_before);
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator()), 2);
}

// --------------------------------------------------------------- all-or-nothing updates

// Everything under `dir`: each entry (relative path) with its kind, mode and bytes or link
// target, and "." with the directory's mode; empty when `dir` does not exist.
std::map<std::string, std::string> state_of(const fs::path& dir) {
  std::map<std::string, std::string> out;
  struct stat st {};
  if (::lstat(dir.c_str(), &st) != 0) return out;
  out["."] = std::to_string(st.st_mode);
  for (auto it = fs::recursive_directory_iterator(dir); it != fs::recursive_directory_iterator();
       ++it) {
    const fs::path path = it->path();
    EXPECT_EQ(::lstat(path.c_str(), &st), 0);
    std::string value = std::to_string(st.st_mode) + ":";
    if (S_ISLNK(st.st_mode)) value += fs::read_symlink(path).string();
    if (S_ISREG(st.st_mode)) value += read_text(path);
    out[fs::relative(path, dir).string()] = value;
  }
  return out;
}

std::vector<std::string> names_in(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& entry : fs::directory_iterator(dir)) {
    out.push_back(entry.path().filename().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// The old bug without a hook: the config cannot be replaced (a directory is in its place),
// and the weights must not have been replaced either.
TEST(peft_update_test, a_config_that_cannot_be_replaced_changes_nothing) {
  const scratch_dir out;
  const fs::path dir = out.path() / "adapter";
  write_peft_adapter(dir, small_adapter(false));
  fs::remove(dir / "adapter_config.json");
  fs::create_directories(dir / "adapter_config.json" / "inside");
  const auto before = state_of(dir);
  const std::string message =
      invalid_argument_message([&] { write_peft_adapter(dir, small_adapter(true)); });
  EXPECT_NE(message.find("whose adapter_config.json is a directory, not a regular file"),
            std::string::npos)
      << message;
  EXPECT_EQ(state_of(dir), before);
  EXPECT_EQ(names_in(out.path()), std::vector<std::string>{"adapter"});
}

// The three routes of an update (a new directory, an exchange, in place), each with a
// failure injected at every step in turn (the test hooks of lowrank/io/detail/files.hpp):
// a write that throws leaves the directory as it was, unless its message says that the
// update was made and only a sync failed; one that returns (a route that fell back to
// another) made the whole update. Nothing is left behind either way.
TEST(peft_update_test, a_failure_at_any_step_changes_nothing) {
  struct route {
    std::string name;
    std::function<void(const fs::path&)> setup;  // of the directory `dir`
    std::string expected_call;
  };
  const std::vector<route> routes = {
      {"new directory", [](const fs::path&) {}, "mkdir"},
      {"exchange",
       [](const fs::path& dir) {
         write_peft_adapter(dir, small_adapter(false));
         write_text(dir / "README.md", "kept");
         fs::permissions(dir / "README.md", fs::perms(0600));
         fs::permissions(dir / "adapter_config.json", fs::perms(0640));
         fs::permissions(dir, fs::perms(0750));
       },
       "exchange"},
      {"in place",
       [](const fs::path& dir) {
         write_peft_adapter(dir, small_adapter(false));
         fs::create_directories(dir / "npy");
         write_text(dir / "npy" / "a.npy", "kept");
         fs::permissions(dir / "adapter_model.safetensors", fs::perms(0600));
       },
       "link"},
  };
  auto& hooks = lowrank::io::detail::test_hooks();
  for (const route& r : routes) {
    SCOPED_TRACE(r.name);
    // A successful update: its steps, and what it makes.
    std::vector<std::string> calls;
    std::map<std::string, std::string> after;
    {
      const scratch_dir out;
      const fs::path dir = out.path() / "p" / "adapter";
      fs::create_directories(out.path() / "p");
      r.setup(dir);
      hooks.fail = [&](std::string_view call, const fs::path&) {
        calls.emplace_back(call);
        return 0;
      };
      write_peft_adapter(dir, small_adapter(true));
      hooks = {};
      after = state_of(dir);
      EXPECT_EQ(names_in(out.path() / "p"), std::vector<std::string>{"adapter"});
    }
    ASSERT_NE(std::find(calls.begin(), calls.end(), r.expected_call), calls.end());
    std::size_t threw = 0;
    for (std::size_t k = 0; k < calls.size(); ++k) {
      SCOPED_TRACE("failing step " + std::to_string(k) + " (" + calls[k] + ")");
      const scratch_dir out;
      const fs::path dir = out.path() / "p" / "adapter";
      fs::create_directories(out.path() / "p");
      r.setup(dir);
      const auto before = state_of(dir);
      hooks.fail = [k, n = std::size_t{0}](std::string_view, const fs::path&) mutable {
        return n++ == k ? EIO : 0;
      };
      std::string message;
      try {
        write_peft_adapter(dir, small_adapter(true));
      } catch (const lowrank::invalid_argument& e) {
        message = e.what();
      }
      hooks = {};
      if (message.empty()) {
        EXPECT_EQ(state_of(dir), after);
      } else {
        ++threw;
        EXPECT_TRUE(message.starts_with(std::string(write_function) + ": argument 'dir' is "))
            << message;
        EXPECT_NE(message.find("(Input/output error)"), std::string::npos) << message;
        const bool made = message.find(", but whose") != std::string::npos;
        EXPECT_EQ(state_of(dir), made ? after : before) << message;
      }
      EXPECT_EQ(names_in(out.path() / "p"), state_of(dir).empty()
                                                ? std::vector<std::string>{}
                                                : std::vector<std::string>{"adapter"});
    }
    EXPECT_GT(threw, calls.size() / 2);
  }
}

// A rename that fails: the exchange is not available (EXDEV: the file system cannot), and
// of the renames in place the second (the config's, after the weights') fails; the weights
// are put back.
TEST(peft_update_test, a_rename_that_fails_changes_nothing) {
  const scratch_dir out;
  const fs::path dir = out.path() / "adapter";
  write_peft_adapter(dir, small_adapter(false));
  const auto before = state_of(dir);
  std::vector<std::string> renamed;  // in `dir`
  lowrank::io::detail::test_hooks().fail = [&](std::string_view call, const fs::path& path) {
    if (call == "exchange") return EXDEV;
    if (call != "rename" || path.parent_path() != dir) return 0;
    renamed.push_back(path.filename().string());
    return renamed.size() == 2 ? EIO : 0;
  };
  const std::string message =
      invalid_argument_message([&] { write_peft_adapter(dir, small_adapter(true)); });
  lowrank::io::detail::test_hooks() = {};
  ASSERT_EQ(renamed.size(), 2U);
  EXPECT_TRUE(renamed[0].starts_with("adapter_model.safetensors.")) << renamed[0];
  EXPECT_TRUE(renamed[1].starts_with("adapter_config.json.")) << renamed[1];
  EXPECT_NE(message.find(", whose adapter_config.json cannot be replaced by the written file "
                         "(Input/output error); expected"),
            std::string::npos)
      << message;
  EXPECT_EQ(state_of(dir), before);
  EXPECT_EQ(names_in(out.path()), std::vector<std::string>{"adapter"});
}

// A full disk (a small tmpfs): the new config does not fit, on either route.
TEST(peft_update_test, a_full_disk_changes_nothing) {
  const scratch_dir out;
  const io_test::tmpfs_mount disk(out.path() / "disk", "size=128k");
  if (!disk.mounted()) GTEST_SKIP() << "cannot mount a tmpfs here (not root?)";
  peft_adapter<double> big = small_adapter(true);
  big.config.extra["blob"] = std::string(200000, 'x');
  for (const bool subdirectory : {false, true}) {
    SCOPED_TRACE(subdirectory ? "in place" : "exchange");
    const fs::path dir = out.path() / "disk" / "adapter";
    write_peft_adapter(dir, small_adapter(false));
    if (subdirectory) fs::create_directories(dir / "sub");
    const auto before = state_of(dir);
    const std::string message = invalid_argument_message([&] { write_peft_adapter(dir, big); });
    EXPECT_NE(message.find("(No space left on device)"), std::string::npos) << message;
    EXPECT_EQ(state_of(dir), before);
    EXPECT_EQ(names_in(out.path() / "disk"), std::vector<std::string>{"adapter"});
    fs::remove_all(dir);
  }
}

// Other files are kept (as the same files), the directory keeps its mode, and symbolic links
// are written through: at the directory, and at a file (which takes the in-place route).
TEST(peft_update_test, keeps_other_files_modes_and_links) {
  const scratch_dir out;
  const fs::path real = out.path() / "real";
  write_peft_adapter(real, small_adapter(false));
  write_text(real / "README.md", "kept");
  fs::permissions(real, fs::perms(0750));
  fs::permissions(real / "adapter_config.json", fs::perms(0600));
  struct stat st {};
  ASSERT_EQ(::stat((real / "README.md").c_str(), &st), 0);
  const ino_t readme = st.st_ino;
  fs::create_directory_symlink("real", out.path() / "link");
  write_peft_adapter(out.path() / "link", small_adapter(true));
  EXPECT_TRUE(fs::is_symlink(out.path() / "link"));
  EXPECT_TRUE(read_peft_adapter<double>(real).config.use_dora);
  EXPECT_EQ(read_text(real / "README.md"), "kept");
  ASSERT_EQ(::stat((real / "README.md").c_str(), &st), 0);
  EXPECT_EQ(st.st_ino, readme);
  EXPECT_EQ(fs::status(real).permissions(), fs::perms(0750));
  EXPECT_EQ(fs::status(real / "adapter_config.json").permissions(), fs::perms(0600));
  EXPECT_EQ(names_in(real), (std::vector<std::string>{"README.md", "adapter_config.json",
                                                      "adapter_model.safetensors"}));
  EXPECT_EQ(names_in(out.path()), (std::vector<std::string>{"link", "real"}));

  fs::create_directory(out.path() / "shared");
  fs::rename(real / "adapter_config.json", out.path() / "shared" / "config.json");
  fs::create_symlink("../shared/config.json", real / "adapter_config.json");
  write_peft_adapter(real, small_adapter(false));
  EXPECT_TRUE(fs::is_symlink(real / "adapter_config.json"));
  EXPECT_FALSE(read_peft_adapter<double>(real).config.use_dora);
  EXPECT_EQ(fs::status(out.path() / "shared" / "config.json").permissions(), fs::perms(0600));
  EXPECT_EQ(names_in(out.path() / "shared"), std::vector<std::string>{"config.json"});
  EXPECT_EQ(names_in(real), (std::vector<std::string>{"README.md", "adapter_config.json",
                                                      "adapter_model.safetensors"}));
}

}  // namespace
}  // namespace peft_tests
