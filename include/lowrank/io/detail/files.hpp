#pragma once
/// @file
/// Pieces shared by the file formats of lowrank/io (internal): the source of an error and
/// the invalid_argument it throws, quoting and escaping for messages, little-endian loads,
/// reading a whole regular file, and writing through a temporary file renamed over the
/// target. POSIX (open, fstat, fsync, rename).
///
/// Every error names the public function, its argument and the argument's value, as
/// `lowrank::io::read_npy: argument 'file' is "w.npy", which does not exist; expected ...`
/// (see lowrank/core/error.hpp).
///
/// Reading (read_regular_file): only a regular file is read. The path is checked with stat
/// before it is opened and the open descriptor again with fstat (it is opened with
/// O_NONBLOCK, so a file swapped for a FIFO in between cannot block): a FIFO, a device
/// such as /dev/zero, a socket or a directory is refused, never read.
///
/// Writing (temporary_file):
/// - the data goes to "<target>.<16 hex digits>.tmp" next to the file it replaces, created
///   with O_CREAT | O_EXCL and mode 0600: an existing file of that name (or a symbolic link
///   there) is never opened, another name is drawn;
/// - a symbolic link at the target is written through: the file at the end of the chain of
///   links is replaced and the links are kept (a dangling link creates the file it names);
/// - an existing target that is not a regular file (a directory, FIFO, device or socket) is
///   refused, never replaced;
/// - the result gets the permission bits of the regular file it replaces (and its owner and
///   group where the process may set them), or 0666 minus the umask for a new file;
/// - the file is synced to the device (fsync) before the rename, and its directory after.
/// A failure before the rename leaves the target as it was and removes the temporary; only a
/// failure to sync the directory after the rename is reported once the file is replaced
/// (and the message says so).

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
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

/// The text of the errno value `error`, e.g. "No such file or directory".
inline std::string error_text(int error) { return std::generic_category().message(error); }

/// Hooks for the tests of the failure paths (internal: nothing else sets them).
struct file_test_hooks {
  /// Asked before each system call of a writer that creates, writes, syncs, links or renames
  /// ("open", "write", "fchmod", "fsync", "mkdir", "link", "rename", "exchange"), with the
  /// path it acts on: 0 lets the call go ahead, an errno value makes it fail with that error.
  std::function<int(std::string_view call, const std::filesystem::path& path)> fail;
  /// Gives the tags of temporary names instead of random ones.
  std::function<std::uint64_t()> tag;
};

inline file_test_hooks& test_hooks() {
  static file_test_hooks hooks;
  return hooks;
}

/// Runs `call` (a system call: -1 and errno on failure), retried on EINTR, unless a test
/// hook injects an error into `name` on `path`: 0 or the errno value.
template <class Call>
int system_call(std::string_view name, const std::filesystem::path& path, Call call) {
  if (const auto& fail = test_hooks().fail) {
    if (const int error = fail(name, path)) return error;
  }
  while (call() == -1) {
    if (errno != EINTR) return errno;
  }
  return 0;
}

/// An open file descriptor, closed by the destructor.
class file_descriptor {
 public:
  file_descriptor() = default;
  explicit file_descriptor(int fd) : fd_(fd) {}
  file_descriptor(file_descriptor&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  file_descriptor& operator=(file_descriptor&& other) noexcept {
    if (this != &other) {
      static_cast<void>(close());
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  file_descriptor(const file_descriptor&) = delete;
  file_descriptor& operator=(const file_descriptor&) = delete;
  ~file_descriptor() { static_cast<void>(close()); }

  [[nodiscard]] int get() const noexcept { return fd_; }
  [[nodiscard]] explicit operator bool() const noexcept { return fd_ >= 0; }

  /// Closes it (once; never retried, as Linux has closed it even on EINTR): 0 or errno.
  int close() noexcept {
    if (fd_ < 0) return 0;
    return ::close(std::exchange(fd_, -1)) == 0 ? 0 : errno;
  }

 private:
  int fd_ = -1;
};

/// open(2) with O_CLOEXEC: the descriptor, or an empty one and `error` set.
inline file_descriptor open_file(const std::filesystem::path& path, int flags, mode_t mode,
                                 int& error) {
  int fd = -1;
  error =
      system_call("open", path, [&] { return fd = ::open(path.c_str(), flags | O_CLOEXEC, mode); });
  return error == 0 ? file_descriptor(fd) : file_descriptor();
}

/// The directory that holds `file` ("." for a bare name).
inline std::filesystem::path directory_of(const std::filesystem::path& file) {
  return file.has_parent_path() ? file.parent_path() : std::filesystem::path(".");
}

/// Syncs the directory `dir` (its entries) to the device: 0 or the errno value. A file
/// system that cannot sync a directory (EINVAL) has nothing to sync.
inline int sync_directory(const std::filesystem::path& dir) {
  int error = 0;
  const file_descriptor fd = open_file(dir, O_RDONLY | O_DIRECTORY, 0, error);
  if (error == 0) error = system_call("fsync", dir, [&] { return ::fsync(fd.get()); });
  return error == EINVAL ? 0 : error;
}

/// What a file of mode `mode` is, for a message: "a FIFO", "a directory", ...
inline std::string file_kind(mode_t mode) {
  if (S_ISREG(mode)) return "a regular file";
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISLNK(mode)) return "a symbolic link";
  return "a special file";
}

/// A whole regular file, or why it could not be read.
struct file_contents {
  enum class problem { none, missing, inaccessible, not_regular, too_large, unreadable };
  problem error = problem::none;
  /// not_regular: what the file is ("a FIFO"); too_large: its size; else the system's text.
  std::string detail;
  std::vector<std::byte> bytes;
};

/// Reads the whole of `file` if it is a regular file of at most `max_size` bytes (checked
/// before opening and after, on the descriptor; see the file comment).
inline file_contents read_regular_file(const std::filesystem::path& file, std::uintmax_t max_size) {
  using problem = file_contents::problem;
  file_contents out;
  const auto failed = [&](problem error, std::string detail) {
    out.error = error;
    out.detail = std::move(detail);
    out.bytes = {};
    return std::move(out);
  };
  struct stat st {};
  if (::stat(file.c_str(), &st) != 0) {
    const int error = errno;
    return failed(error == ENOENT || error == ENOTDIR ? problem::missing : problem::inaccessible,
                  error_text(error));
  }
  if (!S_ISREG(st.st_mode)) return failed(problem::not_regular, file_kind(st.st_mode));
  int error = 0;
  const file_descriptor fd = open_file(file, O_RDONLY | O_NOCTTY | O_NONBLOCK, 0, error);
  if (error != 0) {
    return failed(error == ENOENT ? problem::missing : problem::unreadable, error_text(error));
  }
  if (::fstat(fd.get(), &st) != 0) return failed(problem::unreadable, error_text(errno));
  if (!S_ISREG(st.st_mode)) return failed(problem::not_regular, file_kind(st.st_mode));
  max_size = std::min<std::uintmax_t>(max_size, out.bytes.max_size());
  if (static_cast<std::uintmax_t>(st.st_size) > max_size) {
    return failed(problem::too_large, std::to_string(st.st_size));
  }
  out.bytes.reserve(static_cast<std::size_t>(st.st_size));
  std::array<char, 1 << 16> chunk;
  while (true) {
    const ssize_t n = ::read(fd.get(), chunk.data(), chunk.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return failed(problem::unreadable, error_text(errno));
    if (n == 0) return out;
    if (static_cast<std::uintmax_t>(n) > max_size - out.bytes.size()) {
      return failed(problem::too_large, "more than " + std::to_string(max_size));  // it grew
    }
    const auto* first = reinterpret_cast<const std::byte*>(chunk.data());
    out.bytes.insert(out.bytes.end(), first, first + n);
  }
}

/// The whole of `file`, a regular file. Fails with `missing` as what was expected when the
/// file does not exist, cannot be accessed or is not a regular file (a directory, FIFO,
/// device or socket), and with `unreadable` when it cannot be opened or read to the end.
inline std::vector<std::byte> read_file(const std::filesystem::path& file,
                                        const error_source& source, std::string_view missing,
                                        std::string_view unreadable) {
  file_contents contents = read_regular_file(file, std::numeric_limits<std::uintmax_t>::max());
  switch (contents.error) {
    case file_contents::problem::none:
      break;
    case file_contents::problem::missing:
      fail_with(source, ", which does not exist", missing);
    case file_contents::problem::inaccessible:
      fail_with(source, ", which cannot be accessed (" + contents.detail + ")", missing);
    case file_contents::problem::not_regular:
      if (contents.detail == "a directory") fail_with(source, ", which is a directory", missing);
      fail_with(source, ", which is " + contents.detail + ", not a regular file", missing);
    case file_contents::problem::too_large:
      fail_with(source, ", which is " + contents.detail + " bytes long",
                "a file that fits in memory");
    case file_contents::problem::unreadable:
      fail_with(source, ", which cannot be read (" + contents.detail + ")", unreadable);
  }
  return std::move(contents.bytes);
}

/// A regular file mapped read-only into memory (mmap, MAP_PRIVATE), unmapped by the
/// destructor: the bytes of a large checkpoint are read from the page cache on demand, so a
/// reader's memory is what it converts, not the file.
///
/// release() hands the pages of a range back (madvise MADV_DONTNEED): they leave the
/// process's resident set, and a later read of them faults them in again from the file. A
/// file truncated by another process while mapped makes reads past its new end fault
/// (SIGBUS), as with every memory-mapped reader (safetensors' own included).
class mapped_file {
 public:
  /// Maps `file`. Fails as read_file() does: with `missing` as what was expected when the
  /// file does not exist, cannot be accessed or is not a regular file, with `unreadable`
  /// when it cannot be opened or mapped.
  mapped_file(const std::filesystem::path& file, const error_source& source,
              std::string_view missing, std::string_view unreadable) {
    struct stat st {};
    if (::stat(file.c_str(), &st) != 0) {
      const int error = errno;
      if (error == ENOENT || error == ENOTDIR) fail_with(source, ", which does not exist", missing);
      fail_with(source, ", which cannot be accessed (" + error_text(error) + ")", missing);
    }
    const auto refuse = [&](mode_t mode) {
      if (S_ISDIR(mode)) fail_with(source, ", which is a directory", missing);
      fail_with(source, ", which is " + file_kind(mode) + ", not a regular file", missing);
    };
    if (!S_ISREG(st.st_mode)) refuse(st.st_mode);
    int error = 0;
    const file_descriptor fd = open_file(file, O_RDONLY | O_NOCTTY | O_NONBLOCK, 0, error);
    if (error != 0) {
      if (error == ENOENT) fail_with(source, ", which does not exist", missing);
      fail_with(source, ", which cannot be read (" + error_text(error) + ")", unreadable);
    }
    if (::fstat(fd.get(), &st) != 0) {
      fail_with(source, ", which cannot be read (" + error_text(errno) + ")", unreadable);
    }
    if (!S_ISREG(st.st_mode)) refuse(st.st_mode);
    size_ = static_cast<std::size_t>(st.st_size);
    if (size_ == 0) return;  // nothing to map; data() is null
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd.get(), 0);
    if (p == MAP_FAILED) {
      fail_with(source, ", which cannot be mapped (" + error_text(errno) + ")", unreadable);
    }
    data_ = static_cast<const std::byte*>(p);
  }

  mapped_file(const mapped_file&) = delete;
  mapped_file& operator=(const mapped_file&) = delete;
  ~mapped_file() {
    if (data_ != nullptr) ::munmap(const_cast<std::byte*>(data_), size_);
  }

  [[nodiscard]] const std::byte* data() const noexcept { return data_; }
  [[nodiscard]] std::size_t size() const noexcept { return size_; }

  /// Hands back the whole pages inside [begin, end) (offsets into the file); a no-op where
  /// the system refuses.
  void release(std::size_t begin, std::size_t end) const noexcept {
    if (data_ == nullptr || end > size_) return;
    const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    const std::size_t first = (begin + page - 1) / page * page;
    const std::size_t last = end / page * page;
    if (first < last) {
      static_cast<void>(
          ::madvise(const_cast<std::byte*>(data_) + first, last - first, MADV_DONTNEED));
    }
  }

 private:
  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
};

/// The path a write to `file` replaces: `file`, or the file at the end of the chain of
/// symbolic links at `file` (relative links resolved from the directory of the link).
/// Fails after 40 links, as the kernel does.
inline std::filesystem::path resolve_symlinks(std::filesystem::path file,
                                              const error_source& source, std::string_view which) {
  for (int links = 0;; ++links) {
    struct stat st {};
    if (::lstat(file.c_str(), &st) != 0 || !S_ISLNK(st.st_mode)) return file;
    if (links == 40) {
      fail_with(source, std::string(which) + " is a chain of more than 40 symbolic links",
                "a file path, or a symbolic link to one");
    }
    std::string target(256, '\0');
    while (true) {
      const ssize_t n = ::readlink(file.c_str(), target.data(), target.size());
      if (n < 0) return file;  // gone since the lstat: what follows reports it
      if (static_cast<std::size_t>(n) < target.size()) {
        target.resize(static_cast<std::size_t>(n));
        break;
      }
      target.resize(target.size() * 2);
    }
    const std::filesystem::path next(target);
    file = next.is_absolute() ? next : directory_of(file) / next;
  }
}

/// The process's umask: from /proc/self/status where Linux shows it (reading changes
/// nothing), else by setting it and restoring it.
inline mode_t current_umask() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.starts_with("Umask:")) {
      return static_cast<mode_t>(std::strtoul(line.c_str() + 6, nullptr, 8) & 0777);
    }
  }
  const mode_t mask = ::umask(022);
  ::umask(mask);
  return mask;
}

/// The tag of the next temporary name: random (a per-process seed and a counter through
/// splitmix64), or the test hook's. Names are created exclusively, so a repeat costs a retry.
inline std::uint64_t temporary_tag() {
  if (const auto& hook = test_hooks().tag) return hook();
  static const std::uint64_t seed = [] {
    auto s =
        static_cast<std::uint64_t>(std::chrono::system_clock::now().time_since_epoch().count()) ^
        (static_cast<std::uint64_t>(::getpid()) << 32);
    try {
      s ^= static_cast<std::uint64_t>(std::random_device{}()) << 16;
    } catch (...) {  // no entropy source: the clock and the pid still differ between runs
    }
    return s;
  }();
  static std::atomic<std::uint64_t> counter{0};
  std::uint64_t z = seed + 0x9e3779b97f4a7c15ULL * (counter.fetch_add(1) + 1);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/// `tag` as 16 hex digits.
inline std::string tag_string(std::uint64_t tag) {
  std::string out;
  for (int shift = 56; shift >= 0; shift -= 8) {
    append_hex(out, static_cast<unsigned char>((tag >> shift) & 0xff));
  }
  return out;
}

/// A temporary file next to the file it replaces, renamed over it by commit() and removed by
/// the destructor otherwise, so that a failed write never leaves a partial target behind
/// (the rules: see the file comment). Writes are buffered.
class temporary_file {
 public:
  /// `role` names the target in messages: empty when it is the subject itself (", which
  /// cannot be replaced ..."), or a name ("adapter_config.json": ", whose
  /// adapter_config.json cannot be replaced ..."). The result takes the mode and owner of
  /// `like` when it is a regular file, else of the target's.
  temporary_file(const std::filesystem::path& target, const error_source& source,
                 std::string role = {}, const std::filesystem::path& like = {})
      : source_(&source),
        which_(role.empty() ? ", which" : ", whose " + role),
        target_(resolve_symlinks(target, source, which_)) {
    struct stat st {};
    if (::lstat(target_.c_str(), &st) == 0) {
      if (S_ISDIR(st.st_mode)) {
        fail_with(*source_, which_ + " cannot be replaced by the written file (it is a directory)",
                  "a file path that can be created or replaced");
      }
      if (!S_ISREG(st.st_mode)) {
        fail_with(*source_, which_ + " is " + file_kind(st.st_mode) + ", not a regular file",
                  "a path to a regular file or to none (lowrank does not replace special files)");
      }
      keep(st);
      replaces_ = true;
    }
    if (!like.empty() && ::stat(like.c_str(), &st) == 0 && S_ISREG(st.st_mode)) keep(st);
    if (!owner_known_) mode_ = 0666 & ~current_umask();
    for (int attempt = 0;; ++attempt) {
      path_ = target_;
      path_ += "." + tag_string(temporary_tag()) + ".tmp";
      int error = 0;
      fd_ = open_file(path_, O_WRONLY | O_CREAT | O_EXCL | O_NOCTTY, 0600, error);
      if (error == 0) break;
      if (error != EEXIST || attempt == 100) {
        fail_with(*source_,
                  ", whose temporary file " + quote_path(path_) + " cannot be created (" +
                      error_text(error) + ")",
                  "a file path in an existing, writable directory");
      }
    }
    open_ = true;
    buffer_.reserve(buffer_size);
  }

  temporary_file(const temporary_file&) = delete;
  temporary_file& operator=(const temporary_file&) = delete;

  ~temporary_file() {
    static_cast<void>(fd_.close());
    if (open_) static_cast<void>(::unlink(path_.c_str()));
  }

  [[nodiscard]] const std::filesystem::path& path() const noexcept { return path_; }
  /// The file it replaces (symbolic links resolved).
  [[nodiscard]] const std::filesystem::path& target() const noexcept { return target_; }
  /// Whether the target existed when the temporary was made.
  [[nodiscard]] bool replaces() const noexcept { return replaces_; }

  void write(const char* data, std::size_t size) {
    if (buffer_.size() + size > buffer_size) flush();
    if (size >= buffer_size) {
      write_out(data, size);
    } else {
      buffer_.insert(buffer_.end(), data, data + size);
    }
  }

  /// Writes out the buffer, gives the file its final owner and mode, syncs it to the device
  /// and closes it: what is left is the rename.
  void prepare() {
    if (prepared_) return;
    flush();
    struct stat st {};
    if (owner_known_ && ::fstat(fd_.get(), &st) == 0 && (st.st_uid != uid_ || st.st_gid != gid_)) {
      static_cast<void>(::fchown(fd_.get(), uid_, gid_));  // where permitted; before fchmod
    }
    if (const int error =
            system_call("fchmod", path_, [&] { return ::fchmod(fd_.get(), mode_); })) {
      fail_temporary("cannot be given its mode", error);
    }
    if (const int error = system_call("fsync", path_, [&] { return ::fsync(fd_.get()); })) {
      fail_temporary("cannot be synced to the device", error);
    }
    if (const int error = fd_.close()) fail_temporary("cannot be closed", error);
    prepared_ = true;
  }

  /// prepare(), then the rename over the target and the sync of its directory.
  void commit() {
    prepare();
    if (const int error = system_call("rename", path_,
                                      [&] { return ::rename(path_.c_str(), target_.c_str()); })) {
      fail_with(*source_,
                which_ + " cannot be replaced by the written file (" + error_text(error) + ")",
                "a file path that can be created or replaced");
    }
    renamed();
    if (const int error = sync_directory(directory_of(target_))) {
      fail_with(*source_,
                which_ + " was replaced, but its directory cannot be synced to the device (" +
                    error_text(error) + ")",
                "a directory on a device that syncs");
    }
  }

  /// Records that the temporary was renamed by the caller: the destructor leaves it.
  void renamed() noexcept { open_ = false; }

 private:
  static constexpr std::size_t buffer_size = 1 << 16;

  void keep(const struct stat& st) {
    mode_ = st.st_mode & 07777;
    uid_ = st.st_uid;
    gid_ = st.st_gid;
    owner_known_ = true;
  }

  [[noreturn]] void fail_temporary(std::string_view what, int error) const {
    fail_with(*source_,
              ", whose temporary file " + quote_path(path_) + " " + std::string(what) + " (" +
                  error_text(error) + ")",
              "a file path on a writable device with free space");
  }

  void flush() {
    write_out(buffer_.data(), buffer_.size());
    buffer_.clear();
  }

  void write_out(const char* data, std::size_t size) {
    while (size > 0) {
      const std::size_t piece = std::min<std::size_t>(size, std::size_t{1} << 30);
      ssize_t n = 0;
      if (const int error = system_call("write", path_, [&] {
            return static_cast<int>(n = ::write(fd_.get(), data, piece));
          })) {
        fail_temporary("cannot be written", error);
      }
      if (n == 0) fail_temporary("cannot be written", ENOSPC);
      data += n;
      size -= static_cast<std::size_t>(n);
    }
  }

  const error_source* source_;
  std::string which_;  // ", which" or ", whose <role>"
  std::filesystem::path target_;
  std::filesystem::path path_;
  file_descriptor fd_;
  std::vector<char> buffer_;
  mode_t mode_ = 0600;
  uid_t uid_ = 0;
  gid_t gid_ = 0;
  bool owner_known_ = false;
  bool replaces_ = false;
  bool open_ = false;  // the temporary exists under path_
  bool prepared_ = false;
};

}  // namespace lowrank::io::detail
