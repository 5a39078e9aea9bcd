#pragma once
// What the factors tests share: moving matrices between the host (in double)
// and a backend, and the finite-difference check of a layer's gradients.

#include <gtest/gtest.h>

#include <Eigen/Core>
#include <vector>

#include "support/backends.hpp"

namespace lowrank::test {

/// A backend view as a host matrix in double.
template <class T, class Backend>
Eigen::MatrixXd host(context<Backend>& ctx, matrix_view<const T, Backend> x) {
  host_matrix<T> out(x.rows(), x.cols());
  ops<Backend>::download(ctx, x, view(out));
  return out.template cast<double>();
}

/// A backend copy of a host matrix, rounded to T.
template <class T, class Backend>
matrix<T, Backend> upload(context<Backend>& ctx, const Eigen::MatrixXd& x) {
  const host_matrix<T> h = x.cast<T>();
  return to_backend<Backend, T>(ctx, h);
}

/// dst = x, rounded to T.
template <class T, class Backend>
void set(context<Backend>& ctx, matrix_view<T, Backend> dst, const Eigen::MatrixXd& x) {
  const host_matrix<T> h = x.cast<T>();
  ops<Backend>::upload(ctx, view(h), dst);
}

/// The gradients of L = sum(Y (.) G) that a layer's backward gives (with a
/// random non-zero B, so that every gradient is informative) against central
/// differences of L for every parameter entry and for X. L is linear in each
/// single entry, so the differences are exact up to rounding (double only):
/// error ~ eps / h = 1e-10 for h = 1e-6. Also: a backward without dX
/// accumulates the same parameter gradients a second time.
template <class Layer, class Backend>
void check_gradients(context<Backend>& ctx, Layer& layer, index_t n) {
  using matd = Eigen::MatrixXd;
  const index_t in = layer.in_features(), out = layer.out_features();
  set(ctx, layer.b(), matd::Random(out, layer.rank()));
  const matd x = matd::Random(n, in);
  const matd g = matd::Random(n, out);
  auto xb = upload<double>(ctx, x);
  auto gb = upload<double>(ctx, g);
  matrix<double, Backend> y(ctx, n, out), dx(ctx, n, in);
  auto loss = [&]() {
    layer.forward(ctx, xb.view(), y.view());
    return host(ctx, as_const(y.view())).cwiseProduct(g).sum();
  };
  layer.zero_grad(ctx);
  (void)loss();
  layer.backward(ctx, gb.view(), dx.view());
  std::vector<matd> first;
  for (auto& p : layer.parameters()) first.push_back(host(ctx, as_const(p.grad)));
  (void)loss();
  layer.backward(ctx, gb.view(), matrix_view<double, Backend>());
  std::size_t i = 0;
  for (auto& p : layer.parameters()) {
    const matd twice = host(ctx, as_const(p.grad));
    EXPECT_LT((twice - 2 * first[i]).norm(), 1e-12 * (1 + twice.norm())) << p.name;
    ++i;
  }
  const double h = 1e-6;
  auto differences = [&](auto&& assign, const matd& at) {
    matd fd(at.rows(), at.cols());
    for (index_t k = 0; k < at.size(); ++k) {
      matd plus = at, minus = at;
      plus.data()[k] += h;
      minus.data()[k] -= h;
      assign(plus);
      const double lp = loss();
      assign(minus);
      fd.data()[k] = (lp - loss()) / (2 * h);
    }
    assign(at);
    return fd;
  };
  i = 0;
  for (auto& p : layer.parameters()) {
    const matd fd =
        differences([&](const matd& v) { set(ctx, p.value, v); }, host(ctx, as_const(p.value)));
    EXPECT_LT((fd - first[i]).norm(), 1e-7 * (1 + first[i].norm())) << p.name;
    ++i;
  }
  const matd fdx = differences([&](const matd& v) { set(ctx, xb.view(), v); }, x);
  const matd dxh = host(ctx, as_const(dx.view()));
  EXPECT_LT((fdx - dxh).norm(), 1e-7 * (1 + dxh.norm())) << "x";
}

}  // namespace lowrank::test
