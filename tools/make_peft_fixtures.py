#!/usr/bin/env python3
"""Writes the PEFT reference fixtures under tests/adapters/fixtures/peft/ (run by hand).

Needs torch, peft, numpy and safetensors (pip install torch peft numpy safetensors). The
fixtures are committed; tests never run this script. Everything is seeded, so a rerun
rewrites the same numbers.

    python3 tools/make_peft_fixtures.py              # every fixture, then the cpp_saved check
    python3 tools/make_peft_fixtures.py --check-only # only the cpp_saved check

Conventions (docs/architecture.md, "Data model"; docs/algorithms.md, "Adapters"): nn.Linear shapes, W is
out x in, X is N x in, A is r x in, B is out x r. Every array is saved as a 2-D float64
.npy in that (math) orientation; vectors as n x 1. Inputs are drawn in float32 and
widened to float64, so they are exact in float and double; the forward and the gradients
are computed by PEFT in float64 (PiSSA in float32, which PEFT requires).

Cases (in = 12, out = 10, N = 7, r = 4, lora_alpha = 8, lora_dropout = 0, nn.Linear with
a frozen bias; A, B and the DoRA magnitude set to random non-zero values after the PEFT
model is made, so that the adapter is not a no-op):

  lora/, rslora/, dora/   W b A B [m] X G Y dX dA dB [dm] W_merged + case.json
                          (loss = sum(Y * G); W_merged from merge_and_unload)
  dora_zero_row/          dora with an all-zero row of W and of B: PEFT's output there
  pissa/                  W A B W_res (init_lora_weights="pissa")
  saved/lora_f32/         model.save_pretrained of a 4-module adapter with rank_pattern
                          and alpha_pattern; npy/<module>.A.npy and .B.npy copies
  saved/dora_f16/         DoRA, float16 storage; npy/ copies of A, B and m
  saved/lora_bf16/        bfloat16 storage; npy/ copies of A and B
  cpp_saved/              written by lowrank's tests/io/peft_test.cpp (set
                          LOWRANK_WRITE_PEFT_FIXTURE=<this dir>); this script loads it with
                          PeftModel.from_pretrained and writes cpp_saved/peft_check.json
"""

import argparse
import copy
import json
import math
import os
import pathlib
import shutil
import sys

import numpy as np
import peft
import safetensors
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

ROOT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "adapters" / "fixtures" / "peft"

IN, OUT, N, R, ALPHA = 12, 10, 7, 4, 8


def exact(gen, *shape, positive=False):
    """Random values exactly representable in float32, as float64."""
    x = torch.randn(*shape, generator=gen, dtype=torch.float32)
    if positive:
        x = x.abs() + 0.5
    return x.to(torch.float64)


def save(directory, name, tensor):
    a = tensor.detach().to(torch.float64).cpu().numpy()
    if a.ndim == 1:
        a = a.reshape(-1, 1)
    assert a.ndim == 2, (name, a.shape)
    np.save(directory / f"{name}.npy", np.ascontiguousarray(a))


class Single(nn.Module):
    def __init__(self, dtype):
        super().__init__()
        self.lin = nn.Linear(IN, OUT, bias=True, dtype=dtype)

    def forward(self, x):
        return self.lin(x)


def forward_case(name, *, use_rslora=False, use_dora=False, zero_row=None, seed=0):
    directory = ROOT / name
    directory.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    base = Single(torch.float64)
    with torch.no_grad():
        base.lin.weight.copy_(exact(gen, OUT, IN))
        base.lin.bias.copy_(exact(gen, OUT))
        if zero_row is not None:
            base.lin.weight[zero_row].zero_()
    W = base.lin.weight.detach().clone()
    b = base.lin.bias.detach().clone()
    config = LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=["lin"],
                        use_rslora=use_rslora, use_dora=use_dora)
    model = get_peft_model(base, config)
    layer = model.base_model.model.lin
    with torch.no_grad():
        layer.lora_A["default"].weight.data = exact(gen, R, IN)
        layer.lora_B["default"].weight.data = exact(gen, OUT, R)
        if zero_row is not None:
            layer.lora_B["default"].weight.data[zero_row].zero_()
        if use_dora:
            layer.lora_magnitude_vector["default"].weight.data = exact(gen, OUT, positive=True)
    A = layer.lora_A["default"].weight
    B = layer.lora_B["default"].weight
    m = layer.lora_magnitude_vector["default"].weight if use_dora else None
    for p in (A, B) + ((m,) if use_dora else ()):
        assert p.dtype == torch.float64 and p.requires_grad
    assert not layer.base_layer.weight.requires_grad and not layer.base_layer.bias.requires_grad
    scaling = layer.scaling["default"]
    expected_scaling = ALPHA / math.sqrt(R) if use_rslora else ALPHA / R
    assert abs(scaling - expected_scaling) < 1e-15, (scaling, expected_scaling)

    X = exact(gen, N, IN).requires_grad_(True)
    G = exact(gen, N, OUT)
    model.train()  # dropout is 0: train and eval agree; train keeps PEFT's DoRA cache off
    Y = model(X)
    (Y * G).sum().backward()

    for key, value in [("W", W), ("b", b), ("A", A), ("B", B), ("X", X), ("G", G), ("Y", Y),
                       ("dX", X.grad), ("dA", A.grad), ("dB", B.grad)]:
        save(directory, key, value)
    if use_dora:
        save(directory, "m", m)
        save(directory, "dm", m.grad)
    merged = copy.deepcopy(model).merge_and_unload()
    save(directory, "W_merged", merged.lin.weight)

    case = {"r": R, "alpha": ALPHA, "scaling": scaling, "use_rslora": use_rslora,
            "use_dora": use_dora}
    if zero_row is not None:
        case["zero_row"] = zero_row
        case["peft_output_finite"] = bool(torch.isfinite(Y).all())
        case["peft_gradients_finite"] = bool(
            all(torch.isfinite(t).all() for t in (X.grad, A.grad, B.grad, m.grad)))
        case["peft_merged_finite"] = bool(torch.isfinite(merged.lin.weight).all())
    (directory / "case.json").write_text(json.dumps(case, indent=2, sort_keys=True) + "\n")


def pissa_case(seed=1):
    directory = ROOT / "pissa"
    directory.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    base = Single(torch.float32)  # PEFT's pissa_init refuses float64
    with torch.no_grad():
        base.lin.weight.copy_(exact(gen, OUT, IN).float())
        base.lin.bias.copy_(exact(gen, OUT).float())
    W = base.lin.weight.detach().clone()
    config = LoraConfig(r=R, lora_alpha=ALPHA, target_modules=["lin"], init_lora_weights="pissa")
    model = get_peft_model(base, config)
    layer = model.base_model.model.lin
    save(directory, "W", W)
    save(directory, "A", layer.lora_A["default"].weight)
    save(directory, "B", layer.lora_B["default"].weight)
    save(directory, "W_res", layer.base_layer.weight)
    case = {"r": R, "alpha": ALPHA, "scaling": layer.scaling["default"], "use_rslora": False,
            "use_dora": False, "init_lora_weights": "pissa", "computed_in": "float32"}
    (directory / "case.json").write_text(json.dumps(case, indent=2, sort_keys=True) + "\n")


# ----------------------------------------------------------------- saved adapters

V_OUT = 6  # v_proj's out features (q_proj has OUT)


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = nn.Linear(IN, OUT, bias=True)
        self.v_proj = nn.Linear(IN, V_OUT, bias=True)


class Net(nn.Module):
    """layers.{0,1}.{q_proj,v_proj}; the forward concatenates the four outputs."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([Attention(), Attention()])

    def forward(self, x):
        return torch.cat([out for layer in self.layers for out in (layer.q_proj(x), layer.v_proj(x))],
                         dim=1)


MODULES = ["layers.0.q_proj", "layers.0.v_proj", "layers.1.q_proj", "layers.1.v_proj"]


def make_base(seed=10):
    gen = torch.Generator().manual_seed(seed)
    net = Net()
    with torch.no_grad():
        for name in MODULES:
            lin = net.get_submodule(name)
            lin.weight.copy_(exact(gen, lin.out_features, lin.in_features).float())
            lin.bias.copy_(exact(gen, lin.out_features).float())
    return net


def lora_layers(model):
    return {name: model.base_model.model.get_submodule(name) for name in MODULES}


def saved_case(name, *, seed, dtype, use_dora=False, patterns=False):
    directory = ROOT / "saved" / name
    if directory.exists():
        shutil.rmtree(directory)
    (directory / "npy").mkdir(parents=True)
    gen = torch.Generator().manual_seed(seed)
    kwargs = {}
    if patterns:
        kwargs = {"rank_pattern": {"layers.1.q_proj": 2}, "alpha_pattern": {"v_proj": 16}}
    config = LoraConfig(r=R, lora_alpha=ALPHA, target_modules=["q_proj", "v_proj"],
                        use_dora=use_dora, **kwargs)
    model = get_peft_model(make_base(), config)
    for module, layer in lora_layers(model).items():
        r = layer.r["default"]
        with torch.no_grad():
            layer.lora_A["default"].weight.data = exact(gen, r, IN).float()
            layer.lora_B["default"].weight.data = exact(gen, layer.out_features, r).float()
            if use_dora:
                layer.lora_magnitude_vector["default"].weight.data = exact(
                    gen, layer.out_features, positive=True).float()
    model = model.to(dtype)
    model.save_pretrained(directory)
    (directory / "README.md").unlink()  # PEFT's model card template: not part of the format
    for module, layer in lora_layers(model).items():
        save(directory / "npy", f"{module}.A", layer.lora_A["default"].weight)
        save(directory / "npy", f"{module}.B", layer.lora_B["default"].weight)
        if use_dora:
            save(directory / "npy", f"{module}.m", layer.lora_magnitude_vector["default"].weight)
    return directory


def check_cpp_saved():
    directory = ROOT / "cpp_saved"
    if not (directory / "adapter_model.safetensors").exists():
        print(f"{directory}: no adapter_model.safetensors yet (run lowrank_core_tests with "
              f"LOWRANK_WRITE_PEFT_FIXTURE={directory}); skipped")
        return
    reference = ROOT / "saved" / "lora_f32"
    model = PeftModel.from_pretrained(make_base(), directory)
    model.eval()
    model.double()  # the file's float32 values, the forward in float64
    error = 0.0
    layers = lora_layers(model)
    for module, layer in layers.items():
        A = np.load(reference / "npy" / f"{module}.A.npy")
        B = np.load(reference / "npy" / f"{module}.B.npy")
        error = max(error, float(np.abs(layer.lora_A["default"].weight.detach().double().numpy() - A).max()))
        error = max(error, float(np.abs(layer.lora_B["default"].weight.detach().double().numpy() - B).max()))
    # The forward on a fixed X against an independent computation from the .npy copies and
    # the config's rank / alpha patterns: y = x W^T + b + s x A^T B^T.
    gen = torch.Generator().manual_seed(99)
    X = exact(gen, N, IN)
    with torch.no_grad():
        got = model(X).numpy()
    base = make_base()
    scalings = {"layers.0.q_proj": (8, 4), "layers.0.v_proj": (16, 4), "layers.1.q_proj": (8, 2),
                "layers.1.v_proj": (16, 4)}
    expected = []
    for module in MODULES:
        lin = base.get_submodule(module)
        alpha, r = scalings[module]
        assert layers[module].r["default"] == r and layers[module].scaling["default"] == alpha / r
        A = np.load(reference / "npy" / f"{module}.A.npy")
        B = np.load(reference / "npy" / f"{module}.B.npy")
        W = lin.weight.detach().double().numpy()
        b = lin.bias.detach().double().numpy()
        Xn = X.numpy()
        expected.append(Xn @ W.T + b + (alpha / r) * (Xn @ A.T) @ B.T)
    expected = np.concatenate(expected, axis=1)
    forward_error = float(np.abs(got - expected).max())
    check = {"loaded": True, "max_abs_error": max(error, forward_error),
             "max_abs_weight_error": error, "max_abs_forward_error": forward_error,
             "peft_version": peft.__version__, "torch_version": torch.__version__}
    (directory / "peft_check.json").write_text(json.dumps(check, indent=2, sort_keys=True) + "\n")
    print(f"{directory}: {check}")


def main():
    # PEFT stores target_modules as a set and saves it as a list in the set's order, which
    # depends on Python's string hashing: fix the hash seed so that a rerun writes the same
    # adapter_config.json.
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.execve(sys.executable, [sys.executable] + sys.argv, {**os.environ, "PYTHONHASHSEED": "0"})
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check-only", action="store_true", help="only check cpp_saved/")
    args = parser.parse_args()
    torch.use_deterministic_algorithms(True)
    if not args.check_only:
        forward_case("lora", seed=0)
        forward_case("rslora", use_rslora=True, seed=0)
        forward_case("dora", use_dora=True, seed=0)
        forward_case("dora_zero_row", use_dora=True, zero_row=3, seed=0)
        pissa_case()
        saved_case("lora_f32", seed=20, dtype=torch.float32, patterns=True)
        saved_case("dora_f16", seed=21, dtype=torch.float16, use_dora=True)
        saved_case("lora_bf16", seed=22, dtype=torch.bfloat16)
        versions = {"peft": peft.__version__, "torch": torch.__version__,
                    "numpy": np.__version__, "safetensors": safetensors.__version__}
        (ROOT / "versions.json").write_text(json.dumps(versions, indent=2, sort_keys=True) + "\n")
    check_cpp_saved()


if __name__ == "__main__":
    main()
