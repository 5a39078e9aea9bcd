// Fuzz target of lowrank::io::parse_npy_header and parse_npy: every input either parses into
// a result consistent with its header or throws lowrank::invalid_argument. A crash, a
// sanitizer report, any other exception or an inconsistent result is a bug.
//
// libFuzzer (clang), with a scratch corpus directory first and the fixtures as seeds:
//   clang++ -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined
//       -I include -I /usr/include/eigen3 tests/io/npy_fuzz.cpp -o npy_fuzz
//   ./npy_fuzz -max_total_time=60 corpus/ tests/io/fixtures/npy/
// Standalone, a deterministic mutation loop for any compiler (no libFuzzer):
//   g++ -std=c++20 -g -O1 -fsanitize=address,undefined -DLOWRANK_FUZZ_STANDALONE
//       -I include -I /usr/include/eigen3 tests/io/npy_fuzz.cpp -o npy_fuzz
//   ./npy_fuzz [--iterations=N] [--seed=S] [seed files...]    (N defaults to 20000)

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "io_test_support.hpp"
#include "lowrank/io/npy.hpp"

namespace {

using io_test::starts_with;

void require(bool ok, const char* what) { io_test::require("npy_fuzz", ok, what); }

template <class T>
void check_parse(std::span<const std::byte> bytes, const lowrank::io::npy_header* header) {
  try {
    const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> m = lowrank::io::parse_npy<T>(bytes);
    require(header != nullptr, "parse_npy accepted a header that parse_npy_header rejected");
    const std::ptrdiff_t rows = header->shape[0];
    const std::ptrdiff_t cols = header->shape.size() == 2 ? header->shape[1] : 1;
    require(m.rows() == rows && m.cols() == cols, "the matrix does not have the header's shape");
    const std::size_t itemsize = header->dtype == lowrank::io::npy_dtype::float32 ? 4 : 8;
    require(header->data_offset <= bytes.size() &&
                bytes.size() - header->data_offset ==
                    static_cast<std::size_t>(rows) * static_cast<std::size_t>(cols) * itemsize,
            "parse_npy accepted a data size that does not match the shape");
  } catch (const lowrank::invalid_argument& e) {
    require(starts_with(e.what(), "lowrank::io::parse_npy: argument 'bytes' is a buffer of "),
            "a parse_npy message does not name the function and argument");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  lowrank::io::npy_header header;
  bool header_ok = false;
  try {
    header = lowrank::io::parse_npy_header(bytes);
    header_ok = true;
    require(header.shape.size() == 1 || header.shape.size() == 2, "a header of 0 or >2 dims");
    require(header.data_offset <= size, "a data offset past the end");
    for (const std::ptrdiff_t dim : header.shape) require(dim >= 0, "a negative dimension");
  } catch (const lowrank::invalid_argument& e) {
    require(starts_with(e.what(), "lowrank::io::parse_npy_header: argument 'bytes' is "),
            "a parse_npy_header message does not name the function and argument");
  }
  check_parse<float>(bytes, header_ok ? &header : nullptr);
  check_parse<double>(bytes, header_ok ? &header : nullptr);
  return 0;
}

#ifdef LOWRANK_FUZZ_STANDALONE

namespace {

using io_test::fuzz_buffer;
using buffer = fuzz_buffer;

// A valid file: preamble of `major`.0, the header, then `data_bytes` bytes of data.
buffer make_seed(std::string_view header, std::size_t data_bytes, unsigned major = 1) {
  buffer out = {0x93, 'N', 'U', 'M', 'P', 'Y', static_cast<std::uint8_t>(major), 0};
  const std::size_t length_size = major == 1 ? 2 : 4;
  for (std::size_t i = 0; i < length_size; ++i) {
    out.push_back(static_cast<std::uint8_t>((header.size() >> (8 * i)) & 0xff));
  }
  out.insert(out.end(), header.begin(), header.end());
  for (std::size_t i = 0; i < data_bytes; ++i) out.push_back(static_cast<std::uint8_t>(i * 37));
  return out;
}

std::vector<buffer> builtin_seeds() {
  return {
      make_seed("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }          \n", 48),
      make_seed("{'descr': '<f8', 'fortran_order': True, 'shape': (2, 2), }\n", 32),
      make_seed("{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }\n", 48),
      make_seed("{'shape': (5,), 'fortran_order': False, 'descr': '>f8'}", 40),
      make_seed("{\"descr\": \">f4\", \"fortran_order\": True, \"shape\": ( 2 , 3 , ) }", 24),
      make_seed("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }\n", 24, 2),
      make_seed("{'descr': '=f8', 'fortran_order': False, 'shape': (0, 3), }\n", 0, 3),
      make_seed("{'descr': '<f4', 'fortran_order': False, 'shape': (1L, 1L), }\n", 4),
  };
}

// Fragments of header syntax: inserting them makes mutants that reach deep into the parser.
constexpr std::string_view tokens[] = {"0",
                                       "1",
                                       "3",
                                       "9",
                                       "-",
                                       ",",
                                       "(",
                                       ")",
                                       "'",
                                       "\"",
                                       ":",
                                       "{",
                                       "}",
                                       " ",
                                       "\n",
                                       "\\",
                                       "L",
                                       "True",
                                       "False",
                                       "'descr'",
                                       "'shape'",
                                       "'fortran_order'",
                                       "'<f4'",
                                       "'>f8'",
                                       "'|f4'",
                                       "'<i4'",
                                       "(3,)",
                                       "(3, 4)",
                                       "()",
                                       "(2, 3, 4)",
                                       "4294967296",
                                       "9223372036854775807",
                                       "9223372036854775808",
                                       "4611686018427387904",
                                       "99999999999999999999999"};

void mutate(buffer& b, std::mt19937_64& rng) {
  const auto below = [&](std::size_t n) {
    return n == 0 ? 0 : static_cast<std::size_t>(rng() % n);
  };
  const auto byte = [&] { return static_cast<std::uint8_t>(rng()); };
  switch (below(13)) {
    case 0:  // flip a bit
      if (!b.empty()) b[below(b.size())] ^= static_cast<std::uint8_t>(1U << below(8));
      break;
    case 1:  // overwrite a byte
      if (!b.empty()) b[below(b.size())] = byte();
      break;
    case 2:  // insert a byte
      b.insert(b.begin() + static_cast<std::ptrdiff_t>(below(b.size() + 1)), byte());
      break;
    case 3:  // delete a byte
      if (!b.empty()) b.erase(b.begin() + static_cast<std::ptrdiff_t>(below(b.size())));
      break;
    case 4:  // truncate
      b.resize(below(b.size() + 1));
      break;
    case 5: {  // insert a header token
      const std::string_view t = tokens[below(std::size(tokens))];
      b.insert(b.begin() + static_cast<std::ptrdiff_t>(below(b.size() + 1)), t.begin(), t.end());
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
      if (b.size() >= 10) {
        const int delta = static_cast<int>(below(9)) - 4;
        b[8] = below(4) == 0 ? byte() : static_cast<std::uint8_t>(b[8] + delta);
        if (below(4) == 0) b[9] = byte();
      }
      break;
    case 8:  // set the version
      if (b.size() >= 8) {
        b[6] = below(4) == 0 ? byte() : static_cast<std::uint8_t>(1 + below(3));
        if (below(8) == 0) b[7] = byte();
      }
      break;
    case 9: {  // copy a range of the buffer to another place
      if (b.empty()) break;
      const std::size_t from = below(b.size());
      const std::size_t length = 1 + below(std::min<std::size_t>(16, b.size() - from));
      const buffer piece(b.begin() + static_cast<std::ptrdiff_t>(from),
                         b.begin() + static_cast<std::ptrdiff_t>(from + length));
      b.insert(b.begin() + static_cast<std::ptrdiff_t>(below(b.size() + 1)), piece.begin(),
               piece.end());
      break;
    }
    case 10: {  // replace a token of the header by another, keeping the header length right
      const std::string_view from = tokens[below(std::size(tokens))];
      const auto found = std::search(b.begin(), b.end(), from.begin(), from.end());
      if (found == b.end()) break;
      const std::string_view to = tokens[below(std::size(tokens))];
      const auto at = found - b.begin();
      b.erase(found, found + static_cast<std::ptrdiff_t>(from.size()));
      b.insert(b.begin() + at, to.begin(), to.end());
      if (b.size() >= 12 && at >= 12 && b[6] >= 1 && b[6] <= 3) {
        const std::size_t length_size = b[6] == 1 ? 2 : 4;
        std::size_t length = 0;
        for (std::size_t k = length_size; k-- > 0;) length = (length << 8) | b[8 + k];
        length += to.size() - from.size();
        for (std::size_t k = 0; k < length_size; ++k)
          b[8 + k] = static_cast<std::uint8_t>(length >> (8 * k));
      }
      break;
    }
    case 11: {  // give a valid header exactly the data it asks for, to reach the copy loops
      try {
        const auto header = lowrank::io::parse_npy_header(
            std::span<const std::byte>(reinterpret_cast<const std::byte*>(b.data()), b.size()));
        std::size_t count = header.dtype == lowrank::io::npy_dtype::float32 ? 4 : 8;
        for (const std::ptrdiff_t dim : header.shape) count *= static_cast<std::size_t>(dim);
        if (count <= 4096) b.resize(header.data_offset + count, 0x3f);
      } catch (const lowrank::invalid_argument&) {
      }
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
  if (!io_test::parse_fuzz_arguments("npy_fuzz", argc, argv, options)) return 2;
  io_test::run_fuzz_loop(
      options, [](const buffer& b) { LLVMFuzzerTestOneInput(b.data(), b.size()); }, mutate,
      [](buffer&, std::mt19937_64&) {});
  std::printf("npy_fuzz: %zu executions (%zu seeds + %zu mutants), no failure\n",
              options.seeds.size() + options.iterations, options.seeds.size(), options.iterations);
  return 0;
}

#endif  // LOWRANK_FUZZ_STANDALONE
