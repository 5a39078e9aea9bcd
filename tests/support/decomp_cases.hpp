#pragma once
// What the decomposition tests share: the shapes and spectra they sweep, an
// operator that counts its products (core/linear_operator.hpp), and a
// bitwise comparison of host matrices.

#include <algorithm>
#include <cstring>
#include <vector>

#include "lowrank/lowrank.hpp"
#include "support/backends.hpp"
#include "support/test_matrices.hpp"

namespace lowrank::test {

struct shape {
  index_t m;
  index_t n;
  const char* name;
};

inline constexpr shape shapes[] = {{200, 200, "square"}, {300, 120, "tall"}, {120, 300, "wide"}};
inline constexpr spectrum_kind spectra[] = {spectrum_kind::fast_decay, spectrum_kind::slow_decay,
                                            spectrum_kind::flat_then_cliff,
                                            spectrum_kind::rank_deficient};

/// The test matrix of a case, rounded to T (the optimum is taken from the
/// rounded matrix, docs/algorithms.md "Decompositions"): the spectrum's cliff
/// after 25 values, or rank 25. With k = 20 that rank is below the randomized
/// SVD's sketch (l = 30: the sketch itself is rank-deficient, the CholQR
/// fallback path) and below block Krylov's basis (3 k = 60: the later blocks
/// have no new direction to find).
template <class T>
host_matrix<T> case_matrix(spectrum_kind kind, shape sh) {
  const Eigen::VectorXd s = make_spectrum(kind, std::min(sh.m, sh.n), 25);
  return make_matrix(s, sh.m, sh.n, 1234).cast<T>();
}

/// How often, and on how many columns in all, an operator was applied.
struct product_count {
  int apply = 0;
  int apply_transposed = 0;
  index_t columns = 0;          ///< the column-products, both directions
  std::vector<index_t> widths;  ///< each product's width, in order
};

/// A dense matrix seen only through its products, counting them.
template <class T, class Backend>
class counting_operator {
 public:
  using value_type = T;
  using backend = Backend;

  counting_operator(matrix_view<const T, Backend> a, product_count* count) : a_(a), count_(count) {}

  [[nodiscard]] index_t rows() const { return a_.rows(); }
  [[nodiscard]] index_t cols() const { return a_.cols(); }
  void apply(context<Backend>& ctx, matrix_view<const T, Backend> x, matrix_view<T, Backend> y,
             T alpha, T beta) const {
    ++count_->apply;
    record(x.cols());
    ops<Backend>::gemm(ctx, transpose::no, transpose::no, alpha, a_, x, beta, y);
  }
  void apply_transposed(context<Backend>& ctx, matrix_view<const T, Backend> x,
                        matrix_view<T, Backend> y, T alpha, T beta) const {
    ++count_->apply_transposed;
    record(x.cols());
    ops<Backend>::gemm(ctx, transpose::yes, transpose::no, alpha, a_, x, beta, y);
  }

 private:
  void record(index_t width) const {
    count_->columns += width;
    count_->widths.push_back(width);
  }
  matrix_view<const T, Backend> a_;
  product_count* count_;
};

/// Whether two host matrices hold the same shape and the same bits.
template <class T>
bool same_bits(const host_matrix<T>& a, const host_matrix<T>& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), sizeof(T) * static_cast<std::size_t>(a.size())) == 0;
}

}  // namespace lowrank::test
