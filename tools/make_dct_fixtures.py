#!/usr/bin/env python3
"""Writes the DCT-family reference fixtures (run by hand) under
tests/basis/fixtures/ (transforms, DCT projector selection) and
tests/adapters/fixtures/loca/ (LoCA delta weight, forward and backward).

Generated with (the script warns when the installed versions differ):
    numpy 2.4.6, scipy 1.17.1 (scipy.fft, pocketfft), Python 3.11.7
    torch 2.15.0 (PyPI wheel 2.15.0+cu132, CPU, one thread): only for the cross-checks, no
                 fixture value comes from torch

    pip install numpy scipy torch
    python3 tools/make_dct_fixtures.py [--ista-src DIR]

The fixtures are committed; neither the build nor the tests run this script or need these
packages. Everything is seeded and computed in float64 on one thread, so a rerun on the same
software rewrites the same bytes (every file, README.md and the .json files included). Every
.npy is C-order '<f8', 1-D or 2-D; integer indices are stored as float64.

Convention (lowrank's). C is the orthonormal DCT-II matrix (n x n)
    C[k, j] = s_k cos(pi k (2j+1) / (2n)),  s_0 = sqrt(1/n),  s_k = sqrt(2/n) (k >= 1),
"basis vector k" is ROW k of C, dct(x) = C x = scipy.fft.dct(x, type=2, norm='ortho'),
idct(y) = C^T y = scipy.fft.idct(y, type=2, norm='ortho'), dct2(X) = C_m X C_n^T
= scipy.fft.dctn(X, type=2, norm='ortho'), idct2(Y) = C_m^T Y C_n. The script builds C
explicitly (the argument k(2j+1) is reduced modulo 4n in integers before the cosine) and
asserts that every scipy result agrees with it to < 1e-12 (max abs).

1. Transforms (tests/basis/fixtures/): rows_{n}_{x,dct,idct} (4 x n, along axis 1) for n in
   1, 2, 3, 7, 64, 100, 127, 1000, 4096; cols_{n}_{x,dct,idct} (n x 3, along axis 0) for the
   same n except 4096; dct2_{m}x{n}_{x,y} and idct2_{m}x{n}_y for (1,1), (3,7), (64,100),
   (127,33).

2. DCT projector selection (tests/basis/fixtures/proj_*): the rule of
   IST-DASLab/ISTA-DASLab-Optimizers, commit 4c98e6e7d8a51147cc8fdd77458baac881852b56
   (2026-06-16), ista_daslab_optimizers/fft_low_rank/fft_projector.py
   (FFTLowRankProjector: _setup l.27-45, compute_similarity_matmul l.50-57,
   compute_similarity_makhoul l.59-67, change_subspace l.69-108,
   from_lower_to_higher_dimensions l.155-172), ista_daslab_optimizers/utils/dct.py
   (dct3_matrix l.6-15, dct_type2_makhoul l.17-45) and fft_low_rank/dct_adamw.py (setup_Q
   l.79-103: sim_type 'makhoul' -> Q = dct3_matrix(n).t() = C^T, 'matmul' (the default)
   -> Q = C). Transcribed in numpy with Q = C^T (the reference's sim_type='makhoul' basis):
       right (m >= n):  S = G C^T (m x n), score_j = ||S[:, j]||_p
       left  (m <  n):  S = C G   (m x n), score_i = ||S[i, :]||_p
       idx = top-r scores, stored sorted ascending
       R = S[:, idx] (right) or S[idx, :] (left)
       back(R) = R C[idx, :] (right) or C[idx, :]^T R (left)
   p = 1 (the reference default) and p = 2. NOTE: the reference's makhoul path always scores
   with p = 1 (fft_projector.py l.62 and l.66 hard-code p=1; ell_norm is ignored); the p = 2
   fixture equals the reference's compute_similarity_matmul (p = ell_norm = 2) called with
   Q = C^T, a pairing DCTAdamW itself never builds. G is built in the DCT domain with
   decaying, permuted frequency weights; two cases get a one-entry "spike" frequency so
   that the l1 and l2 selections differ. A seed is used only if the r-th and (r+1)-th scores
   differ by > 1e-2 relative for both p (otherwise the next seed, deterministically).
   With --ista-src DIR (the ista_daslab_optimizers package directory, e.g. from the
   1.1.15 wheel, whose fft_projector.py, utils/dct.py and utils/global_cache.py are
   byte-identical to the commit above; the package itself needs CUDA, so the three files
   are loaded alone) the script runs the reference projector on the CPU in float64 and
   asserts the same indices and R (to 1e-5 x max|G|: the reference's dct3_matrix and
   Makhoul twiddles are float32-accurate) for makhoul/p=1, matmul(Q=C^T)/p=2 and the default
   matmul(Q=C)/p=1 (recorded in proj_cases.json).

3. LoCA (tests/adapters/fixtures/loca/): TL-UESTC/LoCA, peft/src/peft/tuners/loca/
   {layer.py, dct_utils.py}. The authors' repository is not available here; it was read
   through SDMuhsin/SCoRA, which vendors dct_utils.py "byte-identical" (src/loca_dct_utils.py,
   commit aebf63753ddb3cda4c856dfb40fdb371746e4957) and layer.py's IdctWithIndexGrad
   "byte-identical" plus spectrum_to_para / get_delta_weight / the schedule "verbatim in
   behaviour" (src/loca_adapter.py, commit 8c2460c0f97ede32063f8734ab840acb6d8469d7;
   its src/verify_loca_adapter.py checks dW bit-identical against the authors' layer).
   Transcribed in numpy, float64, dct_mode 'default' (dense GEMMs):
       lo    = clamp(spectrum_indices, 0, 0.999)                    # 2 x k
       loc   = round_half_even([lo[0] (M-1); lo[1] (N-1)])           # row 0 = rows (out)
       S     = zeros(M, N); S[loc[0,i], loc[1,i]] += a_i             # duplicates add
       dW    = scale * C_M^T S C_N
       Y     = X W0^T + b + X dW^T
   backward with dL/dY = dY (loss sum(Y * dY)):
       dX    = dY (W0 + dW)
       G     = dY^T X                              # dL/d(dW)
       K     = C_M (scale G) C_N^T                 # dct2 of the grad of the Function's output
       da_i  = K[r_i, c_i]
       up    = r+1 if r < M-1 else M-1;  dn = r-1 if r > 0 else 0
       drow_i = clamp(0.5 a_i (K[up, c_i] - K[dn, c_i]), -1, 1)
       rt    = c+1 if c < N-1 else N-1;  lf = c-1 if c > 0 else 0
       dcol_i = clamp(0.5 a_i (K[r_i, rt] - K[r_i, lf]), -1, 1)
       dspectrum_indices[0, i] = (M-1) drow_i [0 < s_0i < 0.999]
       dspectrum_indices[1, i] = (N-1) dcol_i [0 < s_1i < 0.999]
   (the rounding is a straight-through step; the last two lines are torch autograd through
   the stack/multiply and the clamp; torch 2.15 passes no gradient at exactly 0 or 0.999, so
   the fixture keeps every parameter off the bounds). The script cross-checks everything
   against a torch autograd run of the same graph (clamp, stack, a custom Function with the
   rule above, sparse_coo_tensor(...).to_dense() for S, scale, linear).
"""

import argparse
import importlib.metadata as md
import importlib.util
import json
import math
import os
import pathlib
import re
import sys
import types

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import warnings  # noqa: E402

import numpy as np  # noqa: E402
import scipy  # noqa: E402
import scipy.fft as sfft  # noqa: E402
import torch  # noqa: E402

warnings.filterwarnings("ignore", message="Sparse invariant checks")

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT_BASIS = ROOT / "tests" / "basis" / "fixtures"
OUT_LOCA = ROOT / "tests" / "adapters" / "fixtures" / "loca"

PINNED = {"numpy": "2.4.6", "scipy": "1.17.1", "torch": "2.15.0"}
ISTA_COMMIT = "4c98e6e7d8a51147cc8fdd77458baac881852b56"
TOL = 1e-12


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------
def save(out, name, arr):
    a = np.ascontiguousarray(np.asarray(arr, dtype="<f8"))
    assert a.ndim in (1, 2), (name, a.shape)
    assert np.isfinite(a).all(), name
    np.save(out / f"{name}.npy", a, allow_pickle=False)


def dct_matrix(n):
    """Orthonormal DCT-II matrix, C[k, j] = s_k cos(pi k (2j+1) / (2n)), argument reduced
    exactly (k (2j+1) mod 4n in integers) so that the cosine sees an angle in [0, 2 pi)."""
    k = np.arange(n, dtype=np.int64)[:, None]
    j = np.arange(n, dtype=np.int64)[None, :]
    red = (k * (2 * j + 1)) % (4 * n)
    C = np.cos(np.pi * red.astype(np.float64) / (2 * n))
    C *= math.sqrt(2.0 / n)
    C[0, :] = math.sqrt(1.0 / n)
    return C


def dumps(obj):
    """json.dumps(indent=2) with every list of scalars on one line."""
    text = json.dumps(obj, indent=2)
    return re.sub(r"\[[^\[\]{}]*\]", lambda mt: " ".join(mt.group(0).split()), text) + "\n"


def maxerr(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) if np.size(a) else 0.0


# ---------------------------------------------------------------------------------------
# 1. Transforms
# ---------------------------------------------------------------------------------------
SIZES = (1, 2, 3, 7, 64, 100, 127, 1000, 4096)
COLS_SKIP = (4096,)  # rows_4096 covers that size; keeps the directory small
SHAPES_2D = ((1, 1), (3, 7), (64, 100), (127, 33))


def make_transforms():
    print("transforms")
    Cs = {}

    def C_of(n):
        if n not in Cs:
            Cs[n] = dct_matrix(n)
            if n <= 1000:
                e = maxerr(Cs[n] @ Cs[n].T, np.eye(n))
                assert e < TOL, (n, e)
        return Cs[n]

    worst = 0.0
    for n in SIZES:
        C = C_of(n)
        rng = np.random.default_rng(10_000 + n)
        X = rng.standard_normal((4, n))
        D = sfft.dct(X, type=2, norm="ortho", axis=1)
        Iv = sfft.idct(X, type=2, norm="ortho", axis=1)
        e = max(maxerr(D, X @ C.T), maxerr(Iv, X @ C))
        assert e < TOL, ("rows", n, e)
        worst = max(worst, e)
        save(OUT_BASIS, f"rows_{n}_x", X)
        save(OUT_BASIS, f"rows_{n}_dct", D)
        save(OUT_BASIS, f"rows_{n}_idct", Iv)
        if n in COLS_SKIP:
            continue
        Xc = rng.standard_normal((n, 3))
        Dc = sfft.dct(Xc, type=2, norm="ortho", axis=0)
        Ic = sfft.idct(Xc, type=2, norm="ortho", axis=0)
        e = max(maxerr(Dc, C @ Xc), maxerr(Ic, C.T @ Xc))
        assert e < TOL, ("cols", n, e)
        worst = max(worst, e)
        save(OUT_BASIS, f"cols_{n}_x", Xc)
        save(OUT_BASIS, f"cols_{n}_dct", Dc)
        save(OUT_BASIS, f"cols_{n}_idct", Ic)
    for m, n in SHAPES_2D:
        rng = np.random.default_rng(20_000 + 1000 * m + n)
        X = rng.standard_normal((m, n))
        Y = sfft.dctn(X, type=2, norm="ortho")
        Z = sfft.idctn(X, type=2, norm="ortho")
        Cm, Cn = C_of(m), C_of(n)
        e = max(maxerr(Y, Cm @ X @ Cn.T), maxerr(Z, Cm.T @ X @ Cn))
        assert e < TOL, ("2d", m, n, e)
        worst = max(worst, e)
        save(OUT_BASIS, f"dct2_{m}x{n}_x", X)
        save(OUT_BASIS, f"dct2_{m}x{n}_y", Y)
        save(OUT_BASIS, f"idct2_{m}x{n}_y", Z)
    print(f"  scipy.fft vs explicit C: max abs error {worst:.3g}")


# ---------------------------------------------------------------------------------------
# 2. DCT projector selection (ISTA FFTLowRankProjector, makhoul basis Q = C^T)
# ---------------------------------------------------------------------------------------
PROJ_CASES = [
    # name, m, n, rank, spike (one frequency with a single nonzero: l1 != l2 selection)
    ("right_40x24_r5", 40, 24, 5, True),
    ("left_24x40_r6", 24, 40, 6, True),
    ("right_33x17_r4", 33, 17, 4, False),
    ("left_17x33_r4", 17, 33, 4, False),
]
MIN_REL_GAP = 1e-2
DECAY = 0.75


def transform_domain(G, side):
    """S for our basis (reference sim_type='makhoul'): right G C^T, left C G."""
    m, n = G.shape
    if side == "right":
        return G @ dct_matrix(n).T
    return dct_matrix(m) @ G


def scores_of(S, side, p):
    axis = 0 if side == "right" else 1  # right: norm of each column; left: of each row
    return np.linalg.norm(S, ord=p, axis=axis) if p == 2 else np.abs(S).sum(axis=axis)


def top_r(scores, r):
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    gap = (s[r - 1] - s[r]) / s[r - 1] if len(s) > r else math.inf
    return np.sort(order[:r]), gap


def select(S, side, idx):
    return S[:, idx] if side == "right" else S[idx, :]


def back_project(R, side, idx, size):
    C = dct_matrix(size)
    return R @ C[idx, :] if side == "right" else C[idx, :].T @ R


def build_proj_G(seed, m, n, r, spike):
    side = "right" if m >= n else "left"
    size = min(m, n)
    other = m if side == "right" else n
    rng = np.random.default_rng(seed)
    w = DECAY ** rng.permutation(size).astype(np.float64)
    Z = rng.standard_normal((other, size)) * w  # column f = frequency f's coefficients
    if spike:
        s2 = np.sort(np.linalg.norm(Z, axis=0))[::-1]
        l2_now = np.argsort(-np.linalg.norm(Z, axis=0), kind="stable")
        f = int(l2_now[r + 2])  # a frequency outside the top r by both norms
        Z[:, f] = 0.0
        Z[rng.integers(other), f] = math.sqrt(s2[r - 2] * s2[r - 1])  # between l2 #r-1, #r
    S = Z if side == "right" else Z.T  # right: m x n columns; left: rows are frequencies
    G = S @ dct_matrix(n) if side == "right" else dct_matrix(m).T @ S
    return side, size, G


def make_projector(meta, ista):
    print("DCT projector")
    cases = {}
    for ci, (name, m, n, r, spike) in enumerate(PROJ_CASES):
        for seed in range(30_000 + 100 * ci, 30_000 + 100 * ci + 100):
            side, size, G = build_proj_G(seed, m, n, r, spike)
            S = transform_domain(G, side)
            idx1, gap1 = top_r(scores_of(S, side, 1), r)
            idx2, gap2 = top_r(scores_of(S, side, 2), r)
            ok = gap1 > MIN_REL_GAP and gap2 > MIN_REL_GAP
            if spike:
                ok = ok and not np.array_equal(idx1, idx2)
            # the reference default (sim_type='matmul', Q = C, p = 1): basis = columns of C
            C = dct_matrix(size)
            Sd = G @ C if side == "right" else C.T @ G
            idxd, gapd = top_r(scores_of(Sd, side, 1), r)
            ok = ok and gapd > MIN_REL_GAP
            if ok:
                break
        else:
            raise RuntimeError(f"{name}: no seed passed the gap checks")
        R1, R2 = select(S, side, idx1), select(S, side, idx2)
        B2 = back_project(R2, side, idx2, size)
        # back-projection sanity: for an orthonormal basis, back(R) is the orthogonal
        # projection of G on the selected basis vectors
        Csel = dct_matrix(size)[idx2, :]
        P = G @ Csel.T @ Csel if side == "right" else Csel.T @ Csel @ G
        assert maxerr(B2, P) < TOL
        print(f"  {name}: seed {seed}, side {side}, idx_l1 {idx1.tolist()}, "
              f"idx_l2 {idx2.tolist()}, default(matmul) {idxd.tolist()}, "
              f"gaps {gap1:.3g}/{gap2:.3g}/{gapd:.3g}")
        save(OUT_BASIS, f"proj_{name}_G", G)
        save(OUT_BASIS, f"proj_{name}_idx_l1", idx1)
        save(OUT_BASIS, f"proj_{name}_idx_l2", idx2)
        save(OUT_BASIS, f"proj_{name}_R_l1", R1)
        save(OUT_BASIS, f"proj_{name}_R_l2", R2)
        save(OUT_BASIS, f"proj_{name}_back_l2", B2)
        cases[name] = {
            "shape": [m, n], "rank": r, "side": side, "size": size, "seed": seed,
            "spike": spike, "idx_l1": idx1.tolist(), "idx_l2": idx2.tolist(),
            "rel_gap_l1": round(gap1, 6), "rel_gap_l2": round(gap2, 6),
            "reference_default_matmul_idx_l1": idxd.tolist(),
            "R_shape": list(R1.shape),
        }
        if ista is not None:
            check_ista(ista, name, G, side, size, r, idx1, idx2, idxd, R1, R2, B2)
    meta["cases"] = cases
    if ista is None:
        print("  (reference cross-check skipped: pass --ista-src DIR to run it)")


def load_ista(src):
    """Loads utils/global_cache.py, utils/dct.py and fft_low_rank/fft_projector.py of the
    ista_daslab_optimizers package alone (its __init__ imports CUDA extensions)."""
    src = pathlib.Path(src)
    for pkg in ("ista_daslab_optimizers", "ista_daslab_optimizers.utils",
                "ista_daslab_optimizers.fft_low_rank"):
        mod = types.ModuleType(pkg)
        mod.__path__ = []
        sys.modules[pkg] = mod
    mods = {}
    for rel in ("utils/global_cache.py", "utils/dct.py", "fft_low_rank/fft_projector.py"):
        name = "ista_daslab_optimizers." + rel[:-3].replace("/", ".")
        spec = importlib.util.spec_from_file_location(name, src / rel)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        mods[rel] = mod
    return mods["utils/dct.py"], mods["fft_low_rank/fft_projector.py"]


def check_ista(ista, name, G, side, size, r, idx1, idx2, idxd, R1, R2, B2):
    dct_mod, proj_mod = ista
    C_ref = dct_mod.dct3_matrix(size, torch.float64, "cpu")  # the reference's Q for 'matmul'
    assert maxerr(C_ref.numpy(), dct_matrix(size)) < 1e-5  # float32-built
    Gt = torch.from_numpy(G.copy())

    def run(sim_type, Q, p):
        proj = proj_mod.FFTLowRankProjector(Gt, rank=r, proj="dct", rotate_subspace=False,
                                            sim_type=sim_type, ell_norm=p)
        assert proj.is_right_proj == (side == "right")
        proj.inc_step()
        a = proj.change_subspace(Q, Gt.clone(), col_norms=None)
        ind = proj.indices_crt.long()
        back = proj.from_lower_to_higher_dimensions(Q, a)
        order = torch.argsort(ind)
        a_sorted = a[:, order] if side == "right" else a[order, :]
        return ind[order].numpy(), a_sorted.numpy(), back.numpy()

    tol = 1e-5 * max(1.0, float(np.abs(G).max()))
    i1, a1, _ = run("makhoul", C_ref.t(), 1)
    assert np.array_equal(i1, idx1) and maxerr(a1, R1) < tol, (name, maxerr(a1, R1))
    i2, a2, b2 = run("matmul", C_ref.t(), 2)
    assert np.array_equal(i2, idx2) and maxerr(a2, R2) < tol, (name, maxerr(a2, R2))
    assert maxerr(b2, B2) < tol, (name, maxerr(b2, B2))
    i3, _, _ = run("makhoul", C_ref.t(), 2)  # ell_norm is ignored on the makhoul path
    assert np.array_equal(i3, idx1), name
    idd, _, _ = run("matmul", C_ref, 1)
    assert np.array_equal(idd, idxd), name
    print(f"    reference FFTLowRankProjector agrees (makhoul p=1, matmul Q=C^T p=2, "
          f"makhoul ignores ell_norm=2, default matmul Q=C p=1)")


# ---------------------------------------------------------------------------------------
# 3. LoCA
# ---------------------------------------------------------------------------------------
L_M, L_N, L_B = 12, 10, 4
L_SCALE = 1.5
CLAMP_MIN, CLAMP_MAX = 0.0, 0.999
# (row parameter, column parameter) -> location after clamp, scale and round
L_INDICES = [
    (0.02, 0.03),    # (0, 0)   corner, both from inside the clamp range
    (-0.10, 0.30),   # (0, 3)   row parameter below 0: clamped, no gradient reaches it
    (1.20, 1.10),    # (11, 9)  both above 0.999: clamped to 0.999*(M-1) = 10.989 -> 11
    (0.97, 0.85),    # (11, 8)  last row from inside the range
    (0.40, 0.62),    # (4, 6)
    (0.37, 0.66),    # (4, 6)   duplicate of the previous location: coefficients add
    (0.75, 0.985),   # (8, 9)   last column from inside the range
]
L_COEF = [0.2, -0.65, 1.25, 1.8, -0.45, 0.85, -1.1]
L_SCHEDULE_LLI = 75
L_SCHEDULE_ITERS = 100


def loca_reference(W0, b, X, dY, a, si, scale):
    M, N = W0.shape
    CM, CN = dct_matrix(M), dct_matrix(N)
    lo = np.clip(si, CLAMP_MIN, CLAMP_MAX)
    scaled = np.stack([lo[0] * (M - 1), lo[1] * (N - 1)])
    loc = np.round(scaled).astype(np.int64)  # numpy and torch: round half to even
    rows, cols = loc[0], loc[1]
    S = np.zeros((M, N))
    np.add.at(S, (rows, cols), a)
    dW = scale * (CM.T @ S @ CN)
    Y = X @ W0.T + b[None, :] + X @ dW.T
    dX = dY @ (W0 + dW)
    G = dY.T @ X
    K = CM @ (scale * G) @ CN.T
    dcoef = K[rows, cols]
    up = np.where(rows < M - 1, rows + 1, M - 1)
    dn = np.where(rows > 0, rows - 1, 0)
    rt = np.where(cols < N - 1, cols + 1, N - 1)
    lf = np.where(cols > 0, cols - 1, 0)
    drow_unclamped = 0.5 * a * (K[up, cols] - K[dn, cols])
    dcol_unclamped = 0.5 * a * (K[rows, rt] - K[rows, lf])
    drow = np.clip(drow_unclamped, -1.0, 1.0)
    dcol = np.clip(dcol_unclamped, -1.0, 1.0)
    inside = (si > CLAMP_MIN) & (si < CLAMP_MAX)
    dsi = np.where(inside, np.stack([drow * (M - 1), dcol * (N - 1)]), 0.0)  # +0.0 masked
    return dict(scaled=scaled, rows=rows, cols=cols, dW=dW, Y=Y, dX=dX, dcoef=dcoef,
                drow=drow, dcol=dcol, drow_unclamped=drow_unclamped,
                dcol_unclamped=dcol_unclamped, dsi=dsi, inside=inside)


class _LocaIdct(torch.autograd.Function):
    """The rule of LoCA's IdctWithIndexGrad (dct_mode 'default'), written again in torch
    for the cross-check."""

    @staticmethod
    def forward(ctx, coef, locations, M, N):
        loc = locations.round().long()
        ctx.save_for_backward(loc, coef)
        ctx.shape = (M, N)
        CM = torch.from_numpy(dct_matrix(M))
        CN = torch.from_numpy(dct_matrix(N))
        S = torch.sparse_coo_tensor(loc, coef, (M, N)).to_dense()
        return CM.T @ S @ CN

    @staticmethod
    def backward(ctx, g):
        loc, coef = ctx.saved_tensors
        M, N = ctx.shape
        CM = torch.from_numpy(dct_matrix(M))
        CN = torch.from_numpy(dct_matrix(N))
        K = CM @ g @ CN.T
        r, c = loc[0], loc[1]
        dn = torch.where(r > 0, r - 1, torch.zeros_like(r))
        up = torch.where(r < M - 1, r + 1, torch.full_like(r, M - 1))
        lf = torch.where(c > 0, c - 1, torch.zeros_like(c))
        rt = torch.where(c < N - 1, c + 1, torch.full_like(c, N - 1))
        dr = (0.5 * coef * (K[up, c] - K[dn, c])).clamp(min=-1, max=1)
        dc = (0.5 * coef * (K[r, rt] - K[r, lf])).clamp(min=-1, max=1)
        return K[r, c], torch.stack([dr, dc]), None, None


def loca_torch(W0, b, X, dY, a, si, scale):
    M, N = W0.shape
    t = lambda v, g=False: torch.tensor(v, dtype=torch.float64, requires_grad=g)  # noqa: E731
    W0t, bt, Xt, dYt = t(W0), t(b), t(X, True), t(dY)
    at, sit = t(a, True), t(si, True)
    lo = torch.clamp(sit, min=CLAMP_MIN, max=CLAMP_MAX)
    lo = torch.stack([lo[0, :] * (M - 1), lo[1, :] * (N - 1)], dim=0)
    dW = _LocaIdct.apply(at, lo, M, N) * scale
    Y = torch.nn.functional.linear(Xt, W0t, bt) + Xt @ dW.T
    (Y * dYt).sum().backward()
    # the coefficient gradient of the plain dense path (what LoCA uses while the locations
    # are frozen) must equal the Function's K[r, c]
    a2 = t(a, True)
    loc = lo.detach().round().long()
    S = torch.sparse_coo_tensor(loc, a2, (M, N)).to_dense()
    dW2 = (torch.from_numpy(dct_matrix(M)).T @ S @ torch.from_numpy(dct_matrix(N))) * scale
    (((torch.nn.functional.linear(Xt.detach(), W0t, bt) + Xt.detach() @ dW2.T) * dYt).sum()
     ).backward()
    return dict(dW=dW.detach().numpy(), Y=Y.detach().numpy(), dX=Xt.grad.numpy(),
                dcoef=at.grad.numpy(), dsi=sit.grad.numpy(), dcoef_dense=a2.grad.numpy())


def loca_schedule(lli, iters):
    """LoCA's alternating schedule (SCoRA src/loca_adapter.py l.141-158, the authors'
    layer.py forward): returns 0 (coefficients train) / 1 (locations train) per forward."""
    coef_on, loc_on, out = True, False, []
    for g in range(iters):
        if g == 0:
            coef_on, loc_on = True, False
        else:
            if g < lli:
                if g % 30 == 0:
                    coef_on, loc_on = True, False
                if g % 30 == 10:
                    coef_on, loc_on = False, True
            if g == lli:
                coef_on, loc_on = True, False
        assert coef_on != loc_on
        out.append(1 if loc_on else 0)
    return out


def make_loca():
    print("LoCA")
    M, N, B = L_M, L_N, L_B
    rng = np.random.default_rng(40_000)
    W0 = rng.standard_normal((M, N))
    b = rng.standard_normal(M)
    X = rng.standard_normal((B, N))
    dY = rng.standard_normal((B, M))
    a = np.array(L_COEF, dtype=np.float64)
    si = np.array(L_INDICES, dtype=np.float64).T.copy()  # 2 x k
    k = a.size
    assert np.all(si != CLAMP_MIN) and np.all(si != CLAMP_MAX)  # torch-version-free masks
    ref = loca_reference(W0, b, X, dY, a, si, L_SCALE)
    frac = np.abs(ref["scaled"] - np.floor(ref["scaled"]) - 0.5)
    assert frac.min() > 0.05, "a location too close to a rounding tie"
    locs = list(zip(ref["rows"].tolist(), ref["cols"].tolist()))
    assert locs == [(0, 0), (0, 3), (11, 9), (11, 8), (4, 6), (4, 6), (8, 9)], locs
    clamped = (np.abs(np.concatenate([ref["drow_unclamped"], ref["dcol_unclamped"]])) > 1)
    assert 0 < clamped.sum() < 2 * k - 2, "want some clamped and some free location grads"
    raw = np.abs(np.concatenate([ref["drow_unclamped"], ref["dcol_unclamped"]]))
    assert np.abs(raw - 1.0).min() > 1e-3, "a raw location gradient too close to the clamp"
    tr = loca_torch(W0, b, X, dY, a, si, L_SCALE)
    for key in ("dW", "Y", "dX", "dcoef", "dsi"):
        e = maxerr(ref[key], tr[key])
        assert e < TOL, (key, e)
    assert maxerr(tr["dcoef_dense"], ref["dcoef"]) < TOL
    print(f"  locations {locs}")
    print(f"  raw row grads {np.round(ref['drow_unclamped'], 4).tolist()}")
    print(f"  raw col grads {np.round(ref['dcol_unclamped'], 4).tolist()}")
    print("  torch autograd of the same graph agrees (< 1e-12)")

    files = {"W0": W0, "b": b, "X": X, "dY": dY, "coef": a, "spectrum_indices": si,
             "rows": ref["rows"], "cols": ref["cols"], "dW": ref["dW"], "Y": ref["Y"],
             "dX": ref["dX"], "dcoef": ref["dcoef"], "drow_raw": ref["drow"],
             "dcol_raw": ref["dcol"], "dspectrum_indices": ref["dsi"]}
    for name, arr in files.items():
        save(OUT_LOCA, name, arr)
    params = {
        "M": M, "N": N, "batch": B, "k": k, "scale": L_SCALE,
        "clamp_min": CLAMP_MIN, "clamp_max": CLAMP_MAX,
        "location_grad_clamp": [-1.0, 1.0], "rounding": "half to even (torch.round)",
        "dct_mode": "default", "loss": "sum(Y * dY)",
        "duplicate_entries": [[4, 5]],
        "location_grad_was_clamped": {
            "rows": (np.abs(ref["drow_unclamped"]) > 1).astype(int).tolist(),
            "cols": (np.abs(ref["dcol_unclamped"]) > 1).astype(int).tolist()},
        "chain_rule_passes": {"rows": ref["inside"][0].astype(int).tolist(),
                              "cols": ref["inside"][1].astype(int).tolist()},
        "schedule_example": {
            "learn_location_iter": L_SCHEDULE_LLI,
            "trains_locations_by_global_iter": loca_schedule(L_SCHEDULE_LLI,
                                                             L_SCHEDULE_ITERS)},
        "seed": 40_000,
        "generator": "tools/make_dct_fixtures.py",
    }
    (OUT_LOCA / "params.json").write_text(dumps(params))


# ---------------------------------------------------------------------------------------
README_BASIS = """\
# DCT reference fixtures (transforms and the DCT projector)

Written by `tools/make_dct_fixtures.py` (`python3 tools/make_dct_fixtures.py` regenerates
every file here, this README and `proj_cases.json` included, byte for byte on the same
software: numpy 2.4.6, scipy 1.17.1, Python 3.11.7; torch 2.15.0 only for cross-checks).
Nothing in the build or the tests needs Python.

All files are C-order `.npy`, `<f8` (float64), 1-D or 2-D. Integer indices are stored as
float64. Inputs are standard normal draws (numpy `default_rng`, seeded per file group).

## Convention

Orthonormal DCT-II matrix C (n x n): `C[k, j] = s_k cos(pi k (2j+1) / (2n))`,
`s_0 = sqrt(1/n)`, `s_k = sqrt(2/n)`. Basis vector k is **row k of C**.
`dct(x) = C x` (scipy `dct(type=2, norm='ortho')`), `idct(y) = C^T y` (scipy
`idct(type=2, norm='ortho')`), `dct2(X) = C_m X C_n^T`, `idct2(Y) = C_m^T Y C_n`.
Every scipy result was asserted equal to the explicit matrix product to < 1e-12 (max abs);
the explicit C reduces `k (2j+1)` modulo `4n` in integers before the cosine.

## Transforms

| files | shape | content |
|---|---|---|
| `rows_{n}_x.npy` | 4 x n | input |
| `rows_{n}_dct.npy` | 4 x n | dct of each row (`X C^T`) |
| `rows_{n}_idct.npy` | 4 x n | idct of each row of `rows_{n}_x` (`X C`) |
| `cols_{n}_x.npy` | n x 3 | input |
| `cols_{n}_dct.npy` | n x 3 | dct of each column (`C X`) |
| `cols_{n}_idct.npy` | n x 3 | idct of each column of `cols_{n}_x` (`C^T X`) |
| `dct2_{m}x{n}_x.npy` | m x n | input |
| `dct2_{m}x{n}_y.npy` | m x n | `C_m X C_n^T` (scipy `dctn`, ortho) |
| `idct2_{m}x{n}_y.npy` | m x n | `C_m^T X C_n` of the same X (scipy `idctn`, ortho) |

n in 1, 2, 3, 7, 64, 100, 127, 1000, 4096 (no `cols_4096_*`: `rows_4096_*` covers that size);
(m, n) in (1, 1), (3, 7), (64, 100), (127, 33).

## DCT projector selection: `proj_<case>_*.npy`

Reference: IST-DASLab/ISTA-DASLab-Optimizers commit 4c98e6e7d8a51147cc8fdd77458baac881852b56,
`ista_daslab_optimizers/fft_low_rank/fft_projector.py` (`FFTLowRankProjector`),
`ista_daslab_optimizers/utils/dct.py`, `fft_low_rank/dct_adamw.py` (`setup_Q`). Transcribed
in numpy with **our basis, Q = C^T** (columns of Q are rows of C), which is the reference's
`sim_type='makhoul'` mode:

    right (m >= n):  S = G C^T  (m x n)   score_j = ||S[:, j]||_p   (columns)
    left  (m <  n):  S = C G    (m x n)   score_i = ||S[i, :]||_p   (rows)
    idx  = the r largest scores, SORTED ASCENDING (the reference keeps topk's order,
           sorted=False; sort before comparing)
    R    = S[:, idx] (m x r, right)  or  S[idx, :] (r x n, left)
    back = R C[idx, :]  (right; the reference's R Q[:, idx]^T)
           C[idx, :]^T R (left;  the reference's Q[:, idx] R)

| file | content |
|---|---|
| `proj_<case>_G.npy` | the gradient, m x n |
| `proj_<case>_idx_l1.npy`, `_idx_l2.npy` | top-r indices for p = 1 (reference default) / p = 2, 1-D, sorted |
| `proj_<case>_R_l1.npy`, `_R_l2.npy` | the low-rank gradient with those indices |
| `proj_<case>_back_l2.npy` | back-projection of `R_l2`, m x n (= the orthogonal projection of G on the selected basis vectors) |

| case | G | r | side | note |
|---|---|---|---|---|
| right_40x24_r5 | 40x24 | 5 | right | spike frequency: idx_l1 != idx_l2 |
| left_24x40_r6 | 24x40 | 6 | left | spike frequency: idx_l1 != idx_l2 |
| right_33x17_r4 | 33x17 | 4 | right | |
| left_17x33_r4 | 17x33 | 4 | left | |

G is built in the DCT domain: frequency f gets a random normal vector times `0.75^pi(f)`
for a random permutation pi, so the winners are not simply the low frequencies; in the two
"spike" cases one losing frequency is replaced by a single nonzero entry whose l2 norm
lies between the (r-1)-th and r-th l2 scores, so it is selected by l2 and not by l1. Seeds
are accepted only when the r-th and (r+1)-th scores differ by more than 1e-2 (relative) for
l1, l2 and the reference default below. `proj_cases.json` has the shapes, ranks, sides,
seeds, the indices, the gaps, and the indices the reference *default* picks.

Details of the reference worth knowing (line numbers at the commit above):

- Side: `n >= m` (rows >= cols) -> right, else left (`fft_projector.py` l.27-45), except that
  (512|1024) x (3584|4096) is forced to the right side with size m.
- `sim_type='makhoul'` (our basis) computes S by Makhoul's FFT DCT-II (`utils/dct.py`
  l.17-45; `S = G C^T` right, `S = (G^T C^T)^T = C G` left) and **always scores with the
  l1 norm** (`fft_projector.py` l.62, l.66: `norm(p=1)`), ignoring `ell_norm`. The p = 2
  fixture equals `compute_similarity_matmul` (l.50-57, `p=ell_norm=2`) with `Q = C^T`.
- **Default `sim_type='matmul'` uses Q = C** (`dct_adamw.py` l.83-89; `dct3_matrix` is our
  C despite its name): right `S = G C`, left `S = C^T G`, back-projection with `Q[:, idx] =
  C[:, idx]`. Its basis vectors are therefore the **columns** of C (the DCT-III vectors,
  `C[:, j]`), not the rows: a different subspace, not a different algorithm. The indices it
  picks for these G are `reference_default_matmul_idx_l1` in `proj_cases.json`.
- `ell_norm < 0` ("theoretical similarity") multiplies the scores by the column
  |ell_norm|-norms of Q (all 1 for p = 2, not constant for p = 1); `topk(sorted=False)`,
  indices stored int32; one Q (size `min` of the first 2-D param) is shared by all layers
  in DCTAdamW.
- The reference's `dct3_matrix` is computed in float32 (`torch.arange(...).to(torch.float)`)
  and then cast, so its C is accurate to ~1e-7 even in float64.

When run with `--ista-src DIR` the script executes the reference projector (CPU, float64)
on every case and asserts the same indices, R and back-projection (to 1e-5 x max|G|), that
the makhoul path ignores `ell_norm=2`, and the default-mode indices.
"""

README_LOCA = """\
# LoCA reference fixture

Written by `tools/make_dct_fixtures.py` (`python3 tools/make_dct_fixtures.py` regenerates
every file here, this README and `params.json` included, byte for byte on the same
software: numpy 2.4.6, scipy 1.17.1, Python 3.11.7; torch 2.15.0 only for the cross-check).
All `.npy` are C-order `<f8`, 1-D or 2-D; integer locations are stored as float64.

## Source

LoCA (Du et al., ICLR 2025, arXiv 2502.06820), TL-UESTC/LoCA
`peft/src/peft/tuners/loca/{layer.py, dct_utils.py}`. The authors' repository is **not**
available here. It was read through SDMuhsin/SCoRA, which says it vendors
`dct_utils.py` byte-identical (`src/loca_dct_utils.py`, commit aebf6375) and layer.py's
`IdctWithIndexGrad` byte-identical, with `spectrum_to_para`, `get_delta_weight` and the
schedule reproduced "verbatim in behaviour" (`src/loca_adapter.py`, commit 8c2460c0; its
`src/verify_loca_adapter.py` asserts dW bit-identical to the authors' layer). Line numbers
below are in SCoRA `src/loca_adapter.py` at 8c2460c0.

## Case

out M = 12, in N = 10, batch 4, k = 7, scale 1.5 (LoCA's `scale`; everything in
`params.json`), dct_mode `default`, float64, dropout off, loss `L = sum(Y * dY)`.

| entry | spectrum_indices (row, col) | location (r, c) | what it tests |
|---|---|---|---|
| 0 | (0.02, 0.03) | (0, 0) | corner; one-sided neighbours in both directions |
| 1 | (-0.10, 0.30) | (0, 3) | row parameter < 0: clamped, its gradient is 0 |
| 2 | (1.20, 1.10) | (11, 9) | both > 0.999: clamped to 0.999 (M-1) = 10.989 -> 11; gradients 0 |
| 3 | (0.97, 0.85) | (11, 8) | last row reached from inside the range |
| 4 | (0.40, 0.62) | (4, 6) | |
| 5 | (0.37, 0.66) | (4, 6) | duplicate of 4: coefficients add in S |
| 6 | (0.75, 0.985) | (8, 9) | last column reached from inside the range |

Several raw location gradients exceed 1 in magnitude and are clamped (which ones:
`params.json` `location_grad_was_clamped`).

| file | shape | content |
|---|---|---|
| `W0.npy` | M x N | frozen base weight |
| `b.npy` | M | bias |
| `X.npy` | 4 x N | input |
| `dY.npy` | 4 x M | dL/dY |
| `coef.npy` | k | coefficients a (LoCA `spectrum`) |
| `spectrum_indices.npy` | 2 x k | the float location parameters; row 0 -> output (row) index, row 1 -> input (column) index |
| `rows.npy`, `cols.npy` | k | the integer locations r, c |
| `dW.npy` | M x N | delta weight, scale included |
| `Y.npy` | 4 x M | forward |
| `dX.npy` | 4 x N | dL/dX |
| `dcoef.npy` | k | dL/da |
| `drow_raw.npy`, `dcol_raw.npy` | k | the clamped finite-difference location gradients (dL/d of the scaled float locations, before the chain rule) |
| `dspectrum_indices.npy` | 2 x k | dL/d(spectrum_indices), after the chain rule |
| `params.json` | | sizes, scale, clamp bounds, rounding, which gradients were clamped / masked, a schedule example |

## Forward (spectrum_to_para l.128-136, get_delta_weight l.138-139, forward l.160-165)

    lo  = clamp(spectrum_indices, min=0, max=0.999)            # exactly 0.999
    loc = [lo[0] * (M-1); lo[1] * (N-1)]                       # float, 2 x k
    r, c = round(loc)                                          # IdctWithIndexGrad.forward l.59:
                                                               # torch .round(): half to even
    S   = zeros(M, N); S[r_i, c_i] += a_i                      # sparse_coo_tensor(...).to_dense():
                                                               # duplicates add
    P   = C_M^T S C_N                                          # ori_idct2d (dct_utils.py)
    dW  = scale * P                                            # scale OUTSIDE the Function
    Y   = X W0^T + b + dropout(X) dW^T

C is the orthonormal DCT-II matrix (`DCTMatrixCache._create_dct_matrix`, the same C as
ours; the reference builds it in float32 and casts, so it is float32-accurate; the fixture
uses the exact C). Mode `sparse` (`(C_M^T[:, r] * a) C_N[c, :]`) gives the same dW; mode
`fast` uses a Makhoul FFT in complex64 for both the iDCT and the backward's dct2.
Because of the 0.999 clamp the largest reachable index is `round(0.999 (M-1))`: M-1 for M <= 500, lower for larger M (4091 for M = 4096).

## Backward (IdctWithIndexGrad.backward l.64-85; chain rule by torch autograd)

The Function receives `g = dL/dP = scale * dL/d(dW) = scale * dY^T X` (M x N):

    K       = C_M g C_N^T                                      # ori_dct2d (dct_2d_impl, l.68)
    dL/da_i = K[r_i, c_i]                                      # l.70 (each entry its own; duplicates
                                                               #   get the same K value)
    dn = r-1 if r > 0 else 0;    up = r+1 if r < M-1 else M-1  # l.73-76
    drow_i  = clamp(1/2 * a_i * (K[up, c_i] - K[dn, c_i]), -1, 1)        # l.77
    lf = c-1 if c > 0 else 0;    rt = c+1 if c < N-1 else N-1  # l.79-82
    dcol_i  = clamp(1/2 * a_i * (K[r_i, rt] - K[r_i, lf]), -1, 1)        # l.83

At a border the missing neighbour is replaced by the location itself, and the factor stays
1/2: at r = 0 the row gradient is `a (K[1, c] - K[0, c]) / 2` (half the one-sided
difference), at r = M-1 it is `a (K[M-1, c] - K[M-2, c]) / 2`. Because scale enters g,
the clamp to [-1, 1] acts on `scale`-times the unscaled difference. The Function returns
`stack([drow, dcol])` as the gradient of the scaled float locations `loc` (the rounding is
straight-through). Autograd then applies the graph of l.129-131:

    dL/dspectrum_indices[0, i] = (M-1) * drow_i * [0 < s_0i < 0.999]
    dL/dspectrum_indices[1, i] = (N-1) * dcol_i * [0 < s_1i < 0.999]

so the parameter gradient is bounded by M-1 (rows) and N-1 (columns), and it is 0 for a
parameter outside the clamp range (entries 1 and 2 above). Exactly at 0 or 0.999 torch
2.15 also gives 0 (scalar clamp's backward uses strict inequalities there); other torch
versions may differ, so the fixture keeps every parameter off the bounds.

The coefficient gradient is the same `K[r, c]` whether it comes from the Function (locations
trainable) or from autograd through the dense `to_dense()` + GEMMs path (locations frozen,
l.135-136); the fixture gives both gradients from one backward, which the schedule never
asks for at once but which is what the Function computes.

## Training schedule (`_advance_schedule` l.141-158, called by forward l.161-162)

A per-layer counter `global_iter` (starting at 0) advances by one on **every forward in
training mode** (not per optimizer step: with gradient accumulation it runs ahead). Before
the forward computes dW, with `g = global_iter` and `lli = learn_location_iter`:

    g == 0                      -> coefficients train, locations frozen
    1 <= g < lli, g % 30 == 0   -> coefficients on, locations off
    1 <= g < lli, g % 30 == 10  -> coefficients off, locations on
    g == lli                    -> coefficients on, locations off (and stays so)
    otherwise                   -> the flags keep their previous values

i.e. for g < lli: locations train iff `g % 30 >= 10` (and g > 0); coefficients train
otherwise; from g = lli on only coefficients train. If lli <= 10 locations never train.
The flags are `requires_grad` on the two parameters, so exactly one of them trains at a time.
While locations train, dW goes through `IdctWithIndexGrad` (l.132-134); otherwise through
the plain dense path. The paper sets lli to about 10% of the training steps (B_a = 10,
B_l = 20). `params.json` `schedule_example` lists the phase (1 = locations) for
global_iter 0..99 with lli = 75.
"""


def check_versions():
    for pkg, want in PINNED.items():
        try:
            have = md.version(pkg)
        except md.PackageNotFoundError:
            have = None
        if have is None or not have.startswith(want):
            print(f"warning: {pkg} {have} installed, fixtures were made with {want}",
                  file=sys.stderr)


def listing(out):
    total = 0
    for p in sorted(out.iterdir()):
        total += p.stat().st_size
        if p.suffix == ".npy":
            a = np.load(p, allow_pickle=False)
            assert a.dtype == np.dtype("<f8") and a.ndim in (1, 2) and a.flags.c_contiguous, p
    print(f"  {out.relative_to(ROOT)}: {len(list(out.iterdir()))} files, {total} bytes")
    return total


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ista-src", default=os.environ.get("ISTA_SRC"),
                    help="ista_daslab_optimizers package directory for the reference "
                         "cross-check (optional; also $ISTA_SRC)")
    args = ap.parse_args()
    check_versions()
    torch.set_num_threads(1)
    OUT_BASIS.mkdir(parents=True, exist_ok=True)
    OUT_LOCA.mkdir(parents=True, exist_ok=True)
    ista = load_ista(args.ista_src) if args.ista_src else None

    make_transforms()
    meta = {"reference": {"repo": "IST-DASLab/ISTA-DASLab-Optimizers", "commit": ISTA_COMMIT,
                          "files": ["ista_daslab_optimizers/fft_low_rank/fft_projector.py",
                                    "ista_daslab_optimizers/utils/dct.py",
                                    "ista_daslab_optimizers/fft_low_rank/dct_adamw.py"]},
            "basis": "Q = C^T (reference sim_type='makhoul'); basis vector k = row k of C",
            "min_rel_gap": MIN_REL_GAP, "decay": DECAY,
            "generator": "tools/make_dct_fixtures.py"}
    make_projector(meta, ista)
    (OUT_BASIS / "proj_cases.json").write_text(dumps(meta))
    (OUT_BASIS / "README.md").write_text(README_BASIS)
    make_loca()
    (OUT_LOCA / "README.md").write_text(README_LOCA)
    print("files")
    total = listing(OUT_BASIS) + listing(OUT_LOCA)
    print(f"  total {total} bytes")


if __name__ == "__main__":
    main()
