#pragma once
/// @file
/// Replacing several files of one directory all-or-nothing (internal; the PEFT writer's two
/// files). POSIX, with Linux's renameat2(RENAME_EXCHANGE) where it is available.
///
/// update_directory(dir, files) takes one of three routes:
/// - `dir` does not exist: the files are written into a fresh sibling directory
///   ".<name>.<16 hex digits>.tmp", synced, and that directory is renamed to `dir` (missing
///   parent directories are created first, and removed again if the write fails);
/// - `dir` has no subdirectory and the files it replaces are regular: a fresh sibling
///   directory gets the new files, a hard link to every other entry of `dir` (so they are
///   kept, as the same files), `dir`'s mode and owner, is synced, and is exchanged with `dir`
///   in one renameat2(RENAME_EXCHANGE); the old directory is then removed;
/// - otherwise (`dir` has subdirectories, is a mount point, a target file is a symbolic link,
///   the parent is not writable, or the file system cannot exchange or link): in place. The
///   new files are written to temporaries in `dir` and synced, every file they replace gets
///   a hard link as a backup, then the temporaries are renamed over their targets in turn;
///   when a rename fails, the files already renamed are put back from their backups.
/// After any failure, `dir` is as it was: the same files with the same bytes and modes, no
/// temporary or backup left (only a failure to sync a directory once the files are in place
/// is reported after the update, and its message says so). The exchange (and the rename of a new
/// directory) is also atomic against a crash; the in-place route is not (a crash between its
/// renames can leave some files new and the others old, and the backups behind). A symbolic link at
/// `dir` is written through (the directory it names is updated); so are links at the target files
/// (in place). A target that is a directory or another special file is refused. Writers of
/// one directory at a time: concurrent writers are not coordinated.

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "lowrank/io/detail/files.hpp"

namespace lowrank::io::detail {

/// One file of a directory update: its name in the directory, and what writes its bytes.
struct directory_file {
  std::string name;
  std::function<void(temporary_file&)> write;
};

/// renameat2(RENAME_EXCHANGE) of two paths; ENOSYS where there is none.
inline int exchange_paths(const std::filesystem::path& a, const std::filesystem::path& b) {
#if defined(__linux__) && defined(RENAME_EXCHANGE)
  return ::renameat2(AT_FDCWD, a.c_str(), AT_FDCWD, b.c_str(), RENAME_EXCHANGE);
#else
  static_cast<void>(a);
  static_cast<void>(b);
  errno = ENOSYS;
  return -1;
#endif
}

/// A fresh directory ".<name>.<tag>.tmp" next to `dir`, mode 0700 (created exclusively):
/// its path, or an empty path and `error` set.
inline std::filesystem::path make_staging_directory(const std::filesystem::path& dir, int& error) {
  for (int attempt = 0; attempt < 100; ++attempt) {
    std::filesystem::path staging = directory_of(dir);
    staging /= "." + dir.filename().string() + "." + tag_string(temporary_tag()) + ".tmp";
    error = system_call("mkdir", staging, [&] { return ::mkdir(staging.c_str(), 0700); });
    if (error == 0) return staging;
    if (error != EEXIST) break;
  }
  return {};
}

/// Removes a staging directory and what is in it (ours alone: it was made mode 0700).
inline void remove_staging_directory(const std::filesystem::path& staging) {
  std::error_code ignored;
  if (!staging.empty()) std::filesystem::remove_all(staging, ignored);
}

/// The route of an existing directory: whether it can be exchanged (see the file comment).
inline bool exchangeable(const std::filesystem::path& dir, const struct stat& dir_status,
                         const std::vector<directory_file>& files) {
  struct stat parent {};
  if (::stat(directory_of(dir).c_str(), &parent) != 0 || parent.st_dev != dir_status.st_dev) {
    return false;  // a mount point
  }
  const std::string name = dir.filename().string();
  if (name.empty() || name == "." || name == "..") return false;
  std::error_code ec;
  for (std::filesystem::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::filesystem::file_status status = it->symlink_status(ec);
    if (ec || std::filesystem::is_directory(status)) return false;
    const std::string entry = it->path().filename().string();
    const bool target = std::any_of(files.begin(), files.end(),
                                    [&](const directory_file& f) { return f.name == entry; });
    if (target && !std::filesystem::is_regular_file(status)) return false;
  }
  return !ec;
}

/// Whether `name` is one of `files`.
inline bool is_update_target(const std::vector<directory_file>& files, const std::string& name) {
  return std::any_of(files.begin(), files.end(),
                     [&](const directory_file& f) { return f.name == name; });
}

/// Removes what is left of the old directory at `old` after the exchange: its copies of the
/// replaced files and the second links of the kept ones. An entry added to `dir` while the
/// new directory was made (it went to the old one) is moved back into `dir`; if that fails,
/// the old directory stays rather than lose it.
inline void tidy_old_directory(const std::filesystem::path& old, const std::filesystem::path& dir,
                               const std::vector<directory_file>& files,
                               const std::vector<std::string>& linked) {
  for (const directory_file& file : files) static_cast<void>(::unlink((old / file.name).c_str()));
  for (const std::string& entry : linked) static_cast<void>(::unlink((old / entry).c_str()));
  std::error_code ec;
  for (std::filesystem::directory_iterator it(old, ec), end; !ec && it != end; it.increment(ec)) {
#if defined(__linux__) && defined(RENAME_NOREPLACE)
    const std::filesystem::path back = dir / it->path().filename();
    static_cast<void>(
        ::renameat2(AT_FDCWD, it->path().c_str(), AT_FDCWD, back.c_str(), RENAME_NOREPLACE));
#else
    static_cast<void>(dir);
#endif
  }
  static_cast<void>(::rmdir(old.c_str()));
}

/// The exchange route: true when done, false when it is not available here (then nothing
/// has changed and nothing is left); throws when a new file cannot be written or synced.
inline bool update_by_exchange(const std::filesystem::path& dir, const struct stat& dir_status,
                               const std::vector<directory_file>& files,
                               const error_source& source) {
  int error = 0;
  const std::filesystem::path staging = make_staging_directory(dir, error);
  if (staging.empty()) return false;
  struct remover {
    std::filesystem::path path;
    ~remover() { remove_staging_directory(path); }
  } guard{staging};
  for (const directory_file& file : files) {
    temporary_file out(staging / file.name, source, file.name, dir / file.name);
    file.write(out);
    out.commit();
  }
  std::vector<std::string> linked;  // every other entry, kept as the same file
  std::error_code ec;
  for (std::filesystem::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::string entry = it->path().filename().string();
    if (is_update_target(files, entry)) continue;
    std::error_code kind;
    if (it->symlink_status(kind).type() == std::filesystem::file_type::directory) return false;
    const std::filesystem::path to = staging / entry;
    if (system_call("link", to, [&] {
          return ::linkat(AT_FDCWD, it->path().c_str(), AT_FDCWD, to.c_str(), 0);
        }) != 0) {
      return false;
    }
    linked.push_back(std::move(entry));
  }
  if (ec) return false;
  static_cast<void>(
      ::chown(staging.c_str(), dir_status.st_uid, dir_status.st_gid));  // if permitted
  if (system_call("fchmod", staging,
                  [&] { return ::chmod(staging.c_str(), dir_status.st_mode & 07777); }) != 0) {
    return false;
  }
  if (const int sync_error = sync_directory(staging)) {
    fail_with(source,
              ", whose new files cannot be synced to the device (" + error_text(sync_error) + ")",
              "a directory on a device that syncs");
  }
  if (system_call("exchange", dir, [&] { return exchange_paths(staging, dir); }) != 0) {
    return false;
  }
  // `dir` holds the new files now, and `staging` the old directory.
  guard.path.clear();
  const int sync_error = sync_directory(directory_of(dir));
  tidy_old_directory(staging, dir, files, linked);
  if (sync_error != 0) {
    fail_with(source,
              ", which was updated, but whose parent directory cannot be synced to the device (" +
                  error_text(sync_error) + ")",
              "a directory on a device that syncs");
  }
  return true;
}

/// The in-place route (see the file comment).
inline void update_in_place(const std::filesystem::path& dir,
                            const std::vector<directory_file>& files, const error_source& source) {
  std::vector<std::unique_ptr<temporary_file>> temporaries;
  for (const directory_file& file : files) {
    temporaries.push_back(std::make_unique<temporary_file>(dir / file.name, source, file.name));
    file.write(*temporaries.back());
    temporaries.back()->prepare();
  }
  // A second link to every file that is replaced: the way back when a later rename fails.
  struct backup_links {
    std::vector<std::filesystem::path> paths;
    ~backup_links() {
      for (const std::filesystem::path& path : paths) {
        if (!path.empty()) static_cast<void>(::unlink(path.c_str()));
      }
    }
  } backups{std::vector<std::filesystem::path>(files.size())};
  for (std::size_t k = 0; k < files.size(); ++k) {
    const temporary_file& t = *temporaries[k];
    for (int attempt = 0; t.replaces(); ++attempt) {
      std::filesystem::path backup = t.target();
      backup += "." + tag_string(temporary_tag()) + ".old";
      const int error =
          system_call("link", backup, [&] { return ::link(t.target().c_str(), backup.c_str()); });
      if (error == 0) {
        backups.paths[k] = std::move(backup);
        break;
      }
      if (error != EEXIST || attempt == 100) {
        fail_with(source,
                  ", whose " + files[k].name + " cannot be kept for a rollback (" +
                      error_text(error) + ")",
                  "a directory on a file system with hard links");
      }
    }
  }
  for (std::size_t k = 0; k < files.size(); ++k) {
    temporary_file& t = *temporaries[k];
    const int error = system_call("rename", t.path(),
                                  [&] { return ::rename(t.path().c_str(), t.target().c_str()); });
    if (error == 0) {
      t.renamed();
      continue;
    }
    std::string lost;  // put back what was renamed, newest first
    for (std::size_t j = k; j-- > 0;) {
      const std::filesystem::path& target = temporaries[j]->target();
      const bool restored = backups.paths[j].empty()
                                ? ::unlink(target.c_str()) == 0
                                : ::rename(backups.paths[j].c_str(), target.c_str()) == 0;
      if (restored) {
        backups.paths[j].clear();
      } else {
        lost += (lost.empty() ? "" : ", ") + files[j].name + " (" + error_text(errno) + ")";
      }
    }
    static_cast<void>(sync_directory(directory_of(t.target())));
    fail_with(source,
              ", whose " + files[k].name + " cannot be replaced by the written file (" +
                  error_text(error) + ")" +
                  (lost.empty() ? std::string()
                                : "; the files already replaced could not be put back: " + lost),
              "a directory whose files can be replaced");
  }
  std::vector<std::filesystem::path> changed;
  for (const auto& t : temporaries) changed.push_back(directory_of(t->target()));
  std::sort(changed.begin(), changed.end());
  changed.erase(std::unique(changed.begin(), changed.end()), changed.end());
  for (const std::filesystem::path& d : changed) {
    if (const int error = sync_directory(d)) {
      fail_with(source,
                ", which was updated, but whose directory " + quote_path(d) +
                    " cannot be synced to the device (" + error_text(error) + ")",
                "a directory on a device that syncs");
    }
  }
}

/// A new directory `dir` holding `files` (see the file comment).
inline void create_directory_with(const std::filesystem::path& dir,
                                  const std::vector<directory_file>& files,
                                  const error_source& source) {
  struct created_parents {  // removed again (when empty) unless the write succeeds
    std::vector<std::filesystem::path> paths;
    ~created_parents() {
      for (auto it = paths.rbegin(); it != paths.rend(); ++it)
        static_cast<void>(::rmdir(it->c_str()));
    }
  } created;
  std::vector<std::filesystem::path> missing;
  std::error_code ec;
  for (std::filesystem::path p = dir.parent_path(); !p.empty() && !std::filesystem::exists(p, ec);
       p = p.parent_path()) {
    missing.push_back(p);
    if (p == p.parent_path()) break;
  }
  for (auto it = missing.rbegin(); it != missing.rend(); ++it) {
    if (const int error = system_call("mkdir", *it, [&] { return ::mkdir(it->c_str(), 0777); })) {
      fail_with(source,
                ", whose parent directory " + quote_path(*it) + " cannot be created (" +
                    error_text(error) + ")",
                "a directory path that can be created");
    }
    created.paths.push_back(*it);
  }
  int error = 0;
  const std::filesystem::path staging = make_staging_directory(dir, error);
  if (staging.empty()) {
    fail_with(source, ", which cannot be created (" + error_text(error) + ")",
              "a directory path in a writable directory");
  }
  struct remover {
    std::filesystem::path path;
    ~remover() { remove_staging_directory(path); }
  } guard{staging};
  for (const directory_file& file : files) {
    temporary_file out(staging / file.name, source, file.name);
    file.write(out);
    out.commit();
  }
  const mode_t mode = 0777 & ~current_umask();
  if ((error = system_call("fchmod", staging, [&] { return ::chmod(staging.c_str(), mode); })) ||
      (error = sync_directory(staging)) || (error = system_call("rename", staging, [&] {
                                              return ::rename(staging.c_str(), dir.c_str());
                                            }))) {
    fail_with(source, ", which cannot be created (" + error_text(error) + ")",
              "a directory path in a writable directory");
  }
  guard.path.clear();
  created.paths.clear();
  if ((error = sync_directory(directory_of(dir)))) {
    fail_with(source,
              ", which was created, but whose parent directory cannot be synced to the device (" +
                  error_text(error) + ")",
              "a directory on a device that syncs");
  }
}

/// Writes `files` into the directory `dir` all-or-nothing, creating it if missing (the
/// routes and guarantees: see the file comment). Messages name `source`, e.g. ", whose
/// adapter_config.json cannot be replaced by the written file (...)".
inline void update_directory(const std::filesystem::path& dir_argument,
                             const std::vector<directory_file>& files, const error_source& source) {
  std::filesystem::path dir = dir_argument;
  while (!dir.has_filename() && dir.has_relative_path()) dir = dir.parent_path();  // "a/b/"
  dir = resolve_symlinks(dir, source, ", which");
  struct stat status {};
  if (::lstat(dir.c_str(), &status) != 0) {
    const int error = errno;
    if (error != ENOENT) {
      fail_with(source, ", which cannot be accessed (" + error_text(error) + ")",
                "a directory path");
    }
    create_directory_with(dir, files, source);
    return;
  }
  if (!S_ISDIR(status.st_mode)) {
    fail_with(source, ", which is not a directory and cannot be created", "a directory path");
  }
  for (const directory_file& file : files) {
    const std::string whose = ", whose " + file.name;
    const std::filesystem::path target = resolve_symlinks(dir / file.name, source, whose);
    struct stat target_status {};
    if (::lstat(target.c_str(), &target_status) == 0 && !S_ISREG(target_status.st_mode)) {
      fail_with(source, whose + " is " + file_kind(target_status.st_mode) + ", not a regular file",
                "a directory whose " + file.name + " is a regular file or absent");
    }
  }
  if (exchangeable(dir, status, files) && update_by_exchange(dir, status, files, source)) return;
  update_in_place(dir, files, source);
}

}  // namespace lowrank::io::detail
