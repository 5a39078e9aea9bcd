// lowrank-compare: which decomposition should I use for this matrix?
//
// Runs the exact SVD, its peers and lowrank's randomized SVDs on one matrix and
// prints a table, one row per method: time, relative Frobenius error, error
// over the Eckart-Young optimum, relative error of s_1 and s_k, and speed-up
// over the exact SVD (Eigen's BDCSVD). The input is a generated matrix with a
// power-law spectrum like a trained weight's (the default), or a 2-D .npy file.
//
//   lowrank-compare                          # 2048 x 2048 float, rank 64
//   lowrank-compare --npy W.npy --rank 128 --json result.json
//   lowrank-compare --peers peers.json      # merge tools/compare_peers.py's rows (Python peers)

#include <Eigen/SVD>
#include <array>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <limits>
#include <lowrank/io/detail/files.hpp>
#include <lowrank/io/npy.hpp>
#include <lowrank/lowrank.hpp>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <dlfcn.h>
#endif

#if LOWRANK_COMPARE_HAVE_SPECTRA
#include <Spectra/contrib/PartialSVDSolver.h>
#endif

#include "common.hpp"

namespace {

using lowrank::index_t;
namespace fs = std::filesystem;

constexpr const char* usage = R"(usage: lowrank-compare [options]

Compares decompositions of one matrix: time, relative Frobenius error, error
over the Eckart-Young optimum, relative error of s_1 and s_k, speed-up over the
exact SVD.

input (default: a generated N x N float32 matrix, U diag(s) V^T with Haar
random U, V and the power law s_i = i^(-1/2) of a trained weight's spectrum):
  --npy FILE        a 2-D float32 or float64 .npy file (C or Fortran order)
  --size N          size of the generated matrix, 2 to 32768 (default 2048)
options:
  --backend B       cpu (default) or cuda: where the methods run (cuda, when
                    built with the CUDA backend, compares against cuSOLVER's
                    gesvd and randomized gesvdr)
  --rank K          the rank to compare at (default 64)
  --tolerance T     relative error for the fixed-accuracy row (default: the
                    optimal rank-K error times 1.02)
  --threads N       lowrank's threads (default: all cores)
  --repeat R        time each method up to R times, keep the fastest; methods
                    slower than 1 s run once (default 3)
  --skip-exact      skip Eigen's BDCSVD (slow on large inputs); the optimum
                    then comes from LAPACK's gesdd when linked
  --json FILE       also write the results as JSON (checked before the run;
                    written to a temporary and renamed over FILE at the end)
  --peers FILE      merge the rows of tools/compare_peers.py (scikit-learn's
                    randomized_svd, fbpca, torch.svd_lowrank, measured on the
                    same matrix, rank and machine) into the table and the JSON;
                    refused unless FILE was measured on this input at this rank
  --save-npy FILE   write the input matrix to FILE as .npy and exit, for
                    tools/compare_peers.py (scripts/compare-peers does the
                    three steps: --save-npy, the peers, --peers)
  --help            this text
)";

struct options {
  std::optional<fs::path> npy;
  index_t size = 2048;
  index_t rank = 64;
  double tolerance = 0;
  int threads = lowrank::context<lowrank::cpu>::default_threads();
  int repeat = 3;
  bool skip_exact = false;
  bool cuda = false;
  std::optional<fs::path> json;
  std::optional<fs::path> peers;
  std::optional<fs::path> save_npy;
};

/// A mistake in the command line: main prints it with the usage and exits
/// with status 2 (after the stack unwound, so no temporary file stays).
struct usage_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

[[noreturn]] void fail_usage(const std::string& message) { throw usage_error(message); }

/// An integer option in [low, high]; out-of-range text (which strtoll clamps)
/// is refused like any other value outside the interval.
long long parse_integer(const std::string& flag, const char* text, long long low, long long high) {
  errno = 0;
  char* end = nullptr;
  const long long value = std::strtoll(text, &end, 10);
  if (end == text || *end != '\0' || errno == ERANGE || value < low || value > high) {
    fail_usage(flag + " expects an integer in [" + std::to_string(low) + ", " +
               std::to_string(high) + "], not '" + text + "'");
  }
  return value;
}

options parse(int argc, char** argv) {
  options o;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) fail_usage(flag + " needs a value");
      return argv[++i];
    };
    if (flag == "--help" || flag == "-h") {
      std::fputs(usage, stdout);
      std::exit(0);
    } else if (flag == "--npy") {
      o.npy = value();
    } else if (flag == "--size") {
      // The generated input holds four n x n matrices: 32768 takes 16 GiB.
      o.size = parse_integer(flag, value(), 2, 32768);
    } else if (flag == "--rank") {
      o.rank = parse_integer(flag, value(), 1, index_t{1} << 31);
    } else if (flag == "--tolerance") {
      const char* text = value();
      char* end = nullptr;
      o.tolerance = std::strtod(text, &end);
      if (end == text || *end != '\0' || !(o.tolerance > 0 && o.tolerance < 1)) {
        fail_usage("--tolerance expects a number in (0, 1), not '" + std::string(text) + "'");
      }
    } else if (flag == "--threads") {
      o.threads = static_cast<int>(parse_integer(flag, value(), 1, 4096));
    } else if (flag == "--repeat") {
      o.repeat = static_cast<int>(parse_integer(flag, value(), 1, 1000000));
    } else if (flag == "--backend") {
      const std::string backend = value();
      if (backend == "cuda") {
#if LOWRANK_COMPARE_CUDA
        o.cuda = true;
#else
        fail_usage("this lowrank-compare was built without the CUDA backend");
#endif
      } else if (backend != "cpu") {
        fail_usage("--backend expects cpu or cuda, not '" + backend + "'");
      }
    } else if (flag == "--skip-exact") {
      o.skip_exact = true;
    } else if (flag == "--json") {
      o.json = value();
    } else if (flag == "--peers") {
      o.peers = value();
    } else if (flag == "--save-npy") {
      o.save_npy = value();
    } else {
      fail_usage("unknown option '" + flag + "'");
    }
  }
  if (o.save_npy && (o.json || o.peers)) {
    fail_usage("--save-npy writes the input and exits; it does not combine with --json or --peers");
  }
  if (o.peers && o.cuda) {
    fail_usage("--peers merges rows measured on the CPU; it needs --backend cpu");
  }
  return o;
}

/// OpenBLAS's thread count, when the BLAS is OpenBLAS (found at run time).
/// Each method runs in its best configuration: peers on a multi-threaded
/// BLAS, lowrank on its own threads over a single-threaded BLAS.
class blas_threads {
 public:
  blas_threads() {
#if defined(__unix__) || defined(__APPLE__)
    set_ = reinterpret_cast<void (*)(int)>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
    get_ = reinterpret_cast<int (*)()>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
#endif
    initial_ = get_ != nullptr ? get_() : 1;
  }
  [[nodiscard]] bool openblas() const { return set_ != nullptr && get_ != nullptr; }
  [[nodiscard]] int initial() const { return initial_; }
  void set(int n) const {
    if (set_ != nullptr) set_(n);
  }

 private:
  void (*set_)(int) = nullptr;
  int (*get_)() = nullptr;
  int initial_ = 1;
};

struct result_row {
  std::string method;
  std::optional<std::string> error;     ///< why the method failed (its other fields are unset)
  std::optional<std::string> settings;  ///< a --peers row's call (and that it is a peer)
  index_t rank = 0;
  double seconds = 0;
  double relative_error = 0;
  std::optional<double> over_optimum;
  std::optional<double> s1_error;
  std::optional<double> sk_error;
  std::optional<double> speedup;
};

using lowrank_compare::column;
using lowrank_compare::dense;
using lowrank_compare::timed;

/// CRC-32 (IEEE, as zlib.crc32) of the entries in column-major order as little-endian
/// bytes: the name of the matrix that tools/compare_peers.py measured its rows on (it
/// computes the same on the .npy, whatever the file's order).
template <class T>
std::uint32_t checksum(const dense<T>& a) {
  static const auto table = [] {
    std::array<std::uint32_t, 256> t{};
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int b = 0; b < 8; ++b) c = (c & 1u) != 0 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  using bits = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;
  std::uint32_t crc = 0xFFFFFFFFu;
  for (index_t i = 0; i < a.size(); ++i) {
    bits b = std::bit_cast<bits>(a.data()[i]);
    for (std::size_t byte = 0; byte < sizeof(T); ++byte, b >>= 8) {
      crc = table[(crc ^ static_cast<std::uint32_t>(b)) & 0xFFu] ^ (crc >> 8);
    }
  }
  return ~crc;
}

std::string hex(std::uint32_t value) {
  char text[16];
  std::snprintf(text, sizeof text, "0x%08x", static_cast<unsigned>(value));
  return text;
}

/// One row of tools/compare_peers.py: what lowrank-compare needs to compute
/// every column the way it does for its own rows.
struct peer_row {
  std::string method;
  std::string settings;
  std::optional<std::string> error;
  index_t rank = 0;
  double seconds = 0;
  double residual_norm = 0;  ///< ||A - U diag(s) V^T||_F
  double s1 = 0;             ///< the largest and the k-th computed singular values
  double sk = 0;
};

/// A --peers file: the matrix and rank its rows were measured on, and how.
struct peers_file {
  fs::path file;
  index_t rows = 0;
  index_t cols = 0;
  std::string dtype;
  std::uint32_t crc32 = 0;
  index_t rank = 0;
  int threads = 0;
  std::string date;
  nlohmann::json versions;
  std::vector<peer_row> methods;
};

/// Reads and checks a --peers file's form; whether it was measured on this
/// input is checked once the input is read (check_peers). Every problem is a
/// usage_error naming the flag, the file, the field and what was expected.
peers_file read_peers(const fs::path& file) {
  const std::string name = "--peers " + file.string();
  auto bad = [&](const std::string& where, const std::string& what) {
    fail_usage(name + ": " + where + what + " (tools/compare_peers.py writes this file)");
  };
  std::ifstream in(file);
  if (!in) bad("", std::string("cannot be opened (") + std::strerror(errno) + ")");
  nlohmann::json document;
  try {
    document = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    // Without the bytes it last read, which may be binary.
    const std::string what = e.what();
    bad("", "is not valid JSON: " + what.substr(0, what.find("; last read")));
  }
  auto member = [&](const nlohmann::json& object, const std::string& where,
                    const char* key) -> const nlohmann::json& {
    if (!object.is_object()) bad(where, " should be a JSON object");
    const auto it = object.find(key);
    if (it == object.end()) bad(where, std::string(" has no \"") + key + "\"");
    return *it;
  };
  auto integer = [&](const nlohmann::json& object, const std::string& where, const char* key,
                     long long low, long long high) {
    const auto& v = member(object, where, key);
    bool ok = v.is_number_integer();
    long long value = 0;
    if (v.is_number_unsigned()) {
      // Above high (>= 0) before the cast could wrap it.
      ok = v.get<std::uint64_t>() <= static_cast<std::uint64_t>(high);
      if (ok) value = static_cast<long long>(v.get<std::uint64_t>());
    } else if (ok) {
      value = v.get<long long>();
    }
    if (!ok || value < low || value > high) {
      bad(where, std::string(".") + key + " should be an integer in [" + std::to_string(low) +
                     ", " + std::to_string(high) + "], not " + v.dump());
    }
    return value;
  };
  auto number = [&](const nlohmann::json& object, const std::string& where, const char* key) {
    const auto& v = member(object, where, key);
    if (!v.is_number() || !std::isfinite(v.get<double>()) || v.get<double>() < 0) {
      bad(where, std::string(".") + key + " should be a finite number >= 0, not " + v.dump());
    }
    return v.get<double>();
  };
  auto text = [&](const nlohmann::json& object, const std::string& where, const char* key) {
    const auto& v = member(object, where, key);
    if (!v.is_string()) bad(where, std::string(".") + key + " should be a string, not " + v.dump());
    return v.get<std::string>();
  };

  peers_file p;
  p.file = file;
  const auto& input = member(document, "", "input");
  p.rows = integer(input, "input", "rows", 1, std::numeric_limits<index_t>::max());
  p.cols = integer(input, "input", "cols", 1, std::numeric_limits<index_t>::max());
  p.dtype = text(input, "input", "dtype");
  if (p.dtype != "float32" && p.dtype != "float64") {
    bad("input", ".dtype should be \"float32\" or \"float64\", not \"" + p.dtype + "\"");
  }
  p.crc32 = static_cast<std::uint32_t>(integer(input, "input", "crc32", 0, 0xFFFFFFFFll));
  p.rank = integer(document, "", "rank", 1, std::numeric_limits<index_t>::max());
  p.threads = static_cast<int>(integer(document, "", "threads", 1, 4096));
  if (const auto it = document.find("date"); it != document.end() && it->is_string()) {
    p.date = it->get<std::string>();
  }
  if (const auto it = document.find("versions"); it != document.end() && it->is_object()) {
    p.versions = *it;
  }
  const auto& methods = member(document, "", "methods");
  if (!methods.is_array() || methods.empty()) bad("", "\"methods\" should be a non-empty array");
  for (std::size_t i = 0; i < methods.size(); ++i) {
    const auto& m = methods[i];
    const std::string where = "methods[" + std::to_string(i) + "]";
    peer_row row;
    row.method = text(m, where, "method");
    if (const auto it = m.find("settings"); it != m.end() && it->is_string()) {
      row.settings = it->get<std::string>();
    }
    if (m.contains("error")) {
      row.error = text(m, where, "error");
    } else {
      row.rank = integer(m, where, "rank", 1, std::numeric_limits<index_t>::max());
      row.seconds = number(m, where, "seconds");
      row.residual_norm = number(m, where, "residual_norm");
      row.s1 = number(m, where, "s1");
      row.sk = number(m, where, "sk");
    }
    p.methods.push_back(std::move(row));
  }
  return p;
}

/// Refuses a --peers file measured on another matrix or at another rank: the
/// rows would sit beside ours without measuring the same thing.
template <class T>
void check_peers(const peers_file& p, const dense<T>& a, std::uint32_t crc, index_t rank) {
  const std::string dtype = std::is_same_v<T, float> ? "float32" : "float64";
  if (p.rows != a.rows() || p.cols != a.cols() || p.dtype != dtype || p.crc32 != crc ||
      p.rank != rank) {
    auto describe = [](index_t m, index_t n, const std::string& type, std::uint32_t c, index_t k) {
      return std::to_string(m) + " x " + std::to_string(n) + " " + type + " matrix (CRC-32 " +
             hex(c) + ") at rank " + std::to_string(k);
    };
    fail_usage("--peers " + p.file.string() + " was measured on a " +
               describe(p.rows, p.cols, p.dtype, p.crc32, p.rank) + ", but this run is on a " +
               describe(a.rows(), a.cols(), dtype, crc, rank) +
               ": run tools/compare_peers.py on this input and rank (scripts/compare-peers "
               "runs both on one matrix)");
  }
  for (const auto& row : p.methods) {
    if (!row.error && row.rank != rank) {
      fail_usage("--peers " + p.file.string() + ": the row \"" + row.method + "\" has rank " +
                 std::to_string(row.rank) + ", not " + std::to_string(rank));
    }
  }
}

/// The generated input: U diag(s) V^T with Haar-random U, V (orthonormalised
/// Philox Gaussians) and s_i = i^(-1/2), the rank-ordered form of a power-law
/// eigenvalue density with exponent 2, as measured on trained layers (Martin &
/// Mahoney, "Implicit self-regularization in deep neural networks", 2021).
dense<float> generated_matrix(lowrank::context<lowrank::cpu>& ctx, index_t n,
                              column<double>& spectrum) {
  using ops = lowrank::ops<lowrank::cpu>;
  spectrum.resize(n);
  for (index_t i = 0; i < n; ++i) spectrum(i) = 1.0 / std::sqrt(double(i + 1));
  dense<float> u(n, n);
  dense<float> v(n, n);
  dense<float> r(n, n);
  ops::fill_random(ctx, lowrank::distribution::gaussian, {2048, 1}, lowrank::view(u));
  ops::fill_random(ctx, lowrank::distribution::gaussian, {2048, 2}, lowrank::view(v));
  ops::householder_orthonormalize(ctx, lowrank::view(u), lowrank::view(r));
  ops::householder_orthonormalize(ctx, lowrank::view(v), lowrank::view(r));
  const dense<float> us = u * spectrum.cast<float>().asDiagonal();
  dense<float> a(n, n);
  ops::gemm<float>(ctx, lowrank::transpose::no, lowrank::transpose::yes, 1.0f, lowrank::view(us),
                   lowrank::view(std::as_const(v)), 0.0f, lowrank::view(a));
  return a;
}

template <class T>
class comparison {
 public:
  comparison(const dense<T>& a, const options& o, const blas_threads& blas)
      : a_(a), o_(o), blas_(blas), ctx_(o.threads) {
    norm_ = std::sqrt(lowrank::ops<lowrank::cpu>::squared_norm(ctx_, lowrank::view(a_)));
  }

  /// Uses a known spectrum as the reference (the generated input).
  void set_reference(column<double> s) { reference_ = std::move(s); }

  std::vector<result_row> run() {
    const index_t k = o_.rank;
    const int steps = 5;
    int step = 0;
    auto progress = [&](const char* what) {
      std::fprintf(stderr, "[%d/%d] %s ...\n", ++step, steps, what);
    };
    auto peers = [&] { blas_.set(std::max(blas_.initial(), o_.threads)); };
    auto ours = [&] { blas_.set(1); };

    if (!o_.skip_exact) {
      progress("exact SVD (Eigen BDCSVD)");
      peers();
      attempt("exact: Eigen BDCSVD", [&] {
        double seconds = 0;
        const auto svd = timed(o_.repeat, seconds, [&] {
          return Eigen::BDCSVD<dense<T>>(a_, Eigen::ComputeThinU | Eigen::ComputeThinV);
        });
        if (!reference_) reference_ = svd.singularValues().template cast<double>();
        exact_seconds_ = seconds;
        add("exact: Eigen BDCSVD", seconds, svd.matrixU().leftCols(k), svd.singularValues().head(k),
            svd.matrixV().leftCols(k));
      });
    } else {
      ++step;
    }
#if LOWRANK_HAS_LAPACK
    progress("exact SVD (LAPACK gesdd, lowrank::truncated_svd)");
    peers();
    attempt("exact: LAPACK gesdd", [&] {
      // The whole thin SVD, as lowrank::truncated_svd computes it; its values
      // are the reference when BDCSVD was skipped.
      const index_t r = std::min(a_.rows(), a_.cols());
      dense<T> u(a_.rows(), r);
      dense<T> v(a_.cols(), r);
      column<T> s(r);
      double seconds = 0;
      timed(o_.repeat, seconds, [&] {
        lowrank::ops<lowrank::cpu>::svd<T>(ctx_, lowrank::view(a_), lowrank::view(u),
                                           lowrank::vector_view<T, lowrank::cpu>(s.data(), r),
                                           lowrank::view(v));
        return 0;
      });
      if (!reference_) reference_ = s.template cast<double>();
      add("exact: LAPACK gesdd", seconds, u.leftCols(k), s.head(k), v.leftCols(k));
    });
#else
    ++step;
#endif
#if LOWRANK_COMPARE_HAVE_SPECTRA
    progress("Spectra PartialSVDSolver (Lanczos)");
    peers();
    attempt("Spectra PartialSVDSolver", [&] {
      const index_t ncv =
          std::min(std::max<index_t>(2 * k + 1, 20), std::min(a_.rows(), a_.cols()));
      double seconds = 0;
      struct factors {
        dense<T> u, v;
        column<T> s;
      };
      const auto f = timed(o_.repeat, seconds, [&] {
        Spectra::PartialSVDSolver<dense<T>> solver(a_, k, ncv);
        solver.compute(1000, T(1e-6));
        return factors{solver.matrix_U(k), solver.matrix_V(k), solver.singular_values()};
      });
      add("Spectra PartialSVDSolver", seconds, f.u, f.s, f.v);
    });
#else
    ++step;
#endif
    progress("lowrank::randomized_svd, q = 0, 1, 2");
    ours();
    for (const index_t q : {0, 1, 2}) {
      const std::string name = "lowrank randomized q=" + std::to_string(q);
      attempt(name, [&] {
        double seconds = 0;
        const auto r = timed(o_.repeat, seconds, [&] {
          return lowrank::randomized_svd(ctx_, lowrank::view(a_), k,
                                         {.oversampling = 10, .power_iterations = q});
        });
        add(name, seconds, r.u, r.s, r.v);
      });
    }
    attempt("lowrank block Krylov", [&] {  // the defaults: b = k, 3 blocks
      double seconds = 0;
      const auto r = timed(o_.repeat, seconds,
                           [&] { return lowrank::block_krylov_svd(ctx_, lowrank::view(a_), k); });
      add("lowrank block Krylov", seconds, r.u, r.s, r.v);
    });
    progress("lowrank::randomized_svd, fixed accuracy");
    const double tolerance = fixed_accuracy_tolerance(k);
    char name[64];
    std::snprintf(name, sizeof name, "lowrank tolerance %.3g", tolerance);
    attempt(name, [&] {
      double seconds = 0;
      const auto r = timed(o_.repeat, seconds, [&] {
        return lowrank::randomized_svd(ctx_, lowrank::view(a_),
                                       lowrank::fixed_accuracy{.relative_error = tolerance});
      });
      add(name, seconds, r.u, r.s, r.v);
    });
    blas_.set(blas_.initial());
    return rows_;
  }

#if LOWRANK_COMPARE_CUDA
  /// The GPU rows (cuda_rows.cu), measured here as the CPU rows are.
  std::vector<result_row> run_cuda() {
    struct sink final : lowrank_compare::cuda_sink<T> {
      explicit sink(comparison& c) : c_(c) {}
      void attempt(const std::string& method, const std::function<void()>& run) override {
        c_.attempt(method, run);
      }
      void add(const std::string& method, double seconds, const dense<T>& u, const column<T>& s,
               const dense<T>& v) override {
        c_.add(method, seconds, u, s, v);
      }
      void set_exact(const column<T>& s, double seconds) override {
        if (!c_.reference_) c_.reference_ = s.template cast<double>();
        c_.exact_seconds_ = seconds;
      }
      [[nodiscard]] double fixed_accuracy_tolerance(index_t k) const override {
        return c_.fixed_accuracy_tolerance(k);
      }
      comparison& c_;
    } s(*this);
    lowrank_compare::run_cuda<T>(a_, o_.rank, o_.repeat, o_.skip_exact, s);
    return rows_;
  }
#endif

  [[nodiscard]] double norm() const { return norm_; }

  /// The rows of a --peers file (run() first: they need its reference
  /// spectrum and exact-SVD time), their columns computed as for ours.
  [[nodiscard]] std::vector<result_row> peer_rows(const peers_file& p) const {
    std::vector<result_row> rows;
    for (const auto& peer : p.methods) {
      result_row row;
      if (peer.error) {
        row.method = peer.method;
        row.error = peer.error;
      } else {
        row = make_row(peer.method, peer.seconds, peer.rank, peer.residual_norm, peer.s1, peer.sk);
      }
      row.settings = peer.settings;
      rows.push_back(std::move(row));
    }
    return rows;
  }

 private:
  /// Runs one method; one that throws gets a failed row with the reason, and
  /// the comparison goes on.
  template <class F>
  void attempt(const std::string& method, F&& f) {
    try {
      f();
    } catch (const std::exception& e) {
      result_row row;
      row.method = method;
      row.error = e.what();
      rows_.push_back(std::move(row));
      std::fprintf(stderr, "  %s failed: %s\n", method.c_str(), e.what());
    }
  }

  /// The fixed-accuracy row's tolerance: --tolerance, or 1.02 times the
  /// optimal rank-k error when the spectrum is known, else 0.1.
  [[nodiscard]] double fixed_accuracy_tolerance(index_t k) const {
    double tolerance = o_.tolerance;
    if (tolerance == 0 && reference_ && norm_ > 0) tolerance = 1.02 * optimal_error(k) / norm_;
    if (tolerance == 0) tolerance = 0.1;
    return std::clamp(tolerance, 1e-6, 0.99);
  }

  /// sqrt(sum_{i > k} s_i^2) from the reference spectrum (whose tail beyond
  /// its length, if any, is read from ||A||_F).
  [[nodiscard]] double optimal_error(index_t k) const {
    const double kept = reference_->head(std::min<index_t>(k, reference_->size())).squaredNorm();
    return std::sqrt(std::max(norm_ * norm_ - kept, 0.0));
  }

  template <class U, class S, class V>
  void add(std::string name, double seconds, const U& u, const S& s, const V& v) {
    const index_t k = s.size();
    // ||A - U diag(s) V^T||_F, the product in T, the norm accumulated in double.
    dense<T> residual = a_;
    const dense<T> us = u * s.asDiagonal();
    lowrank::ops<lowrank::cpu>::gemm<T>(ctx_, lowrank::transpose::no, lowrank::transpose::yes,
                                        T(-1), lowrank::view(us), lowrank::view(v), T(1),
                                        lowrank::view(residual));
    const double error =
        std::sqrt(lowrank::ops<lowrank::cpu>::squared_norm(ctx_, lowrank::view(residual)));
    rows_.push_back(make_row(std::move(name), seconds, k, error, k > 0 ? double(s(0)) : 0.0,
                             k > 0 ? double(s(k - 1)) : 0.0));
  }

  /// A row's columns from the residual norm `error` of a rank-k factorisation
  /// and its first and k-th singular values `first`, `last`.
  [[nodiscard]] result_row make_row(std::string name, double seconds, index_t k, double error,
                                    double first, double last) const {
    result_row row;
    row.method = std::move(name);
    row.rank = k;
    row.seconds = seconds;
    // A zero A: error 0 is exact, any other error infinitely wrong.
    row.relative_error =
        norm_ > 0 ? error / norm_ : (error > 0 ? std::numeric_limits<double>::infinity() : 0.0);
    if (reference_ && k > 0) {
      const double optimum = optimal_error(k);
      if (optimum > 0) row.over_optimum = error / optimum;
      const double s1 = (*reference_)(0);
      const double sk = (*reference_)(std::min<index_t>(k, reference_->size()) - 1);
      if (s1 > 0) row.s1_error = std::abs(first - s1) / s1;
      if (k <= reference_->size() && sk > 0) row.sk_error = std::abs(last - sk) / sk;
    }
    if (exact_seconds_ > 0) row.speedup = exact_seconds_ / seconds;
    return row;
  }

  const dense<T>& a_;
  const options& o_;
  const blas_threads& blas_;
  lowrank::context<lowrank::cpu> ctx_;
  double norm_ = 0;
  double exact_seconds_ = 0;
  std::optional<column<double>> reference_;
  std::vector<result_row> rows_;
};

std::string cell(const std::optional<double>& value, const char* format) {
  if (!value) return "n/a";
  char text[32];
  std::snprintf(text, sizeof text, format, *value);
  return text;
}

/// "numpy 2.4.6, scikit-learn 1.9.1, ...": a --peers file's library versions.
std::string describe_versions(const nlohmann::json& versions) {
  std::string text;
  for (const auto& [name, value] : versions.items()) {
    if (!value.is_string()) continue;  // not installed: its rows say so
    text += (text.empty() ? "" : ", ") + name + " " + value.get<std::string>();
  }
  return text;
}

/// The table; `peers_note`, when given, heads the first --peers row.
void print_table(const std::vector<result_row>& rows, const std::string& peers_note = {}) {
  int width = 28;
  for (const auto& r : rows) width = std::max(width, static_cast<int>(r.method.size()));
  std::printf("%-*s %6s %10s %10s %10s %10s %10s %9s\n", width, "method", "rank", "time [s]",
              "rel. error", "err / opt", "s_1 error", "s_k error", "speed-up");
  bool peers = false;
  for (const auto& r : rows) {
    if (r.settings && !peers) {
      peers = true;
      if (!peers_note.empty()) std::printf("%s\n", peers_note.c_str());
    }
    if (r.error) {
      std::printf("%-*s failed: %s\n", width, r.method.c_str(), r.error->c_str());
      continue;
    }
    std::printf("%-*s %6ld %10.4f %10.6f %10s %10s %10s %9s\n", width, r.method.c_str(),
                long(r.rank), r.seconds, r.relative_error, cell(r.over_optimum, "%.4f").c_str(),
                cell(r.s1_error, "%.2e").c_str(), cell(r.sk_error, "%.2e").c_str(),
                cell(r.speedup, "%.1fx").c_str());
  }
}

/// The --json output: a temporary file next to the target, made (and so
/// checked) before the run, written and renamed over the target at the end,
/// removed if the run fails.
using json_output = lowrank::io::detail::temporary_file;

template <class T>
void write_results(json_output& out, const options& o, const std::string& input, const dense<T>& a,
                   double norm, const std::vector<result_row>& rows,
                   const std::optional<peers_file>& peers) {
  nlohmann::json document;
  document["input"] = {{"description", input},
                       {"rows", a.rows()},
                       {"cols", a.cols()},
                       {"dtype", std::is_same_v<T, float> ? "float32" : "float64"},
                       {"frobenius_norm", norm}};
  document["input"]["crc32"] = checksum(a);  // names the matrix, as in a --peers file
  document["rank"] = o.rank;
  document["threads"] = o.threads;
  document["backend"] = o.cuda ? "cuda" : "cpu";
  document["lowrank_version"] = std::to_string(lowrank::version_major) + "." +
                                std::to_string(lowrank::version_minor) + "." +
                                std::to_string(lowrank::version_patch);
  auto& methods = document["methods"] = nlohmann::json::array();
  for (const auto& r : rows) {
    auto optional = [](const std::optional<double>& v) -> nlohmann::json {
      return v ? nlohmann::json(*v) : nlohmann::json(nullptr);
    };
    nlohmann::json row;
    if (r.error) {
      row = {{"method", r.method}, {"error", *r.error}};
    } else {
      row = {{"method", r.method},
             {"rank", r.rank},
             {"seconds", r.seconds},
             {"relative_error", r.relative_error},
             {"error_over_optimum", optional(r.over_optimum)},
             {"s1_relative_error", optional(r.s1_error)},
             {"sk_relative_error", optional(r.sk_error)},
             {"speedup_over_exact", optional(r.speedup)}};
    }
    if (r.settings) {
      row["source"] = "python";
      row["settings"] = *r.settings;
    }
    methods.push_back(std::move(row));
  }
  if (peers) {
    document["peers"] = {{"file", peers->file.string()},
                         {"threads", peers->threads},
                         {"date", peers->date},
                         {"versions", peers->versions}};
  }
  const std::string text = document.dump(2) + "\n";
  out.write(text.data(), text.size());
  out.commit();
  std::fprintf(stderr, "wrote %s\n", o.json->string().c_str());
}

template <class T>
int compare(const dense<T>& a, const options& o, const std::string& input,
            const std::optional<column<double>>& known_spectrum, json_output* json,
            const std::optional<peers_file>& peers) {
  if (o.save_npy) {
    try {
      lowrank::io::write_npy(*o.save_npy, a);
    } catch (const lowrank::invalid_argument& e) {
      throw std::runtime_error("--save-npy: " + std::string(e.what()));
    }
    std::printf("wrote %s: %s, %ld x %ld %s, CRC-32 %s\n", o.save_npy->string().c_str(),
                input.c_str(), long(a.rows()), long(a.cols()),
                std::is_same_v<T, float> ? "float32" : "float64", hex(checksum(a)).c_str());
    return 0;
  }
  if (o.rank > std::min(a.rows(), a.cols())) {
    fail_usage("--rank " + std::to_string(o.rank) +
               " exceeds min(m, n) = " + std::to_string(std::min(a.rows(), a.cols())));
  }
  {
    // Every method needs finite entries: one clear message instead of each
    // library's own (LAPACK's among them).
    lowrank::context<lowrank::cpu> ctx(o.threads);
    const index_t at = lowrank::ops<lowrank::cpu>::find_non_finite(ctx, lowrank::view(a));
    if (at >= 0) {
      const index_t i = at % a.rows();
      const index_t j = at / a.rows();
      throw std::runtime_error(input + ": entry (" + std::to_string(i) + ", " + std::to_string(j) +
                               ") is " + std::to_string(double(a(i, j))) +
                               "; every method needs finite entries");
    }
  }
  const blas_threads blas;
  comparison<T> c(a, o, blas);
  if (known_spectrum) c.set_reference(*known_spectrum);
  std::printf("input: %s, %ld x %ld %s, ||A||_F = %.6g\n", input.c_str(), long(a.rows()),
              long(a.cols()), std::is_same_v<T, float> ? "float32" : "float64", c.norm());
#if LOWRANK_COMPARE_CUDA
  if (o.cuda) {
    std::printf("backend: cuda, device 0: %s\n", lowrank_compare::cuda_device_name().c_str());
    const auto rows = c.run_cuda();
    print_table(rows);
    if (json != nullptr) write_results(*json, o, input, a, c.norm(), rows, std::nullopt);
    return 0;
  }
#endif
  std::printf("threads: lowrank %d over a single-threaded BLAS; peers on %s\n", o.threads,
              blas.openblas() ? ("OpenBLAS with " +
                                 std::to_string(std::max(blas.initial(), o.threads)) + " threads")
                                    .c_str()
                              : "the linked BLAS (or Eigen)");
  std::string peers_note;
  if (peers) {
    // Checked before the run: a file from another matrix is refused at once.
    check_peers(*peers, a, checksum(a), o.rank);
    if (peers->threads != o.threads) {
      std::fprintf(stderr,
                   "lowrank-compare: note: the --peers rows ran on %d threads, this run on %d\n",
                   peers->threads, o.threads);
    }
    peers_note = "Python peers (tools/compare_peers.py, " + peers->file.string() + ", " +
                 std::to_string(peers->threads) + (peers->threads == 1 ? " thread" : " threads") +
                 (peers->date.empty() ? "" : ", " + peers->date) + "; " +
                 describe_versions(peers->versions) + "):";
  }
  auto rows = c.run();
  if (peers) {
    const auto more = c.peer_rows(*peers);
    rows.insert(rows.end(), more.begin(), more.end());
  }
  print_table(rows, peers_note);
  if (json != nullptr) write_results(*json, o, input, a, c.norm(), rows, peers);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const options o = parse(argc, argv);
    // --json is checked (its temporary made) before the run, and removed again
    // if anything below fails.
    const lowrank::io::detail::error_source json_source{
        "lowrank-compare", "--json", o.json ? lowrank::io::detail::quote_path(*o.json) : ""};
    std::optional<json_output> json;
    if (o.json) json.emplace(*o.json, json_source);
    json_output* out = json ? &*json : nullptr;
    // --peers is read and its form checked before the input is.
    std::optional<peers_file> peers;
    if (o.peers) peers = read_peers(*o.peers);
    if (o.npy) {
      // The header decides the precision; the full read validates the rest.
      std::ifstream in(*o.npy, std::ios::binary);
      std::vector<char> head(1 << 16);
      in.read(head.data(), static_cast<std::streamsize>(head.size()));
      head.resize(static_cast<std::size_t>(in.gcount()));
      bool float64 = false;
      try {
        float64 = lowrank::io::parse_npy_header(
                      std::span(reinterpret_cast<const std::byte*>(head.data()), head.size()))
                      .dtype == lowrank::io::npy_dtype::float64;
      } catch (const lowrank::invalid_argument&) {
        // Let the reader report the problem with the file's name.
        (void)lowrank::io::read_npy<float>(*o.npy);
        throw;
      }
      const std::string input = o.npy->string();
      if (float64) {
        return compare<double>(lowrank::io::read_npy<double>(*o.npy), o, input, std::nullopt, out,
                               peers);
      }
      return compare<float>(lowrank::io::read_npy<float>(*o.npy), o, input, std::nullopt, out,
                            peers);
    }
    std::fprintf(stderr, "generating the %ld x %ld input ...\n", long(o.size), long(o.size));
    lowrank::context<lowrank::cpu> ctx(o.threads);
    column<double> spectrum;
    const dense<float> a = generated_matrix(ctx, o.size, spectrum);
    return compare<float>(a, o, "generated, s_i = i^(-1/2)", spectrum, out, peers);
  } catch (const usage_error& e) {
    std::fprintf(stderr, "lowrank-compare: %s\n\n%s", e.what(), usage);
    return 2;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "lowrank-compare: not enough memory for this input and rank\n");
    return 1;
  } catch (const std::exception& e) {
    // Errors about the command line's files already name the program.
    const std::string_view what = e.what();
    std::fprintf(stderr, "%s%s\n",
                 what.starts_with("lowrank-compare") ? "" : "lowrank-compare: ", e.what());
    return 1;
  }
}
