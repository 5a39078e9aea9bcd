#pragma once
/// @file
/// A streaming safetensors writer: the tensors' names, dtypes and shapes are given first (the
/// header), then their data one tensor at a time, so that a checkpoint can be rewritten
/// (factored, merged) with one tensor in memory at a time. write_safetensors
/// (lowrank/io/safetensors.hpp) is the one-call form for tensors already in memory.
///
/// Layout: as write_safetensors: compact JSON header, `"__metadata__"` first when given,
/// padded with spaces to a multiple of 8 bytes; the tensors laid out by decreasing element
/// size, in the order given within a size (so every tensor is aligned to its element size),
/// and their data must be written in that layout order: next() names the tensor expected.
/// Any of the reference's dtypes can be written from raw bytes (a tensor passed through
/// unchanged); F32, F16, BF16 and F64 also from a matrix, converted with one rounding to
/// nearest even (as write_safetensors).
///
/// Files: the data goes to a temporary next to the target, renamed over it by commit()
/// (lowrank/io/detail/files.hpp); a writer destroyed before commit() removes the temporary
/// and leaves the target as it was. Memory: the header and a 64 KiB buffer.

#include <Eigen/Core>
#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <numeric>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "lowrank/core/error.hpp"
#include "lowrank/io/detail/files.hpp"
#include "lowrank/io/detail/half.hpp"
#include "lowrank/io/detail/safetensors_header.hpp"
#include "lowrank/io/safetensors.hpp"

namespace lowrank::io {

/// One tensor of a streamed file: its name, its safetensors dtype ("F32", "BF16", "I64",
/// ...) and its shape (row-major, PyTorch's; [r, c] for an r x c matrix, [n] for a vector).
struct tensor_spec {
  std::string name;
  std::string dtype_name;
  std::vector<std::int64_t> shape;
};

/// Writes a safetensors file tensor by tensor (see the file comment).
class safetensors_writer {
 public:
  /// Lays out the file and opens its temporary.
  /// @throws lowrank::invalid_argument (function `lowrank::io::safetensors_writer`)
  ///   - argument `tensors`: a name twice or `__metadata__`, a name that is not UTF-8, a
  ///     dtype that is not one of the reference's, a negative dimension, a size that
  ///     overflows or is not whole bytes, or a header over 100000000 bytes;
  ///   - argument `metadata`: a key or value that is not UTF-8;
  ///   - argument `file`: as write_safetensors.
  safetensors_writer(const std::filesystem::path& file, std::vector<tensor_spec> tensors,
                     const std::map<std::string, std::string>& metadata = {})
      : source_(std::make_unique<detail::error_source>(detail::error_source{
            "lowrank::io::safetensors_writer", "file", detail::quote_path(file)})),
        specs_(std::move(tensors)) {
    if (!file.has_filename())
      detail::fail_with(*source_, ", which has no file name", "a path to a file");
    plan(metadata);
    out_ = std::make_unique<detail::temporary_file>(file, *source_);
    chunk_.reserve(1 << 16);
    std::vector<char> length;
    detail::safetensors_append_le<8>(length, header_.size());
    out_->write(length.data(), length.size());
    out_->write(header_.data(), header_.size());
  }

  /// Whether every tensor has been written.
  [[nodiscard]] bool done() const noexcept { return next_ == order_.size(); }

  /// The tensor whose data comes next.
  [[nodiscard]] const tensor_spec& next() const {
    require_pending("next");
    return specs_[order_[next_]];
  }

  /// The tensors in the order their data must be written.
  [[nodiscard]] std::vector<std::string> order() const {
    std::vector<std::string> names;
    for (const std::size_t k : order_) names.push_back(specs_[k].name);
    return names;
  }

  /// Writes the next tensor's bytes as stored (little-endian, row-major).
  /// @throws lowrank::invalid_argument (argument `bytes`) when their size is not the tensor's,
  ///   or when every tensor is written.
  void write_bytes(std::span<const std::byte> bytes) {
    require_pending("write_bytes");
    const std::size_t k = order_[next_];
    if (bytes.size() != sizes_[k]) {
      lowrank::detail::throw_invalid_argument(
          "lowrank::io::safetensors_writer::write_bytes", "bytes",
          std::to_string(bytes.size()) + " bytes for the tensor " +
              detail::safetensors_quote(specs_[k].name),
          std::to_string(sizes_[k]) + " bytes (its dtype and shape)");
    }
    out_->write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    ++next_;
  }

  /// Writes the next tensor from a matrix: r x c for a shape [r, c], n x 1 (or 1 x n) for
  /// [n]; converted to its dtype (F32, F16, BF16 or F64) with one rounding.
  /// @throws lowrank::invalid_argument (argument `values`) when the shape or dtype does not
  ///   allow it, or when every tensor is written.
  template <class Derived>
  void write_matrix(const Eigen::MatrixBase<Derived>& values) {
    constexpr std::string_view function = "lowrank::io::safetensors_writer::write_matrix";
    require_pending("write_matrix");
    const tensor_spec& spec = specs_[order_[next_]];
    const auto& shape = spec.shape;
    const bool fits =
        (shape.size() == 2 && values.rows() == shape[0] && values.cols() == shape[1]) ||
        (shape.size() == 1 && std::min(values.rows(), values.cols()) == 1 &&
         values.size() == shape[0]);
    const std::string what = std::to_string(values.rows()) + " x " + std::to_string(values.cols()) +
                             " values for the tensor " + detail::safetensors_quote(spec.name) +
                             " of dtype '" + spec.dtype_name + "' and shape " +
                             detail::safetensors_shape_string(shape);
    if (!fits) {
      lowrank::detail::throw_invalid_argument(function, "values", what,
                                              "values of the tensor's shape");
    }
    const std::optional<dtype> type = converted(spec.dtype_name);
    if (!type) {
      lowrank::detail::throw_invalid_argument(function, "values", what,
                                              "a tensor of dtype F32, F16, BF16 or F64");
    }
    const bool row_vector = shape.size() == 1 && values.rows() == 1;
    const Eigen::Index rows = row_vector ? values.cols() : values.rows();
    const Eigen::Index cols = row_vector ? 1 : values.cols();
    for (Eigen::Index i = 0; i < rows; ++i) {
      for (Eigen::Index j = 0; j < cols; ++j) {
        detail::safetensors_append_value(
            chunk_, *type, static_cast<double>(row_vector ? values(0, i) : values(i, j)));
        if (chunk_.size() >= (1 << 16)) flush();
      }
    }
    flush();
    ++next_;
  }

  /// Syncs the file and renames it over the target.
  /// @throws lowrank::invalid_argument (argument `file`) when tensors are still missing, or
  ///   the sync or rename fails (the target is then as it was).
  void commit() {
    if (!done()) {
      detail::fail_with(*source_,
                        " with the tensor " + detail::safetensors_quote(next().name) + " and " +
                            std::to_string(order_.size() - next_ - 1) + " more not yet written",
                        "every tensor written before commit()");
    }
    out_->commit();
  }

 private:
  static std::optional<dtype> converted(std::string_view name) {
    for (const auto& d : detail::safetensors_dtypes) {
      if (d.name == name) return d.type;
    }
    return std::nullopt;
  }

  void require_pending(std::string_view what) const {
    if (done()) {
      detail::fail_with(*source_,
                        " with all " + std::to_string(order_.size()) + " tensors written, and " +
                            std::string(what) + "() called",
                        "no more data than the header announced");
    }
  }

  void flush() {
    out_->write(chunk_.data(), chunk_.size());
    chunk_.clear();
  }

  void plan(const std::map<std::string, std::string>& metadata) {
    constexpr std::string_view function = "lowrank::io::safetensors_writer";
    const std::string list = "a list of " + std::to_string(specs_.size()) + " tensors";
    std::set<std::string_view> names;
    std::vector<unsigned> bits(specs_.size());
    sizes_.resize(specs_.size());
    for (std::size_t k = 0; k < specs_.size(); ++k) {
      const tensor_spec& t = specs_[k];
      const std::string tensor = list + " with the tensor " + detail::safetensors_quote(t.name);
      if (t.name == detail::safetensors_metadata_key || !names.insert(t.name).second) {
        lowrank::detail::throw_invalid_argument(function, "tensors", tensor,
                                                "distinct names other than '__metadata__'");
      }
      const auto* entry =
          std::find_if(detail::safetensors_dtypes.begin(), detail::safetensors_dtypes.end(),
                       [&](const auto& d) { return d.name == t.dtype_name; });
      if (entry == detail::safetensors_dtypes.end()) {
        lowrank::detail::throw_invalid_argument(
            function, "tensors", tensor + " of dtype " + detail::safetensors_quote(t.dtype_name),
            "a safetensors dtype: " + detail::safetensors_dtype_list());
      }
      bits[k] = entry->bits;
      std::uint64_t total = entry->bits;
      bool empty = false;
      for (const std::int64_t d : t.shape) {
        if (d < 0) {
          lowrank::detail::throw_invalid_argument(
              function, "tensors",
              tensor + " of shape " + detail::safetensors_shape_string(t.shape), "dimensions >= 0");
        }
        if (d == 0) {
          empty = true;
        } else if (total > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()) /
                               static_cast<std::uint64_t>(d)) {
          lowrank::detail::throw_invalid_argument(
              function, "tensors",
              tensor + " of shape " + detail::safetensors_shape_string(t.shape),
              "a size in bits that fits in std::int64_t");
        } else {
          total *= static_cast<std::uint64_t>(d);
        }
      }
      if (!empty && total % 8 != 0) {
        lowrank::detail::throw_invalid_argument(
            function, "tensors", tensor + " of shape " + detail::safetensors_shape_string(t.shape),
            "a whole number of bytes");
      }
      sizes_[k] = empty ? 0 : static_cast<std::size_t>(total / 8);
    }
    order_.resize(specs_.size());
    std::iota(order_.begin(), order_.end(), std::size_t{0});
    std::stable_sort(order_.begin(), order_.end(),
                     [&](std::size_t a, std::size_t b) { return bits[a] > bits[b]; });
    header_ = "{" + detail::safetensors_metadata_header(metadata, function);
    std::size_t offset = 0;
    for (const std::size_t k : order_) {
      const tensor_spec& t = specs_[k];
      if (header_.size() > 1) header_ += ',';
      header_ += detail::safetensors_json_string(t.name, function, "tensors",
                                                 list + " with the tensor name");
      header_ += ":{\"dtype\":\"" + t.dtype_name + "\",\"shape\":[";
      for (std::size_t d = 0; d < t.shape.size(); ++d) {
        if (d > 0) header_ += ',';
        header_ += std::to_string(t.shape[d]);
      }
      header_ += "],\"data_offsets\":[" + std::to_string(offset) + "," +
                 std::to_string(offset + sizes_[k]) + "]}";
      offset += sizes_[k];
    }
    header_ += '}';
    header_.append((8 - header_.size() % 8) % 8, ' ');
    if (header_.size() > detail::safetensors_max_header) {
      lowrank::detail::throw_invalid_argument(
          function, "tensors",
          list + " whose header would be " + std::to_string(header_.size()) + " bytes",
          "a header of at most " + std::to_string(detail::safetensors_max_header) +
              " bytes (the safetensors limit)");
    }
  }

  std::unique_ptr<detail::error_source> source_;  // stable address for temporary_file
  std::vector<tensor_spec> specs_;
  std::vector<std::size_t> sizes_;
  std::vector<std::size_t> order_;
  std::size_t next_ = 0;
  std::string header_;
  std::vector<char> chunk_;
  std::unique_ptr<detail::temporary_file> out_;
};

}  // namespace lowrank::io
