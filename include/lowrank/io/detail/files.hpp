#pragma once
/// @file
/// Pieces shared by the file formats of lowrank/io (internal): the source of an error and
/// the invalid_argument it throws, quoting and escaping for messages, little-endian loads,
/// reading a whole file, and writing through a temporary file renamed over the target.
///
/// Every error names the public function, its argument and the argument's value, as
/// `lowrank::io::read_npy: argument 'file' is "w.npy", which does not exist; expected ...`
/// (see lowrank/core/error.hpp).

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <vector>

#include "lowrank/core/error.hpp"

namespace lowrank::io::detail {

/// Who is parsing or writing, so that every error names the public function, its argument
/// and the argument's value (the quoted file name, or the size of the caller's buffer).
struct error_source {
  std::string_view function;
  std::string_view argument;
  std::string subject;
};

/// Throws lowrank::invalid_argument for `source` with the value "<subject> <found>": `found`
/// continues the value, "with only 3 bytes" or ", which does not exist" (no space before a
/// `found` that starts with ',').
[[noreturn]] inline void fail_with(const error_source& source, std::string_view found,
                                   std::string_view expected) {
  std::string value = source.subject;
  if (!found.starts_with(',')) value += ' ';
  value += found;
  lowrank::detail::throw_invalid_argument(source.function, source.argument, value, expected);
}

/// A path in double quotes, for a message.
inline std::string quote_path(const std::filesystem::path& file) {
  return '"' + file.string() + '"';
}

/// The subject of an in-memory parse: "a buffer of N bytes".
inline std::string buffer_subject(std::size_t size) {
  return "a buffer of " + std::to_string(size) + " bytes";
}

/// Appends `c` as two lowercase hex digits.
inline void append_hex(std::string& out, unsigned char c) {
  constexpr std::string_view digits = "0123456789abcdef";
  out += digits[c >> 4];
  out += digits[c & 0xf];
}

/// Text from a file as it can be shown in a message: '\n' and '\\' escaped, other control
/// and non-ASCII bytes as \xhh, and at most `limit` bytes of it, then "..." when it is
/// longer (a name or a header can be long; the message must stay short).
inline std::string printable(std::string_view text, std::size_t limit = std::string_view::npos) {
  std::string out;
  for (const char ch : text.substr(0, limit)) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\\') {
      out += "\\\\";
    } else if (c >= 0x20 && c < 0x7f) {
      out += ch;
    } else {
      out += "\\x";
      append_hex(out, c);
    }
  }
  if (text.size() > limit) out += "...";
  return out;
}

/// The unsigned little-endian integer of `Bytes` bytes at `p`.
template <std::size_t Bytes>
std::uint64_t load_le(const std::byte* p) {
  std::uint64_t value = 0;
  for (std::size_t k = 0; k < Bytes; ++k) value |= std::to_integer<std::uint64_t>(p[k]) << (8 * k);
  return value;
}

/// The whole of `file`. Fails with `missing` as what was expected when the file does not
/// exist, cannot be accessed or is a directory, and with `unreadable` when it cannot be
/// opened or read to the end.
inline std::vector<std::byte> read_file(const std::filesystem::path& file,
                                        const error_source& source, std::string_view missing,
                                        std::string_view unreadable) {
  std::error_code ec;
  const std::filesystem::file_status status = std::filesystem::status(file, ec);
  if (!std::filesystem::exists(status)) {
    fail_with(source,
              ec && status.type() != std::filesystem::file_type::not_found
                  ? ", which cannot be accessed (" + ec.message() + ")"
                  : std::string(", which does not exist"),
              missing);
  }
  if (std::filesystem::is_directory(status)) fail_with(source, ", which is a directory", missing);
  std::ifstream in(file, std::ios::binary);
  if (!in) fail_with(source, ", which cannot be opened for reading", unreadable);

  std::vector<std::byte> bytes;
  if (std::filesystem::is_regular_file(status)) {
    const std::uintmax_t size = std::filesystem::file_size(file, ec);
    if (!ec && size <= bytes.max_size()) bytes.reserve(static_cast<std::size_t>(size));
  }
  std::array<char, 1 << 16> chunk;
  while (in) {
    in.read(chunk.data(), static_cast<std::streamsize>(chunk.size()));
    const auto* first = reinterpret_cast<const std::byte*>(chunk.data());
    bytes.insert(bytes.end(), first, first + in.gcount());
  }
  if (in.bad()) fail_with(source, ", which could not be read to the end", unreadable);
  return bytes;
}

/// A temporary file next to the target, renamed over it by commit() and removed by the
/// destructor otherwise, so that a failed write never leaves a partial target behind.
class temporary_file {
 public:
  temporary_file(const std::filesystem::path& target, const error_source& source)
      : target_(target), path_(target), source_(&source) {
    // A name unique to this moment and thread: concurrent writers of one target do not
    // share a temporary.
    const auto ticks =
        static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
    std::uint64_t tag =
        ticks ^ (std::hash<std::thread::id>{}(std::this_thread::get_id()) * 0x9e3779b97f4a7c15ULL);
    std::string suffix = ".";
    for (int i = 0; i < 8; ++i, tag >>= 8) append_hex(suffix, static_cast<unsigned char>(tag));
    suffix += ".tmp";
    path_ += suffix;
    out_.open(path_, std::ios::binary | std::ios::trunc);
    if (!out_) {
      fail_with(*source_, ", whose temporary file " + quote_path(path_) + " cannot be created",
                "a file path in an existing, writable directory");
    }
    open_ = true;
  }

  temporary_file(const temporary_file&) = delete;
  temporary_file& operator=(const temporary_file&) = delete;

  ~temporary_file() {
    if (!open_) return;
    out_.close();
    std::error_code ignored;
    std::filesystem::remove(path_, ignored);
  }

  void write(const char* data, std::size_t size) {
    out_.write(data, static_cast<std::streamsize>(size));
    if (!out_) {
      fail_with(*source_, ", whose temporary file " + quote_path(path_) + " cannot be written",
                "a file path on a writable device with free space");
    }
  }

  void commit() {
    out_.close();
    if (!out_) {
      fail_with(*source_, ", whose temporary file " + quote_path(path_) + " cannot be flushed",
                "a file path on a writable device with free space");
    }
    std::error_code ec;
    std::filesystem::rename(path_, target_, ec);
    if (ec) {
      fail_with(*source_, ", which cannot be replaced by the written file (" + ec.message() + ")",
                "a file path that can be created or replaced");
    }
    open_ = false;
  }

 private:
  std::filesystem::path target_;
  std::filesystem::path path_;
  std::ofstream out_;
  const error_source* source_;
  bool open_ = false;
};

}  // namespace lowrank::io::detail
