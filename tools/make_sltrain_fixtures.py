#!/usr/bin/env python3
"""Writes tests/factors/fixtures/sltrain_small.safetensors (run by hand).

Needs only numpy. The fixture is committed; tests never run this script. The
generator is seeded, so a rerun rewrites the same bytes.

    python3 tools/make_sltrain_fixtures.py [OUTPUT_DIR]

This is a numpy transcription of SLTrain's reference sparse-plus-low-rank
layer, andyjm3/SLTrain at commit ec9894bbf2367a9426bc8d8dac6991b03faf478c:
splora/splora_linear.py (class SpLoRaLinear, autograd Function
lora_sparse_linear) and sparse-lora/sparse_linear.cpp (sparse_linear_forward,
sparse_linear_backward). torch is not needed because the layer is a few
dense products and one scatter_add.

Parameters (nn.Linear shapes): lora_A r x in, lora_B out x r, sparse_value
(nnz,), sparse_index (nnz,) int64 = sorted flat row-major indices i*in + j
into the out x in weight, bias (out,); scaling s = lora_alpha / r.
SpLoRaLinear.forward hands A_s = lora_A * s to the Function, so:

    forward:  W = lora_B @ A_s; W.flat[sparse_index] += sparse_value
              y = x @ W.T + bias
    backward: (G = dL/dy, W recomputed the same way, dW = G.T @ x)
              grad_input = G @ W
              grad_lora_A = s * (lora_B.T @ dW)   (chain rule via A_s)
              grad_lora_B = dW @ A_s.T
              grad_sparse_value = dW.flat[sparse_index]
              grad_bias = G.sum(0)

The reference initialises A kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(in)),
B = 0, values U(+-1/sqrt(in)), bias U(+-1/sqrt(out)) and the support as
sort(randperm(out*in)[:int(sp_ratio*out*in)]). The fixture follows that
except that B is standard normal (non-zero), so that every gradient is
informative; x and grad_output are standard normal. Everything is float64,
drawn from numpy.random.default_rng(20261206) in the order A, B, support,
values, bias, x, grad_output. Before writing, the transcribed backward is
checked against central finite differences of the transcribed forward.
"""

import argparse
import json
import os
import pathlib

import numpy as np

OUT, IN, R, N = 7, 9, 3, 5
LORA_ALPHA, SP_RATIO, SEED = 6, 0.2, 20261206
NAME = "sltrain_small.safetensors"
ORDER = ("x", "grad_output", "lora_A", "lora_B", "sparse_value",
         "sparse_index", "bias", "y", "grad_input", "grad_lora_A",
         "grad_lora_B", "grad_sparse_value", "grad_bias", "weight")
DEFAULT_DIR = (pathlib.Path(__file__).resolve().parent.parent
               / "tests" / "factors" / "fixtures")
METADATA = {
    "lora_alpha": str(LORA_ALPHA),
    "r": str(R),
    "sp_ratio": str(SP_RATIO),
    "source": "andyjm3/SLTrain@ec9894b splora/splora_linear.py"
              " + sparse-lora/sparse_linear.cpp",
    "generator": "tools/make_sltrain_fixtures.py",
}


def make_inputs(rng):
    """Draws the layer's parameters, the input x and the output gradient."""
    nnz = int(SP_RATIO * OUT * IN)
    bound_in, bound_out = 1.0 / np.sqrt(IN), 1.0 / np.sqrt(OUT)
    p = {}
    p["lora_A"] = rng.uniform(-bound_in, bound_in, (R, IN))
    p["lora_B"] = rng.standard_normal((OUT, R))
    p["sparse_index"] = np.sort(rng.permutation(OUT * IN)[:nnz]).astype(
        np.int64)
    p["sparse_value"] = rng.uniform(-bound_in, bound_in, nnz)
    p["bias"] = rng.uniform(-bound_out, bound_out, OUT)
    p["x"] = rng.standard_normal((N, IN))
    p["grad_output"] = rng.standard_normal((N, OUT))
    return p


def merged_weight(p, s):
    """W = B @ (A * s) plus scatter_add of the sparse values (row-major)."""
    w = p["lora_B"] @ (p["lora_A"] * s)
    flat = w.reshape(-1)
    np.add.at(flat, p["sparse_index"], p["sparse_value"])
    return flat.reshape(OUT, IN)


def forward(p, s):
    """sparse_linear_forward: y = x @ W.T + bias."""
    return p["x"] @ merged_weight(p, s).T + p["bias"]


def backward(p, s, g):
    """sparse_linear_backward, plus the chain rule through A_s = A * s."""
    w = merged_weight(p, s)
    dw = g.T @ p["x"]
    return {
        "grad_input": g @ w,
        "grad_lora_A": s * (p["lora_B"].T @ dw),
        "grad_lora_B": dw @ (p["lora_A"] * s).T,
        "grad_sparse_value": dw.reshape(-1)[p["sparse_index"]],
        "grad_bias": g.sum(0),
    }


def check_gradients(p, s, grads, step=1e-6, tol=1e-6):
    """Central differences of L = sum(y * G) against the backward."""
    g = p["grad_output"]
    pairs = {"lora_A": "grad_lora_A", "lora_B": "grad_lora_B",
             "sparse_value": "grad_sparse_value", "x": "grad_input",
             "bias": "grad_bias"}
    errors = {}
    for name, grad_name in pairs.items():
        numeric = np.zeros_like(p[name])
        for k in np.ndindex(p[name].shape):
            q = dict(p)
            q[name] = p[name].copy()
            q[name][k] += step
            plus = np.sum(forward(q, s) * g)
            q[name][k] -= 2 * step
            minus = np.sum(forward(q, s) * g)
            numeric[k] = (plus - minus) / (2 * step)
        analytic = grads[grad_name]
        err = np.linalg.norm(numeric - analytic) / np.linalg.norm(analytic)
        assert err < tol, (name, err)
        errors[name] = err
    return errors


def safetensors_bytes(tensors, metadata):
    """Serialises {name: array} (F64 or I64, little-endian, row-major)."""
    header, chunks, offset = {"__metadata__": metadata}, [], 0
    for name, array in tensors.items():
        if array.dtype == np.float64:
            dtype, data = "F64", np.ascontiguousarray(array, "<f8").tobytes()
        elif array.dtype == np.int64:
            dtype, data = "I64", np.ascontiguousarray(array, "<i8").tobytes()
        else:
            raise TypeError(f"{name}: unsupported dtype {array.dtype}")
        header[name] = {"dtype": dtype, "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + b"".join(chunks)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", nargs="?", type=pathlib.Path,
                        default=DEFAULT_DIR)
    args = parser.parse_args()

    s = LORA_ALPHA / R
    p = make_inputs(np.random.default_rng(SEED))
    assert p["sparse_index"].size == 12 and s == 2.0
    assert np.all(np.diff(p["sparse_index"]) > 0)
    grads = backward(p, s, p["grad_output"])
    errors = check_gradients(p, s, grads)
    print("gradient check passed (max rel error %.2e over %s)"
          % (max(errors.values()), ", ".join(errors)))

    everything = dict(p, **grads, y=forward(p, s), weight=merged_weight(p, s))
    tensors = {name: everything[name] for name in ORDER}
    blob = safetensors_bytes(tensors, METADATA)

    args.output_dir.mkdir(parents=True, exist_ok=True)
    path = args.output_dir / NAME
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(blob)
    os.replace(tmp, path)
    print(f"wrote {path} ({len(blob)} bytes, {len(tensors)} tensors: "
          f"{', '.join(tensors)})")


if __name__ == "__main__":
    main()
