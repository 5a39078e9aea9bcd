#pragma once
// Helpers shared by the tests and the fuzzers of lowrank/io (npy, safetensors): bytes from
// text, values and files; for the tests, matrix comparison, the message of an expected
// lowrank::invalid_argument and a scratch directory per test; for the fuzzers, their checks
// and their standalone driver (arguments, seeds, the mutation loop).
//
// The fuzzers build without GoogleTest (see the libFuzzer command lines in them), so the
// GoogleTest helpers are defined only when <gtest/gtest.h> was included first.

#include <fcntl.h>
#include <sys/mount.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <future>
#include <iterator>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "lowrank/core/error.hpp"

namespace io_test {

inline std::vector<std::byte> to_bytes(std::string_view text) {
  std::vector<std::byte> out(text.size());
  std::memcpy(out.data(), text.data(), text.size());
  return out;
}

template <class T>
std::vector<std::byte> to_bytes(const std::vector<T>& values) {
  std::vector<std::byte> out(values.size() * sizeof(T));
  std::memcpy(out.data(), values.data(), out.size());
  return out;
}

inline std::vector<std::byte> read_bytes(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  std::vector<char> chars((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return to_bytes(std::string_view(chars.data(), chars.size()));
}

inline std::vector<std::filesystem::path> directory_entries(
    const std::filesystem::path& directory) {
  std::vector<std::filesystem::path> out;
  for (const auto& entry : std::filesystem::directory_iterator(directory)) {
    out.push_back(entry.path());
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Fuzzers.

// Aborts with "<program>: <what>" unless `ok`.
inline void require(std::string_view program, bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "%.*s: %s\n", static_cast<int>(program.size()), program.data(), what);
    std::abort();
  }
}

inline bool starts_with(const char* message, std::string_view prefix) {
  return std::string_view(message).starts_with(prefix);
}

using fuzz_buffer = std::vector<std::uint8_t>;

// The standalone driver's settings: --iterations=N (20000 by default), --seed=S (1) and seed
// files, added to the built-in seeds.
struct fuzz_options {
  std::size_t iterations = 20000;
  std::uint64_t seed = 1;
  std::vector<fuzz_buffer> seeds;
};

// Reads the arguments into `options`; false, after a message, when a seed file cannot be
// read.
inline bool parse_fuzz_arguments(std::string_view program, int argc, char** argv,
                                 fuzz_options& options) {
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg.starts_with("--iterations=")) {
      options.iterations = std::strtoull(argv[i] + 13, nullptr, 10);
    } else if (arg.starts_with("--seed=")) {
      options.seed = std::strtoull(argv[i] + 7, nullptr, 10);
    } else {
      std::ifstream in(argv[i], std::ios::binary);
      if (!in) {
        std::fprintf(stderr, "%.*s: cannot read seed file %s\n", static_cast<int>(program.size()),
                     program.data(), argv[i]);
        return false;
      }
      options.seeds.emplace_back(std::istreambuf_iterator<char>(in),
                                 std::istreambuf_iterator<char>());
    }
  }
  return true;
}

// Runs every seed, then `options.iterations` mutants: each restarts from a seed every 8
// iterations, otherwise stacks 1 to 4 `mutate(buffer, rng)` on the previous mutant, then
// `finish(buffer, rng)`, and is cut to 4096 bytes before `run(buffer)`.
template <class Run, class Mutate, class Finish>
void run_fuzz_loop(const fuzz_options& options, Run run, Mutate mutate, Finish finish) {
  for (const fuzz_buffer& s : options.seeds) run(s);
  std::mt19937_64 rng(options.seed);
  fuzz_buffer current;
  for (std::size_t i = 0; i < options.iterations; ++i) {
    // Restart from a seed often; otherwise stack mutations on the previous mutant.
    if (i % 8 == 0) current = options.seeds[rng() % options.seeds.size()];
    for (std::size_t n = 1 + rng() % 4; n > 0; --n) mutate(current, rng);
    finish(current, rng);
    if (current.size() > 4096) current.resize(4096);
    run(current);
  }
}

}  // namespace io_test

#ifdef ADD_FAILURE  // <gtest/gtest.h> was included

namespace io_test {

inline void write_bytes(const std::filesystem::path& file, std::span<const std::byte> bytes) {
  std::ofstream out(file, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << file;
}

// Eigen's == asserts equal sizes; compare the sizes first so a failure is reported, not fatal.
template <class A, class B>
::testing::AssertionResult same_matrix(const A& a, const B& b) {
  if (a.rows() != b.rows() || a.cols() != b.cols()) {
    return ::testing::AssertionFailure()
           << a.rows() << " x " << a.cols() << " vs " << b.rows() << " x " << b.cols();
  }
  if (a == b) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "\n" << a << "\nvs\n" << b;
}

// The message of the lowrank::invalid_argument that f throws.
template <class F>
std::string error_message(F&& f) {
  try {
    f();
  } catch (const lowrank::invalid_argument& e) {
    return e.what();
  }
  ADD_FAILURE() << "no lowrank::invalid_argument was thrown";
  return {};
}

// The message of the lowrank::invalid_argument that f throws, with f run on another thread
// and given `limit` to return (a reader must refuse a FIFO or a device at once, not block on
// it or read it until memory runs out). When it does not return in time, the test fails,
// and a reader blocked on the FIFO `fifo` is released by opening it for writing.
template <class F>
std::string prompt_error_message(F&& f, const std::filesystem::path& fifo = {},
                                 std::chrono::seconds limit = std::chrono::seconds(10)) {
  std::promise<std::string> promise;
  std::future<std::string> result = promise.get_future();
  std::thread thread([&f, promise = std::move(promise)]() mutable {
    try {
      f();
      promise.set_value("(no exception)");
    } catch (const lowrank::invalid_argument& e) {
      promise.set_value(e.what());
    } catch (const std::exception& e) {
      promise.set_value(std::string("(another exception: ") + e.what() + ")");
    }
  });
  if (result.wait_for(limit) == std::future_status::ready) {
    thread.join();
    return result.get();
  }
  ADD_FAILURE() << "the call did not return within " << limit.count() << " s";
  if (!fifo.empty()) {
    const int fd = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK);
    if (fd >= 0) ::close(fd);
  }
  if (result.wait_for(std::chrono::seconds(5)) == std::future_status::ready) {
    thread.join();
  } else {
    thread.detach();  // still reading: nothing more can be done
  }
  return {};
}

// A tmpfs mounted for the duration of a scope (root or CAP_SYS_ADMIN only).
class tmpfs_mount {
 public:
  tmpfs_mount(const std::filesystem::path& at, const char* options) : at_(at) {
    std::filesystem::create_directories(at);
    mounted_ = ::mount("tmpfs", at.c_str(), "tmpfs", 0, options) == 0;
  }
  tmpfs_mount(const tmpfs_mount&) = delete;
  tmpfs_mount& operator=(const tmpfs_mount&) = delete;
  ~tmpfs_mount() {
    if (mounted_) ::umount2(at_.c_str(), MNT_DETACH);
  }
  [[nodiscard]] bool mounted() const { return mounted_; }

 private:
  std::filesystem::path at_;
  bool mounted_ = false;
};

// A fresh directory per test, "<prefix><test name>_<random>" in the temporary directory
// ('/' in the name, as in typed and parameterized tests, becomes '_'), removed afterwards.
class scratch_directory_test : public ::testing::Test {
 protected:
  explicit scratch_directory_test(std::string prefix) : prefix_(std::move(prefix)) {}

  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::random_device device;
    std::string name = info->name();
    for (char& c : name) {
      if (c == '/') c = '_';
    }
    dir_ =
        std::filesystem::temp_directory_path() / (prefix_ + name + "_" + std::to_string(device()));
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }

  std::string prefix_;
  std::filesystem::path dir_;
};

}  // namespace io_test

#endif  // ADD_FAILURE
