// Fuzz target of lowrank::io::safetensors_file: every input either parses into a file whose
// tensors are consistent with its size and convert as documented, or throws
// lowrank::invalid_argument. A crash, a sanitizer report, any other exception or an
// inconsistent result is a bug.
//
// libFuzzer (clang), with a scratch corpus directory first and the fixtures as seeds:
//   clang++ -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined
//       -I include -I /usr/include/eigen3 tests/io/safetensors_fuzz.cpp -o safetensors_fuzz
//   ./safetensors_fuzz -max_total_time=60 corpus/ tests/io/fixtures/safetensors/
// Standalone, a deterministic mutation loop for any compiler (no libFuzzer):
//   g++ -std=c++20 -g -O1 -fsanitize=address,undefined -DLOWRANK_FUZZ_STANDALONE
//       -I include -I /usr/include/eigen3 tests/io/safetensors_fuzz.cpp -o safetensors_fuzz
//   ./safetensors_fuzz [--iterations=N] [--seed=S] [seed files...]    (N defaults to 20000)

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "io_test_support.hpp"
#include "lowrank/io/safetensors.hpp"

namespace {

using io_test::starts_with;

void require(bool ok, const char* what) { io_test::require("safetensors_fuzz", ok, what); }

// Equal, or NaNs of the same sign.
bool same_value(float a, float b) {
  if (std::isnan(a) || std::isnan(b)) {
    return std::isnan(a) && std::isnan(b) && std::signbit(a) == std::signbit(b);
  }
  return a == b;
}

void check_tensor(const lowrank::io::safetensors_file& file, const std::string& name,
                  const lowrank::io::tensor_info& info, std::size_t data_size) {
  require(info.begin <= info.end && info.end <= data_size, "offsets outside the data buffer");
  require(file.tensor_bytes(name).size() == info.end - info.begin,
          "tensor_bytes does not span the offsets");
  for (const std::int64_t dim : info.shape) require(dim >= 0, "a negative dimension");

  // Converting to float and to double either both succeed or both fail; F16, BF16 and F32
  // convert to both exactly and F64 -> float rounds as static_cast does, so the float
  // matrix is the double matrix cast to float, element for element.
  Eigen::MatrixXf f;
  Eigen::MatrixXd d;
  bool float_ok = false;
  bool double_ok = false;
  try {
    f = file.matrix<float>(name);
    float_ok = true;
  } catch (const lowrank::invalid_argument& e) {
    require(starts_with(e.what(), "lowrank::io::safetensors_file::matrix: argument 'name' is "),
            "a matrix<float> message does not name the function and argument");
  }
  try {
    d = file.matrix<double>(name);
    double_ok = true;
  } catch (const lowrank::invalid_argument& e) {
    require(starts_with(e.what(), "lowrank::io::safetensors_file::matrix: argument 'name' is "),
            "a matrix<double> message does not name the function and argument");
  }
  require(float_ok == double_ok, "matrix<float> and matrix<double> disagree on success");
  const bool convertible =
      info.type.has_value() && (info.shape.size() == 1 || info.shape.size() == 2);
  require(float_ok == convertible, "matrix succeeds exactly for 1-D and 2-D tensors it converts");
  if (!float_ok) return;
  const std::int64_t rows = info.shape[0];
  const std::int64_t cols = info.shape.size() == 2 ? info.shape[1] : 1;
  require(f.rows() == rows && f.cols() == cols && d.rows() == rows && d.cols() == cols,
          "the matrix does not have the tensor's shape");
  require(
      static_cast<std::size_t>(f.size()) * lowrank::io::detail::safetensors_itemsize(*info.type) ==
          info.end - info.begin,
      "the matrix does not use exactly the tensor's bytes");
  for (Eigen::Index k = 0; k < f.size(); ++k) {
    require(same_value(f.data()[k], static_cast<float>(d.data()[k])),
            "matrix<float> is not matrix<double> rounded to float");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::vector<std::byte> bytes(size);
  if (size > 0) std::memcpy(bytes.data(), data, size);
  try {
    const lowrank::io::safetensors_file file = lowrank::io::safetensors_file::parse(bytes);
    require(size >= 8, "a file shorter than the length prefix parsed");
    std::uint64_t header_length = 0;
    for (int i = 0; i < 8; ++i) header_length |= static_cast<std::uint64_t>(data[i]) << (8 * i);
    require(header_length <= size - 8, "a header length past the end parsed");
    const std::size_t data_size = size - 8 - static_cast<std::size_t>(header_length);
    std::size_t covered = 0;
    for (const auto& [name, info] : file.tensors()) {
      check_tensor(file, name, info, data_size);
      covered += info.end - info.begin;
    }
    require(covered == data_size, "the tensors do not cover the data buffer exactly");
  } catch (const lowrank::invalid_argument& e) {
    require(starts_with(e.what(),
                        "lowrank::io::safetensors_file::parse: argument 'bytes' is a "
                        "buffer of "),
            "a parse message does not name the function and argument");
  }
  return 0;
}

#ifdef LOWRANK_FUZZ_STANDALONE

namespace {

using io_test::fuzz_buffer;
using buffer = fuzz_buffer;

// A file: the length of `header`, the header, then `data_bytes` bytes of data.
buffer make_seed(std::string_view header, std::size_t data_bytes) {
  buffer out;
  for (std::size_t i = 0; i < 8; ++i) {
    out.push_back(static_cast<std::uint8_t>((header.size() >> (8 * i)) & 0xff));
  }
  out.insert(out.end(), header.begin(), header.end());
  for (std::size_t i = 0; i < data_bytes; ++i) out.push_back(static_cast<std::uint8_t>(i * 37));
  return out;
}

std::vector<buffer> builtin_seeds() {
  return {
      make_seed(R"({"w":{"dtype":"F32","shape":[3,4],"data_offsets":[0,48]}})", 48),
      make_seed(R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F64","shape":[2,2],)"
                R"("data_offsets":[0,32]},"b":{"dtype":"F16","shape":[3],"data_offsets":[32,38]}})",
                38),
      make_seed(R"({"b":{"dtype":"BF16","shape":[2,3],"data_offsets":[8,20]},)"
                R"("a":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}   )",
                20),
      make_seed(R"({"e":{"dtype":"F32","shape":[0,5],"data_offsets":[0,0]},)"
                R"("s":{"dtype":"F64","shape":[],"data_offsets":[0,8]},)"
                R"("c":{"dtype":"F32","shape":[2,1,2],"data_offsets":[8,24]}})",
                24),
      make_seed(
          R"( {"x":{"data_offsets":[0,2],"shape":[4],"dtype":"F4","k":[1,{"z":null}]},)"
          R"("__metadata__":null,"\u03bb":{"dtype":"F16","shape":[1,1],"data_offsets":[2,4]}})",
          4),
      make_seed("{}      ", 0),
  };
}

// Fragments of header syntax: inserting them makes mutants that reach deep into the parser.
constexpr std::string_view tokens[] = {"0",
                                       "1",
                                       "4",
                                       "8",
                                       "-",
                                       ",",
                                       ":",
                                       "[",
                                       "]",
                                       "{",
                                       "}",
                                       "\"",
                                       " ",
                                       "\n",
                                       "\\",
                                       "\\u0000",
                                       "\\ud800",
                                       "\xc3\xa9",
                                       "\xff",
                                       "null",
                                       "true",
                                       "1.5",
                                       "1e400",
                                       "\"dtype\"",
                                       "\"shape\"",
                                       "\"data_offsets\"",
                                       "\"__metadata__\"",
                                       "\"F32\"",
                                       "\"F16\"",
                                       "\"BF16\"",
                                       "\"F64\"",
                                       "\"I64\"",
                                       "\"F4\"",
                                       "\"F6_E3M2\"",
                                       "\"U8\"",
                                       "\"F33\"",
                                       "[]",
                                       "[0]",
                                       "[0,0]",
                                       "[2,3]",
                                       "[1,1,1]",
                                       "{}",
                                       "4294967296",
                                       "9223372036854775807",
                                       "9223372036854775808",
                                       "18446744073709551615",
                                       "18446744073709551616",
                                       "99999999999999999999999"};

std::size_t header_length(const buffer& b) {
  std::uint64_t length = 0;
  for (std::size_t k = 0; k < 8 && k < b.size(); ++k) {
    length |= static_cast<std::uint64_t>(b[k]) << (8 * k);
  }
  return static_cast<std::size_t>(std::min<std::uint64_t>(length, 1U << 20));
}

void set_header_length(buffer& b, std::uint64_t length) {
  if (b.size() < 8) b.resize(8);
  for (std::size_t k = 0; k < 8; ++k) b[k] = static_cast<std::uint8_t>(length >> (8 * k));
}

// Gives a JSON header the data its largest offset asks for, so that mutants reach the checks
// behind the tiling and the conversions (the header is parsed here with nlohmann directly,
// not with the parser under test).
void fit_data(buffer& b) {
  const std::size_t length = header_length(b);
  if (b.size() < 8 || length > b.size() - 8) return;
  const nlohmann::json header = nlohmann::json::parse(
      b.begin() + 8, b.begin() + 8 + static_cast<std::ptrdiff_t>(length), nullptr, false);
  if (!header.is_object()) return;
  std::uint64_t end = 0;
  for (const auto& [key, value] : header.items()) {
    if (!value.is_object() || !value.contains("data_offsets")) continue;
    const nlohmann::json& offsets = value["data_offsets"];
    if (offsets.is_array() && offsets.size() == 2 && offsets[1].is_number_unsigned()) {
      end = std::max(end, offsets[1].get<std::uint64_t>());
    }
  }
  if (end <= 4096) b.resize(8 + length + end, 0x3c);
}

void mutate(buffer& b, std::mt19937_64& rng) {
  const auto below = [&](std::size_t n) {
    return n == 0 ? 0 : static_cast<std::size_t>(rng() % n);
  };
  const auto byte = [&] { return static_cast<std::uint8_t>(rng()); };
  // Edits inside the header mostly keep the length prefix right.
  const auto adjust = [&](std::size_t at, std::ptrdiff_t delta) {
    if (b.size() < 8 || at < 8 || below(4) == 0) return;
    const std::size_t length = header_length(b);
    if (at <= 8 + length)
      set_header_length(b, static_cast<std::uint64_t>(static_cast<std::ptrdiff_t>(length) + delta));
  };
  switch (below(13)) {
    case 0:  // flip a bit
      if (!b.empty()) b[below(b.size())] ^= static_cast<std::uint8_t>(1U << below(8));
      break;
    case 1:  // overwrite a byte
      if (!b.empty()) b[below(b.size())] = byte();
      break;
    case 2: {  // insert a byte
      const std::size_t at = below(b.size() + 1);
      b.insert(b.begin() + static_cast<std::ptrdiff_t>(at), byte());
      adjust(at, 1);
      break;
    }
    case 3: {  // delete a byte
      if (b.empty()) break;
      const std::size_t at = below(b.size());
      b.erase(b.begin() + static_cast<std::ptrdiff_t>(at));
      adjust(at, -1);
      break;
    }
    case 4:  // truncate
      b.resize(below(b.size() + 1));
      break;
    case 5: {  // insert a header token
      const std::string_view t = tokens[below(std::size(tokens))];
      const std::size_t at = below(b.size() + 1);
      b.insert(b.begin() + static_cast<std::ptrdiff_t>(at), t.begin(), t.end());
      adjust(at, static_cast<std::ptrdiff_t>(t.size()));
      break;
    }
    case 6: {  // overwrite with a header token
      const std::string_view t = tokens[below(std::size(tokens))];
      const std::size_t at = below(b.size() + 1);
      if (at + t.size() > b.size()) b.resize(at + t.size());
      std::copy(t.begin(), t.end(), b.begin() + static_cast<std::ptrdiff_t>(at));
      break;
    }
    case 7:  // rewrite the header length: small deltas find off-by-one errors
      if (b.size() >= 8) {
        const auto length = static_cast<std::int64_t>(header_length(b));
        const std::uint64_t value =
            below(4) == 0
                ? rng() >> below(64)
                : static_cast<std::uint64_t>(length + static_cast<std::int64_t>(below(9)) - 4);
        set_header_length(b, value);
      }
      break;
    case 8: {  // copy a range of the buffer to another place
      if (b.empty()) break;
      const std::size_t from = below(b.size());
      const std::size_t length = 1 + below(std::min<std::size_t>(24, b.size() - from));
      const buffer piece(b.begin() + static_cast<std::ptrdiff_t>(from),
                         b.begin() + static_cast<std::ptrdiff_t>(from + length));
      const std::size_t at = below(b.size() + 1);
      b.insert(b.begin() + static_cast<std::ptrdiff_t>(at), piece.begin(), piece.end());
      adjust(at, static_cast<std::ptrdiff_t>(length));
      break;
    }
    case 9: {  // replace a token of the header by another, keeping the header length right
      const std::string_view from = tokens[below(std::size(tokens))];
      const auto found = std::search(b.begin(), b.end(), from.begin(), from.end());
      if (found == b.end()) break;
      const std::string_view to = tokens[below(std::size(tokens))];
      const auto at = static_cast<std::size_t>(found - b.begin());
      b.erase(found, found + static_cast<std::ptrdiff_t>(from.size()));
      b.insert(b.begin() + static_cast<std::ptrdiff_t>(at), to.begin(), to.end());
      if (at >= 8 && at < 8 + header_length(b)) {
        set_header_length(b, header_length(b) + to.size() - from.size());
      }
      break;
    }
    case 10:  // give a JSON header the data its largest offset asks for
      fit_data(b);
      break;
    case 11: {  // pad the header with spaces, as the reference writer does
      const std::size_t length = header_length(b);
      if (b.size() < 8 || length > b.size() - 8) break;
      const std::size_t pad = 1 + below(8);
      b.insert(b.begin() + static_cast<std::ptrdiff_t>(8 + length), pad, ' ');
      set_header_length(b, length + pad);
      break;
    }
    default:  // append bytes
      for (std::size_t n = 1 + below(16); n > 0; --n) b.push_back(byte());
      break;
  }
}

}  // namespace

int main(int argc, char** argv) {
  io_test::fuzz_options options;
  options.seeds = builtin_seeds();
  if (!io_test::parse_fuzz_arguments("safetensors_fuzz", argc, argv, options)) return 2;
  // The seeds run first and are not counted; then every mutant is counted when it parses.
  std::size_t runs = 0;
  std::size_t parsed = 0;
  const auto run = [&](const buffer& b) {
    LLVMFuzzerTestOneInput(b.data(), b.size());
    if (runs++ < options.seeds.size()) return;
    try {
      static_cast<void>(lowrank::io::safetensors_file::parse(
          std::vector<std::byte>(reinterpret_cast<const std::byte*>(b.data()),
                                 reinterpret_cast<const std::byte*>(b.data()) + b.size())));
      ++parsed;
    } catch (const lowrank::invalid_argument&) {
    }
  };
  io_test::run_fuzz_loop(options, run, mutate, [](buffer& b, std::mt19937_64& rng) {
    if (rng() % 2 == 0) fit_data(b);
  });
  std::printf(
      "safetensors_fuzz: %zu executions (%zu seeds + %zu mutants, %zu mutants valid), no "
      "failure\n",
      options.seeds.size() + options.iterations, options.seeds.size(), options.iterations, parsed);
  return 0;
}

#endif  // LOWRANK_FUZZ_STANDALONE
