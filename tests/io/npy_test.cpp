// Tests of lowrank/io/npy.hpp: NumPy-written fixtures (an independent reference, made by
// tools/make_npy_fixtures.py), round trips through write_npy, and malformed inputs.

#include "lowrank/io/npy.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <Eigen/Core>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "io_test_support.hpp"

#ifndef LOWRANK_TEST_FIXTURE_DIR
#error "LOWRANK_TEST_FIXTURE_DIR must name tests/io/fixtures (a string literal)"
#endif

namespace npy_tests {
namespace {

namespace fs = std::filesystem;
using io_test::directory_entries;
using io_test::error_message;
using io_test::read_bytes;
using io_test::same_matrix;
using io_test::to_bytes;
using io_test::write_bytes;
using lowrank::io::npy_dtype;
using lowrank::io::npy_header;
using lowrank::io::parse_npy;
using lowrank::io::parse_npy_header;
using lowrank::io::read_npy;
using lowrank::io::write_npy;

template <class T>
using matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;

fs::path fixture(std::string_view name) { return fs::path(LOWRANK_TEST_FIXTURE_DIR "/npy") / name; }

// The values of every 2-D fixture (see tools/make_npy_fixtures.py).
double grid_value(Eigen::Index i, Eigen::Index j) {
  return 10.0 * static_cast<double>(i) + static_cast<double>(j) + 0.5;
}

// The values of the 1-D fixture.
double third_value(Eigen::Index i) { return (static_cast<double>(i) + 0.5) / 3.0; }

template <class T>
void expect_grid(const matrix<T>& a, Eigen::Index rows, Eigen::Index cols) {
  ASSERT_EQ(a.rows(), rows);
  ASSERT_EQ(a.cols(), cols);
  for (Eigen::Index j = 0; j < cols; ++j) {
    for (Eigen::Index i = 0; i < rows; ++i) {
      EXPECT_EQ(a(i, j), static_cast<T>(grid_value(i, j))) << "at (" << i << ", " << j << ")";
    }
  }
}

// A .npy file in memory: the preamble for `major`.0 with the true length of `header`
// (used as given, unpadded), then `data`.
std::vector<std::byte> make_npy(std::string_view header, std::span<const std::byte> data,
                                unsigned major = 1) {
  std::string out = "\x93NUMPY";
  out += static_cast<char>(major);
  out += '\0';
  const std::size_t length_size = major == 1 ? 2 : 4;
  for (std::size_t i = 0; i < length_size; ++i) {
    out += static_cast<char>((header.size() >> (8 * i)) & 0xff);
  }
  out += header;
  std::vector<std::byte> bytes = to_bytes(out);
  bytes.insert(bytes.end(), data.begin(), data.end());
  return bytes;
}

std::vector<std::byte> make_npy(std::string_view header, std::size_t data_bytes,
                                unsigned major = 1) {
  return make_npy(header, std::vector<std::byte>(data_bytes, std::byte{0}), major);
}

// A fresh directory per test, removed afterwards.
class npy_file_test : public io_test::scratch_directory_test {
 protected:
  npy_file_test() : scratch_directory_test("lowrank_npy_") {}
};

template <class T>
class npy_typed_file_test : public npy_file_test {};

using scalar_types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(npy_typed_file_test, scalar_types);

template <class T>
class npy_typed_test : public ::testing::Test {};
TYPED_TEST_SUITE(npy_typed_test, scalar_types);

// ---------------------------------------------------------------------------------------
// Files written by NumPy.

TYPED_TEST(npy_typed_test, reads_numpy_c_order_float32) {
  expect_grid(read_npy<TypeParam>(fixture("f32_c_3x4.npy")), 3, 4);
}

TYPED_TEST(npy_typed_test, reads_numpy_fortran_order_float32) {
  expect_grid(read_npy<TypeParam>(fixture("f32_f_3x4.npy")), 3, 4);
}

TYPED_TEST(npy_typed_test, reads_numpy_c_order_float64) {
  expect_grid(read_npy<TypeParam>(fixture("f64_c_3x4.npy")), 3, 4);
}

TYPED_TEST(npy_typed_test, reads_numpy_big_endian) {
  expect_grid(read_npy<TypeParam>(fixture("f64_be_c_3x4.npy")), 3, 4);
  expect_grid(read_npy<TypeParam>(fixture("f32_be_f_3x4.npy")), 3, 4);
}

TYPED_TEST(npy_typed_test, reads_numpy_versions_2_and_3) {
  expect_grid(read_npy<TypeParam>(fixture("f32_v2_3x4.npy")), 3, 4);
  expect_grid(read_npy<TypeParam>(fixture("f32_v3_3x4.npy")), 3, 4);
}

TYPED_TEST(npy_typed_test, reads_numpy_1d_as_a_column) {
  const matrix<TypeParam> v = read_npy<TypeParam>(fixture("f64_1d_5.npy"));
  ASSERT_EQ(v.rows(), 5);
  ASSERT_EQ(v.cols(), 1);
  for (Eigen::Index i = 0; i < 5; ++i) {
    // float64 -> float rounds to nearest, exactly as static_cast does.
    EXPECT_EQ(v(i, 0), static_cast<TypeParam>(third_value(i))) << "at " << i;
  }
}

TYPED_TEST(npy_typed_test, reads_numpy_empty) {
  const matrix<TypeParam> a = read_npy<TypeParam>(fixture("f64_c_0x3.npy"));
  EXPECT_EQ(a.rows(), 0);
  EXPECT_EQ(a.cols(), 3);
}

TEST(npy_header_test, describes_numpy_files) {
  const npy_header c = parse_npy_header(read_bytes(fixture("f32_c_3x4.npy")));
  EXPECT_EQ(c.dtype, npy_dtype::float32);
  EXPECT_FALSE(c.big_endian);
  EXPECT_FALSE(c.fortran_order);
  EXPECT_EQ(c.shape, (std::vector<std::ptrdiff_t>{3, 4}));
  EXPECT_EQ(c.data_offset, 128U);

  const npy_header be = parse_npy_header(read_bytes(fixture("f64_be_c_3x4.npy")));
  EXPECT_EQ(be.dtype, npy_dtype::float64);
  EXPECT_TRUE(be.big_endian);

  const npy_header f = parse_npy_header(read_bytes(fixture("f32_f_3x4.npy")));
  EXPECT_TRUE(f.fortran_order);

  const npy_header v = parse_npy_header(read_bytes(fixture("f64_1d_5.npy")));
  EXPECT_EQ(v.shape, (std::vector<std::ptrdiff_t>{5}));

  const npy_header v2 = parse_npy_header(read_bytes(fixture("f32_v2_3x4.npy")));
  EXPECT_EQ(v2.data_offset, 128U);
}

// ---------------------------------------------------------------------------------------
// Header syntax the parser must accept.

TEST(npy_header_test, accepts_python_dict_variants) {
  struct variant {
    std::string_view header;
    npy_dtype dtype;
    bool big_endian;
    bool fortran_order;
    std::vector<std::ptrdiff_t> shape;
  };
  const std::vector<variant> variants = {
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }\n",
       npy_dtype::float32,
       false,
       false,
       {3, 4}},
      {"{'shape': (3, 4), 'fortran_order': True, 'descr': '<f8'}",
       npy_dtype::float64,
       false,
       true,
       {3, 4}},
      {"{\"descr\": \">f4\", \"fortran_order\": False, \"shape\": (3,)}",
       npy_dtype::float32,
       true,
       false,
       {3}},
      {"  {\n\t'descr' :'=f8' ,'fortran_order':False,'shape':( 3 , 4 , ) ,\r\n}  \n",
       npy_dtype::float64,
       std::endian::native == std::endian::big,
       false,
       {3, 4}},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (3L, 4L), }",
       npy_dtype::float32,
       false,
       false,
       {3, 4}},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (0, 0), }",
       npy_dtype::float32,
       false,
       false,
       {0, 0}},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (007,), }",
       npy_dtype::float32,
       false,
       false,
       {7}},
  };
  for (const variant& v : variants) {
    SCOPED_TRACE(std::string(v.header));
    const std::vector<std::byte> bytes = make_npy(v.header, 0);
    const npy_header h = parse_npy_header(bytes);
    EXPECT_EQ(h.dtype, v.dtype);
    EXPECT_EQ(h.big_endian, v.big_endian);
    EXPECT_EQ(h.fortran_order, v.fortran_order);
    EXPECT_EQ(h.shape, v.shape);
    EXPECT_EQ(h.data_offset, 10 + v.header.size());
  }
}

TEST(npy_header_test, ignores_data_size) {
  // parse_npy_header only needs the header; parse_npy checks the data.
  const std::vector<std::byte> bytes =
      make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }", 0);
  EXPECT_NO_THROW(static_cast<void>(parse_npy_header(bytes)));
  EXPECT_THROW(static_cast<void>(parse_npy<float>(bytes)), lowrank::invalid_argument);
}

TYPED_TEST(npy_typed_test, parses_c_and_fortran_order_in_memory) {
  // Values 0..5 as 2 x 3: C order holds rows one after the other, Fortran order columns.
  const std::vector<std::byte> data = to_bytes(std::vector<float>{0, 1, 2, 3, 4, 5});
  const matrix<TypeParam> c = parse_npy<TypeParam>(
      make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)}", data));
  const matrix<TypeParam> f = parse_npy<TypeParam>(
      make_npy("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3)}", data));
  matrix<TypeParam> c_expected(2, 3);
  c_expected << 0, 1, 2, 3, 4, 5;
  matrix<TypeParam> f_expected(2, 3);
  f_expected << 0, 2, 4, 1, 3, 5;
  EXPECT_TRUE(same_matrix(c, c_expected));
  EXPECT_TRUE(same_matrix(f, f_expected));

  // A single row or column is the same in both orders.
  const matrix<TypeParam> row = parse_npy<TypeParam>(
      make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 6)}", data));
  EXPECT_TRUE(same_matrix(row, (matrix<TypeParam>(1, 6) << 0, 1, 2, 3, 4, 5).finished()));
}

TEST(npy_header_test, float64_to_float_rounds_and_overflows_to_infinity) {
  const std::vector<double> values = {0.1, -1e300, 1e300, std::numeric_limits<double>::quiet_NaN()};
  const matrix<float> a = parse_npy<float>(
      make_npy("{'descr': '<f8', 'fortran_order': False, 'shape': (4,)}", to_bytes(values)));
  EXPECT_EQ(a(0, 0), 0.1f);
  EXPECT_EQ(a(1, 0), -std::numeric_limits<float>::infinity());
  EXPECT_EQ(a(2, 0), std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(a(3, 0)));
}

// ---------------------------------------------------------------------------------------
// Malformed inputs.

struct malformed {
  std::string name;
  std::vector<std::byte> bytes;
  bool header_error;  // false: the header is valid, only the data size is wrong
};

// A header dict from the text of its three values.
std::string dict(std::string_view descr, std::string_view fortran_order, std::string_view shape) {
  return "{'descr': " + std::string(descr) + ", 'fortran_order': " + std::string(fortran_order) +
         ", 'shape': " + std::string(shape) + "}";
}

std::vector<malformed> malformed_inputs() {
  const std::string valid = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }\n";
  std::vector<malformed> out;

  // Preamble: magic string, version, header length.
  out.push_back({"empty", {}, true});
  out.push_back({"bad magic", to_bytes("PK\x03\x04 a zip file, not npy"), true});
  out.push_back({"bad magic last byte", make_npy(valid, 48), true});
  out.back().bytes[5] = std::byte{'y'};
  out.push_back({"magic only", to_bytes("\x93NUMPY"), true});
  out.push_back({"truncated magic", to_bytes("\x93NUM"), true});
  out.push_back({"no header length", to_bytes(std::string("\x93NUMPY\x01\x00\x05", 9)), true});
  out.push_back(
      {"version 2 short length", to_bytes(std::string("\x93NUMPY\x02\x00\x05\x00", 10)), true});
  for (const auto& [major, minor] :
       std::vector<std::pair<int, int>>{{0, 0}, {1, 1}, {4, 0}, {255, 255}}) {
    std::vector<std::byte> bytes = make_npy(valid, 48);
    bytes[6] = static_cast<std::byte>(major);
    bytes[7] = static_cast<std::byte>(minor);
    out.push_back({"version " + std::to_string(major) + "." + std::to_string(minor), bytes, true});
  }
  out.push_back({"header length past the end", make_npy(valid, 48), true});
  out.back().bytes[8] = std::byte{0xff};
  out.back().bytes[9] = std::byte{0xff};
  out.push_back({"version 2 header length past the end", make_npy(valid, 0, 2), true});
  out.back().bytes[11] = std::byte{0xff};  // a 4-byte length above 2^24
  out.push_back({"truncated header", make_npy(valid, 0), true});
  out.back().bytes.resize(40);

  // Header text: syntax, keys, values.
  std::string seventy_dims = "(";
  for (int i = 0; i < 70; ++i) seventy_dims += "1, ";
  seventy_dims += ")";
  const std::vector<std::pair<std::string, std::string>> headers = {
      {"empty header", ""},
      {"header not a dict", "[('descr', '<f4')]"},
      {"header unclosed dict", "{'descr': '<f4', 'fortran_order': False"},
      {"header garbage after dict", valid + "x"},
      {"header two dicts", valid + valid},
      {"header missing colon", "{'descr' '<f4', 'fortran_order': False, 'shape': (3, 4)}"},
      {"header missing comma", "{'descr': '<f4' 'fortran_order': False, 'shape': (3, 4)}"},
      {"header double comma", "{'descr': '<f4',, 'fortran_order': False, 'shape': (3, 4)}"},
      {"header unquoted key", "{descr: '<f4', 'fortran_order': False, 'shape': (3, 4)}"},
      {"header unterminated string", "{'descr: '<f4', 'fortran_order': False, 'shape': (3, 4)}"},
      {"missing key", "{'descr': '<f4', 'shape': (3, 4), }"},
      {"missing descr", "{'fortran_order': False, 'shape': (3, 4), }"},
      {"unknown key", "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), 'extra': 1}"},
      {"duplicate key",
       "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (3, 4)}"},
      {"fortran_order not a bool", dict("'<f4'", "0", "(3, 4)")},
      {"fortran_order lower case", dict("'<f4'", "false", "(3, 4)")},
      {"structured dtype", dict("[('a', '<f4')]", "False", "(3,)")},
      {"non-ASCII dtype", dict("'<f\xc3\xa4'", "False", "(3,)")},
      {"shape 0-D", dict("'<f4'", "False", "()")},
      {"shape 3-D", dict("'<f4'", "False", "(2, 3, 4)")},
      {"shape 70-D", dict("'<f4'", "False", seventy_dims)},
      {"shape an int", dict("'<f4'", "False", "3")},
      {"shape parenthesised int", dict("'<f4'", "False", "(3)")},
      {"shape a list", dict("'<f4'", "False", "[3, 4]")},
      {"shape missing comma", dict("'<f4'", "False", "(3 4)")},
      {"shape only a comma", dict("'<f4'", "False", "(,)")},
      {"shape float", dict("'<f4'", "False", "(3.0, 4)")},
      {"shape unclosed", "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4"},
      {"negative dim", dict("'<f4'", "False", "(-3, 4)")},
      {"negative dim with zero", dict("'<f4'", "False", "(0, -1)")},
      {"dim past ptrdiff_t", dict("'<f4'", "False", "(9223372036854775808,)")},
      {"dim with 100 digits", dict("'<f4'", "False", "(" + std::string(100, '9') + ", 1)")},
      // Each dimension fits, the byte size does not; with a zero dimension too, as in NumPy.
      {"byte size overflow", dict("'<f4'", "False", "(4611686018427387904, 4)")},
      {"element count overflow", dict("'<f8'", "False", "(4294967296, 4294967296)")},
      {"byte size overflow 1-D", dict("'<f8'", "False", "(2305843009213693952,)")},
      {"byte size overflow with zero", dict("'<f8'", "False", "(0, 2305843009213693952)")},
  };
  for (const auto& [name, header] : headers) out.push_back({name, make_npy(header, 0), true});
  for (const std::string dtype :
       {"<i4", "|f4", "<f2", "<c8", "O", "|u1", "<f16", "f4", "<f4 ", "<F4", "", "<\\x66\\x34"}) {
    out.push_back(
        {"dtype '" + dtype + "'", make_npy(dict("'" + dtype + "'", "False", "(3, 4)"), 48), true});
  }

  // Valid headers, wrong amount of data: 3 x 4 float32 needs 48 bytes.
  out.push_back({"no data", make_npy(valid, 0), false});
  out.push_back({"truncated data", make_npy(valid, 47), false});
  out.push_back({"trailing bytes", make_npy(valid, 49), false});
  out.push_back({"huge dims no data",
                 make_npy(dict("'<f8'", "False", "(1000000000, 1000000000)"), 64), false});
  return out;
}

TEST(npy_malformed_test, every_malformed_buffer_throws) {
  for (const malformed& m : malformed_inputs()) {
    SCOPED_TRACE(m.name);
    EXPECT_THROW(static_cast<void>(parse_npy<float>(m.bytes)), lowrank::invalid_argument);
    EXPECT_THROW(static_cast<void>(parse_npy<double>(m.bytes)), lowrank::invalid_argument);
    if (m.header_error) {
      EXPECT_THROW(static_cast<void>(parse_npy_header(m.bytes)), lowrank::invalid_argument);
    } else {
      EXPECT_NO_THROW(static_cast<void>(parse_npy_header(m.bytes)));
    }
  }
}

TEST_F(npy_file_test, every_malformed_file_throws_naming_the_file) {
  int count = 0;
  for (const malformed& m : malformed_inputs()) {
    SCOPED_TRACE(m.name);
    const fs::path file = dir_ / ("malformed_" + std::to_string(count++) + ".npy");
    write_bytes(file, m.bytes);
    const std::string message = error_message([&] { static_cast<void>(read_npy<float>(file)); });
    EXPECT_NE(message.find("lowrank::io::read_npy: argument 'file' is \"" + file.string() + "\""),
              std::string::npos)
        << message;
    EXPECT_THROW(static_cast<void>(read_npy<double>(file)), lowrank::invalid_argument);
  }
}

TEST(npy_malformed_test, numpy_files_of_other_types_and_shapes_throw) {
  for (const std::string_view name :
       {"bad_i4_c_3x4.npy", "bad_f16_c_3x4.npy", "bad_f64_3d_2x3x2.npy"}) {
    SCOPED_TRACE(std::string(name));
    EXPECT_THROW(static_cast<void>(read_npy<float>(fixture(name))), lowrank::invalid_argument);
    EXPECT_THROW(static_cast<void>(read_npy<double>(fixture(name))), lowrank::invalid_argument);
  }
}

TEST(npy_malformed_test, messages_name_function_argument_value_and_expectation) {
  const fs::path i4 = fixture("bad_i4_c_3x4.npy");
  const std::string dtype = error_message([&] { static_cast<void>(read_npy<float>(i4)); });
  EXPECT_EQ(dtype, "lowrank::io::read_npy: argument 'file' is \"" + i4.string() +
                       "\" with dtype '<i4'; expected dtype '<f4', '>f4', '=f4', '<f8', '>f8' "
                       "or '=f8' (float32 or float64)");

  const fs::path three_d = fixture("bad_f64_3d_2x3x2.npy");
  const std::string shape = error_message([&] { static_cast<void>(read_npy<double>(three_d)); });
  EXPECT_NE(shape.find("with shape (2, 3, 2) (3-D); expected a 1-D or 2-D shape"),
            std::string::npos)
      << shape;

  const std::vector<std::byte> truncated =
      make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }", 40);
  const std::string data = error_message([&] { static_cast<void>(parse_npy<float>(truncated)); });
  EXPECT_EQ(data,
            "lowrank::io::parse_npy: argument 'bytes' is a buffer of 109 bytes with 40 bytes of "
            "data after its 69-byte header; expected exactly 48 bytes of data for shape (3, 4) "
            "of dtype '<f4'");

  const std::vector<std::byte> half =
      make_npy("{'descr': '|f4', 'fortran_order': False, 'shape': (3, 4), }", 48);
  const std::string pipe = error_message([&] { static_cast<void>(parse_npy_header(half)); });
  EXPECT_EQ(pipe.rfind("lowrank::io::parse_npy_header: argument 'bytes' is a buffer of", 0), 0U)
      << pipe;
  EXPECT_NE(pipe.find("dtype '|f4'"), std::string::npos) << pipe;

  const std::string magic =
      error_message([] { static_cast<void>(parse_npy<float>(to_bytes("GIF89a..."))); });
  EXPECT_NE(magic.find("with the first bytes 47 49 46 38 39 61; expected the .npy magic string"),
            std::string::npos)
      << magic;

  const std::vector<std::byte> syntax =
      make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (3 4)}", 48);
  const std::string dict = error_message([&] { static_cast<void>(parse_npy<float>(syntax)); });
  EXPECT_NE(dict.find("at character 53 ('4'); expected ',' or ')' after a dimension"),
            std::string::npos)
      << dict;

  const std::vector<std::byte> unknown =
      make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), 'offset': 0}", 48);
  const std::string key = error_message([&] { static_cast<void>(parse_npy<float>(unknown)); });
  EXPECT_NE(key.find("with the header key 'offset'; expected only the keys"), std::string::npos)
      << key;
}

TEST_F(npy_file_test, missing_empty_and_directory_files_throw) {
  const fs::path missing = dir_ / "missing.npy";
  const std::string message = error_message([&] { static_cast<void>(read_npy<float>(missing)); });
  EXPECT_EQ(message, "lowrank::io::read_npy: argument 'file' is \"" + missing.string() +
                         "\", which does not exist; expected an existing, readable .npy file");

  const fs::path empty = dir_ / "empty.npy";
  write_bytes(empty, {});
  EXPECT_NE(
      error_message([&] { static_cast<void>(read_npy<double>(empty)); }).find("with only 0 bytes"),
      std::string::npos);

  EXPECT_THROW(static_cast<void>(read_npy<float>(dir_)), lowrank::invalid_argument);
}

// Only regular files are read: a FIFO would block the reader forever and /dev/zero would be
// read until memory runs out; both are refused at once, as is a symbolic link to a FIFO.
TEST_F(npy_file_test, special_files_are_refused_promptly) {
  const fs::path fifo = dir_ / "fifo.npy";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_EQ(
      io_test::prompt_error_message([&] { static_cast<void>(read_npy<float>(fifo)); }, fifo),
      "lowrank::io::read_npy: argument 'file' is \"" + fifo.string() +
          "\", which is a FIFO, not a regular file; expected an existing, readable .npy file");
  const fs::path link = dir_ / "link.npy";
  fs::create_symlink(fifo, link);
  EXPECT_NE(io_test::prompt_error_message([&] { static_cast<void>(read_npy<double>(link)); }, fifo)
                .find("which is a FIFO, not a regular file"),
            std::string::npos);
  if (fs::exists("/dev/zero")) {
    EXPECT_EQ(
        io_test::prompt_error_message([] { static_cast<void>(read_npy<float>("/dev/zero")); }),
        "lowrank::io::read_npy: argument 'file' is \"/dev/zero\", which is a character "
        "device, not a regular file; expected an existing, readable .npy file");
  }
}

// ---------------------------------------------------------------------------------------
// write_npy.

template <class T>
matrix<T> random_matrix(Eigen::Index rows, Eigen::Index cols, unsigned seed) {
  std::mt19937 engine(seed);
  std::normal_distribution<double> normal;
  matrix<T> a(rows, cols);
  for (Eigen::Index k = 0; k < a.size(); ++k) a.data()[k] = static_cast<T>(normal(engine));
  return a;
}

TYPED_TEST(npy_typed_file_test, round_trips_exactly) {
  const fs::path file = this->dir_ / "a.npy";
  unsigned seed = 1;
  for (const auto& [rows, cols] : std::vector<std::pair<Eigen::Index, Eigen::Index>>{
           {1, 1}, {3, 4}, {4, 3}, {1, 7}, {7, 1}, {33, 17}, {0, 3}, {3, 0}, {0, 0}}) {
    SCOPED_TRACE(std::to_string(rows) + " x " + std::to_string(cols));
    const matrix<TypeParam> a = random_matrix<TypeParam>(rows, cols, seed++);
    write_npy(file, a);
    const matrix<TypeParam> b = read_npy<TypeParam>(file);
    ASSERT_EQ(b.rows(), rows);
    ASSERT_EQ(b.cols(), cols);
    EXPECT_TRUE(same_matrix(a, b));
  }
}

TYPED_TEST(npy_typed_file_test, round_trips_special_values_bit_for_bit) {
  using limits = std::numeric_limits<TypeParam>;
  matrix<TypeParam> a(2, 3);
  a << limits::infinity(), -limits::infinity(), limits::quiet_NaN(), TypeParam(-0.0),
      limits::denorm_min(), limits::max();
  const fs::path file = this->dir_ / "special.npy";
  write_npy(file, a);
  const matrix<TypeParam> b = read_npy<TypeParam>(file);
  ASSERT_EQ(b.rows(), 2);
  ASSERT_EQ(b.cols(), 3);
  EXPECT_EQ(std::memcmp(a.data(), b.data(), sizeof(TypeParam) * 6), 0);
}

TYPED_TEST(npy_typed_file_test, writes_expressions_and_other_layouts) {
  const matrix<TypeParam> a = random_matrix<TypeParam>(5, 4, 7);
  const fs::path file = this->dir_ / "e.npy";

  const Eigen::Matrix<TypeParam, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> row_major = a;
  write_npy(file, row_major);
  EXPECT_TRUE(same_matrix(read_npy<TypeParam>(file), a));

  write_npy(file, a.transpose());
  EXPECT_TRUE(same_matrix(read_npy<TypeParam>(file), matrix<TypeParam>(a.transpose())));

  write_npy(file, a.block(1, 1, 3, 2));
  EXPECT_TRUE(same_matrix(read_npy<TypeParam>(file), matrix<TypeParam>(a.block(1, 1, 3, 2))));

  write_npy(file, a.row(2));
  EXPECT_TRUE(same_matrix(read_npy<TypeParam>(file), matrix<TypeParam>(a.row(2))));

  write_npy(file, TypeParam(2) * a + a);
  EXPECT_TRUE(same_matrix(read_npy<TypeParam>(file), matrix<TypeParam>(TypeParam(3) * a)));

  write_npy(file, a.array().square());
  EXPECT_TRUE(
      same_matrix(read_npy<TypeParam>(file), matrix<TypeParam>(a.array().square().matrix())));

  const Eigen::Vector<TypeParam, Eigen::Dynamic> v = a.col(1);
  write_npy(file, v);
  EXPECT_EQ(parse_npy_header(read_bytes(file)).shape, (std::vector<std::ptrdiff_t>{5, 1}));
  EXPECT_TRUE(same_matrix(read_npy<TypeParam>(file), matrix<TypeParam>(v)));

  const Eigen::Matrix<TypeParam, 2, 3> fixed = a.topLeftCorner(2, 3);
  write_npy(file, fixed);
  EXPECT_TRUE(same_matrix(read_npy<TypeParam>(file), matrix<TypeParam>(fixed)));
}

TEST_F(npy_file_test, writes_numpy_version_1_fortran_order_aligned) {
  for (const auto& [rows, cols] :
       std::vector<std::pair<Eigen::Index, Eigen::Index>>{{3, 4}, {1, 1}, {0, 0}, {123456789, 0}}) {
    const fs::path file = dir_ / "w.npy";
    write_npy(file, matrix<double>::Zero(rows, cols));
    const std::vector<std::byte> bytes = read_bytes(file);
    const npy_header h = parse_npy_header(bytes);
    EXPECT_EQ(h.dtype, npy_dtype::float64);
    EXPECT_FALSE(h.big_endian);
    EXPECT_TRUE(h.fortran_order);
    EXPECT_EQ(h.shape, (std::vector<std::ptrdiff_t>{rows, cols}));
    EXPECT_EQ(h.data_offset % 64, 0U);
    EXPECT_EQ(bytes[6], std::byte{1});
    EXPECT_EQ(bytes[7], std::byte{0});
    EXPECT_EQ(bytes[h.data_offset - 1], std::byte{'\n'});
    EXPECT_EQ(bytes.size(), h.data_offset + static_cast<std::size_t>(rows * cols) * 8);
  }
}

TEST_F(npy_file_test, written_data_matches_numpy_fortran_order_bytes) {
  // The independent check of the writer: NumPy's own Fortran-order file of the same matrix
  // has the same data bytes (the header padding differs between NumPy versions).
  matrix<float> a(3, 4);
  for (Eigen::Index j = 0; j < 4; ++j) {
    for (Eigen::Index i = 0; i < 3; ++i) a(i, j) = static_cast<float>(grid_value(i, j));
  }
  const fs::path file = dir_ / "grid.npy";
  write_npy(file, a);
  const std::vector<std::byte> ours = read_bytes(file);
  const std::vector<std::byte> numpy = read_bytes(fixture("f32_f_3x4.npy"));
  const std::size_t our_offset = parse_npy_header(ours).data_offset;
  const std::size_t numpy_offset = parse_npy_header(numpy).data_offset;
  ASSERT_EQ(ours.size() - our_offset, 48U);
  ASSERT_EQ(numpy.size() - numpy_offset, 48U);
  EXPECT_TRUE(std::equal(ours.begin() + static_cast<std::ptrdiff_t>(our_offset), ours.end(),
                         numpy.begin() + static_cast<std::ptrdiff_t>(numpy_offset)));
}

TEST_F(npy_file_test, write_replaces_an_existing_file_and_leaves_no_temporary) {
  const fs::path file = dir_ / "w.npy";
  write_npy(file, matrix<float>::Constant(2, 2, 1.0f));
  write_npy(file, matrix<float>::Constant(3, 1, 2.0f));
  EXPECT_TRUE(same_matrix(read_npy<float>(file), matrix<float>::Constant(3, 1, 2.0f)));
  EXPECT_EQ(directory_entries(dir_), std::vector<fs::path>{file});
}

TEST_F(npy_file_test, write_into_a_missing_directory_throws_and_creates_nothing) {
  const fs::path file = dir_ / "missing" / "w.npy";
  const std::string message =
      error_message([&] { write_npy(file, matrix<double>::Identity(2, 2)); });
  EXPECT_EQ(
      message.rfind("lowrank::io::write_npy: argument 'file' is \"" + file.string() + "\"", 0), 0U)
      << message;
  EXPECT_TRUE(directory_entries(dir_).empty());
}

TEST_F(npy_file_test, write_over_a_directory_throws_and_keeps_it) {
  const fs::path target = dir_ / "target";
  fs::create_directory(target);
  write_bytes(target / "inside.npy", to_bytes("keep"));
  const std::string message = error_message([&] { write_npy(target, matrix<float>::Zero(2, 2)); });
  EXPECT_EQ(message.rfind("lowrank::io::write_npy: argument 'file' is \"" + target.string() +
                              "\", which cannot be replaced by the written file",
                          0),
            0U)
      << message;
  EXPECT_TRUE(fs::is_directory(target));
  EXPECT_EQ(directory_entries(target), std::vector<fs::path>{target / "inside.npy"});
  EXPECT_EQ(directory_entries(dir_), std::vector<fs::path>{target});

  EXPECT_THROW(write_npy(dir_ / "", matrix<float>::Zero(2, 2)), lowrank::invalid_argument);
  EXPECT_EQ(directory_entries(dir_), std::vector<fs::path>{target});
}

TEST_F(npy_file_test, failed_write_keeps_the_existing_target) {
  // A name that fits the file system's limit while "<name>.<16 hex>.tmp" does not: the target
  // exists, the temporary cannot be created, and the target must survive unchanged.
  const fs::path file = dir_ / (std::string(240, 'k') + ".npy");
  write_bytes(file, to_bytes("previous contents"));
  if (!fs::exists(file)) GTEST_SKIP() << "the file system does not take 244-character names";
  const fs::path longer = dir_ / (std::string(240 + 21, 'k') + ".npy");
  if (std::ofstream(longer)) GTEST_SKIP() << "the file system takes 265-character names";
  EXPECT_THROW(write_npy(file, matrix<double>::Constant(2, 2, 5.0)), lowrank::invalid_argument);
  EXPECT_EQ(read_bytes(file), to_bytes("previous contents"));
  EXPECT_EQ(directory_entries(dir_), std::vector<fs::path>{file});
}

}  // namespace
}  // namespace npy_tests
