#!/usr/bin/env python3
"""Writes the .npy fixtures of tests/io/npy_test.cpp with NumPy itself.

The files are an independent reference for lowrank::io::read_npy: NumPy, not our writer,
produces them. Run once offline (needs numpy) and commit the outputs:

    python3 tools/make_npy_fixtures.py [output_dir]    # default: tests/io/fixtures/npy

Every value can be recomputed by the test:
- 2-D arrays: A[i, j] = 10 * i + j + 0.5 (exact in float16, float32 and float64);
- 1-D array:  v[i] = (i + 0.5) / 3 (float64; an exactly rounded division, so the test
  recomputes it bit for bit, and reading it as float checks the rounding).
"""

import pathlib
import sys

import numpy as np


def grid(rows, cols, dtype):
    i, j = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    return (10.0 * i + j + 0.5).astype(dtype)


def save(directory, name, array, version=None):
    path = directory / name
    if version is None:
        np.save(path, array)
    else:
        with open(path, "wb") as f:
            np.lib.format.write_array(f, array, version=version)
    print(f"{path}: shape {array.shape}, dtype {array.dtype.str}, "
          f"{'C' if array.flags.c_contiguous else 'F'} order, "
          f"{path.stat().st_size} bytes")


def main():
    root = pathlib.Path(__file__).resolve().parent.parent
    directory = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else root / "tests/io/fixtures/npy"
    directory.mkdir(parents=True, exist_ok=True)

    # Valid files.
    save(directory, "f32_c_3x4.npy", grid(3, 4, "<f4"))
    save(directory, "f32_f_3x4.npy", np.asfortranarray(grid(3, 4, "<f4")))
    save(directory, "f64_c_3x4.npy", grid(3, 4, "<f8"))
    save(directory, "f64_be_c_3x4.npy", grid(3, 4, ">f8"))
    save(directory, "f32_be_f_3x4.npy", np.asfortranarray(grid(3, 4, ">f4")))
    save(directory, "f64_1d_5.npy", (np.arange(5, dtype="<f8") + 0.5) / 3.0)
    save(directory, "f64_c_0x3.npy", np.zeros((0, 3), dtype="<f8"))
    save(directory, "f32_v2_3x4.npy", grid(3, 4, "<f4"), version=(2, 0))
    save(directory, "f32_v3_3x4.npy", grid(3, 4, "<f4"), version=(3, 0))

    # Inputs for lowrank-compare's hostile cases (bench/compare/CMakeLists.txt):
    # a NaN, a zero matrix, a single row.
    with_nan = grid(3, 4, "<f4")
    with_nan[1, 2] = np.nan
    save(directory, "nan_f32_c_3x4.npy", with_nan)
    save(directory, "zeros_f32_c_4x6.npy", np.zeros((4, 6), dtype="<f4"))
    save(directory, "f32_c_1x8.npy", grid(1, 8, "<f4"))

    # Well-formed .npy files that lowrank must reject.
    save(directory, "bad_i4_c_3x4.npy", grid(3, 4, "<i4"))
    save(directory, "bad_f16_c_3x4.npy", grid(3, 4, "<f2"))
    save(directory, "bad_f64_3d_2x3x2.npy", np.arange(12, dtype="<f8").reshape(2, 3, 2))


if __name__ == "__main__":
    main()
