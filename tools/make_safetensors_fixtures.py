#!/usr/bin/env python3
"""Writes the .safetensors fixtures of tests/io/safetensors_test.cpp with the `safetensors` package.

The files are an independent reference for lowrank::io::safetensors_file: Hugging Face's own
writer (its Rust core, through `safetensors.numpy.save_file` and `safetensors.serialize_file`)
produces them, not ours. Run once offline (needs `pip install safetensors numpy`; no torch) and
commit the outputs:

    python3 tools/make_safetensors_fixtures.py [output_dir]
    # default: tests/io/fixtures/safetensors

Every value can be recomputed by the test:
- 2-D tensors: A[i, j] = 10 * i + j + 0.5 (exact in F16, BF16, F32 and F64);
- 1-D tensors: v[i] = (i + 0.5) / 3 (F64: an exactly rounded division; F32: that, rounded);
- PEFT-style LoRA factors: A[i, j] = (i + 1) / 4 - j / 8 and B[i, j] = j / 4 - i / 16 (exact in
  F16 and BF16 at these sizes).

special_values.safetensors holds the conversion reference. "input" (F64) holds doubles chosen
to exercise rounding: specials, ties, values just beside ties (where a double -> float ->
16-bit conversion would round twice and differ), overflow thresholds, subnormals, underflow.
"f16" is numpy's float64 -> float16 (one rounding to nearest even); "bf16" is computed here
from exact rationals (nearest bfloat16, ties to even, overflow past max + half an ulp);
"f16_decoded" and "bf16_decoded" (F64) are those bit patterns decoded exactly. Numpy's float16
is also checked against the exact-rational method before anything is written.
"""

import bisect
import math
import pathlib
import struct
import sys
from fractions import Fraction

import numpy as np
import safetensors
from safetensors import TensorSpec
from safetensors.numpy import save_file


def grid(rows, cols, dtype):
    i, j = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    return np.ascontiguousarray((10.0 * i + j + 0.5).astype(dtype))


def third(n, dtype):
    return ((np.arange(n, dtype=np.float64) + 0.5) / 3.0).astype(dtype)


# --- 16-bit formats by exact arithmetic ------------------------------------------------------


def decode16(bits, exponent_bits, mantissa_bits):
    """A 16-bit pattern as a Python float (exact: every such value is a double), or nan."""
    sign = -1.0 if bits >> 15 else 1.0
    exponent = (bits >> mantissa_bits) & ((1 << exponent_bits) - 1)
    mantissa = bits & ((1 << mantissa_bits) - 1)
    bias = (1 << (exponent_bits - 1)) - 1
    if exponent == (1 << exponent_bits) - 1:
        return math.nan if mantissa else sign * math.inf
    if exponent == 0:
        return sign * math.ldexp(mantissa, 1 - bias - mantissa_bits)
    return sign * math.ldexp((1 << mantissa_bits) + mantissa, exponent - bias - mantissa_bits)


_FINITE = {}


def _finite_values(exponent_bits, mantissa_bits):
    key = (exponent_bits, mantissa_bits)
    if key not in _FINITE:
        count = ((1 << exponent_bits) - 1) << mantissa_bits
        _FINITE[key] = [Fraction(decode16(b, exponent_bits, mantissa_bits)) for b in range(count)]
    return _FINITE[key]


def encode16_exact(x, exponent_bits, mantissa_bits):
    """Nearest 16-bit pattern to the double x, ties to even, by exact rational comparison."""
    exponent_mask = ((1 << exponent_bits) - 1) << mantissa_bits
    sign = 0x8000 if math.copysign(1.0, x) < 0 else 0
    if math.isnan(x):
        return sign | exponent_mask | (1 << (mantissa_bits - 1))
    if math.isinf(x):
        return sign | exponent_mask
    magnitude = Fraction(abs(x))
    # The finite non-negative patterns 0 .. exponent_mask - 1 increase with their value.
    values = _finite_values(exponent_bits, mantissa_bits)
    bias = (1 << (exponent_bits - 1)) - 1
    ulp_at_max = Fraction(2) ** (bias - mantissa_bits)
    if magnitude >= values[-1] + ulp_at_max / 2:
        # IEEE-754: round as if the exponent were unbounded; the next value up is 2^(emax+1),
        # which is infinity; the tie goes to it too (its significand is even).
        return sign | exponent_mask
    lo = bisect.bisect_right(values, magnitude) - 1  # largest value <= magnitude
    if lo == len(values) - 1 or magnitude == values[lo]:
        best = lo
    else:
        below, above = values[lo], values[lo + 1]
        if magnitude - below < above - magnitude:
            best = lo
        elif magnitude - below > above - magnitude:
            best = lo + 1
        else:
            best = lo if lo % 2 == 0 else lo + 1
    return sign | best


def f16_bits_numpy(values):
    with np.errstate(over="ignore"):  # overflow to infinity is what is being recorded
        return np.asarray(values, dtype=np.float64).astype(np.float16).view(np.uint16)


def special_inputs():
    f16_max = 65504.0
    bf16_max = float(Fraction(2**8 - 1, 2**7) * 2**127)  # (2 - 2^-7) * 2^127
    values = [
        0.0, -0.0, 1.0, -1.0, 0.1, -0.1, 1.0 / 3.0, math.pi, 1e-3, 123.456, -7.25,
        math.inf, -math.inf, math.nan, -math.nan,
        # binary16 extremes, overflow threshold and subnormals
        f16_max, -f16_max, 65519.0, 65520.0, 65519.99999999999, 65536.0, 1e5, 1e300,
        2.0**-14, 2.0**-24, -(2.0**-24), 2.0**-25, 2.0**-25 * 1.0000001, 2.0**-26,
        3 * 2.0**-25, 2.0**-14 - 2.0**-24, 2.0**-14 - 2.0**-25, 1e-8, 5e-324,
        # binary16 ties at 1 (ulp 2^-10): to even down, to even up, just above a tie
        1 + 2.0**-11, 1 + 3 * 2.0**-11, 1 + 2.0**-11 + 2.0**-40, 2048 + 1.0, 2048 + 3.0,
        # bfloat16 extremes, overflow threshold and subnormals
        bf16_max, -bf16_max, float(Fraction(bf16_max) + Fraction(2) ** 119),
        float(Fraction(bf16_max) + Fraction(2) ** 119) * (1 - 2.0**-52), 3.4028234663852886e38,
        1.1754943508222875e-38, 2.0**-126 - 2.0**-133, 2.0**-133, 2.0**-134, 2.0**-135, 1e-45,
        2.0**-134 * (1 + 2.0**-20), 3 * 2.0**-134, 5 * 2.0**-134, 1e-40,
        # bfloat16 ties at 1 (ulp 2^-7), and a double just above a tie that float would round
        # onto the tie (double rounding would then go to even: 1.0, not 1 + 2^-7)
        1 + 2.0**-8, 1 + 3 * 2.0**-8, 1 + 2.0**-8 + 2.0**-30, -(1 + 2.0**-8 + 2.0**-30),
        # binary16: the same double-rounding trap
        1 + 2.0**-11 + 2.0**-30,
        256.5, 257.0, 259.0, -0.333, 6.1e-5, 1e38, 1e39,
    ]
    return np.array(values, dtype=np.float64)


def save(directory, name, tensors, metadata=None):
    path = directory / name
    save_file(tensors, str(path), metadata=metadata)
    describe(path)


def describe(path):
    with safetensors.safe_open(str(path), "numpy") as f:
        names = list(f.keys())
    print(f"{path}: {len(names)} tensors ({', '.join(names)}), {path.stat().st_size} bytes")


def save_raw(directory, name, raw, metadata=None):
    """raw: {name: (safetensors dtype name for TensorSpec, shape, numpy array of the bytes)}."""
    path = directory / name
    specs = {}
    for key, (dtype, shape, array) in raw.items():
        array = np.ascontiguousarray(array)
        specs[key] = TensorSpec(dtype=dtype, shape=list(shape), data_ptr=array.ctypes.data,
                                data_len=array.nbytes)
    safetensors.serialize_file(specs, str(path), metadata=metadata)
    describe(path)


def bf16_bits(values):
    return np.array([encode16_exact(float(x), 8, 7) for x in values], dtype=np.uint16)


def main():
    root = pathlib.Path(__file__).resolve().parent.parent
    directory = (pathlib.Path(sys.argv[1]) if len(sys.argv) > 1
                 else root / "tests/io/fixtures/safetensors")
    directory.mkdir(parents=True, exist_ok=True)

    # One tensor per dtype, the same 3 x 4 grid.
    save(directory, "f32_3x4.safetensors", {"weight": grid(3, 4, "<f4")})
    save(directory, "f64_3x4.safetensors", {"weight": grid(3, 4, "<f8")})
    save(directory, "f16_3x4.safetensors", {"weight": grid(3, 4, "<f2")})
    save_raw(directory, "bf16_3x4.safetensors",
             {"weight": ("bfloat16", (3, 4), bf16_bits(grid(3, 4, "<f8").ravel()))})

    # 1-D tensors, an empty one, metadata.
    save(directory, "vectors.safetensors",
         {"bias": third(5, "<f8"), "bias32": third(5, "<f4"),
          "empty": np.zeros((0, 3), dtype="<f4"), "empty_1d": np.zeros((0,), dtype="<f8")},
         metadata={"format": "np", "note": "1-D and empty tensors"})

    # A PEFT LoRA adapter (adapter_model.safetensors layout): A is r x in, B is out x r, in
    # mixed dtypes, with tensors lowrank parses but does not convert.
    rank, d_in, d_out = 4, 6, 5
    i, j = np.meshgrid(np.arange(rank), np.arange(d_in), indexing="ij")
    lora_a = (i + 1) / 4.0 - j / 8.0
    i, j = np.meshgrid(np.arange(d_out), np.arange(rank), indexing="ij")
    lora_b = j / 4.0 - i / 16.0
    prefix = "base_model.model.model.layers.0.self_attn."
    save_raw(directory, "peft_adapter.safetensors", {
        prefix + "q_proj.lora_A.weight": ("float32", (rank, d_in), lora_a.astype("<f4")),
        prefix + "q_proj.lora_B.weight": ("float32", (d_out, rank), lora_b.astype("<f4")),
        prefix + "v_proj.lora_A.weight": ("float16", (rank, d_in), lora_a.astype("<f2")),
        prefix + "v_proj.lora_B.weight": ("bfloat16", (d_out, rank), bf16_bits(lora_b.ravel())),
        "position_ids": ("int64", (1, 7), np.arange(7, dtype="<i8").reshape(1, 7)),
        "mask": ("bool", (3,), np.array([True, False, True])),
        "cube": ("float32", (2, 3, 2), np.arange(12, dtype="<f4")),
        "scale": ("float64", (), np.array(2.5, dtype="<f8")),
    }, metadata={"format": "pt", "peft_type": "LORA"})

    # Conversion reference.
    inputs = special_inputs()
    f16 = f16_bits_numpy(inputs)
    f16_exact = np.array([encode16_exact(float(x), 5, 10) for x in inputs], dtype=np.uint16)
    for x, a, b in zip(inputs, f16, f16_exact):
        assert a == b, f"numpy float16({x!r}) = {a:#06x}, exact rounding gives {b:#06x}"
    bf16 = bf16_bits(inputs)
    f16_decoded = f16.view(np.float16).astype(np.float64)
    for bits, value in zip(f16, f16_decoded):
        exact = decode16(int(bits), 5, 10)
        assert (math.isnan(exact) and math.isnan(value)) or exact == value, (bits, value)
    bf16_decoded = np.array(
        [struct.unpack("<f", struct.pack("<I", int(b) << 16))[0] for b in bf16], dtype=np.float64)
    for bits, value in zip(bf16, bf16_decoded):
        exact = decode16(int(bits), 8, 7)
        assert (math.isnan(exact) and math.isnan(value)) or exact == value, (bits, value)
    n = len(inputs)
    save_raw(directory, "special_values.safetensors", {
        "input": ("float64", (n,), inputs),
        "f16": ("float16", (n,), f16),
        "bf16": ("bfloat16", (n,), bf16),
        "f16_decoded": ("float64", (n,), f16_decoded),
        "bf16_decoded": ("float64", (n,), bf16_decoded),
    })


if __name__ == "__main__":
    main()
