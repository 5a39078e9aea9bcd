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
/// Memory layout (docs/architecture.md, "Data model"): a safetensors tensor is row-major, as
/// in PyTorch. A 2-D tensor of shape [r, c] is read as an r x c Eigen matrix, transposed
/// explicitly from its row-major bytes into Eigen's column-major storage; a 1-D tensor of
/// shape [n] is read as an n x 1 matrix. The writer does the reverse.
///
/// Conversions: F16 and BF16 convert exactly to float and double; F64 -> float rounds to
/// nearest even and overflows to +-inf (IEEE-754). The writer converts double to F32, F16
/// and BF16 with one rounding to nearest even (never through float: no double rounding),
/// overflowing to +-inf, keeping subnormals, signed zeros and infinities, and writing a NaN
/// as a quiet NaN with its sign and its leading payload bits.
///
/// Files (lowrank/io/detail/files.hpp): safetensors_file::read reads regular files only: a FIFO, a
/// device such as /dev/zero, a socket or a directory is refused before it is read (checked with
/// stat, then fstat on the descriptor, opened non-blocking); a symbolic link to a regular
/// file is followed. write_safetensors writes a temporary next to the target (created with O_EXCL,
/// mode 0600), syncs it, gives it the mode of the file it replaces (or 0666 minus the
/// umask), renames it over the target and syncs the directory. A symbolic link at the
/// target is written through and kept; a special file or directory there is refused. A
/// failed write leaves the previous file as it was and no temporary behind.

#include <Eigen/Core>
#include <algorithm>
#include <bit>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
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
#include "lowrank/io/detail/half.hpp"
#include "lowrank/io/detail/safetensors_header.hpp"
#include "lowrank/io/safetensors_types.hpp"

namespace lowrank::io {

namespace detail {

inline constexpr std::string_view safetensors_converted_dtypes = "'F32', 'F16', 'BF16' or 'F64'";

inline std::size_t safetensors_itemsize(dtype d) {
  return d == dtype::float64 ? 8 : d == dtype::float32 ? 4 : 2;
}

inline bool safetensors_known(dtype d) {
  return d == dtype::float32 || d == dtype::float16 || d == dtype::bfloat16 || d == dtype::float64;
}

template <std::size_t Bytes>
void safetensors_append_le(std::vector<char>& out, std::uint64_t value) {
  for (std::size_t k = 0; k < Bytes; ++k) {
    out.push_back(static_cast<char>((value >> (8 * k)) & 0xff));
  }
}

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

/// A validated safetensors file (format and rules: see the file comment), held in memory
/// (parse, read) or mapped (map).
///
/// Memory: the whole file, plus the tensor table, for parse() and read(); for map(), the
/// tensor table, and of the file only the pages being converted (see map()). Parsing is
/// O(header size) for the header and O(tensors log tensors) for the offsets; the data is not
/// touched until a tensor is converted.
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
    safetensors_file file;
    file.owned_ = std::make_shared<const std::vector<std::byte>>(std::move(bytes));
    file.validate({file.owned_->data(), file.owned_->size()},
                  {"lowrank::io::safetensors_file::parse", "bytes", subject}, subject);
    return file;
  }

  /// Reads a whole file, then parses it as parse() does. Memory: the file size.
  ///
  /// @throws lowrank::invalid_argument (function `lowrank::io::safetensors_file::read`,
  ///   argument `file`, whose value is the quoted path) when the file does not exist, is not
  ///   a regular file (a directory, FIFO, device or socket) or cannot be read, and for every
  ///   error of parse(), e.g.
  ///   `lowrank::io::safetensors_file::read: argument 'file' is "a.safetensors" with the
  ///   tensor 'w' of dtype 'F33'; expected a safetensors dtype: BOOL, F4, ...`.
  [[nodiscard]] static safetensors_file read(const std::filesystem::path& file) {
    const detail::error_source source{"lowrank::io::safetensors_file::read", "file",
                                      detail::quote_path(file)};
    constexpr std::string_view readable = "an existing, readable .safetensors file";
    safetensors_file out;
    out.owned_ = std::make_shared<const std::vector<std::byte>>(
        detail::read_file(file, source, readable, readable));
    out.validate({out.owned_->data(), out.owned_->size()}, source, source.subject);
    return out;
  }

  /// Maps a file read-only (mmap) and validates it as read() does, reading only its first
  /// 8 bytes and its header: for checkpoints larger than memory. matrix() and integers()
  /// convert one tensor from the mapped pages and then hand those pages back to the system
  /// (madvise), so converting every tensor of a file in turn keeps the resident memory at
  /// about one converted tensor plus one tensor's pages, whatever the file's size.
  /// tensor_bytes() points into the mapping (valid while this object or a copy lives).
  ///
  /// The file must not be truncated or rewritten in place while mapped (reading a page past
  /// a new end faults, as for every memory-mapped reader); lowrank's own writers replace a
  /// file by renaming a new one over it, which a mapping does not see.
  ///
  /// @throws lowrank::invalid_argument as read() does (function
  ///   `lowrank::io::safetensors_file::map`, argument `file`), and when the file cannot be
  ///   mapped.
  [[nodiscard]] static safetensors_file map(const std::filesystem::path& file) {
    const detail::error_source source{"lowrank::io::safetensors_file::map", "file",
                                      detail::quote_path(file)};
    constexpr std::string_view readable = "an existing, readable .safetensors file";
    safetensors_file out;
    out.mapped_ = std::make_shared<const detail::mapped_file>(file, source, readable, readable);
    out.validate({out.mapped_->data(), out.mapped_->size()}, source, source.subject);
    return out;
  }

  /// Whether the file is mapped (map()) rather than held in memory.
  [[nodiscard]] bool is_mapped() const noexcept { return mapped_ != nullptr; }

  /// The file's size in bytes.
  [[nodiscard]] std::size_t file_size() const noexcept { return storage().size(); }

  /// Where the file came from, for messages: the quoted path, or "a buffer of N bytes".
  [[nodiscard]] const std::string& origin() const noexcept { return origin_; }

  /// For a mapped file, hands the pages of tensor `name` back to the system (see map());
  /// nothing for a file in memory. matrix() and integers() do it themselves; this is for a
  /// caller that copied tensor_bytes() (a writer that passes a tensor through unchanged).
  void release(std::string_view name) const {
    const tensor_info& info = find(name, "lowrank::io::safetensors_file::release");
    if (mapped_) mapped_->release(data_offset_ + info.begin, data_offset_ + info.end);
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
  /// (a copy shares the buffer, which is never written).
  ///
  /// @throws lowrank::invalid_argument (function
  ///   `lowrank::io::safetensors_file::tensor_bytes`, argument `name`) when the file has no
  ///   tensor of that name.
  [[nodiscard]] std::span<const std::byte> tensor_bytes(std::string_view name) const {
    const tensor_info& info = find(name, "lowrank::io::safetensors_file::tensor_bytes");
    return storage().subspan(data_offset_ + info.begin, info.end - info.begin);
  }

  /// The tensor `name` as integers, row-major (any shape; a scalar gives one value): for
  /// index buffers such as SLTrain's `sparse_index`. Dtypes I8, I16, I32, I64, U8, U16, U32
  /// and U64 (a U64 value above 2^63 - 1 is an error).
  ///
  /// @throws lowrank::invalid_argument (function `lowrank::io::safetensors_file::integers`,
  ///   argument `name`) when the file has no tensor of that name, its dtype is not one of
  ///   those, or a U64 value does not fit in std::int64_t.
  [[nodiscard]] std::vector<std::int64_t> integers(std::string_view name) const {
    constexpr std::string_view function = "lowrank::io::safetensors_file::integers";
    const tensor_info& info = find(name, function);
    const std::string value = detail::safetensors_quote(name) + ", a tensor of dtype '" +
                              info.dtype_name + "' and shape " +
                              detail::safetensors_shape_string(info.shape) + " in " + origin_;
    const std::string& d = info.dtype_name;
    const bool is_signed = d == "I8" || d == "I16" || d == "I32" || d == "I64";
    const bool is_unsigned = d == "U8" || d == "U16" || d == "U32" || d == "U64";
    if (!is_signed && !is_unsigned) {
      lowrank::detail::throw_invalid_argument(
          function, "name", value,
          "a tensor of dtype 'I8', 'I16', 'I32', 'I64', 'U8', 'U16', 'U32' or 'U64'");
    }
    const std::size_t bytes = d.size() == 2 ? 1 : (d[1] == '1' ? 2 : d[1] == '3' ? 4 : 8);
    const std::span<const std::byte> raw = tensor_bytes(name);
    std::vector<std::int64_t> out(raw.size() / bytes);
    for (std::size_t k = 0; k < out.size(); ++k) {
      std::uint64_t w = 0;
      for (std::size_t b = 0; b < bytes; ++b) {
        w |= std::uint64_t(std::to_integer<unsigned>(raw[k * bytes + b])) << (8 * b);
      }
      if (is_signed && bytes < 8 && (w >> (8 * bytes - 1)) != 0) {
        w |= ~std::uint64_t{0} << (8 * bytes);  // sign extension
      }
      if (!is_signed && w > std::uint64_t(std::numeric_limits<std::int64_t>::max())) {
        lowrank::detail::throw_invalid_argument(function, "name", value,
                                                "U64 values below 2^63 (std::int64_t)");
      }
      out[k] = static_cast<std::int64_t>(w);
    }
    if (mapped_) mapped_->release(data_offset_ + info.begin, data_offset_ + info.end);
    return out;
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
    const std::byte* data = storage().data() + data_offset_ + info.begin;
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
    if (mapped_) mapped_->release(data_offset_ + info.begin, data_offset_ + info.end);
    return out;
  }

 private:
  safetensors_file() = default;

  [[nodiscard]] std::span<const std::byte> storage() const noexcept {
    if (mapped_) return {mapped_->data(), mapped_->size()};
    if (owned_) return {owned_->data(), owned_->size()};
    return {};
  }

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

  /// Validates the file's bytes and fills the tensor table (every rule of the file comment).
  void validate(std::span<const std::byte> bytes, const detail::error_source& source,
                std::string origin) {
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
    safetensors_file& file = *this;
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

    file.origin_ = std::move(origin);
  }

  // One of the two holds the file; a copy shares it (read-only).
  std::shared_ptr<const std::vector<std::byte>> owned_;
  std::shared_ptr<const detail::mapped_file> mapped_;
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

/// One integer tensor to write (an index buffer such as SLTrain's `sparse_index`): its
/// name, its values, stored as I32 (`int32`, every value must fit) or I64, shape [n].
struct integer_tensor_to_write {
  std::string name;
  std::vector<std::int64_t> values;
  bool int32 = false;
};

namespace detail {

/// Appends one value, converted from double with one rounding, as a little-endian `type`.
inline void safetensors_append_value(std::vector<char>& out, dtype type, double x) {
  switch (type) {
    case dtype::float32:
      safetensors_append_le<4>(out, std::bit_cast<std::uint32_t>(static_cast<float>(x)));
      break;
    case dtype::float64:
      safetensors_append_le<8>(out, std::bit_cast<std::uint64_t>(x));
      break;
    case dtype::float16:
      safetensors_append_le<2>(out, double_to_half(x));
      break;
    case dtype::bfloat16:
      safetensors_append_le<2>(out, double_to_bfloat16(x));
      break;
  }
}

/// `"__metadata__":{...},` of a header (nothing for no metadata), keys and values checked as
/// UTF-8 for `function`'s messages (argument `metadata`).
inline std::string safetensors_metadata_header(const std::map<std::string, std::string>& metadata,
                                               std::string_view function) {
  if (metadata.empty()) return {};
  std::string header = "\"__metadata__\":{";
  bool first = true;
  for (const auto& [key, value] : metadata) {
    if (!first) header += ',';
    first = false;
    header += safetensors_json_string(key, function, "metadata", "a map with the key");
    header += ':';
    header += safetensors_json_string(value, function, "metadata", "a map with the value");
  }
  return header + '}';
}

/// The header of a safetensors file of `tensors` and `metadata`, and the order in which
/// their data follows it (see write_safetensors): indices below tensors.size() name a
/// float tensor, the others `integers[k - tensors.size()]`.
struct safetensors_layout {
  std::string header;
  std::vector<std::size_t> order;
};

/// Checks the tensors and metadata of write_safetensors and lays out the file.
inline safetensors_layout safetensors_plan(
    const std::vector<tensor_to_write>& tensors, const std::map<std::string, std::string>& metadata,
    const std::vector<integer_tensor_to_write>& integers = {}) {
  constexpr std::string_view function = "lowrank::io::write_safetensors";
  const std::string list = "a list of " + std::to_string(tensors.size()) + " tensors";
  std::set<std::string_view> names;
  for (const tensor_to_write& t : tensors) {
    const std::string tensor = list + " with the tensor " + safetensors_quote(t.name);
    if (t.name == safetensors_metadata_key) {
      lowrank::detail::throw_invalid_argument(function, "tensors", tensor,
                                              "names other than '__metadata__' (the header's "
                                              "metadata key)");
    }
    if (!names.insert(t.name).second) {
      lowrank::detail::throw_invalid_argument(function, "tensors", tensor + " twice",
                                              "distinct tensor names");
    }
    if (!safetensors_known(t.type)) {
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

  for (const integer_tensor_to_write& t : integers) {
    const std::string tensor = list + " and the integer tensor " + safetensors_quote(t.name);
    if (t.name == safetensors_metadata_key || !names.insert(t.name).second) {
      lowrank::detail::throw_invalid_argument(function, "integers", tensor,
                                              "a distinct name other than '__metadata__'");
    }
    if (t.int32) {
      for (const std::int64_t v : t.values) {
        if (!std::in_range<std::int32_t>(v)) {
          lowrank::detail::throw_invalid_argument(function, "integers",
                                                  tensor + " holding " + std::to_string(v),
                                                  "values in the range of I32");
        }
      }
    }
  }
  const auto itemsize = [&](std::size_t k) -> std::size_t {
    if (k < tensors.size()) return safetensors_itemsize(tensors[k].type);
    return integers[k - tensors.size()].int32 ? 4 : 8;
  };
  std::vector<std::size_t> order(tensors.size() + integers.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return itemsize(a) > itemsize(b); });

  std::string header = "{" + safetensors_metadata_header(metadata, function);
  std::size_t offset = 0;
  for (const std::size_t k : order) {
    if (k >= tensors.size()) {
      const integer_tensor_to_write& t = integers[k - tensors.size()];
      const std::size_t bytes = t.values.size() * itemsize(k);
      if (header.size() > 1) header += ',';
      header +=
          safetensors_json_string(t.name, function, "integers", list + " with the tensor name");
      header += std::string(":{\"dtype\":\"") + (t.int32 ? "I32" : "I64") + "\",\"shape\":[" +
                std::to_string(t.values.size()) + "],\"data_offsets\":[" + std::to_string(offset) +
                "," + std::to_string(offset + bytes) + "]}";
      offset += bytes;
      continue;
    }
    const tensor_to_write& t = tensors[k];
    const std::size_t bytes =
        static_cast<std::size_t>(t.values.size()) * safetensors_itemsize(t.type);
    if (header.size() > 1) header += ',';
    header += safetensors_json_string(t.name, function, "tensors", list + " with the tensor name");
    header += ":{\"dtype\":\"" + std::string(name(t.type)) + "\",\"shape\":[" +
              std::to_string(t.values.rows());
    if (!t.vector_shape) header += "," + std::to_string(t.values.cols());
    header += "],\"data_offsets\":[" + std::to_string(offset) + "," +
              std::to_string(offset + bytes) + "]}";
    offset += bytes;
  }
  header += '}';
  header.append((8 - header.size() % 8) % 8, ' ');
  if (header.size() > safetensors_max_header) {
    lowrank::detail::throw_invalid_argument(
        function, "tensors",
        list + " whose header would be " + std::to_string(header.size()) + " bytes",
        "a header of at most " + std::to_string(safetensors_max_header) +
            " bytes (the safetensors limit)");
  }

  return {std::move(header), std::move(order)};
}

/// Writes the file laid out by safetensors_plan to `out` (with write(const char*, size)).
template <class Out>
void safetensors_emit(Out& out, const safetensors_layout& layout,
                      const std::vector<tensor_to_write>& tensors,
                      const std::vector<integer_tensor_to_write>& integers = {}) {
  const std::string& header = layout.header;
  const std::vector<std::size_t>& order = layout.order;
  std::vector<char> chunk;
  constexpr std::size_t chunk_size = 1 << 16;
  chunk.reserve(chunk_size + 8);
  safetensors_append_le<8>(chunk, header.size());
  out.write(chunk.data(), chunk.size());
  out.write(header.data(), header.size());
  chunk.clear();
  for (const std::size_t k : order) {
    if (k >= tensors.size()) {
      const integer_tensor_to_write& t = integers[k - tensors.size()];
      for (const std::int64_t v : t.values) {
        if (t.int32) {
          safetensors_append_le<4>(chunk, static_cast<std::uint32_t>(v));
        } else {
          safetensors_append_le<8>(chunk, static_cast<std::uint64_t>(v));
        }
        if (chunk.size() >= chunk_size) {
          out.write(chunk.data(), chunk.size());
          chunk.clear();
        }
      }
      continue;
    }
    const tensor_to_write& t = tensors[k];
    // Row-major: element (i, j) at i * cols + j.
    for (Eigen::Index i = 0; i < t.values.rows(); ++i) {
      for (Eigen::Index j = 0; j < t.values.cols(); ++j) {
        safetensors_append_value(chunk, t.type, t.values(i, j));
        if (chunk.size() >= chunk_size) {
          out.write(chunk.data(), chunk.size());
          chunk.clear();
        }
      }
    }
  }
  out.write(chunk.data(), chunk.size());
}

}  // namespace detail

/// Writes tensors and optional metadata as a safetensors file.
///
/// Layout: the header is compact JSON, `"__metadata__"` first when `metadata` is not empty,
/// then the tensors, padded with spaces to a multiple of 8 bytes. Tensors are laid out by
/// decreasing element size (F64, then F32, then F16 and BF16), in the order given within a
/// size, and listed in the header in that order: like the reference writer's order (which
/// also sorts by name), this aligns every tensor's data to its element size in the file.
/// Values are converted from double with one rounding to nearest even (F32, F16, BF16) and
/// written little-endian. `integers` (index buffers, shape [n], I32 or I64) take their
/// place in that order by their element size.
///
/// The file is written to a temporary in the same directory and renamed over `file` (the
/// rules: see the file comment), so a failure leaves an existing `file` untouched and no
/// temporary behind. Memory: the header and two 64 KiB buffers.
///
/// @throws lowrank::invalid_argument (function `lowrank::io::write_safetensors`)
///   - argument `tensors`: two tensors with one name, a tensor named `__metadata__`, a name
///     that is not UTF-8, a dtype that is not one of the enumerators, `vector_shape` with
///     more than one column, or a header over 100000000 bytes;
///   - argument `integers`: a name used twice (here or among `tensors`) or `__metadata__`,
///     or an I32 tensor holding a value out of I32's range;
///   - argument `metadata`: a key or value that is not UTF-8;
///   - argument `file`: no file name, a directory or another special file, more than 40
///     symbolic links, a missing or unwritable directory, or a failed write, sync or rename.
inline void write_safetensors(const std::filesystem::path& file,
                              const std::vector<tensor_to_write>& tensors,
                              const std::map<std::string, std::string>& metadata = {},
                              const std::vector<integer_tensor_to_write>& integers = {}) {
  const detail::error_source source{"lowrank::io::write_safetensors", "file",
                                    detail::quote_path(file)};
  if (!file.has_filename())
    detail::fail_with(source, ", which has no file name", "a path to a file");
  const detail::safetensors_layout layout = detail::safetensors_plan(tensors, metadata, integers);
  detail::temporary_file out(file, source);
  detail::safetensors_emit(out, layout, tensors, integers);
  out.commit();
}

}  // namespace lowrank::io
