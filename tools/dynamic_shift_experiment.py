# Subspace iteration vs dashSVD-style dynamic shifts vs block Krylov: err/opt at equal products.
import numpy as np
rng = np.random.default_rng(0)
n = 1000; m = 1200
def haar(a, b):
    q, r = np.linalg.qr(rng.standard_normal((a, b))); return q * np.sign(np.diag(r))
U = haar(m, n); V = haar(n, n)
def mat(s): return (U * s) @ V.T
def subspace(A, k, l, q, shift):
    Q = np.linalg.qr(A @ rng.standard_normal((A.shape[1], l)))[0]
    alpha = 0.0
    for _ in range(q):
        Y = A @ (A.T @ Q) - alpha * Q
        if shift:
            # eigSVD of Y: singular values of Y approx s_i^2 - alpha
            Q, S, _ = np.linalg.svd(Y, full_matrices=False)
            if S[-1] > alpha: alpha = (S[-1] + alpha) / 2
        else:
            Q = np.linalg.qr(Y)[0]
    B = Q.T @ A
    u, s, vt = np.linalg.svd(B, full_matrices=False)
    return (Q @ u[:, :k]) * s[:k] @ vt[:k]
def krylov(A, k, b, d):
    Y = A @ rng.standard_normal((A.shape[1], b)); Qs = []
    for j in range(d):
        if Qs:
            Qc = np.hstack(Qs)
            for _ in range(2): Y = Y - Qc @ (Qc.T @ Y)
        Qj = np.linalg.qr(Y)[0]; Qs.append(Qj)
        if j + 1 < d: Y = A @ (A.T @ Qj)
    Q = np.hstack(Qs); B = Q.T @ A
    u, s, vt = np.linalg.svd(B, full_matrices=False)
    return (Q @ u[:, :k]) * s[:k] @ vt[:k]
for name, s in [("i^-1/2", 1/np.sqrt(np.arange(1, n+1))), ("1/i", 1/np.arange(1, n+1)),
                ("0.99^i", 0.99**np.arange(n)), ("cluster", np.r_[np.ones(50), 0.9+0.001*np.arange(30,0,-1), 0.1/np.sqrt(np.arange(81, n+1))])]:
    A = mat(s); k = 64; l = 74
    opt = np.sqrt(np.sum(s[k:]**2))
    row = []
    for q in (1, 2, 3, 4):
        e0 = np.linalg.norm(A - subspace(A, k, l, q, False)) / opt
        e1 = np.linalg.norm(A - subspace(A, k, l, q, True)) / opt
        row.append(f"q={q} [{(2*q+2)*l} cols] plain {e0:.4f} shift {e1:.4f}")
    print(name, " | ".join(row))
    for b, d in ((64, 2), (64, 3), (64, 4), (32, 4), (32, 6), (16, 8)):
        e = np.linalg.norm(A - krylov(A, k, b, d)) / opt
        print(f"   krylov b={b} d={d} [{2*b*d} cols] {e:.4f}")
