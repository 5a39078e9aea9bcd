// The adapters on the GPU against the same adapters on the CPU: the adapter
// operations of ops<cuda> give the CPU's bits where the CPU defines them (the
// dropout mask, the element-wise maps, the gathers and scatters, the row dot
// products), and LoRA (with dropout), DoRA (with dropout), NOLA and
// multi_lora, built from the same factors and seeds, give the same outputs
// and gradients through two training steps, to a float tolerance. Merge and
// unmerge on the GPU restore W bit for bit (LoRA's merged W is the CPU's, bit
// for bit). Cases skip without a GPU (and fail under
// LOWRANK_TEST_REQUIRE_DEVICE=1).

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "lowrank/adapters/dora.hpp"
#include "lowrank/adapters/lora.hpp"
#include "lowrank/adapters/multi_lora.hpp"
#include "lowrank/adapters/nola.hpp"
#include "support/backends.hpp"

namespace lowrank::test::adapters_cross_backend_tests {
namespace {

template <class T>
class adapters_cross_backend : public backend_test<config<cuda, T>> {};
using scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(adapters_cross_backend, scalars);

// cuBLAS and the CPU BLAS sum the products in different orders, so outputs
// and gradients agree to a few eps times sqrt(K) |values| (K <= 40 here):
// about 1e-6 relative in float and 1e-15 in double. The tolerances, relative
// to each result's Frobenius norm, leave a margin of about 100; a wrong
// dropout mask, segment or gradient term is off by O(1).
template <class T>
constexpr double tolerance = std::is_same_v<T, float> ? 1e-4 : 1e-11;

/// Values in [-1, 1] that are exact in float, from a fixed seed.
template <class T>
host_matrix<T> random_matrix(index_t rows, index_t cols, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> dist(-1, 1);
  host_matrix<T> m(rows, cols);
  for (index_t j = 0; j < cols; ++j) {
    for (index_t i = 0; i < rows; ++i) m(i, j) = T(float(dist(gen)));
  }
  return m;
}

template <class T>
bool same_bits(const host_matrix<T>& a, const host_matrix<T>& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), sizeof(T) * std::size_t(a.size())) == 0;
}

/// A host copy of a backend view.
template <class T, class Backend>
host_matrix<T> host_copy(context<Backend>& ctx, matrix_view<const T, Backend> x) {
  host_matrix<T> out(x.rows(), x.cols());
  ops<Backend>::download(ctx, x, view(out));
  return out;
}

/// An out x 1 backend matrix as a vector view.
template <class T, class Backend>
vector_view<T, Backend> as_vector(matrix<T, Backend>& m) noexcept {
  return {m.data(), m.rows()};
}

/// Named results of one run, in double.
struct outputs {
  std::vector<std::string> names;
  std::vector<Eigen::MatrixXd> values;
  template <class T>
  void add(std::string name, const host_matrix<T>& value) {
    names.push_back(std::move(name));
    values.push_back(value.template cast<double>());
  }
};

/// Every result of the GPU within tolerance<T> (relative, Frobenius) of the CPU's.
template <class T>
void expect_match(const outputs& host, const outputs& device) {
  ASSERT_EQ(host.names, device.names);
  for (std::size_t k = 0; k < host.names.size(); ++k) {
    const Eigen::MatrixXd& c = host.values[k];
    const Eigen::MatrixXd& g = device.values[k];
    ASSERT_EQ(c.rows(), g.rows()) << host.names[k];
    ASSERT_EQ(c.cols(), g.cols()) << host.names[k];
    EXPECT_LE((g - c).norm(), tolerance<T> * c.norm()) << host.names[k];
  }
}

/// One layer's data: W (out x in), b, the LoRA factors, a batch X and a G = dL/dY.
template <class T>
struct problem {
  index_t n = 19;
  index_t in = 40;
  index_t out = 24;
  index_t rank = 4;
  host_matrix<T> w = random_matrix<T>(out, in, 1);
  host_matrix<T> bias = random_matrix<T>(out, 1, 2);
  host_matrix<T> a = random_matrix<T>(rank, in, 3);
  host_matrix<T> b = random_matrix<T>(out, rank, 4);
  host_matrix<T> x = random_matrix<T>(n, in, 5);
  host_matrix<T> dy = random_matrix<T>(n, out, 6);
};

/// Two forward / backward steps (two dropout masks); Y and dX of each.
template <class Layer, class Backend, class T>
void two_steps(context<Backend>& ctx, Layer& layer, const problem<T>& p, outputs& o) {
  const auto x = to_backend<Backend>(ctx, p.x);
  const auto dy = to_backend<Backend>(ctx, p.dy);
  matrix<T, Backend> y(ctx, p.n, p.out);
  matrix<T, Backend> dx(ctx, p.n, p.in);
  for (int step = 0; step < 2; ++step) {
    layer.forward(ctx, x.view(), y.view());
    layer.backward(ctx, dy.view(), dx.view());
    o.add("y, step " + std::to_string(step), host_copy(ctx, as_const(y.view())));
    o.add("dx, step " + std::to_string(step), host_copy(ctx, as_const(dx.view())));
  }
}

template <class Backend, class T>
outputs run_lora(const problem<T>& p) {
  auto ctx = make_context<Backend>(2);
  auto w = to_backend<Backend>(ctx, p.w);
  auto bias = to_backend<Backend>(ctx, p.bias);
  const auto a = to_backend<Backend>(ctx, p.a);
  const auto b = to_backend<Backend>(ctx, p.b);
  auto layer = lora<T, Backend>::from_factors(
      ctx, w.view(), as_vector(bias), a.view(), b.view(),
      {.alpha = 6, .dropout = 0.25, .train_bias = true, .seed = 11, .layer = 2});
  outputs o;
  two_steps(ctx, layer, p, o);
  o.add("grad_a", host_copy(ctx, as_const(layer.grad_a())));
  o.add("grad_b", host_copy(ctx, as_const(layer.grad_b())));
  o.add("grad_bias", host_copy(ctx, as_const(layer.grad_bias())));
  return o;
}

template <class Backend, class T>
outputs run_dora(const problem<T>& p) {
  auto ctx = make_context<Backend>(2);
  auto w = to_backend<Backend>(ctx, p.w);
  auto bias = to_backend<Backend>(ctx, p.bias);
  const auto a = to_backend<Backend>(ctx, p.a);
  const auto b = to_backend<Backend>(ctx, p.b);
  dora<T, Backend> layer(
      ctx, lora<T, Backend>::from_factors(
               ctx, w.view(), as_vector(bias), a.view(), b.view(),
               {.alpha = 6, .dropout = 0.25, .train_bias = true, .seed = 12, .layer = 3}));
  outputs o;
  o.add("magnitude", host_copy(ctx, as_const(layer.magnitude())));
  two_steps(ctx, layer, p, o);
  o.add("norms", host_copy(ctx, layer.norms().as_matrix()));
  o.add("grad_a", host_copy(ctx, as_const(layer.grad_a())));
  o.add("grad_b", host_copy(ctx, as_const(layer.grad_b())));
  o.add("grad_magnitude", host_copy(ctx, as_const(layer.grad_magnitude())));
  o.add("grad_bias", host_copy(ctx, as_const(layer.grad_bias())));
  return o;
}

template <class Backend, class T>
outputs run_nola(const problem<T>& p) {
  auto ctx = make_context<Backend>(2);
  auto w = to_backend<Backend>(ctx, p.w);
  auto bias = to_backend<Backend>(ctx, p.bias);
  // k = 10 and l = 12 bases in chunks of 4 (a partial last chunk).
  nola<T, Backend> layer(ctx, w.view(), as_vector(bias),
                         {.rank = 4,
                          .alpha = 6,
                          .dropout = 0.25,
                          .num_bases_a = 10,
                          .num_bases_b = 12,
                          .chunk_size = 4,
                          .seed = 13,
                          .layer = 1});
  ops<Backend>::upload(ctx, view(random_matrix<T>(10, 1, 7)), layer.coefficients_a());
  ops<Backend>::upload(ctx, view(random_matrix<T>(12, 1, 8)), layer.coefficients_b());
  outputs o;
  two_steps(ctx, layer, p, o);
  matrix<T, Backend> a(ctx, p.rank, p.in);
  matrix<T, Backend> b(ctx, p.out, p.rank);
  layer.materialize_a(ctx, a.view());
  layer.materialize_b(ctx, b.view());
  o.add("a", host_copy(ctx, as_const(a.view())));
  o.add("b", host_copy(ctx, as_const(b.view())));
  o.add("grad_alpha", host_copy(ctx, as_const(layer.grad_coefficients_a())));
  o.add("grad_beta", host_copy(ctx, as_const(layer.grad_coefficients_b())));
  return o;
}

template <class Backend, class T>
outputs run_multi_lora(const problem<T>& p) {
  auto ctx = make_context<Backend>(2);
  const auto w = to_backend<Backend>(ctx, p.w);
  auto bias = to_backend<Backend>(ctx, p.bias);
  multi_lora<T, Backend> layer(ctx, w.view(), as_const(as_vector(bias)));
  // Four adapters of different ranks; adapter 3 gets no rows in the first batch.
  const index_t ranks[] = {2, 3, 4, 1};
  const double scalings[] = {0.5, 2, 1.25, 3};
  for (int k = 0; k < 4; ++k) {
    const auto a = to_backend<Backend>(ctx, random_matrix<T>(ranks[k], p.in, 20 + unsigned(k)));
    const auto b = to_backend<Backend>(ctx, random_matrix<T>(p.out, ranks[k], 30 + unsigned(k)));
    EXPECT_EQ(layer.add_adapter(ctx, a.view(), b.view(), scalings[k]), k);
  }
  std::vector<std::int32_t> first(std::size_t(p.n));
  std::vector<std::int32_t> second(std::size_t(p.n));
  for (index_t i = 0; i < p.n; ++i) {
    first[std::size_t(i)] = std::int32_t((7 * i) % 4) - 1;   // -1, 0, 1, 2
    second[std::size_t(i)] = std::int32_t((5 * i) % 5) - 1;  // -1, ..., 3
  }
  const auto x = to_backend<Backend>(ctx, p.x);
  const auto dy = to_backend<Backend>(ctx, p.dy);
  matrix<T, Backend> y(ctx, p.n, p.out);
  matrix<T, Backend> dx(ctx, p.n, p.in);
  outputs o;
  for (const auto* ids : {&first, &second}) {
    layer.forward(ctx, x.view(), *ids, y.view());
    layer.backward(ctx, dy.view(), dx.view());
    o.add("y", host_copy(ctx, as_const(y.view())));
    o.add("dx", host_copy(ctx, as_const(dx.view())));
  }
  for (int k = 0; k < 4; ++k) {
    o.add("grad_a " + std::to_string(k), host_copy(ctx, as_const(layer.grad_a(k))));
    o.add("grad_b " + std::to_string(k), host_copy(ctx, as_const(layer.grad_b(k))));
  }
  return o;
}

// --- The operations ------------------------------------------------------------

// Each adapter operation on a strided block, against ops<cpu>: the CPU's bits
// where both sides round the same expressions (both round each product and
// sum separately; the CPU build has no FMA contraction), to rounding where
// the summation order differs (the column reductions).
TYPED_TEST(adapters_cross_backend, operations_match_the_cpu) {
  using T = TypeParam;
  context<cuda> gpu;
  context<cpu> host(2);
  const host_matrix<T> big = random_matrix<T>(37, 13, 40);
  const host_matrix<T> other = random_matrix<T>(37, 13, 41);
  constexpr index_t rows = 33;
  constexpr index_t cols = 9;
  // Host and device copies, and the block (1, 2) of rows x cols (ld 37) of each.
  struct pair {
    host_matrix<T> h;
    matrix<T, cuda> d;
    matrix_view<T, cpu> hb() { return view(h).block(1, 2, rows, cols); }
    matrix_view<T, cuda> db() { return d.view().block(1, 2, rows, cols); }
    host_matrix<T> device_block(context<cuda>& ctx) { return host_copy(ctx, as_const(db())); }
  };
  const auto make = [&](const host_matrix<T>& m) { return pair{m, matrix<T, cuda>(gpu, m)}; };
  const auto host_block = [&](pair& p) { return host_matrix<T>(as_eigen(p.hb())); };

  {  // affine
    auto x = make(big);
    ops<cpu>::affine(host, T(0.75), T(-0.125), x.hb());
    ops<cuda>::affine(gpu, T(0.75), T(-0.125), x.db());
    EXPECT_TRUE(same_bits(x.device_block(gpu), host_block(x))) << "affine";
  }
  for (const T beta : {T(0), T(-0.625)}) {  // axpby; beta = 0 ignores a NaN Y
    auto y = make(beta == T(0) ? host_matrix<T>(host_matrix<T>::Constant(
                                     37, 13, std::numeric_limits<T>::quiet_NaN()))
                               : other);
    const auto x = make(big);
    ops<cpu>::axpby(host, T(1.5), as_const(view(x.h).block(1, 2, rows, cols)), beta, y.hb());
    ops<cuda>::axpby(gpu, T(1.5), as_const(x.d.view().block(1, 2, rows, cols)), beta, y.db());
    EXPECT_TRUE(same_bits(y.device_block(gpu), host_block(y))) << "axpby, beta " << beta;
  }
  for (const T beta : {T(0), T(-0.5)}) {  // dropout: the same mask and values
    auto y = make(other);
    const auto x = make(big);
    const random_stream stream{21, 5};
    ops<cpu>::dropout(host, stream, 0.3, T(1.5), as_const(view(x.h).block(1, 2, rows, cols)), beta,
                      y.hb());
    ops<cuda>::dropout(gpu, stream, 0.3, T(1.5), as_const(x.d.view().block(1, 2, rows, cols)), beta,
                       y.db());
    EXPECT_TRUE(same_bits(y.device_block(gpu), host_block(y))) << "dropout, beta " << beta;
  }
  const host_matrix<T> v = random_matrix<T>(cols, 1, 42);
  {  // add_row_vector
    auto y = make(other);
    const matrix<T, cuda> dv(gpu, v);
    ops<cpu>::add_row_vector(host, T(-2), vector_view<const T, cpu>(v.data(), cols), y.hb());
    ops<cuda>::add_row_vector(gpu, T(-2), vector_view<const T, cuda>(dv.data(), cols), y.db());
    EXPECT_TRUE(same_bits(y.device_block(gpu), host_block(y))) << "add_row_vector";
  }
  {  // add_column_sums: sums in double in another order, then one rounding to T
    const auto x = make(big);
    host_matrix<T> hy = v;
    matrix<T, cuda> dy(gpu, v);
    ops<cpu>::add_column_sums(host, T(0.5), as_const(view(x.h).block(1, 2, rows, cols)),
                              vector_view<T, cpu>(hy.data(), cols));
    ops<cuda>::add_column_sums(gpu, T(0.5), as_const(x.d.view().block(1, 2, rows, cols)),
                               vector_view<T, cuda>(dy.data(), cols));
    const host_matrix<T> got = dy.to_eigen();
    for (index_t j = 0; j < cols; ++j) {
      EXPECT_NEAR(double(got(j)), double(hy(j)), 2 * eps<T> * std::abs(double(hy(j))) + 1e-300)
          << "add_column_sums, column " << j;
    }
  }
  {  // row_dots (the CPU's order: bit for bit) and column_dots (a tree: to rounding)
    const auto x = make(big);
    const auto y = make(other);
    const auto hx = as_const(view(x.h).block(1, 2, rows, cols));
    const auto hy = as_const(view(y.h).block(1, 2, rows, cols));
    const auto dx = as_const(x.d.view().block(1, 2, rows, cols));
    const auto dy = as_const(y.d.view().block(1, 2, rows, cols));
    Eigen::VectorXd hr(rows);
    Eigen::VectorXd hc(cols);
    matrix<double, cuda> dr(gpu, rows, 1);
    matrix<double, cuda> dc(gpu, cols, 1);
    ops<cpu>::row_dots(host, hx, hy, vector_view<double, cpu>(hr.data(), rows));
    ops<cpu>::column_dots(host, hx, hy, vector_view<double, cpu>(hc.data(), cols));
    ops<cuda>::row_dots(gpu, dx, dy, as_vector(dr));
    ops<cuda>::column_dots(gpu, dx, dy, as_vector(dc));
    EXPECT_TRUE(same_bits<double>(dr.to_eigen(), hr)) << "row_dots";
    EXPECT_LE((dc.to_eigen() - hc).cwiseAbs().maxCoeff(), 1e-14 * rows) << "column_dots";
  }
  {  // factored_row_norms (a negative square and a zero row meet the floor) and divide
    constexpr index_t n = 9;
    host_matrix<double> w = random_matrix<double>(n, 1, 43).cwiseAbs();
    host_matrix<double> b = random_matrix<double>(n, 1, 44);
    host_matrix<double> c = random_matrix<double>(n, 1, 45).cwiseAbs();
    w(0) = 1, b(0) = -10, c(0) = 0;
    w(1) = 0, b(1) = 0, c(1) = 0;
    const auto hv = [](const host_matrix<double>& m) {
      return vector_view<const double, cpu>(m.data(), m.rows());
    };
    const auto dv = [](const matrix<double, cuda>& m) {
      return vector_view<const double, cuda>(m.data(), m.rows());
    };
    const matrix<double, cuda> dw(gpu, w), db(gpu, b), dc(gpu, c);
    host_matrix<double> hn(n, 1);
    matrix<double, cuda> dn(gpu, n, 1);
    ops<cpu>::factored_row_norms(host, 0.75, 1e-12, hv(w), hv(b), hv(c),
                                 vector_view<double, cpu>(hn.data(), n));
    ops<cuda>::factored_row_norms(gpu, 0.75, 1e-12, dv(dw), dv(db), dv(dc), as_vector(dn));
    EXPECT_TRUE(same_bits<double>(dn.to_eigen(), hn)) << "factored_row_norms";
    EXPECT_EQ(hn(0), 1e-12) << "factored_row_norms, a negative square";

    // divide: T / double into T over a NaN (beta = 0), double / double into
    // T (beta = 1), T / double into double (beta = -0.5).
    const host_matrix<T> x = random_matrix<T>(n, 1, 46);
    const matrix<T, cuda> dx(gpu, x);
    const vector_view<const T, cpu> hx(x.data(), n);
    const vector_view<const T, cuda> dxv(dx.data(), n);
    for (const double beta : {0.0, 1.0}) {
      host_matrix<T> hy =
          beta == 0
              ? host_matrix<T>(host_matrix<T>::Constant(n, 1, std::numeric_limits<T>::quiet_NaN()))
              : host_matrix<T>(random_matrix<T>(n, 1, 47));
      matrix<T, cuda> dy(gpu, hy);
      if (beta == 0) {
        ops<cpu>::divide(host, hx, hv(hn), beta, vector_view<T, cpu>(hy.data(), n));
        ops<cuda>::divide(gpu, dxv, dv(dn), beta, as_vector(dy));
      } else {
        ops<cpu>::divide(host, hv(w), hv(hn), beta, vector_view<T, cpu>(hy.data(), n));
        ops<cuda>::divide(gpu, dv(dw), dv(dn), beta, as_vector(dy));
      }
      EXPECT_TRUE(same_bits(dy.to_eigen(), hy)) << "divide, beta " << beta;
    }
    host_matrix<double> hq = random_matrix<double>(n, 1, 48);
    matrix<double, cuda> dq(gpu, hq);
    ops<cpu>::divide(host, hx, hv(hn), -0.5, vector_view<double, cpu>(hq.data(), n));
    ops<cuda>::divide(gpu, dxv, dv(dn), -0.5, as_vector(dq));
    EXPECT_TRUE(same_bits<double>(dq.to_eigen(), hq)) << "divide into double";
  }
  {  // upload_indices, gather_rows, scatter_add_rows
    const std::vector<index_t> picks{5, 0, 31, 7, 2, 19};
    const auto m = index_t(picks.size());
    vector<index_t, cuda> rows_device(gpu, m);
    ops<cuda>::upload_indices(gpu, vector_view<const index_t, cpu>(picks.data(), m),
                              rows_device.view());
    const Eigen::Matrix<index_t, Eigen::Dynamic, 1> back = rows_device.to_eigen();
    EXPECT_TRUE(std::equal(picks.begin(), picks.end(), back.data())) << "upload_indices";
    const vector_view<const index_t, cpu> hrows(picks.data(), m);
    const auto x = make(big);
    host_matrix<T> hg(m, cols);
    matrix<T, cuda> dg(gpu, m, cols);
    ops<cpu>::gather_rows(host, as_const(view(x.h).block(1, 2, rows, cols)), hrows, view(hg));
    ops<cuda>::gather_rows(gpu, as_const(x.d.view().block(1, 2, rows, cols)),
                           as_const(rows_device.view()), dg.view());
    EXPECT_TRUE(same_bits(dg.to_eigen(), hg)) << "gather_rows";
    auto y = make(other);
    ops<cpu>::scatter_add_rows(host, T(-1.25), as_const(view(hg)), hrows, y.hb());
    ops<cuda>::scatter_add_rows(gpu, T(-1.25), as_const(dg.view()), as_const(rows_device.view()),
                                y.db());
    EXPECT_TRUE(same_bits(y.device_block(gpu), host_block(y))) << "scatter_add_rows";
  }
}

// --- The adapters --------------------------------------------------------------

TYPED_TEST(adapters_cross_backend, lora_with_dropout_matches_the_cpu) {
  const problem<TypeParam> p;
  expect_match<TypeParam>(run_lora<cpu>(p), run_lora<cuda>(p));
}

TYPED_TEST(adapters_cross_backend, dora_with_dropout_matches_the_cpu) {
  const problem<TypeParam> p;
  expect_match<TypeParam>(run_dora<cpu>(p), run_dora<cuda>(p));
}

TYPED_TEST(adapters_cross_backend, nola_with_dropout_matches_the_cpu) {
  const problem<TypeParam> p;
  expect_match<TypeParam>(run_nola<cpu>(p), run_nola<cuda>(p));
}

TYPED_TEST(adapters_cross_backend, multi_lora_matches_the_cpu) {
  const problem<TypeParam> p;
  expect_match<TypeParam>(run_multi_lora<cpu>(p), run_multi_lora<cuda>(p));
}

// --- Merge ---------------------------------------------------------------------

// LoRA: the GPU's merged W is the CPU's bit for bit (the same host merge), with
// the same exceptions; unmerge restores W bit for bit. DoRA: its row scale
// m / n comes from the GPU's norms, so the merged W matches to rounding, and
// unmerge restores W bit for bit. A W with entries over a wide range of
// magnitudes makes the merge keep exceptions.
TYPED_TEST(adapters_cross_backend, merge_and_unmerge_restore_the_weight_bit_for_bit) {
  using T = TypeParam;
  const problem<T> p;
  host_matrix<T> w0 = p.w;
  for (index_t i = 0; i < p.out; ++i) w0.row(i) *= T(std::ldexp(1.0, int(i % 7) * 6 - 18));
  context<cuda> gpu;
  context<cpu> host(2);
  const matrix<T, cuda> a(gpu, p.a);
  const matrix<T, cuda> b(gpu, p.b);
  const lora_options options{.alpha = 6};

  host_matrix<T> hw = w0;
  auto cpu_layer = lora<T, cpu>::from_factors(host, view(hw), {}, view(p.a), view(p.b), options);
  cpu_layer.merge(host);
  matrix<T, cuda> w(gpu, w0);
  auto layer = lora<T, cuda>::from_factors(gpu, w.view(), {}, a.view(), b.view(), options);
  layer.merge(gpu);
  EXPECT_TRUE(layer.merged());
  EXPECT_TRUE(same_bits(w.to_eigen(), hw)) << "lora merge";
  EXPECT_EQ(layer.merge_exceptions(), cpu_layer.merge_exceptions());
  EXPECT_FALSE(same_bits(w.to_eigen(), w0));
  layer.unmerge(gpu);
  EXPECT_TRUE(same_bits(w.to_eigen(), w0)) << "lora unmerge";

  {
    cpu_layer.unmerge(host);
    ASSERT_TRUE(same_bits(hw, w0));
    dora<T, cuda> d(gpu,
                    lora<T, cuda>::from_factors(gpu, w.view(), {}, a.view(), b.view(), options));
    // A magnitude other than the norms, so that the row scale is not 1.
    ops<cuda>::affine(gpu, T(1.5), T(0.25), d.magnitude());
    dora<T, cpu> hd(host,
                    lora<T, cpu>::from_factors(host, view(hw), {}, view(p.a), view(p.b), options));
    ops<cpu>::affine(host, T(1.5), T(0.25), hd.magnitude());
    hd.merge(host);
    d.merge(gpu);
    EXPECT_LE((w.to_eigen() - hw).norm(), tolerance<T> * hw.norm()) << "dora merge";
    EXPECT_FALSE(same_bits(w.to_eigen(), w0));
    d.unmerge(gpu);
    EXPECT_TRUE(same_bits(w.to_eigen(), w0)) << "dora unmerge";
  }

  // safe_merge with an overflowing s B A throws and leaves W untouched.
  const host_matrix<T> huge_b =
      host_matrix<T>::Constant(p.out, p.rank, std::numeric_limits<T>::max() / 2);
  const host_matrix<T> ones = host_matrix<T>::Ones(p.rank, p.in);
  const matrix<T, cuda> dhuge(gpu, huge_b);
  const matrix<T, cuda> dones(gpu, ones);
  auto bad = lora<T, cuda>::from_factors(gpu, w.view(), {}, dones.view(), dhuge.view(), options);
  EXPECT_THROW(bad.safe_merge(gpu), lowrank::numerical_error);
  EXPECT_FALSE(bad.merged());
  EXPECT_TRUE(same_bits(w.to_eigen(), w0)) << "safe_merge";
}

}  // namespace
}  // namespace lowrank::test::adapters_cross_backend_tests
