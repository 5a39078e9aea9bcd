#pragma once
/// @file
/// NumPy `.npy` files to and from Eigen matrices.
///
/// Format (NumPy's `numpy.lib.format`, NEP 1):
///
///     offset 0   6 bytes   magic string "\x93NUMPY"
///     offset 6   2 bytes   format version, major then minor: 1.0, 2.0 or 3.0
///     offset 8   2 bytes   (1.0) or 4 bytes (2.0, 3.0): header length, little-endian
///     then                 header: a Python dict literal, latin-1 (1.0, 2.0) or UTF-8 (3.0),
///                          padded with spaces and ended by '\n', e.g.
///                          {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }
///     data_offset          the elements, nothing before, nothing after
///
/// What is accepted:
/// - the dict has exactly the keys 'descr', 'fortran_order' and 'shape', in any order, with
///   Python's whitespace, single or double quotes and an optional trailing comma;
/// - 'descr' is '<f4', '>f4', '=f4', '<f8', '>f8' or '=f8' ('=' is this machine's order);
///   big-endian data is byte-swapped on read;
/// - 'fortran_order' is True or False;
/// - 'shape' is a 1-tuple `(n,)` or a 2-tuple `(rows, cols)` of non-negative integers (an `L`
///   suffix, as NumPy wrote under Python 2, is accepted); a dimension may be 0; the product
///   of the non-zero dimensions times the item size must fit in `std::ptrdiff_t`;
/// - the data is exactly `rows * cols * itemsize` bytes: a shorter or longer file is an error.
///
/// Memory layout (docs/architecture.md, "Data model"): Eigen matrices are column-major. A
/// Fortran-order file holds column-major bytes and is copied as it is; a C-order file (what
/// NumPy writes by default, and what a PyTorch tensor saved through NumPy is) holds row-major
/// bytes and is transposed explicitly while reading, so the matrix is rows x cols either way.
/// A 1-D array of shape (n,) becomes an n x 1 matrix.
///
/// Files (lowrank/io/detail/files.hpp): read_npy reads regular files only: a FIFO, a device
/// such as /dev/zero, a socket or a directory is refused before it is read (checked with
/// stat, then fstat on the descriptor, opened non-blocking); a symbolic link to a regular
/// file is followed. write_npy writes a temporary next to the target (created with O_EXCL,
/// mode 0600), syncs it, gives it the mode of the file it replaces (or 0666 minus the
/// umask), renames it over the target and syncs the directory. A symbolic link at the
/// target is written through and kept; a special file or directory there is refused. A
/// failed write leaves the previous file as it was and no temporary behind.

#include <Eigen/Core>
#include <algorithm>
#include <array>
#include <bit>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "lowrank/core/error.hpp"
#include "lowrank/io/detail/files.hpp"

namespace lowrank::io {

/// Element type of a `.npy` file that lowrank reads.
enum class npy_dtype { float32, float64 };

/// The validated header of a `.npy` file.
struct npy_header {
  npy_dtype dtype = npy_dtype::float32;
  bool big_endian = false;  ///< '>f4' / '>f8': the data is byte-swapped on read
  bool fortran_order = false;
  std::vector<std::ptrdiff_t> shape;  ///< 1-D {n} or 2-D {rows, cols}, all >= 0
  std::size_t data_offset = 0;        ///< bytes from the file start to the data
};

namespace detail {

// The reader and the writer assume IEEE-754 binary32 / binary64, which also makes a float64
// value outside float's range convert to +-inf instead of being undefined.
static_assert(std::numeric_limits<float>::is_iec559 && sizeof(float) == 4);
static_assert(std::numeric_limits<double>::is_iec559 && sizeof(double) == 8);

inline std::string npy_shape_string(std::span<const std::ptrdiff_t> shape) {
  // Python's tuple repr, so the message shows what the header says.
  std::string out = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(shape[i]);
  }
  if (shape.size() == 1) out += ',';
  out += ')';
  return out;
}

inline std::size_t npy_itemsize(npy_dtype dtype) { return dtype == npy_dtype::float32 ? 4 : 8; }

inline std::string npy_dtype_string(npy_dtype dtype, bool big_endian) {
  std::string out = big_endian ? ">f" : "<f";
  out += dtype == npy_dtype::float32 ? '4' : '8';
  return out;
}

inline constexpr std::string_view npy_accepted_dtypes =
    "dtype '<f4', '>f4', '=f4', '<f8', '>f8' or '=f8' (float32 or float64)";

inline constexpr std::size_t npy_max_dims = 64;  // NumPy's own limit

/// The three values of a header dict, before they are checked against what lowrank reads.
struct npy_dict {
  std::string descr;
  bool fortran_order = false;
  std::vector<std::ptrdiff_t> shape;
};

/// Recursive-descent parser for the subset of Python literals a `.npy` header uses: a dict
/// of string keys to a string, True/False or a tuple of integers.
class npy_dict_parser {
 public:
  npy_dict_parser(std::string_view text, const error_source& source)
      : text_(text), source_(&source) {}

  [[nodiscard]] npy_dict parse() {
    npy_dict dict;
    bool have_descr = false;
    bool have_fortran_order = false;
    bool have_shape = false;
    skip_space();
    expect('{', "'{' opening the header dict");
    while (true) {
      skip_space();
      if (accept('}')) break;
      if (!at_quote()) fail_syntax("a quoted key ('descr', 'fortran_order' or 'shape') or '}'");
      const std::string key = parse_string();
      skip_space();
      expect(':', "':' after a key");
      skip_space();
      if (key == "descr") {
        check_unique(have_descr, key);
        // A list here would be a structured dtype, which is not a matrix.
        if (!at_quote()) fail_syntax("a dtype string such as '<f4' as the value of 'descr'");
        dict.descr = parse_string();
      } else if (key == "fortran_order") {
        check_unique(have_fortran_order, key);
        dict.fortran_order = parse_bool();
      } else if (key == "shape") {
        check_unique(have_shape, key);
        dict.shape = parse_shape();
      } else {
        fail_with(*source_, "with the header key '" + printable(key) + "'",
                  "only the keys 'descr', 'fortran_order' and 'shape'");
      }
      skip_space();
      if (accept(',')) continue;
      if (accept('}')) break;
      fail_syntax("',' or '}' after a value");
    }
    skip_space();
    if (pos_ != text_.size()) fail_syntax("only spaces and '\\n' after the closing '}'");
    if (!have_descr) fail_missing("descr");
    if (!have_fortran_order) fail_missing("fortran_order");
    if (!have_shape) fail_missing("shape");
    return dict;
  }

 private:
  [[nodiscard]] bool at_end() const { return pos_ >= text_.size(); }
  [[nodiscard]] char peek() const { return at_end() ? '\0' : text_[pos_]; }
  [[nodiscard]] bool at_quote() const { return !at_end() && (peek() == '\'' || peek() == '"'); }
  [[nodiscard]] bool at_digit() const { return !at_end() && peek() >= '0' && peek() <= '9'; }
  [[nodiscard]] bool at_identifier_char() const {
    const char c = peek();
    return at_digit() || c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
  }

  bool accept(char c) {
    if (at_end() || text_[pos_] != c) return false;
    ++pos_;
    return true;
  }

  void expect(char c, std::string_view expected) {
    if (!accept(c)) fail_syntax(expected);
  }

  void skip_space() {
    while (!at_end()) {
      const char c = text_[pos_];
      if (c != ' ' && c != '\t' && c != '\n' && c != '\r' && c != '\f' && c != '\v') return;
      ++pos_;
    }
  }

  [[noreturn]] void fail_syntax(std::string_view expected) const {
    // Show a window around the error: a header can be long, and the message must stay short.
    constexpr std::size_t before = 40;
    constexpr std::size_t width = 80;
    const std::size_t start = pos_ > before ? pos_ - before : 0;
    std::string found = "with the header \"";
    if (start > 0) found += "...";
    found += printable(text_.substr(start, width));
    if (start + width < text_.size()) found += "...";
    found += "\", which is not a valid header dict at character " + std::to_string(pos_);
    found += at_end() ? std::string(" (the end of the header)")
                      : " ('" + printable(text_.substr(pos_, 1)) + "')";
    fail_with(*source_, found,
              std::string(expected) + " in a header dict like " +
                  "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }");
  }

  [[noreturn]] void fail_missing(std::string_view key) const {
    fail_with(*source_, "with a header dict without the key '" + std::string(key) + "'",
              "the keys 'descr', 'fortran_order' and 'shape'");
  }

  void check_unique(bool& seen, const std::string& key) const {
    if (seen) {
      fail_with(*source_, "with the key '" + key + "' twice in the header dict",
                "each of 'descr', 'fortran_order' and 'shape' once");
    }
    seen = true;
  }

  std::string parse_string() {
    const char quote = text_[pos_++];
    std::string value;
    while (true) {
      if (at_end() || peek() == '\n') fail_syntax("a closing quote");
      const char c = text_[pos_++];
      if (c == quote) return value;
      // An escaped character is kept as written: no accepted key or dtype contains one, so
      // the value is then rejected with its own text in the message.
      if (c == '\\' && !at_end()) {
        value += c;
        value += text_[pos_++];
      } else {
        value += c;
      }
    }
  }

  bool parse_bool() {
    const std::size_t start = pos_;
    while (at_identifier_char()) ++pos_;
    const std::string_view word = text_.substr(start, pos_ - start);
    if (word == "True") return true;
    if (word == "False") return false;
    pos_ = start;
    fail_syntax("True or False as the value of 'fortran_order'");
  }

  std::vector<std::ptrdiff_t> parse_shape() {
    expect('(', "a tuple such as (3, 4) or (3,) as the value of 'shape'");
    std::vector<std::ptrdiff_t> shape;
    bool comma = false;
    while (true) {
      skip_space();
      if (peek() == ')') {
        // In Python (3) is the integer 3; only (3,) is a tuple.
        if (shape.size() == 1 && !comma) fail_syntax("',' after the only dimension, as in (3,)");
        ++pos_;
        return shape;
      }
      if (!shape.empty() && !comma) fail_syntax("',' or ')' after a dimension");
      if (shape.size() == npy_max_dims) {
        fail_with(*source_,
                  "with a shape of more than " + std::to_string(npy_max_dims) + " dimensions",
                  "a 1-D or 2-D shape");
      }
      shape.push_back(parse_dim());
      skip_space();
      comma = accept(',');
    }
  }

  std::ptrdiff_t parse_dim() {
    const bool negative = accept('-');
    if (negative) skip_space();
    if (!at_digit()) fail_syntax("an integer dimension in the shape tuple");
    const std::size_t start = pos_;
    constexpr std::ptrdiff_t max = std::numeric_limits<std::ptrdiff_t>::max();
    std::ptrdiff_t value = 0;
    while (at_digit()) {
      const std::ptrdiff_t digit = text_[pos_] - '0';
      if (value > (max - digit) / 10) {
        while (at_digit()) ++pos_;
        fail_with(*source_,
                  "with the dimension " + std::string(negative ? "-" : "") +
                      printable(text_.substr(start, std::min<std::size_t>(pos_ - start, 40))) +
                      (pos_ - start > 40 ? "..." : "") + " in its shape",
                  "dimensions that fit in std::ptrdiff_t");
      }
      value = value * 10 + digit;
      ++pos_;
    }
    // NumPy under Python 2 wrote long integers with a suffix: (3L, 4L).
    if (!accept('L')) static_cast<void>(accept('l'));
    return negative ? -value : value;
  }

  std::string_view text_;
  std::size_t pos_ = 0;
  const error_source* source_;
};

inline constexpr std::array<unsigned char, 6> npy_magic = {0x93, 'N', 'U', 'M', 'P', 'Y'};

inline npy_header parse_npy_header(std::span<const std::byte> bytes, const error_source& source) {
  const std::size_t prefix = std::min(bytes.size(), npy_magic.size());
  for (std::size_t i = 0; i < prefix; ++i) {
    if (std::to_integer<unsigned char>(bytes[i]) != npy_magic[i]) {
      std::string found = "with the first bytes";
      for (std::size_t k = 0; k < prefix; ++k) {
        found += ' ';
        append_hex(found, std::to_integer<unsigned char>(bytes[k]));
      }
      fail_with(source, found, "the .npy magic string \\x93NUMPY (93 4e 55 4d 50 59)");
    }
  }
  if (bytes.size() < 8) {
    fail_with(source, "with only " + std::to_string(bytes.size()) + " bytes",
              "a .npy file: the magic string \\x93NUMPY, a version and a header");
  }

  const auto major = std::to_integer<unsigned>(bytes[6]);
  const auto minor = std::to_integer<unsigned>(bytes[7]);
  if (minor != 0 || major < 1 || major > 3) {
    fail_with(source, "with format version " + std::to_string(major) + "." + std::to_string(minor),
              "version 1.0, 2.0 or 3.0");
  }
  const std::size_t length_size = major == 1 ? 2 : 4;
  const std::size_t preamble = 8 + length_size;
  if (bytes.size() < preamble) {
    fail_with(source,
              "with only " + std::to_string(bytes.size()) + " bytes, which end inside the " +
                  std::to_string(length_size) + "-byte header length",
              "a complete header length");
  }
  const std::size_t header_length = static_cast<std::size_t>(
      length_size == 2 ? load_le<2>(bytes.data() + 8) : load_le<4>(bytes.data() + 8));
  if (header_length > bytes.size() - preamble) {
    fail_with(source,
              "with a header length of " + std::to_string(header_length) + " bytes but only " +
                  std::to_string(bytes.size() - preamble) + " bytes after the " +
                  std::to_string(preamble) + "-byte preamble",
              "a header that fits in the file");
  }

  // Latin-1 and UTF-8 agree on ASCII, and every accepted header is ASCII: other bytes can
  // only appear in a string and make it an unknown key or dtype.
  const std::string_view text(reinterpret_cast<const char*>(bytes.data()) + preamble,
                              header_length);
  npy_dict dict = npy_dict_parser(text, source).parse();

  npy_header header;
  header.data_offset = preamble + header_length;
  header.fortran_order = dict.fortran_order;
  const bool native_big = std::endian::native == std::endian::big;
  const std::string_view descr = dict.descr;
  if (descr.size() != 3 || descr[1] != 'f' || (descr[2] != '4' && descr[2] != '8') ||
      (descr[0] != '<' && descr[0] != '>' && descr[0] != '=')) {
    fail_with(source, "with dtype '" + printable(descr) + "'", npy_accepted_dtypes);
  }
  header.dtype = descr[2] == '4' ? npy_dtype::float32 : npy_dtype::float64;
  header.big_endian = descr[0] == '>' || (descr[0] == '=' && native_big);

  const std::string shape_text = npy_shape_string(dict.shape);
  if (dict.shape.empty() || dict.shape.size() > 2) {
    fail_with(source, "with shape " + shape_text + " (" + std::to_string(dict.shape.size()) + "-D)",
              "a 1-D or 2-D shape");
  }
  // Like NumPy, a zero dimension does not excuse an absurd one: the product of the non-zero
  // dimensions times the item size must be representable, checked before multiplying.
  const auto itemsize = static_cast<std::ptrdiff_t>(npy_itemsize(header.dtype));
  std::ptrdiff_t bytes_needed = itemsize;
  for (const std::ptrdiff_t dim : dict.shape) {
    if (dim < 0) fail_with(source, "with shape " + shape_text, "non-negative dimensions");
    if (dim == 0) continue;
    if (bytes_needed > std::numeric_limits<std::ptrdiff_t>::max() / dim) {
      fail_with(source, "with shape " + shape_text + " of dtype '" + printable(descr) + "'",
                "a shape whose size in bytes fits in std::ptrdiff_t");
    }
    bytes_needed *= dim;
  }
  header.shape = std::move(dict.shape);
  return header;
}

inline std::uint32_t npy_byteswap(std::uint32_t x) {
  return ((x & 0x000000ffU) << 24) | ((x & 0x0000ff00U) << 8) | ((x & 0x00ff0000U) >> 8) |
         ((x & 0xff000000U) >> 24);
}

inline std::uint64_t npy_byteswap(std::uint64_t x) {
  return (static_cast<std::uint64_t>(npy_byteswap(static_cast<std::uint32_t>(x))) << 32) |
         npy_byteswap(static_cast<std::uint32_t>(x >> 32));
}

template <class Stored, class T>
void npy_copy_elements(const std::byte* data, bool swap, bool c_order,
                       Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>& out) {
  using bits = std::conditional_t<sizeof(Stored) == 4, std::uint32_t, std::uint64_t>;
  const auto load = [&](std::size_t k) {
    bits b;
    std::memcpy(&b, data + k * sizeof(Stored), sizeof(Stored));
    if (swap) b = npy_byteswap(b);
    // float64 -> float rounds to nearest (and overflows to +-inf, IEEE-754).
    return static_cast<T>(std::bit_cast<Stored>(b));
  };
  const auto rows = static_cast<std::size_t>(out.rows());
  const auto cols = static_cast<std::size_t>(out.cols());
  if (c_order && rows > 1 && cols > 1) {
    // Row-major bytes: element (i, j) is at i * cols + j; the transposition is explicit here.
    for (std::size_t i = 0; i < rows; ++i) {
      for (std::size_t j = 0; j < cols; ++j) {
        out(static_cast<Eigen::Index>(i), static_cast<Eigen::Index>(j)) = load(i * cols + j);
      }
    }
  } else {
    T* dst = out.data();
    for (std::size_t k = 0; k < rows * cols; ++k) dst[k] = load(k);
  }
}

template <class T>
Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> parse_npy(std::span<const std::byte> bytes,
                                                           const error_source& source) {
  const npy_header header = parse_npy_header(bytes, source);
  const std::ptrdiff_t rows = header.shape[0];
  const std::ptrdiff_t cols = header.shape.size() == 2 ? header.shape[1] : 1;
  // parse_npy_header bounded rows * cols * itemsize, so these products cannot overflow.
  const std::size_t itemsize = npy_itemsize(header.dtype);
  const std::size_t needed =
      static_cast<std::size_t>(rows) * static_cast<std::size_t>(cols) * itemsize;
  const std::size_t present = bytes.size() - header.data_offset;
  // Checked before allocating: a header must not make us allocate what the file lacks.
  if (present != needed) {
    fail_with(source,
              "with " + std::to_string(present) + " bytes of data after its " +
                  std::to_string(header.data_offset) + "-byte header",
              "exactly " + std::to_string(needed) + " bytes of data for shape " +
                  npy_shape_string(header.shape) + " of dtype '" +
                  npy_dtype_string(header.dtype, header.big_endian) + "'");
  }
  Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> out(rows, cols);
  const std::byte* data = bytes.data() + header.data_offset;
  const bool swap = header.big_endian != (std::endian::native == std::endian::big);
  if (header.dtype == npy_dtype::float32) {
    npy_copy_elements<float>(data, swap, !header.fortran_order, out);
  } else {
    npy_copy_elements<double>(data, swap, !header.fortran_order, out);
  }
  return out;
}

/// The preamble and header of a version 1.0, little-endian, Fortran-order file, padded so
/// that the data starts at a multiple of 64 bytes (NumPy aligns the same way, which lets a
/// reader map the data in place).
inline std::string npy_header_bytes(npy_dtype dtype, std::ptrdiff_t rows, std::ptrdiff_t cols) {
  std::string dict = "{'descr': '" + npy_dtype_string(dtype, false) +
                     "', 'fortran_order': True, 'shape': (" + std::to_string(rows) + ", " +
                     std::to_string(cols) + "), }";
  constexpr std::size_t preamble = 10;
  constexpr std::size_t alignment = 64;
  const std::size_t unpadded = preamble + dict.size() + 1;  // + '\n'
  dict.append((alignment - unpadded % alignment) % alignment, ' ');
  dict += '\n';
  std::string out(npy_magic.begin(), npy_magic.end());
  out += '\x01';
  out += '\x00';
  out += static_cast<char>(dict.size() & 0xff);
  out += static_cast<char>((dict.size() >> 8) & 0xff);
  out += dict;
  return out;
}

}  // namespace detail

/// Parses and validates the preamble and header of an in-memory `.npy` file (format and
/// rules: see the file comment).
///
/// `bytes` must hold at least the whole header; the data after it is not checked here
/// (parse_npy checks its size). O(header length) time and memory.
///
/// @throws lowrank::invalid_argument (function `lowrank::io::parse_npy_header`, argument
///   `bytes`) on a bad magic string, a version other than 1.0 / 2.0 / 3.0, a header that
///   does not fit in `bytes` or is not a dict of exactly 'descr', 'fortran_order' and
///   'shape', a dtype other than float32 / float64, a shape that is not 1-D or 2-D, a
///   negative dimension, or a shape whose byte size overflows `std::ptrdiff_t`.
[[nodiscard]] inline npy_header parse_npy_header(std::span<const std::byte> bytes) {
  return detail::parse_npy_header(
      bytes, {"lowrank::io::parse_npy_header", "bytes", detail::buffer_subject(bytes.size())});
}

/// Parses an in-memory `.npy` file into a rows x cols column-major matrix (n x 1 for a 1-D
/// array of shape (n,)). C-order data is transposed explicitly, Fortran-order data copied,
/// big-endian data byte-swapped, and the stored type converted to T (float64 -> float
/// rounds to nearest).
///
/// Time O(rows * cols); memory: the result only.
///
/// @throws lowrank::invalid_argument (function `lowrank::io::parse_npy`, argument `bytes`)
///   for every header error of parse_npy_header, and when the data after the header is not
///   exactly rows * cols * itemsize bytes. Nothing is allocated before that check.
template <class T>
requires std::same_as<T, float> || std::same_as<T, double>
[[nodiscard]] Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> parse_npy(
    std::span<const std::byte> bytes) {
  return detail::parse_npy<T>(
      bytes, {"lowrank::io::parse_npy", "bytes", detail::buffer_subject(bytes.size())});
}

/// Reads a `.npy` file into a rows x cols column-major matrix, as parse_npy does.
///
/// Memory: the whole file, then the result (about twice the file size at the peak).
///
/// @throws lowrank::invalid_argument (function `lowrank::io::read_npy`, argument `file`,
///   whose value is the quoted path) when the file does not exist, is not a regular file (a
///   directory, FIFO, device or socket) or cannot be read, and for every error of
///   parse_npy, e.g.
///   `lowrank::io::read_npy: argument 'file' is "w.npy" with dtype '<i4'; expected dtype
///   '<f4', '>f4', '=f4', '<f8', '>f8' or '=f8' (float32 or float64)`.
template <class T>
requires std::same_as<T, float> || std::same_as<T, double>
[[nodiscard]] Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> read_npy(
    const std::filesystem::path& file) {
  const detail::error_source source{"lowrank::io::read_npy", "file", detail::quote_path(file)};
  const std::vector<std::byte> bytes =
      detail::read_file(file, source, "an existing, readable .npy file", "a readable .npy file");
  return detail::parse_npy<T>(bytes, source);
}

/// Writes a matrix as a `.npy` file: version 1.0, little-endian '<f4' (float) or '<f8'
/// (double), Fortran order, 2-D shape (rows, cols) (a vector is written as (n, 1)); the
/// header is padded with spaces and ended by '\n' so that the data starts at a multiple of
/// 64 bytes. NumPy reads it back as the same rows x cols array.
///
/// The file is written to a temporary in the same directory and renamed over `file` (the
/// rules: see the file comment), so a failure leaves an existing `file` untouched and no
/// temporary behind. Column-major inputs
/// and their column blocks are written without a copy; row-major, strided or expression
/// inputs are first evaluated into a column-major temporary (rows * cols scalars).
///
/// @throws lowrank::invalid_argument (function `lowrank::io::write_npy`, argument `file`)
///   when `file` has no file name, is a directory or another special file, or is a chain of
///   more than 40 symbolic links, when its directory does not exist or is not writable, or
///   when writing, syncing or renaming fails (the message then names the system's error).
template <class Derived>
requires std::same_as<typename Derived::Scalar, float> ||
    std::same_as<typename Derived::Scalar, double>
void write_npy(const std::filesystem::path& file, const Eigen::DenseBase<Derived>& m) {
  using scalar = typename Derived::Scalar;
  using matrix = Eigen::Matrix<scalar, Eigen::Dynamic, Eigen::Dynamic>;
  const detail::error_source source{"lowrank::io::write_npy", "file", detail::quote_path(file)};
  if (!file.has_filename()) {
    detail::fail_with(source, ", which has no file name", "a path to a file");
  }

  // Binds column-major data and its blocks directly; anything else is evaluated.
  const Eigen::Ref<const matrix> a(m.derived().matrix());
  const std::string header = detail::npy_header_bytes(
      std::same_as<scalar, float> ? npy_dtype::float32 : npy_dtype::float64, a.rows(), a.cols());

  detail::temporary_file out(file, source);
  out.write(header.data(), header.size());
  if (a.size() > 0) {
    const auto column_bytes = static_cast<std::size_t>(a.rows()) * sizeof(scalar);
    std::vector<char> swapped;
    for (Eigen::Index j = 0; j < a.cols(); ++j) {
      if constexpr (std::endian::native == std::endian::little) {
        out.write(reinterpret_cast<const char*>(a.col(j).data()), column_bytes);
      } else {
        using bits = std::conditional_t<sizeof(scalar) == 4, std::uint32_t, std::uint64_t>;
        swapped.resize(column_bytes);
        for (Eigen::Index i = 0; i < a.rows(); ++i) {
          const bits b = detail::npy_byteswap(std::bit_cast<bits>(a(i, j)));
          std::memcpy(swapped.data() + static_cast<std::size_t>(i) * sizeof(bits), &b,
                      sizeof(bits));
        }
        out.write(swapped.data(), column_bytes);
      }
    }
  }
  out.commit();
}

}  // namespace lowrank::io
