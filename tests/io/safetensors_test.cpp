// Tests of lowrank/io/safetensors.hpp: files written by Hugging Face's `safetensors` package
// (an independent reference, made by tools/make_safetensors_fixtures.py), the F16 / BF16
// conversions against numpy and exact rational rounding, round trips through
// write_safetensors, and malformed inputs.

#include "lowrank/io/safetensors.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <Eigen/Core>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "io_test_support.hpp"

#ifndef LOWRANK_TEST_FIXTURE_DIR
#error "LOWRANK_TEST_FIXTURE_DIR must name tests/io/fixtures (a string literal)"
#endif

namespace safetensors_tests {
namespace {

namespace fs = std::filesystem;
using io_test::directory_entries;
using io_test::error_message;
using io_test::read_bytes;
using io_test::same_matrix;
using io_test::to_bytes;
using io_test::write_bytes;
using lowrank::io::dtype;
using lowrank::io::safetensors_file;
using lowrank::io::tensor_info;
using lowrank::io::tensor_to_write;
using lowrank::io::write_safetensors;

template <class T>
using matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;

fs::path fixture(std::string_view name) {
  return fs::path(LOWRANK_TEST_FIXTURE_DIR "/safetensors") / name;
}

// The values of the 2-D fixtures (see tools/make_safetensors_fixtures.py).
double grid_value(Eigen::Index i, Eigen::Index j) {
  return 10.0 * static_cast<double>(i) + static_cast<double>(j) + 0.5;
}

// The values of the 1-D fixtures.
double third_value(Eigen::Index i) { return (static_cast<double>(i) + 0.5) / 3.0; }

// The PEFT fixture's LoRA factors.
double lora_a_value(Eigen::Index i, Eigen::Index j) {
  return static_cast<double>(i + 1) / 4.0 - static_cast<double>(j) / 8.0;
}
double lora_b_value(Eigen::Index i, Eigen::Index j) {
  return static_cast<double>(j) / 4.0 - static_cast<double>(i) / 16.0;
}

template <class T, class F>
void expect_values(const matrix<T>& a, Eigen::Index rows, Eigen::Index cols, F value) {
  ASSERT_EQ(a.rows(), rows);
  ASSERT_EQ(a.cols(), cols);
  for (Eigen::Index j = 0; j < cols; ++j) {
    for (Eigen::Index i = 0; i < rows; ++i) {
      EXPECT_EQ(a(i, j), static_cast<T>(value(i, j))) << "at (" << i << ", " << j << ")";
    }
  }
}

// A safetensors file in memory: the little-endian length of `header` (used as given,
// unpadded), the header, then `data`.
std::vector<std::byte> make_file(std::string_view header, std::span<const std::byte> data) {
  std::string out;
  for (int i = 0; i < 8; ++i) {
    out += static_cast<char>((static_cast<std::uint64_t>(header.size()) >> (8 * i)) & 0xff);
  }
  out += header;
  std::vector<std::byte> bytes = to_bytes(out);
  bytes.insert(bytes.end(), data.begin(), data.end());
  return bytes;
}

std::vector<std::byte> make_file(std::string_view header, std::size_t data_bytes) {
  return make_file(header, std::vector<std::byte>(data_bytes, std::byte{0}));
}

// One tensor entry of a header.
std::string entry(std::string_view name, std::string_view type, std::string_view shape,
                  std::string_view offsets) {
  return "\"" + std::string(name) + "\":{\"dtype\":" + std::string(type) +
         ",\"shape\":" + std::string(shape) + ",\"data_offsets\":" + std::string(offsets) + "}";
}

// The header of a file as text (the bytes after the length).
std::string header_text(std::span<const std::byte> bytes) {
  std::uint64_t length = 0;
  for (int i = 0; i < 8; ++i) length |= std::to_integer<std::uint64_t>(bytes[i]) << (8 * i);
  return std::string(reinterpret_cast<const char*>(bytes.data()) + 8, length);
}

template <class T>
std::vector<T> values_of(std::span<const std::byte> bytes) {
  std::vector<T> out(bytes.size() / sizeof(T));
  std::memcpy(out.data(), bytes.data(), out.size() * sizeof(T));
  return out;
}

// Equal values, or NaNs of the same sign.
template <class T>
bool same_value(T a, T b) {
  if (std::isnan(a) || std::isnan(b)) {
    return std::isnan(a) && std::isnan(b) && std::signbit(a) == std::signbit(b);
  }
  return a == b && std::signbit(a) == std::signbit(b);
}

// A fresh directory per test, removed afterwards.
class safetensors_file_test : public io_test::scratch_directory_test {
 protected:
  safetensors_file_test() : scratch_directory_test("lowrank_safetensors_") {}
};

template <class T>
class safetensors_typed_test : public ::testing::Test {};
using scalar_types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(safetensors_typed_test, scalar_types);

// ---------------------------------------------------------------------------------------
// Files written by the `safetensors` package.

TYPED_TEST(safetensors_typed_test, reads_reference_files_of_each_dtype) {
  struct expected {
    std::string_view file;
    std::string_view dtype_name;
    dtype type;
    std::size_t bytes;
  };
  for (const expected& e : {expected{"f32_3x4.safetensors", "F32", dtype::float32, 48},
                            expected{"f64_3x4.safetensors", "F64", dtype::float64, 96},
                            expected{"f16_3x4.safetensors", "F16", dtype::float16, 24},
                            expected{"bf16_3x4.safetensors", "BF16", dtype::bfloat16, 24}}) {
    SCOPED_TRACE(std::string(e.file));
    const safetensors_file f = safetensors_file::read(fixture(e.file));
    ASSERT_EQ(f.tensors().size(), 1U);
    ASSERT_TRUE(f.contains("weight"));
    EXPECT_FALSE(f.contains("bias"));
    const tensor_info& info = f.tensors().at("weight");
    EXPECT_EQ(info.dtype_name, e.dtype_name);
    EXPECT_EQ(info.type, e.type);
    EXPECT_EQ(lowrank::io::name(e.type), e.dtype_name);
    EXPECT_EQ(info.shape, (std::vector<std::int64_t>{3, 4}));
    EXPECT_EQ(info.begin, 0U);
    EXPECT_EQ(info.end, e.bytes);
    EXPECT_EQ(f.tensor_bytes("weight").size(), e.bytes);
    EXPECT_TRUE(f.metadata().empty());
    // The grid is exact in every dtype, and row-major bytes become a 3 x 4 matrix.
    expect_values(f.template matrix<TypeParam>("weight"), 3, 4, grid_value);
  }
}

TYPED_TEST(safetensors_typed_test, reads_reference_vectors_empty_tensors_and_metadata) {
  const safetensors_file f = safetensors_file::read(fixture("vectors.safetensors"));
  EXPECT_EQ(f.metadata(), (std::map<std::string, std::string>{{"format", "np"},
                                                              {"note", "1-D and empty tensors"}}));
  EXPECT_EQ(f.tensors().at("bias").shape, (std::vector<std::int64_t>{5}));
  const auto third = [](Eigen::Index i, Eigen::Index) { return third_value(i); };
  // F64 -> float rounds to nearest, exactly as static_cast does.
  expect_values(f.template matrix<TypeParam>("bias"), 5, 1, third);
  const matrix<TypeParam> bias32 = f.template matrix<TypeParam>("bias32");
  ASSERT_EQ(bias32.rows(), 5);
  ASSERT_EQ(bias32.cols(), 1);
  for (Eigen::Index i = 0; i < 5; ++i) {
    EXPECT_EQ(bias32(i, 0), static_cast<TypeParam>(static_cast<float>(third_value(i))));
  }
  const matrix<TypeParam> empty = f.template matrix<TypeParam>("empty");
  EXPECT_EQ(empty.rows(), 0);
  EXPECT_EQ(empty.cols(), 3);
  const matrix<TypeParam> empty_1d = f.template matrix<TypeParam>("empty_1d");
  EXPECT_EQ(empty_1d.rows(), 0);
  EXPECT_EQ(empty_1d.cols(), 1);
  EXPECT_EQ(f.tensors().at("empty").begin, f.tensors().at("empty").end);
}

TYPED_TEST(safetensors_typed_test, reads_a_reference_peft_adapter) {
  const safetensors_file f = safetensors_file::read(fixture("peft_adapter.safetensors"));
  EXPECT_EQ(f.metadata(),
            (std::map<std::string, std::string>{{"format", "pt"}, {"peft_type", "LORA"}}));
  EXPECT_EQ(f.tensors().size(), 8U);
  const std::string prefix = "base_model.model.model.layers.0.self_attn.";
  // A is r x in (4 x 6), B is out x r (5 x 4), as PEFT stores them, in four dtypes.
  expect_values(f.template matrix<TypeParam>(prefix + "q_proj.lora_A.weight"), 4, 6, lora_a_value);
  expect_values(f.template matrix<TypeParam>(prefix + "q_proj.lora_B.weight"), 5, 4, lora_b_value);
  expect_values(f.template matrix<TypeParam>(prefix + "v_proj.lora_A.weight"), 4, 6, lora_a_value);
  expect_values(f.template matrix<TypeParam>(prefix + "v_proj.lora_B.weight"), 5, 4, lora_b_value);
  EXPECT_EQ(f.tensors().at(prefix + "v_proj.lora_A.weight").type, dtype::float16);
  EXPECT_EQ(f.tensors().at(prefix + "v_proj.lora_B.weight").type, dtype::bfloat16);

  // Parsed but not converted: integer and boolean tensors, a 3-D tensor, a scalar.
  const tensor_info& ids = f.tensors().at("position_ids");
  EXPECT_EQ(ids.dtype_name, "I64");
  EXPECT_FALSE(ids.type.has_value());
  EXPECT_EQ(ids.shape, (std::vector<std::int64_t>{1, 7}));
  EXPECT_EQ(values_of<std::int64_t>(f.tensor_bytes("position_ids")),
            (std::vector<std::int64_t>{0, 1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(f.tensors().at("mask").dtype_name, "BOOL");
  EXPECT_EQ(f.tensor_bytes("mask").size(), 3U);
  const std::string i64 =
      error_message([&] { static_cast<void>(f.template matrix<TypeParam>("position_ids")); });
  EXPECT_EQ(i64,
            "lowrank::io::safetensors_file::matrix: argument 'name' is 'position_ids', a "
            "tensor of dtype 'I64' and shape [1, 7] in \"" +
                fixture("peft_adapter.safetensors").string() +
                "\"; expected a tensor of dtype 'F32', 'F16', 'BF16' or 'F64'");
  EXPECT_THROW(static_cast<void>(f.template matrix<TypeParam>("mask")), lowrank::invalid_argument);
  const std::string cube =
      error_message([&] { static_cast<void>(f.template matrix<TypeParam>("cube")); });
  EXPECT_NE(cube.find("'cube', a tensor of dtype 'F32' and shape [2, 3, 2] in"), std::string::npos)
      << cube;
  EXPECT_NE(cube.find("; expected a 1-D or 2-D tensor"), std::string::npos) << cube;
  EXPECT_EQ(f.tensors().at("scale").shape, std::vector<std::int64_t>{});
  EXPECT_EQ(values_of<double>(f.tensor_bytes("scale")), std::vector<double>{2.5});
  EXPECT_THROW(static_cast<void>(f.template matrix<TypeParam>("scale")), lowrank::invalid_argument);

  const std::string missing =
      error_message([&] { static_cast<void>(f.template matrix<TypeParam>("lora_A")); });
  EXPECT_EQ(missing.rfind("lowrank::io::safetensors_file::matrix: argument 'name' is 'lora_A', "
                          "which is not a tensor of \"",
                          0),
            0U)
      << missing;
  EXPECT_NE(missing.find("; expected the name of one of its 8 tensors"), std::string::npos);
  EXPECT_THROW(static_cast<void>(f.tensor_bytes("lora_A")), lowrank::invalid_argument);
}

// ---------------------------------------------------------------------------------------
// F16 and BF16 conversions.

struct special_values {
  std::vector<double> input;
  std::vector<std::uint16_t> f16, bf16;
  std::vector<double> f16_decoded, bf16_decoded;
};

special_values load_special_values() {
  const safetensors_file f = safetensors_file::read(fixture("special_values.safetensors"));
  special_values s;
  s.input = values_of<double>(f.tensor_bytes("input"));
  s.f16 = values_of<std::uint16_t>(f.tensor_bytes("f16"));
  s.bf16 = values_of<std::uint16_t>(f.tensor_bytes("bf16"));
  s.f16_decoded = values_of<double>(f.tensor_bytes("f16_decoded"));
  s.bf16_decoded = values_of<double>(f.tensor_bytes("bf16_decoded"));
  return s;
}

TEST(safetensors_conversion_test, reads_special_values_exactly) {
  const special_values s = load_special_values();
  const safetensors_file f = safetensors_file::read(fixture("special_values.safetensors"));
  ASSERT_GT(s.input.size(), 60U);
  for (const auto& [tensor, expected] :
       {std::pair{"f16", &s.f16_decoded}, std::pair{"bf16", &s.bf16_decoded}}) {
    const matrix<double> d = f.matrix<double>(tensor);
    const matrix<float> x = f.matrix<float>(tensor);
    ASSERT_EQ(d.rows(), static_cast<Eigen::Index>(expected->size()));
    for (Eigen::Index i = 0; i < d.rows(); ++i) {
      const double e = (*expected)[static_cast<std::size_t>(i)];
      EXPECT_TRUE(same_value(d(i, 0), e))
          << tensor << " at " << i << ": " << d(i, 0) << " vs " << e;
      // Every F16 and BF16 value is a float: reading as float is exact too.
      EXPECT_TRUE(same_value(x(i, 0), static_cast<float>(e))) << tensor << " at " << i;
    }
  }
}

TEST_F(safetensors_file_test, writes_special_values_with_the_reference_rounding) {
  // numpy's float64 -> float16 and exact rational rounding to bfloat16, bit for bit:
  // ties to even, one rounding from double, overflow, subnormals, signed zeros, NaN.
  const special_values s = load_special_values();
  const Eigen::Map<const Eigen::VectorXd> input(s.input.data(),
                                                static_cast<Eigen::Index>(s.input.size()));
  const fs::path file = dir_ / "special.safetensors";
  write_safetensors(
      file, {{.name = "f16", .type = dtype::float16, .values = input, .vector_shape = true},
             {.name = "bf16", .type = dtype::bfloat16, .values = input, .vector_shape = true}});
  const safetensors_file f = safetensors_file::read(file);
  const std::vector<std::uint16_t> f16 = values_of<std::uint16_t>(f.tensor_bytes("f16"));
  const std::vector<std::uint16_t> bf16 = values_of<std::uint16_t>(f.tensor_bytes("bf16"));
  ASSERT_EQ(f16.size(), s.input.size());
  ASSERT_EQ(bf16.size(), s.input.size());
  for (std::size_t i = 0; i < s.input.size(); ++i) {
    EXPECT_EQ(f16[i], s.f16[i]) << "F16 of " << s.input[i] << " at " << i;
    EXPECT_EQ(bf16[i], s.bf16[i]) << "BF16 of " << s.input[i] << " at " << i;
  }
}

// The value of a 16-bit pattern by the textbook formula (independent of the header's bit
// manipulation): (-1)^s * 2^(e - bias) * 1.m, or 2^(1 - bias) * 0.m for e = 0.
double decode_by_formula(std::uint16_t bits, int exponent_bits, int mantissa_bits) {
  const int e = (bits >> mantissa_bits) & ((1 << exponent_bits) - 1);
  const int m = bits & ((1 << mantissa_bits) - 1);
  const int bias = (1 << (exponent_bits - 1)) - 1;
  const double sign = (bits & 0x8000) != 0 ? -1.0 : 1.0;
  if (e == (1 << exponent_bits) - 1) {
    return m == 0 ? sign * std::numeric_limits<double>::infinity()
                  : std::numeric_limits<double>::quiet_NaN();
  }
  if (e == 0) return sign * std::ldexp(m, 1 - bias - mantissa_bits);
  return sign * std::ldexp((1 << mantissa_bits) + m, e - bias - mantissa_bits);
}

struct format16 {
  const char* name;
  int exponent_bits;
  int mantissa_bits;
  double (*decode)(std::uint16_t);
  std::uint16_t (*encode)(double);
};

double decode_bfloat16(std::uint16_t b) { return lowrank::io::detail::bfloat16_to_float(b); }

const format16 formats[] = {
    {"F16", 5, 10, lowrank::io::detail::half_to_double, lowrank::io::detail::double_to_half},
    {"BF16", 8, 7, decode_bfloat16, lowrank::io::detail::double_to_bfloat16},
};

TEST(safetensors_conversion_test, every_16_bit_pattern_decodes_and_encodes_back) {
  for (const format16& f : formats) {
    SCOPED_TRACE(f.name);
    const auto quiet = static_cast<std::uint16_t>(1U << (f.mantissa_bits - 1));
    for (std::uint32_t b = 0; b <= 0xffff; ++b) {
      const auto bits = static_cast<std::uint16_t>(b);
      const double x = f.decode(bits);
      const double formula = decode_by_formula(bits, f.exponent_bits, f.mantissa_bits);
      ASSERT_TRUE(std::isnan(x) ? std::isnan(formula) : same_value(x, formula)) << std::hex << b;
      // A NaN comes back quiet, with its sign and payload; every other value exactly.
      const std::uint16_t expected =
          std::isnan(x) ? static_cast<std::uint16_t>(bits | quiet) : bits;
      ASSERT_EQ(f.encode(x), expected) << std::hex << b;
      if (!std::isnan(x)) {
        ASSERT_EQ(f.encode(static_cast<double>(static_cast<float>(x))), bits) << std::hex << b;
      }
    }
  }
}

TEST(safetensors_conversion_test, random_doubles_round_to_nearest_even) {
  // The defining property, checked with exact double arithmetic: the encoding q of x >= 0
  // lies within half a step of x (the midpoints of adjacent 16-bit values are doubles), and
  // on a midpoint q is even; past max + half a step, q is infinity.
  std::mt19937_64 engine(20240611);
  for (const format16& f : formats) {
    SCOPED_TRACE(f.name);
    const int bias = (1 << (f.exponent_bits - 1)) - 1;
    const auto infinity =
        static_cast<std::uint16_t>(((1U << f.exponent_bits) - 1) << f.mantissa_bits);
    const double max = f.decode(static_cast<std::uint16_t>(infinity - 1));
    const double overflow = max + std::ldexp(1.0, bias - f.mantissa_bits - 1);
    std::uniform_int_distribution<int> exponent(-bias - f.mantissa_bits - 3, bias + 2);
    std::uniform_int_distribution<std::uint64_t> mantissa(0, (1ULL << 52) - 1);
    for (int n = 0; n < 200000; ++n) {
      // Random significands; one in four has its low 40 bits cleared, to hit ties.
      std::uint64_t m = mantissa(engine);
      if (n % 4 == 0) m &= ~((1ULL << 40) - 1);
      const double x = std::ldexp(1.0 + std::ldexp(static_cast<double>(m), -52), exponent(engine));
      const std::uint16_t q = f.encode(x);
      ASSERT_EQ(f.encode(-x), q | 0x8000) << x;
      if (x >= overflow) {
        ASSERT_EQ(q, infinity) << x;
        continue;
      }
      ASSERT_LT(q, infinity) << x;
      const double v = f.decode(q);
      const double up = (v + f.decode(static_cast<std::uint16_t>(q + 1))) / 2;
      const double down = q == 0 ? -up : (v + f.decode(static_cast<std::uint16_t>(q - 1))) / 2;
      const double high = q + 1 == infinity ? overflow : up;
      ASSERT_LE(down, x) << x << " -> " << std::hex << q;
      ASSERT_GE(high, x) << x << " -> " << std::hex << q;
      if (x == down || x == high) {
        ASSERT_EQ(q % 2, 0) << x << " is a tie";
      }
    }
  }
}

TEST(safetensors_conversion_test, bfloat16_of_floats_matches_the_float_rounding_trick) {
  // For a double that is a float, one rounding from double and the usual bit trick on the
  // float's bits (add 0x7fff plus the lowest kept bit, truncate) must agree.
  std::mt19937 engine(7);
  for (int n = 0; n < 200000; ++n) {
    auto u = static_cast<std::uint32_t>(engine());
    const float x = std::bit_cast<float>(u);
    if (std::isnan(x)) continue;
    const auto expected = static_cast<std::uint16_t>((u + 0x7fffU + ((u >> 16) & 1U)) >> 16);
    ASSERT_EQ(lowrank::io::detail::double_to_bfloat16(static_cast<double>(x)), expected)
        << std::hex << u;
  }
}

// ---------------------------------------------------------------------------------------
// Round trips through write_safetensors.

matrix<double> random_matrix(Eigen::Index rows, Eigen::Index cols, unsigned seed) {
  std::mt19937 engine(seed);
  std::normal_distribution<double> normal;
  matrix<double> a(rows, cols);
  for (Eigen::Index k = 0; k < a.size(); ++k) a.data()[k] = normal(engine);
  return a;
}

TEST_F(safetensors_file_test, round_trips_every_dtype_and_shape) {
  const fs::path file = dir_ / "a.safetensors";
  unsigned seed = 1;
  for (const auto& [rows, cols] : std::vector<std::pair<Eigen::Index, Eigen::Index>>{
           {1, 1}, {3, 4}, {4, 3}, {1, 7}, {7, 1}, {33, 17}, {0, 3}, {3, 0}, {0, 0}}) {
    SCOPED_TRACE(std::to_string(rows) + " x " + std::to_string(cols));
    const matrix<double> a = random_matrix(rows, cols, seed++);
    write_safetensors(file, {{.name = "f32", .type = dtype::float32, .values = a},
                             {.name = "f64", .type = dtype::float64, .values = a},
                             {.name = "f16", .type = dtype::float16, .values = a},
                             {.name = "bf16", .type = dtype::bfloat16, .values = a}});
    const safetensors_file f = safetensors_file::read(file);
    for (const char* name : {"f32", "f64", "f16", "bf16"}) {
      EXPECT_EQ(f.tensors().at(name).shape, (std::vector<std::int64_t>{rows, cols})) << name;
    }
    // F64 is exact; F32 is exactly the float nearest each value, read back as float or double.
    EXPECT_TRUE(same_matrix(f.matrix<double>("f64"), a));
    EXPECT_TRUE(same_matrix(f.matrix<float>("f32"), matrix<float>(a.cast<float>())));
    EXPECT_TRUE(
        same_matrix(f.matrix<double>("f32"), matrix<double>(a.cast<float>().cast<double>())));
    // F16 keeps 11 significant bits, BF16 8: rounding to nearest errs by at most half an ulp,
    // a relative 2^-11 and 2^-8, except below the normal range (2^-14 and 2^-126), where the
    // absolute error is at most half the smallest subnormal (2^-25 and 2^-134).
    const matrix<double> f16 = f.matrix<double>("f16");
    const matrix<double> bf16 = f.matrix<double>("bf16");
    ASSERT_EQ(f16.rows(), rows);
    ASSERT_EQ(f16.cols(), cols);
    ASSERT_EQ(bf16.rows(), rows);
    ASSERT_EQ(bf16.cols(), cols);
    for (Eigen::Index k = 0; k < a.size(); ++k) {
      const double x = a.data()[k];
      EXPECT_LE(std::abs(f16.data()[k] - x), std::max(std::ldexp(std::abs(x), -11), 0x1p-25)) << x;
      EXPECT_LE(std::abs(bf16.data()[k] - x), std::max(std::ldexp(std::abs(x), -8), 0x1p-134)) << x;
    }
  }
}

TEST_F(safetensors_file_test, round_trips_vectors_and_metadata) {
  const fs::path file = dir_ / "v.safetensors";
  const Eigen::VectorXd v = random_matrix(6, 1, 3);
  const std::map<std::string, std::string> metadata = {
      {"format", "pt"}, {"quote \" and \\ and \n", "\xc3\xa9t\xc3\xa9 \xe2\x9c\x93"}, {"", ""}};
  write_safetensors(file,
                    {{.name = "bias", .type = dtype::float64, .values = v, .vector_shape = true},
                     {.name = "column", .type = dtype::float64, .values = v},
                     {.name = "\xce\xbb.weight \"quoted\"", .type = dtype::float32, .values = v}},
                    metadata);
  const safetensors_file f = safetensors_file::read(file);
  EXPECT_EQ(f.metadata(), metadata);
  EXPECT_EQ(f.tensors().at("bias").shape, (std::vector<std::int64_t>{6}));
  EXPECT_EQ(f.tensors().at("column").shape, (std::vector<std::int64_t>{6, 1}));
  EXPECT_TRUE(same_matrix(f.matrix<double>("bias"), v));
  EXPECT_TRUE(same_matrix(f.matrix<double>("column"), v));
  EXPECT_TRUE(f.contains("\xce\xbb.weight \"quoted\""));
}

TEST_F(safetensors_file_test, writes_row_major_bytes) {
  // PyTorch's layout: a 2 x 3 matrix is stored row after row.
  matrix<double> a(2, 3);
  a << 0, 1, 2, 3, 4, 5;
  const fs::path file = dir_ / "r.safetensors";
  write_safetensors(file, {{.name = "w", .type = dtype::float32, .values = a}});
  const safetensors_file f = safetensors_file::read(file);
  EXPECT_EQ(values_of<float>(f.tensor_bytes("w")), (std::vector<float>{0, 1, 2, 3, 4, 5}));

  // And the reader transposes row-major bytes: [2, 3] holding 0..5 is the same matrix.
  const safetensors_file g =
      safetensors_file::parse(make_file("{" + entry("w", "\"F32\"", "[2,3]", "[0,24]") + "}",
                                        to_bytes(std::vector<float>{0, 1, 2, 3, 4, 5})));
  EXPECT_TRUE(same_matrix(g.matrix<double>("w"), a));
  EXPECT_TRUE(same_matrix(g.matrix<float>("w"), matrix<float>(a.cast<float>())));
}

TEST_F(safetensors_file_test, writes_an_aligned_header_with_metadata_first) {
  const fs::path file = dir_ / "h.safetensors";
  const matrix<double> a = random_matrix(3, 3, 5);
  // Odd sizes in 16-bit dtypes first: laid out by element size, they cannot misalign the rest.
  write_safetensors(file,
                    {{.name = "z_half", .type = dtype::float16, .values = a.topRows(1)},
                     {.name = "y_single", .type = dtype::float32, .values = a.topRows(1)},
                     {.name = "a_brain", .type = dtype::bfloat16, .values = a},
                     {.name = "x_double", .type = dtype::float64, .values = a},
                     {.name = "b_single", .type = dtype::float32, .values = a}},
                    {{"format", "pt"}});
  const std::vector<std::byte> bytes = read_bytes(file);
  const std::string header = header_text(bytes);
  EXPECT_EQ(header.size() % 8, 0U);
  const std::string expected =
      "{\"__metadata__\":{\"format\":\"pt\"},"
      "\"x_double\":{\"dtype\":\"F64\",\"shape\":[3,3],\"data_offsets\":[0,72]},"
      "\"y_single\":{\"dtype\":\"F32\",\"shape\":[1,3],\"data_offsets\":[72,84]},"
      "\"b_single\":{\"dtype\":\"F32\",\"shape\":[3,3],\"data_offsets\":[84,120]},"
      "\"z_half\":{\"dtype\":\"F16\",\"shape\":[1,3],\"data_offsets\":[120,126]},"
      "\"a_brain\":{\"dtype\":\"BF16\",\"shape\":[3,3],\"data_offsets\":[126,144]}}";
  ASSERT_GE(header.size(), expected.size());
  ASSERT_LT(header.size(), expected.size() + 8);
  EXPECT_EQ(header, expected + std::string(header.size() - expected.size(), ' '));
  EXPECT_EQ(bytes.size(), 8 + header.size() + 144);
  // Every tensor's data starts at a multiple of its element size in the file.
  const std::map<std::string, std::size_t> itemsize = {
      {"x_double", 8}, {"y_single", 4}, {"b_single", 4}, {"z_half", 2}, {"a_brain", 2}};
  const safetensors_file f = safetensors_file::parse(bytes);
  for (const auto& [name, info] : f.tensors()) {
    EXPECT_EQ((8 + header.size() + info.begin) % itemsize.at(name), 0U) << name;
  }
  // Without metadata, no "__metadata__" key; an empty file is "{}" and padding.
  write_safetensors(file, {});
  EXPECT_EQ(header_text(read_bytes(file)), "{}      ");
  EXPECT_TRUE(safetensors_file::read(file).tensors().empty());
}

TEST_F(safetensors_file_test, write_rejects_bad_tensors_and_creates_nothing) {
  const fs::path file = dir_ / "w.safetensors";
  const matrix<double> a = matrix<double>::Ones(2, 2);
  const auto message = [&](const std::vector<tensor_to_write>& tensors,
                           const std::map<std::string, std::string>& metadata = {}) {
    return error_message([&] { write_safetensors(file, tensors, metadata); });
  };
  EXPECT_EQ(
      message({{.name = "w", .values = a}, {.name = "b", .values = a}, {.name = "w", .values = a}}),
      "lowrank::io::write_safetensors: argument 'tensors' is a list of 3 tensors with the "
      "tensor 'w' twice; expected distinct tensor names");
  EXPECT_NE(message({{.name = "__metadata__", .values = a}})
                .find("expected names other than '__metadata__'"),
            std::string::npos);
  EXPECT_NE(message({{.name = "v", .values = a, .vector_shape = true}})
                .find("of 2 x 2 values with vector_shape = true; expected an n x 1 matrix"),
            std::string::npos);
  EXPECT_NE(message({{.name = "bad\xff", .values = a}}).find("argument 'tensors'"),
            std::string::npos);
  EXPECT_NE(message({{.name = "bad\xc3", .values = a}}).find("not UTF-8"), std::string::npos);
  EXPECT_NE(
      message({{.name = "w", .values = a}}, {{"k", "\xed\xa0\x80"}}).find("argument 'metadata'"),
      std::string::npos);
  EXPECT_NE(message({{.name = "w", .type = static_cast<dtype>(7), .values = a}})
                .find("of dtype 7; expected dtype::float32, float16, bfloat16 or float64"),
            std::string::npos);
  EXPECT_TRUE(directory_entries(dir_).empty());
}

TEST_F(safetensors_file_test, write_replaces_an_existing_file_and_leaves_no_temporary) {
  const fs::path file = dir_ / "w.safetensors";
  write_safetensors(file,
                    {{.name = "a", .type = dtype::float32, .values = matrix<double>::Ones(2, 2)}});
  write_safetensors(file,
                    {{.name = "b", .type = dtype::float64, .values = matrix<double>::Zero(3, 1)}});
  const safetensors_file f = safetensors_file::read(file);
  EXPECT_FALSE(f.contains("a"));
  EXPECT_TRUE(same_matrix(f.matrix<double>("b"), matrix<double>::Zero(3, 1)));
  EXPECT_EQ(directory_entries(dir_), std::vector<fs::path>{file});
}

TEST_F(safetensors_file_test, write_into_a_missing_directory_or_over_a_directory_throws) {
  const std::vector<tensor_to_write> tensors = {
      {.name = "w", .values = matrix<double>::Ones(2, 2)}};
  const fs::path missing = dir_ / "missing" / "w.safetensors";
  const std::string message = error_message([&] { write_safetensors(missing, tensors); });
  EXPECT_EQ(message.rfind("lowrank::io::write_safetensors: argument 'file' is \"" +
                              missing.string() + "\", whose temporary file",
                          0),
            0U)
      << message;
  EXPECT_TRUE(directory_entries(dir_).empty());

  const fs::path target = dir_ / "target";
  fs::create_directory(target);
  const std::string over = error_message([&] { write_safetensors(target, tensors); });
  EXPECT_NE(over.find("\", which cannot be replaced by the written file"), std::string::npos)
      << over;
  EXPECT_TRUE(fs::is_directory(target));
  EXPECT_EQ(directory_entries(dir_), std::vector<fs::path>{target});

  EXPECT_NE(
      error_message([&] { write_safetensors(dir_ / "", tensors); }).find("which has no file name"),
      std::string::npos);
  EXPECT_EQ(directory_entries(dir_), std::vector<fs::path>{target});
}

TEST_F(safetensors_file_test, failed_write_keeps_the_existing_target) {
  // A name that fits the file system's limit while "<name>.<16 hex>.tmp" does not: the target
  // exists, the temporary cannot be created, and the target must survive unchanged.
  const fs::path file = dir_ / (std::string(230, 'k') + ".safetensors");
  write_bytes(file, to_bytes("previous contents"));
  if (!fs::exists(file)) GTEST_SKIP() << "the file system does not take 242-character names";
  const fs::path longer = dir_ / (std::string(230 + 21, 'k') + ".safetensors");
  if (std::ofstream(longer)) GTEST_SKIP() << "the file system takes 263-character names";
  EXPECT_THROW(write_safetensors(file, {{.name = "w", .values = matrix<double>::Ones(2, 2)}}),
               lowrank::invalid_argument);
  EXPECT_EQ(read_bytes(file), to_bytes("previous contents"));
  EXPECT_EQ(directory_entries(dir_), std::vector<fs::path>{file});
  // And a rejected argument does not touch it either.
  EXPECT_THROW(write_safetensors(file, {{.name = "w", .values = matrix<double>::Ones(2, 2)},
                                        {.name = "w", .values = matrix<double>::Ones(2, 2)}}),
               lowrank::invalid_argument);
  EXPECT_EQ(read_bytes(file), to_bytes("previous contents"));
}

// ---------------------------------------------------------------------------------------
// What the parser accepts beyond what our writer writes.

TEST(safetensors_parse_test, accepts_valid_variants) {
  const std::vector<std::byte> four = to_bytes(std::vector<float>{1.5f});
  struct variant {
    std::string name;
    std::vector<std::byte> bytes;
  };
  const std::string w = entry("w", "\"F32\"", "[1]", "[0,4]");
  const std::vector<variant> variants = {
      {"no tensors", make_file("{}", 0)},
      {"reference padding", make_file("{" + w + "}    ", four)},
      {"JSON whitespace around and inside",
       make_file(" \t\r\n{ \"w\" : { \"dtype\" : \"F32\" , "
                 "\"shape\" : [ 1 ] , \"data_offsets\" : [ 0 , 4 ] } }\n\n",
                 four)},
      {"members in any order",
       make_file("{\"w\":{\"data_offsets\":[0,4],\"shape\":[1],\"dtype\":\"F32\"}}", four)},
      {"unknown members ignored", make_file("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_"
                                            "offsets\":[0,4],\"x\":{\"y\":[1,2.5,null]}}}",
                                            four)},
      {"null metadata", make_file("{\"__metadata__\":null," + w + "}", four)},
      {"empty metadata", make_file("{\"__metadata__\":{}," + w + "}", four)},
      {"escaped name",
       make_file("{" + entry("\\u03bb\\n\\\"", "\"F32\"", "[1]", "[0,4]") + "}", four)},
      {"empty name", make_file("{" + entry("", "\"F32\"", "[1]", "[0,4]") + "}", four)},
      {"scalar", make_file("{" + entry("s", "\"F32\"", "[]", "[0,4]") + "}", four)},
      {"zero-size tensors share offsets",
       make_file("{" + entry("e1", "\"F64\"", "[0,3]", "[0,0]") + "," +
                     entry("e2", "\"F16\"", "[5,0]", "[0,0]") + "," + w + "," +
                     entry("e3", "\"BF16\"", "[0]", "[4,4]") + "}",
                 four)},
      {"zero dimension with a huge one",
       make_file("{" + entry("e", "\"F64\"", "[0,72057594037927936]", "[0,0]") + "}", 0)},
      {"unsupported dtypes", make_file("{" + entry("i", "\"I64\"", "[1]", "[0,8]") + "," +
                                           entry("f4", "\"F4\"", "[2]", "[8,9]") + "," +
                                           entry("f6", "\"F6_E2M3\"", "[4]", "[9,12]") + "," +
                                           entry("c", "\"C64\"", "[1]", "[12,20]") + "}",
                                       20)},
      {"tensors listed out of order", make_file("{" + entry("b", "\"F32\"", "[1]", "[4,8]") + "," +
                                                    entry("a", "\"F32\"", "[1]", "[0,4]") + "}",
                                                8)},
  };
  for (const variant& v : variants) {
    SCOPED_TRACE(v.name);
    EXPECT_NO_THROW(static_cast<void>(safetensors_file::parse(v.bytes)));
  }
  const safetensors_file f = safetensors_file::parse(variants[7].bytes);
  EXPECT_TRUE(f.contains("\xce\xbb\n\""));
  EXPECT_EQ(f.matrix<double>("\xce\xbb\n\"")(0, 0), 1.5);
  EXPECT_TRUE(safetensors_file::parse(variants[5].bytes).metadata().empty());
  const safetensors_file u = safetensors_file::parse(variants[12].bytes);
  EXPECT_EQ(u.tensors().at("f6").end - u.tensors().at("f6").begin, 3U);
  EXPECT_THROW(static_cast<void>(u.matrix<float>("c")), lowrank::invalid_argument);
}

// ---------------------------------------------------------------------------------------
// Malformed inputs.

struct malformed {
  std::string name;
  std::vector<std::byte> bytes;
};

std::vector<malformed> malformed_inputs() {
  std::vector<malformed> out;
  const auto add = [&](std::string name, std::string_view header, std::size_t data) {
    out.push_back({std::move(name), make_file(header, data)});
  };
  const auto one = [](std::string_view type, std::string_view shape, std::string_view offsets) {
    // Appended rather than "{" + entry(...): GCC 12 at -O3 reports that form as a false
    // -Wrestrict (GCC bug 105329).
    std::string header = "{";
    header += entry("w", type, shape, offsets);
    header += '}';
    return header;
  };

  // Length prefix.
  out.push_back({"empty", {}});
  out.push_back({"7 bytes", to_bytes("\x02\0\0\0\0\0\0")});
  out.push_back({"header length past the end", make_file("{}", 0)});
  out.back().bytes[0] = std::byte{3};
  out.push_back({"header length past the end by far", make_file("{}", 16)});
  out.back().bytes[1] = std::byte{1};
  out.push_back({"header length over the cap", make_file("{}", 0)});
  out.back().bytes[0] = std::byte{0x01};
  out.back().bytes[1] = std::byte{0xe1};
  out.back().bytes[2] = std::byte{0xf5};
  out.back().bytes[3] = std::byte{0x05};  // 100000001
  out.push_back({"header length 2^64 - 1", make_file("{}", 0)});
  for (int i = 0; i < 8; ++i) out.back().bytes[i] = std::byte{0xff};
  out.push_back({"header length 2^63", make_file("{}", 0)});
  out.back().bytes[0] = std::byte{0};
  out.back().bytes[7] = std::byte{0x80};

  // Not UTF-8 JSON.
  for (const auto& [name, header] : std::vector<std::pair<std::string, std::string>>{
           {"empty header", ""},
           {"only spaces", "        "},
           {"unclosed object", "{"},
           {"garbage after the object", "{}x"},
           {"two objects", "{}{}"},
           {"NUL padding", std::string("{}\0\0\0\0\0\0", 8)},
           {"trailing comma", "{\"w\":1,}"},
           {"comment", "/* c */{}"},
           {"single quotes", "{'w': 1}"},
           {"unquoted key", "{w: 1}"},
           {"invalid UTF-8 in a name", "{\"w\xff\":1}"},
           {"overlong UTF-8", "{\"\xc0\xaf\":1}"},
           {"UTF-8 surrogate", "{\"\xed\xa0\x80\":1}"},
           {"truncated UTF-8", "{\"\xe2\x9c\":1}"},
           {"lone surrogate escape", "{\"\\ud800\":1}"},
           {"bad escape", "{\"\\x41\":1}"},
           {"control character in a string", "{\"a\nb\":1}"},
           {"byte order mark", "\xef\xbb\xbf{}"},
           {"number out of range",
            "{\"w\":{\"dtype\":\"F32\",\"shape\":[1e400],\"data_offsets\":[0,4]}}"},
       }) {
    add("not JSON: " + name, header, 0);
  }

  // Not an object of tensor entries.
  for (const std::string header : {"[]", "1", "\"w\"", "null", "true", "[{}]"}) {
    add("header " + header, header, 0);
  }
  for (const std::string value : {"1", "[]", "\"F32\"", "null", "[\"F32\",[1],[0,4]]"}) {
    add("entry " + value, "{\"w\":" + value + "}", 4);
  }
  add("entry without dtype", "{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4);
  add("entry without shape", "{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4);
  add("entry without data_offsets", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4);
  add("entry with misspelt key", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offset\":[0,4]}}",
      4);

  // dtype.
  for (const std::string type : {"32", "null", "[\"F32\"]", "\"F33\"", "\"f32\"", "\"float32\"",
                                 "\"\"", "\"F32 \"", "\"F8_E4M3FN\"", "\"Q4_0\""}) {
    add("dtype " + type, one(type, "[1]", "[0,4]"), 4);
  }

  // shape.
  for (const std::string shape :
       {"1", "\"1\"", "{}", "null", "[01]", "[1.0]", "[1e0]", "[-1]", "[-0]", "[\"1\"]", "[true]",
        "[null]", "[[1]]", "[9223372036854775808]", "[18446744073709551615]",
        "[18446744073709551616]", "[1,-1]"}) {
    add("shape " + shape, one("\"F32\"", shape, "[0,4]"), 4);
  }
  add("shape byte size overflow", one("\"F32\"", "[4611686018427387904,4]", "[0,4]"), 4);
  add("shape element count overflow", one("\"F64\"", "[4294967296,4294967296]", "[0,4]"), 4);
  add("shape overflow beside a zero", one("\"F64\"", "[0,2305843009213693952]", "[0,0]"), 0);
  add("shape overflow 1-bit steps",
      one("\"U8\"",
          "[2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,"
          "2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2]",
          "[0,4]"),
      4);
  add("F4 of an odd element count", one("\"F4\"", "[3]", "[0,2]"), 2);
  add("F6 of a part byte", one("\"F6_E3M2\"", "[3]", "[0,3]"), 3);

  // data_offsets.
  for (const std::string offsets :
       {"4", "\"0,4\"", "{}", "null", "[]", "[0]", "[0,4,8]", "[-1,4]", "[0,4.0]", "[0,\"4\"]",
        "[[0],4]", "[0,18446744073709551616]", "[4,0]", "[0,8]", "[0,3]", "[4,8]", "[2,6]"}) {
    add("data_offsets " + offsets, one("\"F32\"", "[1]", offsets), 4);
  }
  add("end past the data by far",
      one("\"F32\"", "[1]", "[18446744073709551611,18446744073709551615]"), 4);
  add("size mismatch", one("\"F32\"", "[2,2]", "[0,12]"), 12);
  add("size mismatch F16", one("\"F16\"", "[3]", "[0,4]"), 4);
  add("size mismatch scalar", one("\"F64\"", "[]", "[0,4]"), 4);
  add("zero size with data", one("\"F32\"", "[0,4]", "[0,4]"), 4);

  // Tiling of the data buffer.
  const std::string a = entry("a", "\"F32\"", "[4]", "[0,16]");
  add("overlap", "{" + a + "," + entry("b", "\"F32\"", "[4]", "[8,24]") + "}", 24);
  add("identical offsets", "{" + a + "," + entry("b", "\"F32\"", "[4]", "[0,16]") + "}", 16);
  add("empty tensor inside another", "{" + a + "," + entry("b", "\"F32\"", "[0]", "[8,8]") + "}",
      16);
  add("gap", "{" + a + "," + entry("b", "\"F32\"", "[4]", "[20,36]") + "}", 36);
  add("leading gap", "{" + entry("b", "\"F32\"", "[4]", "[4,20]") + "}", 20);
  add("trailing bytes", "{" + a + "}", 20);
  add("data without tensors", "{}", 4);
  add("empty tensor past the data", "{" + a + "," + entry("b", "\"F32\"", "[0]", "[20,20]") + "}",
      16);

  // __metadata__.
  const std::string w = entry("w", "\"F32\"", "[1]", "[0,4]");
  for (const std::string meta :
       {"\"pt\"", "[]", "1", "true", "{\"a\":1}", "{\"a\":null}", "{\"a\":{}}", "{\"a\":[\"b\"]}",
        "{\"format\":\"pt\",\"format\":\"np\"}"}) {
    add("__metadata__ " + meta, "{\"__metadata__\":" + meta + "," + w + "}", 4);
  }
  add("__metadata__ twice", "{\"__metadata__\":{},\"__metadata__\":{}," + w + "}", 4);

  // Duplicate keys, which JSON parsers resolve differently.
  add("duplicate tensor", "{" + w + "," + w + "}", 4);
  add("duplicate tensor by escape",
      "{" + w + "," + entry("\\u0077", "\"F32\"", "[1]", "[0,4]") + "}", 4);
  add("duplicate dtype",
      "{\"w\":{\"dtype\":\"F16\",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4);
  add("duplicate key in an ignored member",
      "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":{\"k\":1,\"k\":2}}}",
      4);

  // Nesting.
  add("deep nesting",
      "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":" +
          std::string(70, '[') + std::string(70, ']') + "}}",
      4);
  add("very deep nesting", std::string(100000, '['), 0);
  return out;
}

TEST(safetensors_malformed_test, every_malformed_buffer_throws) {
  for (const malformed& m : malformed_inputs()) {
    SCOPED_TRACE(m.name);
    const std::string message =
        error_message([&] { static_cast<void>(safetensors_file::parse(m.bytes)); });
    EXPECT_EQ(
        message.rfind("lowrank::io::safetensors_file::parse: argument 'bytes' is a buffer of " +
                          std::to_string(m.bytes.size()) + " bytes",
                      0),
        0U)
        << message;
    EXPECT_NE(message.find("; expected "), std::string::npos) << message;
  }
}

TEST_F(safetensors_file_test, every_malformed_file_throws_naming_the_file) {
  int count = 0;
  for (const malformed& m : malformed_inputs()) {
    SCOPED_TRACE(m.name);
    const fs::path file = dir_ / ("malformed_" + std::to_string(count++) + ".safetensors");
    write_bytes(file, m.bytes);
    const std::string message =
        error_message([&] { static_cast<void>(safetensors_file::read(file)); });
    EXPECT_EQ(message.rfind("lowrank::io::safetensors_file::read: argument 'file' is \"" +
                                file.string() + "\" ",
                            0),
              0U)
        << message;
  }
}

TEST(safetensors_malformed_test, messages_name_function_argument_value_and_expectation) {
  const auto parse_message = [](const std::vector<std::byte>& bytes) {
    return error_message([&] { static_cast<void>(safetensors_file::parse(bytes)); });
  };
  EXPECT_EQ(parse_message(to_bytes("abc")),
            "lowrank::io::safetensors_file::parse: argument 'bytes' is a buffer of 3 bytes with "
            "only 3 bytes; expected at least 8 bytes: the header length, then the header");

  std::vector<std::byte> long_header = make_file("{}", 6);
  long_header[0] = std::byte{100};
  EXPECT_EQ(
      parse_message(long_header),
      "lowrank::io::safetensors_file::parse: argument 'bytes' is a buffer of 16 bytes with a "
      "header length of 100 but only 8 bytes after the length; expected a header that fits in "
      "the file");

  const std::string dtype_message =
      parse_message(make_file("{" + entry("w", "\"F33\"", "[1]", "[0,4]") + "}", 4));
  EXPECT_NE(
      dtype_message.find("with the tensor 'w' of dtype 'F33'; expected a safetensors dtype: BOOL, "
                         "F4, F6_E2M3, F6_E3M2, U8, I8, F8_E5M2, F8_E4M3, F8_E8M0, F8_E4M3FNUZ, "
                         "F8_E5M2FNUZ, I16, U16, F16, BF16, I32, U32, F32, C64, F64, I64, U64"),
      std::string::npos)
      << dtype_message;

  EXPECT_NE(parse_message(make_file("{" + entry("w", "\"F32\"", "[2,2]", "[0,12]") + "}", 12))
                .find("with the tensor 'w' at data_offsets [0, 12] (12 bytes) of dtype 'F32' and "
                      "shape [2, 2]; expected end - begin = 16 bytes for that dtype and shape"),
            std::string::npos);

  const std::string a = entry("a", "\"F32\"", "[4]", "[0,16]");
  EXPECT_NE(
      parse_message(make_file("{" + a + "," + entry("b", "\"F32\"", "[4]", "[8,24]") + "}", 24))
          .find("with the tensor 'b' at data_offsets [8, 24] starting inside the tensor 'a' "
                "at data_offsets [0, 16]; expected tensors that cover the data buffer exactly, "
                "without gaps or overlaps"),
      std::string::npos);
  EXPECT_NE(
      parse_message(make_file("{" + a + "," + entry("b", "\"F32\"", "[4]", "[20,36]") + "}", 36))
          .find("with the tensor 'b' at data_offsets [20, 36] after a gap: bytes [16, 20] of "
                "its data buffer belong to no tensor"),
      std::string::npos);
  EXPECT_NE(
      parse_message(make_file("{" + a + "}", 20))
          .find("with 4 bytes at the end of its 20-byte data buffer that belong to no tensor"),
      std::string::npos);
  EXPECT_NE(parse_message(make_file("{" + entry("w", "\"F32\"", "[1]", "[0,8]") + "}", 4))
                .find("with the tensor 'w' at data_offsets [0, 8], past the end of its 4-byte data "
                      "buffer; expected offsets within the data buffer"),
            std::string::npos);

  const std::string duplicate =
      parse_message(make_file("{" + entry("a", "\"F32\"", "[1]", "[0,4]") + "," +
                                  entry("a", "\"F32\"", "[1]", "[0,4]") + "}",
                              4));
  EXPECT_NE(
      duplicate.find("with the key 'a' twice in one object of its header; expected distinct keys"),
      std::string::npos)
      << duplicate;

  const std::string syntax = parse_message(make_file("{\"w\" 1}", 0));
  EXPECT_NE(syntax.find("with a 7-byte header that is not valid UTF-8 JSON (parse error at line 1, "
                        "column 6"),
            std::string::npos)
      << syntax;

  const std::string shape =
      parse_message(make_file("{" + entry("w", "\"F32\"", "[2,-3]", "[0,4]") + "}", 4));
  EXPECT_NE(shape.find("with the tensor 'w' whose \"shape\" has the element -3; expected "
                       "non-negative integer dimensions below 2^63"),
            std::string::npos)
      << shape;

  const std::string meta = parse_message(make_file("{\"__metadata__\":{\"a\":1}}", 0));
  EXPECT_NE(
      meta.find("with the \"__metadata__\" value 'a' that is a JSON number; expected an object "
                "of string values"),
      std::string::npos)
      << meta;

  // A long, non-ASCII name is shortened and escaped in the message.
  const std::string long_name = std::string(300, 'n') + "\xce\xbb";
  const std::string escaped =
      parse_message(make_file("{" + entry(long_name, "\"F33\"", "[1]", "[0,4]") + "}", 4));
  EXPECT_NE(escaped.find("'" + std::string(160, 'n') + "...'"), std::string::npos) << escaped;
  EXPECT_LT(escaped.size(), 600U);
}

TEST_F(safetensors_file_test, missing_empty_and_directory_files_throw) {
  const fs::path missing = dir_ / "missing.safetensors";
  EXPECT_EQ(error_message([&] { static_cast<void>(safetensors_file::read(missing)); }),
            "lowrank::io::safetensors_file::read: argument 'file' is \"" + missing.string() +
                "\", which does not exist; expected an existing, readable .safetensors file");
  const fs::path empty = dir_ / "empty.safetensors";
  write_bytes(empty, {});
  EXPECT_NE(error_message([&] {
              static_cast<void>(safetensors_file::read(empty));
            }).find("with only 0 bytes"),
            std::string::npos);
  EXPECT_NE(error_message([&] {
              static_cast<void>(safetensors_file::read(dir_));
            }).find(", which is a directory"),
            std::string::npos);
}

// Only regular files are read: a FIFO would block the reader forever and /dev/zero would be
// read until memory runs out; both are refused at once.
TEST_F(safetensors_file_test, special_files_are_refused_promptly) {
  const fs::path fifo = dir_ / "fifo.safetensors";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_EQ(
      io_test::prompt_error_message([&] { static_cast<void>(safetensors_file::read(fifo)); }, fifo),
      "lowrank::io::safetensors_file::read: argument 'file' is \"" + fifo.string() +
          "\", which is a FIFO, not a regular file; expected an existing, readable .safetensors "
          "file");
  if (fs::exists("/dev/zero")) {
    EXPECT_NE(io_test::prompt_error_message([] {
                static_cast<void>(safetensors_file::read("/dev/zero"));
              }).find("\"/dev/zero\", which is a character device, not a regular file"),
              std::string::npos);
  }
}

}  // namespace
}  // namespace safetensors_tests
