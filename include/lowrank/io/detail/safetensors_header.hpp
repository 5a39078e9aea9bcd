#pragma once
/// @file
/// The safetensors header parser (internal): the JSON header read as a stream of
/// nlohmann::json SAX events straight into the tensor table, every tensor entry checked
/// against the reference's dtypes, the size in bits and the data buffer, and the helpers
/// its messages use. The format and the rules it checks: see the file comment of
/// lowrank/io/safetensors.hpp, whose safetensors_file checks the tiling of the data buffer
/// once the header is read.

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "lowrank/io/detail/files.hpp"
#include "lowrank/io/safetensors_types.hpp"

namespace lowrank::io::detail {

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

/// Reads a header into `tensors` and `metadata` (the rules: see the file comment of
/// lowrank/io/safetensors.hpp).
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

}  // namespace lowrank::io::detail
