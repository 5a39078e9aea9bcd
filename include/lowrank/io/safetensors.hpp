#pragma once
/// @file
/// Hugging Face `safetensors` files to and from Eigen matrices.
///
/// Format (huggingface/safetensors, the reference implementation's `read_metadata` and
/// `validate`):
///
///     offset 0   8 bytes   N: the header length, unsigned little-endian
///     offset 8   N bytes   header: UTF-8 JSON, an object (the reference writer pads it with
///                          spaces to a multiple of 8 bytes), e.g.
///                          {"__metadata__":{"format":"pt"},
///                           "w":{"dtype":"F32","shape":[3,4],"data_offsets":[0,48]}}
///     offset 8+N           the data buffer: every tensor's bytes, little-endian, row-major
///
/// What is accepted: the reference's rules, except where marked (stricter) to close a gap in
/// which two readers could disagree about one file or a size could be absurd:
/// - N <= 100000000 (the reference's limit) and 8 + N <= the file size;
/// - the header is one JSON object, with JSON whitespace (the writer's space padding) around
///   it; invalid UTF-8, a byte order mark, a NUL byte, comments, trailing commas and a number
///   out of double's range are errors;
/// - `"__metadata__"`, if present, is null or an object of string values;
/// - every other key names a tensor, and its value is an object with a string "dtype", an
///   array "shape" of non-negative integers, and an array "data_offsets" of exactly two
///   non-negative integers [begin, end], relative to the data buffer; other members of the
///   object are ignored, as the reference ignores them (stricter: the reference, through
///   serde, also takes the array ["F32", [3, 4], [0, 48]] for the object);
/// - "dtype" is one of the reference's dtypes: BOOL, U8, I8, I16, U16, I32, U32, I64, U64,
///   F4, F6_E2M3, F6_E3M2, F8_E5M2, F8_E4M3, F8_E8M0, F8_E4M3FNUZ, F8_E5M2FNUZ, F16, BF16,
///   F32, F64, C64. Any of them parses (a checkpoint may hold integer buffers next to its
///   weights); only F16, BF16, F32 and F64 convert to a matrix;
/// - the product of the non-zero dimensions times the bits per element fits in
///   `std::int64_t` (stricter: the reference multiplies from the left in `usize`, so a 0
///   before a huge dimension hides it), the element count times the bits is a whole number of
///   bytes, and
///   end - begin is that number of bytes (a shape with a 0 has no data; `[]` is a scalar);
/// - begin <= end <= the data buffer size, and the tensors, sorted by offsets, cover the data
///   buffer exactly: no gap, no overlap, nothing after the last tensor;
/// - (stricter) no JSON object in the header has a key twice: JSON parsers disagree on which
///   duplicate wins, so the same file could hold different tensors for different readers;
/// - (stricter) objects and arrays nest at most 64 deep (a valid header needs 3).
///
/// The header is read as a stream of JSON events straight into the tensor table: time is
/// linear in the file's header and memory is about that of the table (for a header of
/// 1.7 million tensors, 100 MB, about 330 MB).
///
/// Memory layout (DESIGN.md, "Data model"): a safetensors tensor is row-major, as in PyTorch.
/// A 2-D tensor of shape [r, c] is read as an r x c Eigen matrix, transposed explicitly from
/// its row-major bytes into Eigen's column-major storage; a 1-D tensor of shape [n] is read
/// as an n x 1 matrix. The writer does the reverse.
///
/// Conversions: F16 and BF16 convert exactly to float and double; F64 -> float rounds to
/// nearest even and overflows to +-inf (IEEE-754). The writer converts double to F32, F16
/// and BF16 with one rounding to nearest even (never through float: no double rounding),
/// overflowing to +-inf, keeping subnormals, signed zeros and infinities, and writing a NaN
/// as a quiet NaN with its sign and its leading payload bits.

#include <Eigen/Core>
#include <algorithm>
#include <array>
#include <bit>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "lowrank/core/error.hpp"
#include "lowrank/io/detail/files.hpp"

namespace lowrank::io {

/// Element types lowrank converts to and from matrices.
enum class dtype { float32, float16, bfloat16, float64 };

/// The safetensors spelling of a dtype: "F32", "F16", "BF16" or "F64".
[[nodiscard]] inline std::string_view name(dtype d) noexcept {
  switch (d) {
    case dtype::float32:
      return "F32";
    case dtype::float16:
      return "F16";
    case dtype::bfloat16:
      return "BF16";
    case dtype::float64:
      return "F64";
  }
  return "unknown";
}

/// One tensor of a validated file.
struct tensor_info {
  /// The header's dtype, e.g. "F32" or "I64": always one of the reference's dtypes.
  std::string dtype_name;
  /// The dtype when lowrank converts it (F32, F16, BF16, F64); empty otherwise.
  std::optional<dtype> type;
  std::vector<std::int64_t> shape;  ///< every dimension >= 0; [] is a scalar
  std::size_t begin = 0;            ///< offsets into the data buffer, begin <= end
  std::size_t end = 0;
};

namespace detail {

// The conversions assume IEEE-754 binary32 / binary64.
static_assert(std::numeric_limits<float>::is_iec559 && sizeof(float) == 4);
static_assert(std::numeric_limits<double>::is_iec559 && sizeof(double) == 8);

/// 'name', quoted for a message: escaped, and at most 160 bytes of it, since a tensor name
/// can be as long as the header.
inline std::string safetensors_quote(std::string_view text) {
  return '\'' + printable(text, 160) + '\'';
}

inline constexpr std::size_t safetensors_max_header = 100'000'000;  // the reference's limit
inline constexpr int safetensors_max_depth = 64;
inline constexpr std::string_view safetensors_metadata_key = "__metadata__";
inline constexpr std::string_view safetensors_entry_form =
    "an object {\"dtype\": ..., \"shape\": [...], \"data_offsets\": [begin, end]}";
inline constexpr std::string_view safetensors_converted_dtypes = "'F32', 'F16', 'BF16' or 'F64'";

struct safetensors_dtype_entry {
  std::string_view name;
  unsigned bits;
  std::optional<dtype> type;
};

// The reference's Dtype enum (safetensors/src/tensor.rs), with the size of an element.
inline constexpr std::array<safetensors_dtype_entry, 22> safetensors_dtypes = {{
    {"BOOL", 8, std::nullopt},        {"F4", 4, std::nullopt},
    {"F6_E2M3", 6, std::nullopt},     {"F6_E3M2", 6, std::nullopt},
    {"U8", 8, std::nullopt},          {"I8", 8, std::nullopt},
    {"F8_E5M2", 8, std::nullopt},     {"F8_E4M3", 8, std::nullopt},
    {"F8_E8M0", 8, std::nullopt},     {"F8_E4M3FNUZ", 8, std::nullopt},
    {"F8_E5M2FNUZ", 8, std::nullopt}, {"I16", 16, std::nullopt},
    {"U16", 16, std::nullopt},        {"F16", 16, dtype::float16},
    {"BF16", 16, dtype::bfloat16},    {"I32", 32, std::nullopt},
    {"U32", 32, std::nullopt},        {"F32", 32, dtype::float32},
    {"C64", 64, std::nullopt},        {"F64", 64, dtype::float64},
    {"I64", 64, std::nullopt},        {"U64", 64, std::nullopt},
}};

inline std::string safetensors_dtype_list() {
  std::string out;
  for (const safetensors_dtype_entry& entry : safetensors_dtypes) {
    if (!out.empty()) out += ", ";
    out += entry.name;
  }
  return out;
}

inline std::size_t safetensors_itemsize(dtype d) {
  return d == dtype::float64 ? 8 : d == dtype::float32 ? 4 : 2;
}

inline bool safetensors_known(dtype d) {
  return d == dtype::float32 || d == dtype::float16 || d == dtype::bfloat16 || d == dtype::float64;
}

inline std::string safetensors_shape_string(std::span<const std::int64_t> shape) {
  std::string out = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) out += ", ";
    if (i == 16 && shape.size() > 17) {
      out += "... (" + std::to_string(shape.size()) + " dimensions)";
      break;
    }
    out += std::to_string(shape[i]);
  }
  return out + ']';
}

inline std::string safetensors_offsets_string(std::size_t begin, std::size_t end) {
  return "[" + std::to_string(begin) + ", " + std::to_string(end) + "]";
}

template <std::size_t Bytes>
void safetensors_append_le(std::vector<char>& out, std::uint64_t value) {
  for (std::size_t k = 0; k < Bytes; ++k) {
    out.push_back(static_cast<char>((value >> (8 * k)) & 0xff));
  }
}

// ---------------------------------------------------------------------------------------
// Half-precision conversions.

/// IEEE-754 binary16 -> double, exactly (a NaN keeps its sign and payload).
inline double half_to_double(std::uint16_t h) {
  const std::uint64_t sign = static_cast<std::uint64_t>(h >> 15) << 63;
  const unsigned exponent = (h >> 10) & 0x1fU;
  const std::uint64_t mantissa = h & 0x3ffU;
  if (exponent == 0x1f) return std::bit_cast<double>(sign | (0x7ffULL << 52) | (mantissa << 42));
  if (exponent == 0) {
    // Subnormal (or zero): mantissa * 2^-24, exact in double.
    const double magnitude = static_cast<double>(mantissa) * 0x1p-24;
    return sign != 0 ? -magnitude : magnitude;
  }
  return std::bit_cast<double>(sign | (static_cast<std::uint64_t>(exponent - 15 + 1023) << 52) |
                               (mantissa << 42));
}

/// bfloat16 (the upper half of a binary32) -> float, exactly.
inline float bfloat16_to_float(std::uint16_t b) {
  return std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16);
}

/// double -> a 16-bit binary format with `exponent_bits` and `mantissa_bits` (binary16: 5
/// and 10; bfloat16: 8 and 7), rounded once to nearest, ties to even. Overflow gives +-inf,
/// values below half the smallest subnormal give +-0, a NaN gives a quiet NaN with the same
/// sign and the leading payload bits.
inline std::uint16_t round_to_16_bits(double x, int exponent_bits, int mantissa_bits) {
  const auto bits = std::bit_cast<std::uint64_t>(x);
  const auto sign = static_cast<std::uint16_t>((bits >> 63) << 15);
  const int biased = static_cast<int>((bits >> 52) & 0x7ff);
  std::uint64_t significand = bits & ((1ULL << 52) - 1);
  const auto all_ones = static_cast<std::uint16_t>(((1U << exponent_bits) - 1) << mantissa_bits);
  if (biased == 0x7ff) {
    if (significand == 0) return sign | all_ones;
    const auto payload = static_cast<std::uint16_t>(significand >> (52 - mantissa_bits));
    return static_cast<std::uint16_t>(sign | all_ones | (1U << (mantissa_bits - 1)) | payload);
  }
  if (biased == 0 && significand == 0) return sign;

  // x = significand * 2^(e - 52) with the significand's leading 1 at bit 52.
  int e = biased - 1023;
  if (biased == 0) {
    e = -1022;
    while ((significand & (1ULL << 52)) == 0) {
      significand <<= 1;
      --e;
    }
  } else {
    significand |= 1ULL << 52;
  }
  const int bias = (1 << (exponent_bits - 1)) - 1;
  if (e > bias) return sign | all_ones;  // at least 2^(emax + 1): overflow
  // Below the normal range the quantum stays that of the smallest normal: subnormals.
  const int target_e = std::max(e, 1 - bias);
  const int shift = 52 - mantissa_bits + (target_e - e);
  if (shift > 60) return sign;  // x < 2^-8 quanta: rounds to zero
  std::uint64_t q = significand >> shift;
  const std::uint64_t rest = significand & ((1ULL << shift) - 1);
  const std::uint64_t half = 1ULL << (shift - 1);
  if (rest > half || (rest == half && (q & 1) != 0)) ++q;
  // q counts quanta of 2^(target_e - mantissa_bits): a normal q in [2^m, 2^(m+1)] gives the
  // exponent field target_e + bias (q = 2^(m+1), a carry, moves to the next binade), and a
  // subnormal q < 2^m gives the exponent field 0; both are this one sum.
  const std::uint64_t magnitude =
      (static_cast<std::uint64_t>(target_e + bias - 1) << mantissa_bits) + q;
  if (magnitude >= all_ones) return sign | all_ones;
  return static_cast<std::uint16_t>(sign | magnitude);
}

inline std::uint16_t double_to_half(double x) { return round_to_16_bits(x, 5, 10); }
inline std::uint16_t double_to_bfloat16(double x) { return round_to_16_bits(x, 8, 7); }

/// Row-major bytes of an out.rows() x out.cols() tensor into column-major `out`.
template <class T, std::size_t Itemsize, class Convert>
void safetensors_copy_row_major(const std::byte* data, Convert convert,
                                Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>& out) {
  const auto rows = static_cast<std::size_t>(out.rows());
  const auto cols = static_cast<std::size_t>(out.cols());
  // Element (i, j) is at i * cols + j: the transposition is explicit here.
  for (std::size_t i = 0; i < rows; ++i) {
    const std::byte* row = data + i * cols * Itemsize;
    for (std::size_t j = 0; j < cols; ++j) {
      out(static_cast<Eigen::Index>(i), static_cast<Eigen::Index>(j)) =
          convert(load_le<Itemsize>(row + j * Itemsize));
    }
  }
}

// ---------------------------------------------------------------------------------------
// The header.

/// The checks of one tensor entry once its three members are read: the dtype is known, the
/// size in bits is representable and whole bytes, and the offsets match it and stay in the
/// data buffer. (That the tensors tile the buffer is checked once all are read.)
inline tensor_info safetensors_check_entry(const std::string& name, const std::string& type_name,
                                           std::vector<std::int64_t> shape, std::size_t begin,
                                           std::size_t end, std::size_t data_size,
                                           const error_source& source) {
  const std::string tensor = "the tensor " + safetensors_quote(name);
  const auto known = std::find_if(
      safetensors_dtypes.begin(), safetensors_dtypes.end(),
      [&](const safetensors_dtype_entry& d) { return d.name == std::string_view(type_name); });
  if (known == safetensors_dtypes.end()) {
    fail_with(source, "with " + tensor + " of dtype " + safetensors_quote(type_name),
              "a safetensors dtype: " + safetensors_dtype_list());
  }
  // Like the reference, the size must be representable; unlike it, a zero dimension does not
  // excuse an absurd one: the non-zero dimensions times the bits per element must fit.
  constexpr auto max = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
  std::uint64_t bits = known->bits;
  bool empty = false;
  for (const std::int64_t dim : shape) {
    const auto d = static_cast<std::uint64_t>(dim);
    if (d == 0) {
      empty = true;
    } else if (bits > max / d) {
      fail_with(source,
                "with " + tensor + " of dtype " + safetensors_quote(type_name) + " and shape " +
                    safetensors_shape_string(shape),
                "a shape whose size in bits fits in std::int64_t");
    } else {
      bits *= d;
    }
  }
  if (!empty && bits % 8 != 0) {
    fail_with(source,
              "with " + tensor + " of dtype " + safetensors_quote(type_name) + " and shape " +
                  safetensors_shape_string(shape) + " (" + std::to_string(bits) + " bits)",
              "a whole number of bytes");
  }
  const std::uint64_t bytes = empty ? 0 : bits / 8;
  const std::string where =
      "with " + tensor + " at data_offsets " + safetensors_offsets_string(begin, end);
  if (begin > end) fail_with(source, where, "begin <= end");
  if (end > data_size) {
    fail_with(source,
              where + ", past the end of its " + std::to_string(data_size) + "-byte data buffer",
              "offsets within the data buffer");
  }
  if (end - begin != bytes) {
    fail_with(source,
              where + " (" + std::to_string(end - begin) + " bytes) of dtype " +
                  safetensors_quote(type_name) + " and shape " + safetensors_shape_string(shape),
              "end - begin = " + std::to_string(bytes) + " bytes for that dtype and shape");
  }
  tensor_info info;
  info.dtype_name = type_name;
  info.type = known->type;
  info.shape = std::move(shape);
  info.begin = begin;
  info.end = end;
  return info;
}

/// Reads a header from nlohmann::json's SAX events straight into the tensor table, checking
/// every rule as it goes. No JSON document is built: memory is that of the tensor table, and
/// time is linear in the header (nlohmann's DOM parser with a callback, which could reject
/// duplicate keys, rescans each object after every member and is quadratic).
///
/// Each event is a value in the innermost open container; what it may be depends on that
/// container and, in an object, on the key before it.
class safetensors_header_reader {
 public:
  using json = nlohmann::json;

  safetensors_header_reader(std::size_t data_size, const error_source& source,
                            std::map<std::string, tensor_info>& tensors,
                            std::map<std::string, std::string>& metadata)
      : data_size_(data_size), source_(&source), tensors_(&tensors), metadata_(&metadata) {}

  bool null() { return scalar("a JSON null"); }
  bool boolean(bool) { return scalar("a JSON boolean"); }
  bool binary(json::binary_t&) { return scalar("binary data"); }

  bool number_integer(json::number_integer_t value) {
    // Only a negative literal (or "-0") is a signed integer.
    return number(value < 0 ? std::to_string(value) : "-0");
  }

  bool number_unsigned(json::number_unsigned_t value) {
    if (open_.empty() || open_.back().kind == frame_kind::skip_object ||
        open_.back().kind == frame_kind::skip_array) {
      return scalar("a JSON number");
    }
    if (open_.back().kind == frame_kind::shape) {
      if (value > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
        return number(std::to_string(value));
      }
      shape_.push_back(static_cast<std::int64_t>(value));
      return true;
    }
    if (open_.back().kind == frame_kind::offsets) {
      if (offsets_.size() == 2) fail_offsets("more than two elements");
      if (!std::in_range<std::size_t>(value)) return number(std::to_string(value));
      offsets_.push_back(static_cast<std::size_t>(value));
      return true;
    }
    return scalar("a JSON number");
  }

  bool number_float(json::number_float_t, const json::string_t& text) { return number(text); }

  bool string(json::string_t& value) {
    if (!open_.empty() && open_.back().kind == frame_kind::metadata) {
      metadata_->emplace(std::move(key_), std::move(value));
      return true;
    }
    if (!open_.empty() && open_.back().kind == frame_kind::entry && slot_ == member::dtype) {
      dtype_ = std::move(value);
      return true;
    }
    return scalar("a JSON string");
  }

  bool start_object(std::size_t) {
    if (open_.empty()) {
      push(frame_kind::root);
      return true;
    }
    switch (open_.back().kind) {
      case frame_kind::root:
        if (key_ == safetensors_metadata_key) {
          push(frame_kind::metadata);
        } else {
          push(frame_kind::entry);
          dtype_.reset();
          have_shape_ = false;
          have_offsets_ = false;
        }
        return true;
      case frame_kind::entry:
        if (slot_ == member::other) {
          push(frame_kind::skip_object);
          return true;
        }
        break;
      case frame_kind::skip_object:
      case frame_kind::skip_array:
        push(frame_kind::skip_object);
        return true;
      default:
        break;
    }
    return scalar("a JSON object");
  }

  bool start_array(std::size_t) {
    if (!open_.empty()) {
      const frame_kind kind = open_.back().kind;
      if (kind == frame_kind::skip_object || kind == frame_kind::skip_array ||
          (kind == frame_kind::entry && slot_ == member::other)) {
        push(frame_kind::skip_array);
        return true;
      }
      if (kind == frame_kind::entry && slot_ == member::shape) {
        push(frame_kind::shape);
        shape_.clear();
        have_shape_ = true;
        return true;
      }
      if (kind == frame_kind::entry && slot_ == member::data_offsets) {
        push(frame_kind::offsets);
        offsets_.clear();
        have_offsets_ = true;
        return true;
      }
    }
    return scalar("a JSON array");
  }

  bool key(json::string_t& key) {
    frame& top = open_.back();
    switch (top.kind) {
      case frame_kind::root: {
        const bool repeated =
            key == safetensors_metadata_key ? seen_metadata_ : tensors_->contains(key);
        if (repeated) fail_duplicate(key);
        if (key == safetensors_metadata_key) seen_metadata_ = true;
        break;
      }
      case frame_kind::metadata:
        if (metadata_->contains(key)) fail_duplicate(key);
        break;
      case frame_kind::entry:
        if (!top.keys.insert(key).second) fail_duplicate(key);
        slot_ = key == "dtype"          ? member::dtype
                : key == "shape"        ? member::shape
                : key == "data_offsets" ? member::data_offsets
                                        : member::other;
        break;
      default:  // skip_object
        if (!top.keys.insert(key).second) fail_duplicate(key);
        break;
    }
    if (top.kind == frame_kind::root) {
      name_ = key;  // the entry's name, for messages and the table
    }
    key_ = std::move(key);
    return true;
  }

  bool end_object() {
    if (open_.back().kind == frame_kind::entry) finish_entry();
    open_.pop_back();
    return true;
  }

  bool end_array() {
    if (open_.back().kind == frame_kind::offsets && offsets_.size() != 2) {
      fail_offsets(std::to_string(offsets_.size()) + " element" +
                   (offsets_.size() == 1 ? "" : "s"));
    }
    open_.pop_back();
    return true;
  }

  bool parse_error(std::size_t, const std::string&, const json::exception& e) {
    // Drop the "[json.exception.parse_error.101] " prefix; keep the position and the reason.
    std::string_view what = e.what();
    if (const std::size_t close = what.find("] "); what.starts_with('[') && close != what.npos) {
      what.remove_prefix(close + 2);
    }
    fail_with(*source_,
              "with a " + std::to_string(header_size_) +
                  "-byte header that is not valid UTF-8 JSON (" + printable(what, 240) + ")",
              "a header of UTF-8 JSON: one object of tensor entries");
  }

  void read(std::string_view text) {
    header_size_ = text.size();
    json::sax_parse(text.begin(), text.end(), this);
  }

 private:
  enum class frame_kind { root, metadata, entry, shape, offsets, skip_object, skip_array };
  enum class member { dtype, shape, data_offsets, other };

  struct frame {
    frame_kind kind;
    std::set<std::string> keys;  // entry and skipped objects: the keys seen, for duplicates
  };

  void push(frame_kind kind) {
    if (open_.size() >= static_cast<std::size_t>(safetensors_max_depth)) {
      fail_with(*source_,
                "with a header that nests objects and arrays more than " +
                    std::to_string(safetensors_max_depth) + " deep",
                "a header of tensor entries, which nest 3 deep");
    }
    open_.push_back({kind, {}});
  }

  std::string tensor() const { return "the tensor " + safetensors_quote(name_); }

  [[noreturn]] void fail_duplicate(const std::string& key) const {
    fail_with(*source_,
              "with the key " + safetensors_quote(key) + " twice in one object of its header",
              "distinct keys in every JSON object (JSON parsers disagree on which "
              "duplicate wins)");
  }

  [[noreturn]] void fail_offsets(const std::string& found) const {
    fail_with(*source_, "with " + tensor() + " whose \"data_offsets\" has " + found,
              "an array [begin, end] of two non-negative integers");
  }

  // A number where it is not allowed, or not allowed with this value.
  bool number(const std::string& text) {
    if (!open_.empty() && open_.back().kind == frame_kind::shape) {
      fail_with(*source_,
                "with " + tensor() + " whose \"shape\" has the element " + printable(text, 40),
                "non-negative integer dimensions below 2^63");
    }
    if (!open_.empty() && open_.back().kind == frame_kind::offsets) {
      fail_offsets("the element " + printable(text, 40));
    }
    return scalar("a JSON number");
  }

  // A value of kind `kind` (a scalar, or an object or array about to open): fine in a
  // skipped member, otherwise an error that says what was expected there.
  bool scalar(std::string_view kind) {
    const std::string found(kind);
    if (open_.empty()) {
      fail_with(*source_, "with a header that is " + found,
                "a header that is a JSON object of tensor entries");
    }
    switch (open_.back().kind) {
      case frame_kind::skip_object:
      case frame_kind::skip_array:
        return true;
      case frame_kind::root:
        if (key_ == safetensors_metadata_key) {
          if (kind == "a JSON null") return true;  // the reference reads null as no metadata
          fail_with(*source_, "with a \"__metadata__\" that is " + found,
                    "an object of string values");
        }
        fail_with(*source_, "with " + tensor() + " described by " + found,
                  std::string(safetensors_entry_form));
      case frame_kind::metadata:
        fail_with(
            *source_,
            "with the \"__metadata__\" value " + safetensors_quote(key_) + " that is " + found,
            "an object of string values");
      case frame_kind::entry:
        switch (slot_) {
          case member::dtype:
            fail_with(*source_, "with " + tensor() + " whose \"dtype\" is " + found,
                      "a dtype string such as \"F32\"");
          case member::shape:
            fail_with(*source_, "with " + tensor() + " whose \"shape\" is " + found,
                      "an array of non-negative integers, such as [3, 4]");
          case member::data_offsets:
            fail_with(*source_, "with " + tensor() + " whose \"data_offsets\" is " + found,
                      "an array [begin, end] of two non-negative integers");
          case member::other:
            return true;  // ignored, as the reference ignores unknown members
        }
        break;
      case frame_kind::shape:
        fail_with(*source_, "with " + tensor() + " whose \"shape\" has " + found,
                  "non-negative integer dimensions below 2^63");
      case frame_kind::offsets:
        fail_offsets(found);
    }
    return true;
  }

  void finish_entry() {
    for (const auto& [present, key] :
         {std::pair{dtype_.has_value(), "dtype"}, std::pair{have_shape_, "shape"},
          std::pair{have_offsets_, "data_offsets"}}) {
      if (!present) {
        fail_with(*source_, "with " + tensor() + " without \"" + key + "\"",
                  std::string(safetensors_entry_form));
      }
    }
    tensors_->emplace(name_, safetensors_check_entry(name_, *dtype_, std::move(shape_), offsets_[0],
                                                     offsets_[1], data_size_, *source_));
    shape_.clear();
  }

  std::size_t data_size_;
  const error_source* source_;
  std::map<std::string, tensor_info>* tensors_;
  std::map<std::string, std::string>* metadata_;
  std::size_t header_size_ = 0;
  std::vector<frame> open_;  // the open objects and arrays, outermost first
  std::string key_;          // the last key read
  std::string name_;         // the last key of the root object: the current tensor
  member slot_ = member::other;
  bool seen_metadata_ = false;
  // The members of the current entry.
  std::optional<std::string> dtype_;
  std::vector<std::int64_t> shape_;
  std::vector<std::size_t> offsets_;
  bool have_shape_ = false;
  bool have_offsets_ = false;
};

/// Reads a header into `tensors` and `metadata` (the rules: see the file comment).
inline void safetensors_read_header(std::string_view text, std::size_t data_size,
                                    const error_source& source,
                                    std::map<std::string, tensor_info>& tensors,
                                    std::map<std::string, std::string>& metadata) {
  // nlohmann::json stops at a NUL byte as at the end of the input, and skips a byte order
  // mark; the reference (serde_json) rejects both, and so must we, or a file would mean one
  // thing here and another there.
  if (const std::size_t nul = text.find('\0'); nul != text.npos) {
    fail_with(source,
              "with a NUL byte at offset " + std::to_string(nul) + " of its " +
                  std::to_string(text.size()) + "-byte header",
              "a header of UTF-8 JSON, padded with spaces, without NUL bytes");
  }
  if (text.starts_with("\xef\xbb\xbf")) {
    fail_with(source, "with a header that starts with a byte order mark",
              "a header of UTF-8 JSON without a byte order mark");
  }
  safetensors_header_reader(data_size, source, tensors, metadata).read(text);
}

/// The header text for write_safetensors: compact JSON, then spaces to a multiple of 8.
inline std::string safetensors_json_string(const std::string& text, std::string_view function,
                                           std::string_view argument, std::string_view what) {
  try {
    return nlohmann::json(text).dump(-1, ' ', false, nlohmann::json::error_handler_t::strict);
  } catch (const nlohmann::json::exception&) {
    lowrank::detail::throw_invalid_argument(
        function, argument, std::string(what) + " " + safetensors_quote(text) + ", not UTF-8",
        "valid UTF-8 text (the header is UTF-8 JSON)");
  }
}

}  // namespace detail

/// An in-memory, validated safetensors file (format and rules: see the file comment).
///
/// Memory: the whole file, plus the tensor table. Parsing is O(file size) for the header
/// and O(tensors log tensors) for the offsets; the data is not touched until a tensor is
/// converted.
class safetensors_file {
 public:
  /// Takes ownership of a whole file's bytes and validates its header and offsets.
  ///
  /// @throws lowrank::invalid_argument (function `lowrank::io::safetensors_file::parse`,
  ///   argument `bytes`) for every rule of the file comment: fewer than 8 bytes, a header
  ///   length over 100000000 or past the end, a header that is not one UTF-8 JSON object, a
  ///   key twice, `__metadata__` not an object of strings, a tensor entry that is not an
  ///   object of a string dtype of the reference, an array shape of non-negative integers
  ///   and two integer data_offsets, a size that overflows, offsets that do not match the
  ///   dtype and shape or leave the data buffer, and tensors that overlap or leave gaps.
  ///   Nothing is allocated from a size the file claims before that size is checked against
  ///   the file.
  [[nodiscard]] static safetensors_file parse(std::vector<std::byte> bytes) {
    const std::string subject = detail::buffer_subject(bytes.size());
    return from_bytes(std::move(bytes), {"lowrank::io::safetensors_file::parse", "bytes", subject},
                      subject);
  }

  /// Reads a whole file, then parses it as parse() does. Memory: the file size.
  ///
  /// @throws lowrank::invalid_argument (function `lowrank::io::safetensors_file::read`,
  ///   argument `file`, whose value is the quoted path) when the file does not exist, is a
  ///   directory or cannot be read, and for every error of parse(), e.g.
  ///   `lowrank::io::safetensors_file::read: argument 'file' is "a.safetensors" with the
  ///   tensor 'w' of dtype 'F33'; expected a safetensors dtype: BOOL, F4, ...`.
  [[nodiscard]] static safetensors_file read(const std::filesystem::path& file) {
    const detail::error_source source{"lowrank::io::safetensors_file::read", "file",
                                      detail::quote_path(file)};
    constexpr std::string_view readable = "an existing, readable .safetensors file";
    return from_bytes(detail::read_file(file, source, readable, readable), source, source.subject);
  }

  /// Every tensor of the file, by name.
  [[nodiscard]] const std::map<std::string, tensor_info>& tensors() const noexcept {
    return tensors_;
  }

  /// The header's `__metadata__` (empty when it has none).
  [[nodiscard]] const std::map<std::string, std::string>& metadata() const noexcept {
    return metadata_;
  }

  [[nodiscard]] bool contains(std::string_view name) const {
    return tensors_.contains(std::string(name));
  }

  /// The raw bytes of a tensor, as stored: little-endian, row-major, end - begin bytes.
  /// Any dtype. The span points into this object's buffer: valid while the object lives
  /// (a move keeps the buffer; a copy has its own).
  ///
  /// @throws lowrank::invalid_argument (function
  ///   `lowrank::io::safetensors_file::tensor_bytes`, argument `name`) when the file has no
  ///   tensor of that name.
  [[nodiscard]] std::span<const std::byte> tensor_bytes(std::string_view name) const {
    const tensor_info& info = find(name, "lowrank::io::safetensors_file::tensor_bytes");
    return std::span<const std::byte>(bytes_).subspan(data_offset_ + info.begin,
                                                      info.end - info.begin);
  }

  /// The tensor `name` as a matrix: a 2-D tensor of shape [r, c] (row-major, PyTorch's
  /// layout, e.g. an nn.Linear weight out x in) becomes an r x c matrix, transposed
  /// explicitly into Eigen's column-major storage; a 1-D tensor of shape [n] becomes n x 1.
  /// F16 and BF16 convert exactly; F64 -> float rounds to nearest even.
  ///
  /// Time O(r * c); memory: the result only.
  ///
  /// @throws lowrank::invalid_argument (function `lowrank::io::safetensors_file::matrix`,
  ///   argument `name`) when the file has no tensor of that name, its dtype is not F32,
  ///   F16, BF16 or F64, or it is not 1-D or 2-D.
  template <class T>
  requires std::same_as<T, float> || std::same_as<T, double>
  [[nodiscard]] Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> matrix(
      std::string_view name) const {
    constexpr std::string_view function = "lowrank::io::safetensors_file::matrix";
    const tensor_info& info = find(name, function);
    const std::string value = detail::safetensors_quote(name) + ", a tensor of dtype '" +
                              info.dtype_name + "' and shape " +
                              detail::safetensors_shape_string(info.shape) + " in " + origin_;
    if (!info.type) {
      lowrank::detail::throw_invalid_argument(
          function, "name", value,
          "a tensor of dtype " + std::string(detail::safetensors_converted_dtypes));
    }
    if (info.shape.empty() || info.shape.size() > 2) {
      lowrank::detail::throw_invalid_argument(function, "name", value, "a 1-D or 2-D tensor");
    }
    const std::int64_t rows = info.shape[0];
    const std::int64_t cols = info.shape.size() == 2 ? info.shape[1] : 1;
    if (!std::in_range<Eigen::Index>(rows) || !std::in_range<Eigen::Index>(cols)) {
      lowrank::detail::throw_invalid_argument(function, "name", value,
                                              "dimensions that fit in Eigen::Index");
    }
    Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> out(static_cast<Eigen::Index>(rows),
                                                         static_cast<Eigen::Index>(cols));
    const std::byte* data = bytes_.data() + data_offset_ + info.begin;
    switch (*info.type) {
      case dtype::float32:
        detail::safetensors_copy_row_major<T, 4>(
            data,
            [](std::uint64_t b) {
              return static_cast<T>(std::bit_cast<float>(static_cast<std::uint32_t>(b)));
            },
            out);
        break;
      case dtype::float64:
        detail::safetensors_copy_row_major<T, 8>(
            data, [](std::uint64_t b) { return static_cast<T>(std::bit_cast<double>(b)); }, out);
        break;
      case dtype::float16:
        detail::safetensors_copy_row_major<T, 2>(
            data,
            [](std::uint64_t b) {
              return static_cast<T>(detail::half_to_double(static_cast<std::uint16_t>(b)));
            },
            out);
        break;
      case dtype::bfloat16:
        detail::safetensors_copy_row_major<T, 2>(
            data,
            [](std::uint64_t b) {
              return static_cast<T>(detail::bfloat16_to_float(static_cast<std::uint16_t>(b)));
            },
            out);
        break;
    }
    return out;
  }

 private:
  safetensors_file() = default;

  const tensor_info& find(std::string_view name, std::string_view function) const {
    const auto it = tensors_.find(std::string(name));
    if (it == tensors_.end()) {
      lowrank::detail::throw_invalid_argument(
          function, "name",
          detail::safetensors_quote(name) + ", which is not a tensor of " + origin_,
          "the name of one of its " + std::to_string(tensors_.size()) + " tensors");
    }
    return it->second;
  }

  static safetensors_file from_bytes(std::vector<std::byte> bytes,
                                     const detail::error_source& source, std::string origin) {
    using detail::fail_with;
    if (bytes.size() < 8) {
      fail_with(source, "with only " + std::to_string(bytes.size()) + " bytes",
                "at least 8 bytes: the header length, then the header");
    }
    const std::uint64_t header_length = detail::load_le<8>(bytes.data());
    if (header_length > detail::safetensors_max_header) {
      fail_with(source, "with a header length of " + std::to_string(header_length),
                "a header length of at most " + std::to_string(detail::safetensors_max_header) +
                    " bytes (the safetensors limit)");
    }
    if (header_length > bytes.size() - 8) {
      fail_with(source,
                "with a header length of " + std::to_string(header_length) + " but only " +
                    std::to_string(bytes.size() - 8) + " bytes after the length",
                "a header that fits in the file");
    }
    safetensors_file file;
    file.data_offset_ = 8 + static_cast<std::size_t>(header_length);
    const std::size_t data_size = bytes.size() - file.data_offset_;
    const std::string_view text(reinterpret_cast<const char*>(bytes.data()) + 8,
                                file.data_offset_ - 8);
    detail::safetensors_read_header(text, data_size, source, file.tensors_, file.metadata_);

    // Sorted by offsets, the tensors must tile [0, data_size): each begins where the previous
    // ends (tensors of 0 bytes may share an offset).
    std::vector<const std::pair<const std::string, tensor_info>*> sorted;
    sorted.reserve(file.tensors_.size());
    for (const auto& entry : file.tensors_) sorted.push_back(&entry);
    std::sort(sorted.begin(), sorted.end(), [](const auto* a, const auto* b) {
      return std::pair(a->second.begin, a->second.end) < std::pair(b->second.begin, b->second.end);
    });
    constexpr std::string_view tiling =
        "tensors that cover the data buffer exactly, without gaps or overlaps";
    std::size_t covered = 0;
    const std::pair<const std::string, tensor_info>* previous = nullptr;
    for (const auto* entry : sorted) {
      const tensor_info& info = entry->second;
      const std::string here = "the tensor " + detail::safetensors_quote(entry->first) +
                               " at data_offsets " +
                               detail::safetensors_offsets_string(info.begin, info.end);
      if (info.begin < covered) {
        fail_with(
            source,
            "with " + here + " starting inside the tensor " +
                detail::safetensors_quote(previous->first) + " at data_offsets " +
                detail::safetensors_offsets_string(previous->second.begin, previous->second.end),
            tiling);
      }
      if (info.begin > covered) {
        fail_with(source,
                  "with " + here + " after a gap: bytes " +
                      detail::safetensors_offsets_string(covered, info.begin) +
                      " of its data buffer belong to no tensor",
                  tiling);
      }
      covered = info.end;
      previous = entry;
    }
    if (covered != data_size) {
      fail_with(source,
                "with " + std::to_string(data_size - covered) + " bytes at the end of its " +
                    std::to_string(data_size) + "-byte data buffer that belong to no tensor",
                tiling);
    }

    file.bytes_ = std::move(bytes);
    file.origin_ = std::move(origin);
    return file;
  }

  std::vector<std::byte> bytes_;
  std::size_t data_offset_ = 0;  // 8 + the header length
  std::map<std::string, tensor_info> tensors_;
  std::map<std::string, std::string> metadata_;
  std::string origin_;  // the quoted path, or "a buffer of N bytes", for messages
};

/// One tensor to write: its name, the dtype to store, and its values. An r x c matrix is
/// written as a row-major tensor of shape [r, c] (the layout PyTorch reads as an r x c
/// tensor, e.g. an nn.Linear weight out x in); with `vector_shape`, an n x 1 matrix is
/// written with shape [n].
struct tensor_to_write {
  std::string name;
  dtype type = dtype::float32;
  Eigen::MatrixXd values;
  bool vector_shape = false;
};

/// Writes tensors and optional metadata as a safetensors file.
///
/// Layout: the header is compact JSON, `"__metadata__"` first when `metadata` is not empty,
/// then the tensors, padded with spaces to a multiple of 8 bytes. Tensors are laid out by
/// decreasing element size (F64, then F32, then F16 and BF16), in the order given within a
/// size, and listed in the header in that order: like the reference writer's order (which
/// also sorts by name), this aligns every tensor's data to its element size in the file.
/// Values are converted from double with one rounding to nearest even (F32, F16, BF16) and
/// written little-endian.
///
/// The file is written to a temporary in the same directory and renamed over `file`, so a
/// failure leaves an existing `file` untouched and no temporary behind. Memory: the header
/// and a 64 KiB buffer.
///
/// @throws lowrank::invalid_argument (function `lowrank::io::write_safetensors`)
///   - argument `tensors`: two tensors with one name, a tensor named `__metadata__`, a name
///     that is not UTF-8, a dtype that is not one of the enumerators, `vector_shape` with
///     more than one column, or a header over 100000000 bytes;
///   - argument `metadata`: a key or value that is not UTF-8;
///   - argument `file`: no file name, a missing or unwritable directory, or a failed write
///     or rename.
inline void write_safetensors(const std::filesystem::path& file,
                              const std::vector<tensor_to_write>& tensors,
                              const std::map<std::string, std::string>& metadata = {}) {
  constexpr std::string_view function = "lowrank::io::write_safetensors";
  const detail::error_source source{function, "file", detail::quote_path(file)};
  if (!file.has_filename())
    detail::fail_with(source, ", which has no file name", "a path to a file");

  const std::string list = "a list of " + std::to_string(tensors.size()) + " tensors";
  std::set<std::string_view> names;
  for (const tensor_to_write& t : tensors) {
    const std::string tensor = list + " with the tensor " + detail::safetensors_quote(t.name);
    if (t.name == detail::safetensors_metadata_key) {
      lowrank::detail::throw_invalid_argument(function, "tensors", tensor,
                                              "names other than '__metadata__' (the header's "
                                              "metadata key)");
    }
    if (!names.insert(t.name).second) {
      lowrank::detail::throw_invalid_argument(function, "tensors", tensor + " twice",
                                              "distinct tensor names");
    }
    if (!detail::safetensors_known(t.type)) {
      lowrank::detail::throw_invalid_argument(
          function, "tensors", tensor + " of dtype " + std::to_string(static_cast<int>(t.type)),
          "dtype::float32, float16, bfloat16 or float64");
    }
    if (t.vector_shape && t.values.cols() != 1) {
      lowrank::detail::throw_invalid_argument(function, "tensors",
                                              tensor + " of " + std::to_string(t.values.rows()) +
                                                  " x " + std::to_string(t.values.cols()) +
                                                  " values with vector_shape = true",
                                              "an n x 1 matrix for a tensor of shape [n]");
    }
  }

  std::vector<std::size_t> order(tensors.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return detail::safetensors_itemsize(tensors[a].type) >
           detail::safetensors_itemsize(tensors[b].type);
  });

  std::string header = "{";
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [key, value] : metadata) {
      if (!first) header += ',';
      first = false;
      header += detail::safetensors_json_string(key, function, "metadata", "a map with the key");
      header += ':';
      header +=
          detail::safetensors_json_string(value, function, "metadata", "a map with the value");
    }
    header += '}';
  }
  std::size_t offset = 0;
  for (const std::size_t k : order) {
    const tensor_to_write& t = tensors[k];
    const std::size_t bytes =
        static_cast<std::size_t>(t.values.size()) * detail::safetensors_itemsize(t.type);
    if (header.size() > 1) header += ',';
    header += detail::safetensors_json_string(t.name, function, "tensors",
                                              list + " with the tensor name");
    header += ":{\"dtype\":\"" + std::string(name(t.type)) + "\",\"shape\":[" +
              std::to_string(t.values.rows());
    if (!t.vector_shape) header += "," + std::to_string(t.values.cols());
    header += "],\"data_offsets\":[" + std::to_string(offset) + "," +
              std::to_string(offset + bytes) + "]}";
    offset += bytes;
  }
  header += '}';
  header.append((8 - header.size() % 8) % 8, ' ');
  if (header.size() > detail::safetensors_max_header) {
    lowrank::detail::throw_invalid_argument(
        function, "tensors",
        list + " whose header would be " + std::to_string(header.size()) + " bytes",
        "a header of at most " + std::to_string(detail::safetensors_max_header) +
            " bytes (the safetensors limit)");
  }

  detail::temporary_file out(file, source);
  std::vector<char> chunk;
  constexpr std::size_t chunk_size = 1 << 16;
  chunk.reserve(chunk_size + 8);
  detail::safetensors_append_le<8>(chunk, header.size());
  out.write(chunk.data(), chunk.size());
  out.write(header.data(), header.size());
  chunk.clear();
  for (const std::size_t k : order) {
    const tensor_to_write& t = tensors[k];
    // Row-major: element (i, j) at i * cols + j.
    for (Eigen::Index i = 0; i < t.values.rows(); ++i) {
      for (Eigen::Index j = 0; j < t.values.cols(); ++j) {
        const double x = t.values(i, j);
        switch (t.type) {
          case dtype::float32:
            detail::safetensors_append_le<4>(chunk,
                                             std::bit_cast<std::uint32_t>(static_cast<float>(x)));
            break;
          case dtype::float64:
            detail::safetensors_append_le<8>(chunk, std::bit_cast<std::uint64_t>(x));
            break;
          case dtype::float16:
            detail::safetensors_append_le<2>(chunk, detail::double_to_half(x));
            break;
          case dtype::bfloat16:
            detail::safetensors_append_le<2>(chunk, detail::double_to_bfloat16(x));
            break;
        }
        if (chunk.size() >= chunk_size) {
          out.write(chunk.data(), chunk.size());
          chunk.clear();
        }
      }
    }
  }
  out.write(chunk.data(), chunk.size());
  out.commit();
}

}  // namespace lowrank::io
