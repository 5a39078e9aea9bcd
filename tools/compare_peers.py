#!/usr/bin/env python3
"""compare_peers.py: how fast and how accurate are the Python tools a user would otherwise pick?

Runs scikit-learn's `sklearn.utils.extmath.randomized_svd`, fbpca's `pca(raw=True)` and PyTorch's
`torch.svd_lowrank` on one 2-D float32 / float64 .npy at rank K, each with its defaults and with
the settings that match lowrank's recommended randomized SVD (oversampling p = 10, q = 2 power
iterations), and writes JSON rows that `lowrank-compare --peers FILE` merges into its table, so
the peers appear beside lowrank's methods, measured on the same matrix on the same machine.

    lowrank-compare --size 2048 --threads 2 --save-npy A.npy          # the generated input
    python3 tools/compare_peers.py A.npy --rank 64 --threads 2 --json peers.json
    lowrank-compare --size 2048 --rank 64 --threads 2 --peers peers.json

`scripts/compare-peers [lowrank-compare options]` does the three steps. The peers come from PyPI
(`pip install numpy scikit-learn fbpca torch`) and are never needed by the build or CI; a peer
that is not installed gets a row saying so, and the others still run.

Measured like lowrank-compare's rows (bench/compare/main.cpp):
- time: the fastest of up to --repeat runs; a method slower than 1 s runs once. Only the call is
  timed, with its zero-copy conversions (torch.from_numpy, Tensor.numpy);
- the residual ||A - U diag(s) V^T||_F: the product in A's precision (the factors cast to it),
  the norm accumulated in double, as main.cpp's `add`; relative_error divides it by ||A||_F;
- the rows also carry s_1, s_k and the residual itself: lowrank-compare computes the error over
  the Eckart-Young optimum, the relative errors of s_1 and s_k and the speed-up over the exact
  SVD from them with its own reference spectrum and exact-SVD time, exactly as for its own rows.
  Run alone, this script leaves those four fields null (it computes no exact SVD).

The JSON names the matrix it was measured on (shape, dtype, and the CRC-32 of its entries in
column-major order as little-endian bytes, which does not depend on the file's C or Fortran
order) and the rank; lowrank-compare refuses a peers file whose matrix or rank differ from its
input. It also records the libraries' versions, the thread count and the date.

Threads (--threads N, default: the CPUs this process may use): OMP_NUM_THREADS,
OPENBLAS_NUM_THREADS and MKL_NUM_THREADS are set before NumPy is imported, threadpoolctl limits
the BLAS pools when it is installed (scikit-learn brings it), and torch.set_num_threads(N).

Settings (per peer; "default" changes nothing but the rank, which every peer needs):
- sklearn randomized_svd: default n_oversamples=10, n_iter='auto' (7 power iterations when
  K < 0.1 min(m, n), else 4), power_iteration_normalizer='auto' (LU; none when n_iter <= 2);
  matched: n_iter=2 (normalizer 'auto', so none). random_state=0 in both (default: NumPy's global
  generator; the time does not depend on it).
- fbpca.pca(A, K, raw=True): default n_iter=2, l=K+2; matched: n_iter=2, l=K+10. fbpca draws its
  test matrix in float64, so a float32 A is multiplied in float64 (NumPy's promotion) and the
  factors come back in float64; this is fbpca's own behaviour and is timed as such. fbpca 1.0
  (2017) runs unchanged on NumPy 2 (it uses none of the removed aliases); should an import or
  call fail anyway, its rows carry the error and the other peers still run.
- torch.svd_lowrank: its default q=6 returns 6 singular triplets, not K, so the "default" row
  passes q=K (no oversampling) and keeps niter=2; matched: q=K+10, niter=2, truncated to K.
  torch.manual_seed(0) before each call.
"""

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import sys
import time
import zlib


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Time scikit-learn, fbpca and torch.svd_lowrank on a .npy at rank K and "
        "write rows for lowrank-compare --peers.")
    parser.add_argument("npy", help="a 2-D float32 or float64 .npy file")
    parser.add_argument("--rank", type=int, default=64, help="the rank K (default 64)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="time each method up to R times, keep the fastest; methods slower "
                        "than 1 s run once (default 3, as lowrank-compare)")
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    parser.add_argument("--threads", type=int, default=cpus,
                        help=f"threads for NumPy's BLAS, MKL and torch (default {cpus})")
    parser.add_argument("--json", help="write the rows to this file (for lowrank-compare --peers)")
    parser.add_argument("--only", choices=["sklearn", "fbpca", "torch"], action="append",
                        help="run only this peer (may be repeated)")
    args = parser.parse_args(argv)
    if args.rank < 1:
        parser.error(f"--rank expects a positive integer, not {args.rank}")
    if args.repeat < 1:
        parser.error(f"--repeat expects a positive integer, not {args.repeat}")
    if args.threads < 1:
        parser.error(f"--threads expects a positive integer, not {args.threads}")
    return args


args = parse_args(sys.argv[1:])
# Before NumPy (and the BLAS it loads) is imported: the pools read these once.
for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[variable] = str(args.threads)

import numpy as np  # noqa: E402


def version(distribution):
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def load(path):
    """The matrix as stored (float32 or float64, native byte order), refused with a clear
    message when it is not a finite 2-D float array."""
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        sys.exit(f"compare_peers.py: cannot read {path!r} as .npy: {e}")
    if a.ndim != 2 or a.dtype.kind != "f" or a.dtype.itemsize not in (4, 8):
        sys.exit(f"compare_peers.py: {path!r} holds a {a.ndim}-D {a.dtype} array; "
                 "expected a 2-D float32 or float64 array")
    a = a.astype(a.dtype.newbyteorder("="), copy=False)
    if not np.isfinite(a).all():
        i, j = np.argwhere(~np.isfinite(a))[0]
        sys.exit(f"compare_peers.py: {path!r}: entry ({i}, {j}) is {a[i, j]}; "
                 "every method needs finite entries")
    return a


def checksum(a):
    """CRC-32 of the entries in column-major order as little-endian bytes (lowrank-compare
    computes the same on its Eigen matrix)."""
    little = a.astype(a.dtype.newbyteorder("<"), copy=False)
    return zlib.crc32(little.tobytes(order="F"))


def squared_norm(x):
    """sum x_ij^2 accumulated in double."""
    x = x.reshape(-1)
    return float(np.dot(x.astype(np.float64), x.astype(np.float64)))


def timed(repeat, f):
    """The fastest of up to `repeat` runs of f (one run when it takes more than a second), and
    f's last result: lowrank-compare's `timed`."""
    start = time.perf_counter()
    result = f()
    seconds = time.perf_counter() - start
    r = 1
    while r < repeat and seconds < 1.0:
        start = time.perf_counter()
        result = f()
        seconds = min(seconds, time.perf_counter() - start)
        r += 1
    return seconds, result


def measure(a, norm, u, s, v):
    """The residual ||A - U diag(s) V^T||_F (product in A's precision, norm in double) and the
    quantities lowrank-compare turns into its error columns."""
    u = np.asarray(u, dtype=a.dtype)
    s = np.asarray(s, dtype=a.dtype)
    v = np.asarray(v, dtype=a.dtype)
    residual = a - (u * s) @ v.T
    error = squared_norm(residual) ** 0.5
    if norm > 0:
        relative = error / norm
    else:
        relative = float("inf") if error > 0 else 0.0
    return {
        "rank": int(s.shape[0]),
        "relative_error": relative,
        "residual_norm": error,
        "s1": float(s[0]),
        "sk": float(s[-1]),
    }


def peers(k, threads, shape):
    """(library, method name, settings, a function returning (U, s, V)) for each peer; a peer
    that cannot be imported yields rows whose function raises the import error."""
    rows = []

    def unavailable(error):
        def run(a):
            raise error
        return run

    try:
        from sklearn.utils.extmath import randomized_svd
        def sklearn_run(n_iter):
            def run(a):
                u, s, vt = randomized_svd(a, k, n_oversamples=10, n_iter=n_iter, random_state=0)
                return u, s, vt.T
            return run
        default_iter = 7 if k < 0.1 * min(shape) else 4  # sklearn's rule for n_iter='auto'
        rows.append(("sklearn", "sklearn randomized_svd (default)",
                     f"n_oversamples=10, n_iter='auto' ({default_iter}), "
                     "power_iteration_normalizer='auto' (LU)", sklearn_run("auto")))
        rows.append(("sklearn", "sklearn randomized_svd (q=2)",
                     "n_oversamples=10, n_iter=2, power_iteration_normalizer='auto' (none)",
                     sklearn_run(2)))
    except Exception as e:  # noqa: BLE001: any failure becomes the rows' message
        for name in ("sklearn randomized_svd (default)", "sklearn randomized_svd (q=2)"):
            rows.append(("sklearn", name, "", unavailable(
                RuntimeError(f"scikit-learn unavailable ({e}); pip install scikit-learn"))))

    try:
        import fbpca
        def fbpca_run(l):
            def run(a):
                np.random.seed(0)
                u, s, va = fbpca.pca(a, k, raw=True, n_iter=2, l=l)
                return u, s, va.T
            return run
        rows.append(("fbpca", "fbpca pca (default)", f"raw=True, n_iter=2, l=k+2={k + 2}",
                     fbpca_run(None)))
        rows.append(("fbpca", "fbpca pca (l=k+10)", f"raw=True, n_iter=2, l=k+10={k + 10}",
                     fbpca_run(k + 10)))
    except Exception as e:  # noqa: BLE001
        for name in ("fbpca pca (default)", "fbpca pca (l=k+10)"):
            rows.append(("fbpca", name, "", unavailable(
                RuntimeError(f"fbpca unavailable ({e}); pip install fbpca"))))

    try:
        import torch
        torch.set_num_threads(threads)
        def torch_run(q):
            def run(a):
                torch.manual_seed(0)
                u, s, v = torch.svd_lowrank(torch.from_numpy(a), q=q, niter=2)
                return u[:, :k].numpy(), s[:k].numpy(), v[:, :k].numpy()
            return run
        rows.append(("torch", "torch svd_lowrank (default)",
                     f"q=k={k} (the default q=6 would return rank 6), niter=2", torch_run(k)))
        rows.append(("torch", "torch svd_lowrank (q=k+10)",
                     f"q=k+10={k + 10}, niter=2, truncated to k", torch_run(k + 10)))
    except Exception as e:  # noqa: BLE001
        for name in ("torch svd_lowrank (default)", "torch svd_lowrank (q=k+10)"):
            rows.append(("torch", name, "", unavailable(
                RuntimeError(f"torch unavailable ({e}); pip install torch"))))
    return rows


A = load(args.npy)
k = args.rank
if k > min(A.shape):
    sys.exit(f"compare_peers.py: --rank {k} exceeds min(m, n) = {min(A.shape)}")
norm = squared_norm(A) ** 0.5

limits = None
try:
    from threadpoolctl import threadpool_limits
    limits = threadpool_limits(limits=args.threads)
except ImportError:
    pass

methods = []
for library, name, settings, run in peers(k, args.threads, A.shape):
    if args.only and library not in args.only:
        continue
    print(f"{name} ...", file=sys.stderr, flush=True)
    row = {"method": name, "source": "python", "library": library, "settings": settings}
    try:
        seconds, (u, s, v) = timed(args.repeat, lambda: run(A))
        row.update({"seconds": seconds, **measure(A, norm, u, s, v)})
        # Filled in by lowrank-compare --peers from its reference spectrum and exact SVD.
        row.update({"error_over_optimum": None, "s1_relative_error": None,
                    "sk_relative_error": None, "speedup_over_exact": None})
    except Exception as e:  # noqa: BLE001: a failing peer gets a row that says why
        row["error"] = f"{type(e).__name__}: {e}"
        print(f"  {name} failed: {row['error']}", file=sys.stderr)
    methods.append(row)

if limits is not None:
    limits.restore_original_limits()

versions = {"python": platform.python_version()}
for distribution in ("numpy", "scipy", "scikit-learn", "fbpca", "torch", "threadpoolctl"):
    versions[distribution] = version(distribution)

document = {
    "tool": "tools/compare_peers.py",
    "input": {
        "file": os.path.abspath(args.npy),
        "rows": int(A.shape[0]),
        "cols": int(A.shape[1]),
        "dtype": "float32" if A.dtype.itemsize == 4 else "float64",
        "crc32": checksum(A),
        "frobenius_norm": norm,
    },
    "rank": k,
    "threads": args.threads,
    "repeat": args.repeat,
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "versions": versions,
    "methods": methods,
}

print(f"input: {args.npy}, {A.shape[0]} x {A.shape[1]} {document['input']['dtype']}, "
      f"||A||_F = {norm:.6g}, rank {k}, {args.threads} threads")
width = max(len(r["method"]) for r in methods) if methods else 6
print(f"{'method':<{width}} {'rank':>6} {'time [s]':>10} {'rel. error':>10}")
for r in methods:
    if "error" in r:
        print(f"{r['method']:<{width}} failed: {r['error']}")
    else:
        print(f"{r['method']:<{width}} {r['rank']:>6} {r['seconds']:>10.4f} "
              f"{r['relative_error']:>10.6f}")

if args.json:
    temporary = args.json + ".tmp"
    with open(temporary, "w", encoding="utf-8") as out:
        json.dump(document, out, indent=2)
        out.write("\n")
    os.replace(temporary, args.json)
    print(f"wrote {args.json}", file=sys.stderr)
