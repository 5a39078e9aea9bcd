// Tests of the file handling that lowrank/io's writers share (lowrank/io/detail/files.hpp),
// through write_npy and write_safetensors: a write keeps the mode of the file it replaces and
// the symbolic links to it, never replaces a special file, never opens an existing file at a
// temporary name, syncs the file before the rename and the directory after, and a failure at
// any step (or a full disk) leaves the previous file as it was, with no temporary behind.

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <Eigen/Core>
#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "io_test_support.hpp"
#include "lowrank/io/detail/files.hpp"
#include "lowrank/io/npy.hpp"
#include "lowrank/io/safetensors.hpp"

namespace files_tests {
namespace {

namespace fs = std::filesystem;
using io_test::directory_entries;
using io_test::error_message;
using io_test::read_bytes;
using io_test::to_bytes;
using io_test::write_bytes;

// A writer under test: writes `rows` x 2 values equal to `value` to `file`.
struct writer {
  const char* name;
  void (*write)(const fs::path& file, double value, Eigen::Index rows);
};

const writer writers[] = {
    {"write_npy",
     [](const fs::path& file, double value, Eigen::Index rows) {
       lowrank::io::write_npy(file, Eigen::MatrixXd::Constant(rows, 2, value));
     }},
    {"write_safetensors",
     [](const fs::path& file, double value, Eigen::Index rows) {
       lowrank::io::write_safetensors(
           file, {{.name = "w", .values = Eigen::MatrixXd::Constant(rows, 2, value)}});
     }},
};

mode_t mode_of(const fs::path& file) {
  struct stat st {};
  EXPECT_EQ(::stat(file.c_str(), &st), 0) << file;
  return st.st_mode & 07777;
}

std::vector<fs::path> sorted_entries(const fs::path& dir) {
  std::vector<fs::path> out = directory_entries(dir);
  std::sort(out.begin(), out.end());
  return out;
}

// The umask for the duration of a scope.
class scoped_umask {
 public:
  explicit scoped_umask(mode_t mask) : previous_(::umask(mask)) {}
  scoped_umask(const scoped_umask&) = delete;
  scoped_umask& operator=(const scoped_umask&) = delete;
  ~scoped_umask() { ::umask(previous_); }

 private:
  mode_t previous_;
};

class files_test : public io_test::scratch_directory_test {
 protected:
  files_test() : scratch_directory_test("lowrank_files_") {}
  void TearDown() override {
    lowrank::io::detail::test_hooks() = {};
    scratch_directory_test::TearDown();
  }

  // The bytes `w` writes for `value` and `rows`.
  std::vector<std::byte> expected_bytes(const writer& w, double value, Eigen::Index rows = 3) {
    const fs::path scratch = dir_ / "expected.scratch";
    w.write(scratch, value, rows);
    std::vector<std::byte> out = read_bytes(scratch);
    fs::remove(scratch);
    return out;
  }
};

TEST_F(files_test, keeps_the_mode_of_the_file_it_replaces) {
  for (const writer& w : writers) {
    SCOPED_TRACE(w.name);
    const fs::path file = dir_ / w.name;
    w.write(file, 1, 3);
    for (const mode_t mode : {0600, 0640, 0755, 0444}) {
      ASSERT_EQ(::chmod(file.c_str(), mode), 0);
      w.write(file, 2, 3);
      EXPECT_EQ(mode_of(file), mode);
    }
  }
}

TEST_F(files_test, gives_a_new_file_the_mode_of_the_umask) {
  for (const writer& w : writers) {
    SCOPED_TRACE(w.name);
    for (const mode_t mask : {022, 027, 077, 0}) {
      const scoped_umask umask(mask);
      const fs::path file = dir_ / (std::string(w.name) + std::to_string(mask));
      w.write(file, 1, 3);
      EXPECT_EQ(mode_of(file), 0666 & ~mask);
    }
  }
}

// A symbolic link at the target is written through: the file the links end at is replaced
// (keeping its mode), and the links stay links.
TEST_F(files_test, writes_through_symbolic_links) {
  for (const writer& w : writers) {
    SCOPED_TRACE(w.name);
    const fs::path dir = dir_ / w.name;
    fs::create_directories(dir / "real");
    w.write(dir / "real" / "f", 1, 3);
    ASSERT_EQ(::chmod((dir / "real" / "f").c_str(), 0600), 0);
    fs::create_symlink("real/f", dir / "link");
    fs::create_symlink("link", dir / "chain");
    w.write(dir / "chain", 2, 3);
    EXPECT_TRUE(fs::is_symlink(dir / "link"));
    EXPECT_TRUE(fs::is_symlink(dir / "chain"));
    EXPECT_EQ(fs::read_symlink(dir / "chain"), "link");
    EXPECT_EQ(read_bytes(dir / "real" / "f"), expected_bytes(w, 2));
    EXPECT_EQ(mode_of(dir / "real" / "f"), 0600U);
    EXPECT_EQ(sorted_entries(dir / "real"), std::vector<fs::path>{dir / "real" / "f"});

    // A dangling link creates the file it names.
    fs::create_symlink("new", dir / "dangling");
    w.write(dir / "dangling", 3, 3);
    EXPECT_TRUE(fs::is_symlink(dir / "dangling"));
    EXPECT_EQ(read_bytes(dir / "new"), expected_bytes(w, 3));

    // A loop is an error, and nothing changes.
    fs::create_symlink("b", dir / "a");
    fs::create_symlink("a", dir / "b");
    const std::vector<fs::path> before = sorted_entries(dir);
    const std::string message = error_message([&] { w.write(dir / "a", 4, 3); });
    EXPECT_NE(message.find("\"" + (dir / "a").string() +
                           "\", which is a chain of more than 40 symbolic links"),
              std::string::npos)
        << message;
    EXPECT_EQ(sorted_entries(dir), before);
  }
}

TEST_F(files_test, never_replaces_a_special_file) {
  for (const writer& w : writers) {
    SCOPED_TRACE(w.name);
    const fs::path fifo = dir_ / (std::string(w.name) + ".fifo");
    ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
    const std::string message = error_message([&] { w.write(fifo, 1, 3); });
    EXPECT_NE(message.find("\"" + fifo.string() + "\", which is a FIFO, not a regular file"),
              std::string::npos)
        << message;
    EXPECT_TRUE(fs::is_fifo(fifo));
    EXPECT_EQ(sorted_entries(dir_), std::vector<fs::path>{fifo});
    fs::remove(fifo);
  }
}

// The temporary is created exclusively: a file, or a symbolic link, at the name drawn for
// it is left alone and another name is drawn.
TEST_F(files_test, never_opens_an_existing_file_at_a_temporary_name) {
  for (const writer& w : writers) {
    SCOPED_TRACE(w.name);
    const fs::path dir = dir_ / w.name;
    fs::create_directories(dir);
    const fs::path file = dir / "f";
    const fs::path taken = dir / "f.0000000000000001.tmp";
    const fs::path link = dir / "f.0000000000000002.tmp";
    write_bytes(taken, to_bytes("someone else's"));
    write_bytes(dir / "victim", to_bytes("victim"));
    fs::create_symlink("victim", link);
    lowrank::io::detail::test_hooks().tag = [n = std::uint64_t{0}]() mutable { return ++n; };
    w.write(file, 1, 3);
    lowrank::io::detail::test_hooks() = {};
    EXPECT_EQ(read_bytes(file), expected_bytes(w, 1));
    EXPECT_EQ(read_bytes(taken), to_bytes("someone else's"));
    EXPECT_EQ(read_bytes(dir / "victim"), to_bytes("victim"));
    EXPECT_TRUE(fs::is_symlink(link));
    EXPECT_EQ(sorted_entries(dir), (std::vector<fs::path>{file, taken, link, dir / "victim"}));
  }
}

// The data is written to a temporary of mode 0600, synced, renamed, then the directory is
// synced.
TEST_F(files_test, syncs_the_file_before_the_rename_and_the_directory_after) {
  for (const writer& w : writers) {
    SCOPED_TRACE(w.name);
    const fs::path file = dir_ / w.name;
    std::vector<std::pair<std::string, fs::path>> calls;
    std::vector<mode_t> modes_written;
    lowrank::io::detail::test_hooks().fail = [&](std::string_view call, const fs::path& path) {
      calls.emplace_back(call, path);
      if (call == "write") modes_written.push_back(mode_of(path));
      return 0;
    };
    w.write(file, 1, 3);
    lowrank::io::detail::test_hooks() = {};
    ASSERT_FALSE(calls.empty());
    const fs::path temporary = calls.front().second;
    EXPECT_EQ(calls.front().first, "open");
    EXPECT_EQ(temporary.parent_path(), dir_);
    EXPECT_TRUE(temporary.filename().string().starts_with(std::string(w.name) + "."));
    const auto at = [&](std::string_view call, const fs::path& path) {
      return std::find(calls.begin(), calls.end(), std::pair(std::string(call), path)) -
             calls.begin();
    };
    const std::ptrdiff_t end = static_cast<std::ptrdiff_t>(calls.size());
    EXPECT_LT(at("write", temporary), at("fsync", temporary));
    EXPECT_LT(at("fsync", temporary), at("rename", temporary));
    EXPECT_LT(at("rename", temporary), at("fsync", dir_));
    EXPECT_LT(at("fsync", dir_), end);
    EXPECT_FALSE(modes_written.empty());
    for (const mode_t mode : modes_written) EXPECT_EQ(mode, 0600U);
  }
}

// A failure injected at each step in turn: before the rename, the previous file is kept as
// it was (bytes and mode) and no temporary is left; after it (the sync of the directory),
// the message says that the file was replaced.
TEST_F(files_test, a_failure_at_any_step_keeps_the_previous_file) {
  for (const writer& w : writers) {
    SCOPED_TRACE(w.name);
    const fs::path dir = dir_ / w.name;
    fs::create_directories(dir);
    const fs::path file = dir / "f";
    std::size_t steps = 0;
    lowrank::io::detail::test_hooks().fail = [&](std::string_view, const fs::path&) {
      ++steps;
      return 0;
    };
    w.write(file, 2, 10000);  // 160 kB: written in pieces
    lowrank::io::detail::test_hooks() = {};
    ASSERT_GE(steps, 7U);
    w.write(file, 1, 3);
    const std::vector<std::byte> before = read_bytes(file);
    ASSERT_EQ(::chmod(file.c_str(), 0640), 0);
    for (std::size_t k = 0; k < steps; ++k) {
      SCOPED_TRACE("failing step " + std::to_string(k));
      std::string call;
      lowrank::io::detail::test_hooks().fail = [&, n = std::size_t{0}](std::string_view c,
                                                                       const fs::path&) mutable {
        if (n++ != k) return 0;
        call = c;
        return EIO;
      };
      const std::string message = error_message([&] { w.write(file, 2, 10000); });
      lowrank::io::detail::test_hooks() = {};
      EXPECT_NE(message.find("(Input/output error)"), std::string::npos) << message;
      EXPECT_EQ(sorted_entries(dir), std::vector<fs::path>{file});
      if (message.find("was replaced, but its directory cannot be synced") != std::string::npos) {
        EXPECT_TRUE(call == "open" || call == "fsync") << call;
        EXPECT_EQ(read_bytes(file), expected_bytes(w, 2, 10000));
        w.write(file, 1, 3);
      } else {
        EXPECT_EQ(read_bytes(file), before);
      }
      EXPECT_EQ(mode_of(file), 0640U);
    }
  }
}

TEST_F(files_test, a_full_disk_keeps_the_previous_file) {
  const io_test::tmpfs_mount disk(dir_ / "disk", "size=64k");
  if (!disk.mounted()) GTEST_SKIP() << "cannot mount a tmpfs here (not root?)";
  for (const writer& w : writers) {
    SCOPED_TRACE(w.name);
    const fs::path file = dir_ / "disk" / w.name;
    w.write(file, 1, 3);
    const std::vector<std::byte> before = read_bytes(file);
    const std::string message = error_message([&] { w.write(file, 2, 10000); });  // 160 kB
    EXPECT_NE(message.find("(No space left on device)"), std::string::npos) << message;
    EXPECT_EQ(read_bytes(file), before);
    EXPECT_EQ(sorted_entries(dir_ / "disk"), std::vector<fs::path>{file});
    fs::remove(file);
  }
}

}  // namespace
}  // namespace files_tests
