#!/usr/bin/env python3
"""Sweeps of the CUDA backend's one-sided Jacobi SVD, simulated in numpy.

The l x l SVD at the end of a randomized SVD runs as one block of Jacobi
rotations on the GPU (include/lowrank/backend/cuda/kernels/jacobi.cuh); its
time is (sweeps) x (l - 1 rounds) x (one round's latency). The sweep count
depends only on the matrix, the rotation threshold and whether the columns
or the rows are rotated, not on the GPU, so it can be studied here: this
script runs the kernel's algorithm (the circle method's pair order,
Rutishauser's rotation, the 16-lane partial sums) in double and prints the
sweeps until one rotates nothing, at l = 74, for

- the bench's small_steps R: the Cholesky factor of the Gram matrix of a
  Gaussian 4096 x l float block (clustered singular values: slow to start);
- a randomized SVD's R (k = 64, q = 2) of the GPU bench's matrix type,
  A = L diag(0.97^i) R^T / sqrt(n) + 1e-3 N (2048 x 2048 here);
- the triangular factor of a QR of U diag(s) V^T (random U, V) for
  s_i = 0.85^i and for s over 12 decades (graded spectra);

by columns (X = R) and by rows (X = R^T), with the thresholds sqrt(l)
eps_double (LAPACK's dgesvj) and sqrt(l) eps_float (sgesvj). Usage:
tools/jacobi_sweeps.py (numpy only; about four minutes). Measured 2026-11-29
(numpy 2.4):

    matrix                        eps_double        eps_float
                                  cols  rows        cols  rows
    small_steps R (l = 74)          10     9           8     8
    randomized SVD's R               8     8           7     6
    QR's R, s_i = 0.85^i            19     9          18     8
    QR's R, 12 decades              26    10          25     8

Hence ops<cuda>::svd rotates a square matrix by rows with the data's
threshold: the triangular factor's rows are graded like its singular values,
and by columns a graded spectrum comes close to the 30-sweep limit, beyond
which the kernel hands the matrix to cuSOLVER.
"""

import numpy as np

GROUP = 16  # threads per pair in the kernel (jacobi_group)


def group_sum(v):
    """The kernel's sum: GROUP strided partial sums, then a halving tree."""
    parts = np.array([v[lane::GROUP].sum() for lane in range(GROUP)])
    while len(parts) > 1:
        half = len(parts) // 2
        parts = parts[:half] + parts[half:]
    return parts[0]


def jacobi_sweeps(x, tol, max_sweeps=30):
    """Sweeps until one rotates nothing (max_sweeps + 1 when none does)."""
    x = x.astype(np.float64).copy()
    n = x.shape[1]
    players = n + (n & 1)
    turns = players - 1
    for sweep in range(1, max_sweeps + 1):
        rotated = False
        for rnd in range(turns):
            for pair in range(players // 2):
                first = 0 if pair == 0 else 1 + (rnd + pair - 1) % turns
                second = 1 + (rnd + turns - 1 - pair) % turns
                p, q = min(first, second), max(first, second)
                if q >= n:
                    continue
                xp, xq = x[:, p].copy(), x[:, q].copy()
                a, b, c = group_sum(xp * xp), group_sum(xq * xq), group_sum(xp * xq)
                if not abs(c) > tol * np.sqrt(a) * np.sqrt(b):
                    continue
                rotated = True
                zeta = (b - a) / (2 * c)
                t = np.copysign(1.0, zeta) / (abs(zeta) + np.sqrt(1 + zeta * zeta))
                cs = 1 / np.sqrt(1 + t * t)
                sn = cs * t
                x[:, p], x[:, q] = cs * xp - sn * xq, sn * xp + cs * xq
        if not rotated:
            return sweep
    return max_sweeps + 1


def graded_triangle(rng, l, singular_values):
    """R of the QR of U diag(s) V^T, U and V random orthogonal, in float."""
    u = np.linalg.qr(rng.standard_normal((l, l)))[0]
    v = np.linalg.qr(rng.standard_normal((l, l)))[0]
    return np.linalg.qr((u * singular_values) @ v.T)[1].astype(np.float32)


def main():
    l = 74
    tols = {"eps_double": np.sqrt(l) * np.finfo(np.float64).eps,
            "eps_float": np.sqrt(l) * np.finfo(np.float32).eps}
    rng = np.random.default_rng(7)

    y = rng.standard_normal((4096, l)).astype(np.float32)
    gram = (y.T @ y).astype(np.float32).astype(np.float64)
    r_steps = np.linalg.cholesky(gram).T.astype(np.float32)

    m = n = 2048
    rank, k = 512, 64
    left = rng.standard_normal((m, rank)) * (0.97 ** np.arange(rank) / np.sqrt(n))
    a = (left @ rng.standard_normal((n, rank)).T + 1e-3 * rng.standard_normal((m, n)))
    a = a.astype(np.float32).astype(np.float64)
    q = np.linalg.qr(a @ rng.standard_normal((n, k + 10)))[0]
    for _ in range(2):
        q = np.linalg.qr(a.T @ q)[0]
        q = np.linalg.qr(a @ q)[0]
    b = (q.T @ a).astype(np.float32)
    r_svd = np.linalg.qr(b.T.astype(np.float64))[1].astype(np.float32)

    print("By columns (X = R) and by rows (X = R^T), for each threshold:")
    print(f"{'matrix':<34}" + "".join(f"{'cols, ' + t:>18}{'rows, ' + t:>18}" for t in tols))
    cases = [("small_steps R (l = 74)", r_steps), ("randomized SVD's R", r_svd),
             ("QR's R, s_i = 0.85^i", graded_triangle(rng, l, 0.85 ** np.arange(l))),
             ("QR's R, s_i over 12 decades", graded_triangle(rng, l, np.logspace(0, -12, l)))]
    for name, x in cases:
        row = "".join(f"{jacobi_sweeps(x, tol):>18}{jacobi_sweeps(x.T, tol):>18}"
                      for tol in tols.values())
        print(f"{name:<34}{row}", flush=True)


if __name__ == "__main__":
    main()
