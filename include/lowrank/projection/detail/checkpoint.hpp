#pragma once
/// @file
/// The text of the projection family's checkpoints (internal): numbers in
/// metadata strings, written exactly and read back with a clear error
/// (projection/projected_adam.hpp, "Checkpoints").

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "lowrank/core/error.hpp"
#include "lowrank/io/safetensors.hpp"

namespace lowrank::detail {

/// Where a checkpoint is being read, for messages.
struct checkpoint_source {
  const char* fn;
  std::string where;  ///< "the file <path>"
  const io::safetensors_file* file;

  [[noreturn]] void fail(const std::string& what, const std::string& expected) const {
    throw_invalid_argument(fn, "file", where + " " + what, expected);
  }

  /// The metadata string `key`.
  [[nodiscard]] const std::string& need(const std::string& key) const {
    const auto& meta = file->metadata();
    const auto it = meta.find(key);
    if (it == meta.end()) {
      fail("without metadata '" + key + "'",
           "a checkpoint written by lowrank (this optimizer's save)");
    }
    return it->second;
  }

  /// Checks that metadata `key` equals `want`.
  void expect(const std::string& key, const std::string& want) const {
    const std::string& got = need(key);
    if (got != want) fail("with " + key + " = '" + got + "'", "'" + want + "' (this optimizer's)");
  }
};

/// A double as a hexadecimal float: exact both ways.
[[nodiscard]] inline std::string hex(double x) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%a", x);
  return buffer;
}

[[nodiscard]] inline double unhex(const checkpoint_source& src, const std::string& text) {
  char* end = nullptr;
  const double x = std::strtod(text.c_str(), &end);
  if (text.empty() || end != text.c_str() + text.size()) {
    src.fail("with the number '" + text + "'", "a hexadecimal floating-point number");
  }
  return x;
}

[[nodiscard]] inline std::uint64_t unsigned_of(const checkpoint_source& src,
                                               const std::string& text) {
  std::uint64_t x = 0;
  bool ok = !text.empty() && text.size() <= 19;
  for (const char ch : text) {
    if (ch < '0' || ch > '9') ok = false;
    if (ok) x = 10 * x + std::uint64_t(ch - '0');
  }
  if (!ok) src.fail("with the counter '" + text + "'", "a decimal integer below 10^19");
  return x;
}

/// The space-separated words of `text` (empty words kept).
[[nodiscard]] inline std::vector<std::string> split(const std::string& text) {
  std::vector<std::string> parts;
  std::size_t at = 0;
  while (at <= text.size()) {
    const std::size_t next = std::min(text.find(' ', at), text.size());
    parts.push_back(text.substr(at, next - at));
    at = next + 1;
  }
  return parts;
}

/// The words of metadata `key`, exactly `count` of them.
[[nodiscard]] inline std::vector<std::string> words(const checkpoint_source& src,
                                                    const std::string& key, std::size_t count) {
  auto parts = split(src.need(key));
  if (parts.size() != count) {
    src.fail("with malformed " + key, std::to_string(count) + " space-separated values");
  }
  return parts;
}

}  // namespace lowrank::detail
