#!/usr/bin/env python3
"""Writes the checkpoint fixtures under tests/checkpoint/fixtures/ (run by hand).

Needs numpy, torch, safetensors and peft 0.21.2 (CPU only). The fixtures are committed;
tests never run this script. Every random draw comes from seeded generators and torch runs
single-threaded, so a rerun rewrites the same numbers.

    python3 tools/make_checkpoint_fixtures.py [OUTPUT_DIR]

Layout convention: a safetensors weight is PyTorch's [out, in], row-major; the C++ side
reads it as an out x in matrix. A LoRA adapter has A = lora_A (r x in), B = lora_B
(out x r) and scaling s = lora_alpha / r, the update is s * B @ A (out x in).

(a) spectra.safetensors + spectra_expected.json
    a.weight F32 24x16 = U diag(2^{-i/3}) V^T; b.weight F16 16x40 gaussian;
    c.weight BF16 12x12 = G1 @ G2 (12x4 @ 4x12, rank 4 in float64, then rounded to
    bf16, so its tail is tiny but not zero); d.weight F32 6x9 with singular values
    [5,5,5,1,1,0.5]; e.bias F32 [16] (1-D: 2-D tools must skip it); f.weight F64 10x7
    gaussian. Every expected number is computed in float64 numpy FROM THE STORED
    (rounded) values read back from the file (safetensors.numpy cannot hold BF16, so
    BF16 tensors are read with safetensors.torch and widened exactly to float64):
      singular_values (all min(m,n), descending), fro, spectral = sigma_1,
      stable_rank = fro^2 / sigma_1^2, effective_rank = exp(-sum p_i log p_i) over
      p_i = sigma_i / sum(sigma) > 0 (Roy & Vetterli), energy_rank_{90,99,999} = the
      smallest k >= 1 with cumsum(sigma^2)[k-1] >= e * sum(sigma^2) (plain float64
      comparison), break_even_rank = the largest k >= 0 with k (m + n) < m n, and
      welore_k_prune[t] = #{i : s_hat_i < welore_taus[t]} with
      s_hat = (sigma - min sigma) / (max sigma - min sigma) (0 when max == min).
    The script asserts that no energy or WeLore threshold lies within 1e-6 (relative)
    of a decision, so that any accurate SVD reproduces the integers.

(b) intruder_base.safetensors, intruder_adapter/, intruder_expected.json
    Intruder dimensions (Shuttleworth et al., "LoRA vs Full Fine-tuning: An Illusion of
    Equivalence", arXiv 2410.21228; reeceshuttle/intruder-dimensions) as implemented by
    peft 0.21.2, peft/tuners/lora/intruders.py, which is not exported at the top level:

        from peft.tuners.lora.intruders import reduce_intruder_dimension
        reduce_intruder_dimension(peft_model, old_adapter_name="default",
                                  new_adapter_name="intruder_reduced", top_k=10,
                                  threshold_epsilon=0.5, mitigation_lambda=0.75,
                                  logging_sink=print)

    It returns None and changes peft_model in place: it raises unless
    peft_model.peft_type == "LORA"; it calls peft_model.add_adapter(new_adapter_name,
    peft_config[old_adapter_name]) (same r, alpha, so the same scaling s); then, for
    every LoraLayer in peft_model.named_modules() (Linear and Embedding alike):
        W  = base weight (unmerged; fp16/bf16 upcast to fp32 for the SVDs)
        dW = layer.get_delta_weight(old) = s * B @ A;  W_merged = W + dW
        U_base = svd(W).U;  U_m, S_m, Vh_m = svd(W_merged)   (torch.linalg.svd,
                 full_matrices=False, in the weight's float32)
        c_j = max_i |U_m^T U_base|_{j,i};  I = [j < top_k : c_j < threshold_epsilon]
        if I is empty: the new adapter gets clones of the old A and B (no change);
        else:
          P_I = sum_{j in I} S_m[j] U_m[:, j] Vh_m[j, :]   (via sqrt(S) split factors)
          W_mitigated = W_merged + (lambda - 1) P_I      (lambda = mitigation_lambda:
                        the fraction of each intruder direction that is KEPT; 0.75
                        removes a quarter of it)
          D = (W_mitigated - W) / s                       (scaling taken out)
          U_d, S_d, Vh_d = svd(D);  r = layer.r[old]
          B_new = U_d[:, :r] diag(sqrt(S_d[:r]));  A_new = diag(sqrt(S_d[:r])) Vh_d[:r]
          (cast back to the base weight's dtype if that was fp16/bf16)
    and finally peft_model.set_adapter(new_adapter_name). The old adapter is kept, the
    base weights are not touched and nothing is merged. Since a positive scale commutes
    with a rank-r truncation, the new update is s B_new A_new
    = trunc_r(dW + (lambda - 1) P_I), sign-free; D generally has rank above r, so the
    truncation drops part of it.
    The model: layers.0.q_proj (32 -> 48) and layers.0.v_proj (32 -> 32), no bias,
    W0 = U diag(1/(1+i)) V^T (random orthonormal U, V) in float32. LoRA r=4,
    lora_alpha=8 (s=2), A and B set by hand so that s B A = Q1 diag(t) Q2^T (random
    orthonormal Q1, Q2, mixed by a random 4x4 R: B = Q1 diag(sqrt(t/s)) R,
    A = R^{-1} diag(sqrt(t/s)) Q2^T), t = [2.0, 1.6, 1.25, 0.4] for q_proj and
    [0.9, 0.45, 0.2, 0.1] for v_proj. The JSON holds, per module, the float32 (PEFT's
    own arithmetic) "max_abs_cos" c_0..c_9 and "intruders"; the run of
    reduce_intruder_dimension on PeftModel.from_pretrained(fresh base, intruder_adapter)
    gives "delta_after" = s * lora_B @ lora_A of the new adapter (out x in, float32
    values) and "rank_after". The script asserts that every c_j is at least 0.02 away
    from epsilon and that delta_after agrees with a float64 evaluation of
    trunc_r(dW + (lambda - 1) P_I).

(c) merge_base.safetensors, merge_lora/, merge_dora/, merge_{lora,dora}_expected.safetensors,
    merge_expected.json
    A Llama-like tiny model: model.layers.0.self_attn.q_proj.weight BF16 16x24,
    ...v_proj.weight F16 16x24, model.layers.0.mlp.down_proj.weight F32 24x16,
    model.norm.weight F32 [24], model.embed_tokens.weight BF16 10x24. Adapters on
    q_proj, v_proj, down_proj, r=4, lora_alpha=16 (s=4), A and B ~ N(0, 0.1^2) (stored
    F32), DoRA magnitude = PEFT's initial value * (1 + 0.1 N(0, 1)). The expected
    files are PeftModel.from_pretrained(base built in the stored dtypes, adapter dir)
    .merge_and_unload().state_dict(), each tensor in its own dtype.
    How peft 0.21.2 merges (merge_and_unload -> LoraLayer.merge(safe_merge=False)), with
    the base weight W in its stored dtype and the adapter upcast to float32 on load
    (autocast_adapter_dtype=True):
        delta = (B_f32 @ A_f32) * s                          float32 (get_delta_weight;
                                                             only fp16/bf16 adapters on
                                                             CPU would be upcast, ours are
                                                             already float32)
        LoRA:  W.data += delta   -> W_new = dtype(float32(W) + delta): the sum is done
               in float32 (type promotion), then rounded once to W's dtype.
        DoRA:  V = float32(W) + 1 * delta                    float32
               n = torch.linalg.norm(V, dim=1)               float32, per output row
               f = m_f32 / n                                 float32
               W_new = dtype(f[:, None] * (float32(W) + delta))
    So in bf16/fp16 the exact value is rounded to float32 (1 to 3 times) and then to the
    dtype: double rounding can put a result 1 dtype-ulp away from a single rounding of
    the exact value when that lies near a tie. The script checks this emulation
    bit-for-bit against PEFT and records, per adapter and module, the largest
    distance (in ulps of the dtype at the reference) between PEFT's result and the
    float64 value W + s B A (DoRA: m / ||W + s B A||_row * (W + s B A)) rounded once.

Every file is small (about 85 KB in all, most of it intruder_expected.json).
"""

import argparse
import json
import pathlib
import shutil

import numpy as np
import safetensors.numpy
import safetensors.torch
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora.intruders import reduce_intruder_dimension
from torch import nn

DEFAULT_DIR = pathlib.Path(__file__).resolve().parent.parent / "tests" / "checkpoint" / "fixtures"
SEED = 20260419            # (a) spectra and (c) merge: SEED and SEED + 2
INTRUDER_SEED = 20260422   # (b): picked so that every cosine is >= 0.02 from epsilon
GENERATOR = "tools/make_checkpoint_fixtures.py"

# ----------------------------------------------------------------------------- helpers


def orth(rng, m, n):
    """m x n with orthonormal columns (QR of a gaussian, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((m, n)))
    return q * np.sign(np.diag(r))


def round_to(x, mant_bits, emin):
    """Rounds float64 values once, to nearest even, to a binary format with mant_bits
    stored mantissa bits and minimum normal exponent emin (no overflow handling)."""
    x = np.asarray(x, dtype=np.float64)
    _, e = np.frexp(x)  # x = f 2^e, f in [0.5, 1)
    e = np.maximum(e - 1, emin)
    ulp = np.ldexp(1.0, e - mant_bits)
    return np.round(x / ulp) * ulp


FORMATS = {  # stored mantissa bits, minimum normal exponent
    torch.bfloat16: (7, -126),
    torch.float16: (10, -14),
    torch.float32: (23, -126),
}


def ulp_of(x, dtype):
    mant, emin = FORMATS[dtype]
    _, e = np.frexp(np.asarray(x, dtype=np.float64))
    return np.ldexp(1.0, np.maximum(e - 1, emin) - mant)


def to_f64(t):
    return t.detach().to(torch.float64).cpu().numpy()


def f32_list(a):
    """Nested list of the float32 values, each printed with float32's shortest repr."""
    a = np.asarray(a, dtype=np.float32)
    return [f32_list(row) for row in a] if a.ndim > 1 else [float(str(v)) for v in a]


def _is_flat(value):
    return isinstance(value, list) and all(not isinstance(v, (list, dict)) for v in value)


def _dumps(value, level):
    """json.dumps with one key per line, but every list of scalars on one line."""
    pad, inner = " " * level, " " * (level + 1)
    if isinstance(value, dict):
        items = [f"{inner}{json.dumps(k)}: {_dumps(v, level + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}" if items else "{}"
    if isinstance(value, list) and not _is_flat(value):
        return "[\n" + ",\n".join(inner + _dumps(v, level + 1) for v in value) + "\n" + pad + "]"
    return json.dumps(value)


def write_json(path, obj):
    text = _dumps(obj, 0) + "\n"
    assert json.loads(text) == obj
    path.write_text(text)


def tidy_adapter_dir(directory):
    """Drops the README.md that save_pretrained writes and rewrites adapter_config.json with
    target_modules sorted (PEFT keeps them in a set, whose order depends on PYTHONHASHSEED),
    in PEFT's own format (indent=2, sort_keys=True). Also: one metadata key per safetensors
    file only, since safetensors writes the metadata map in no fixed order."""
    readme = directory / "README.md"
    if readme.exists():
        readme.unlink()
    path = directory / "adapter_config.json"
    config = json.loads(path.read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    path.write_text(json.dumps(config, indent=2, sort_keys=True))


# ----------------------------------------------------------------------------- (a) spectra

WELORE_TAUS = [0.0225, 0.084, 0.115, 0.145, 0.175, 0.215, 0.26]
ENERGIES = {"energy_rank_90": 0.9, "energy_rank_99": 0.99, "energy_rank_999": 0.999}


def make_spectra(out):
    rng = np.random.default_rng(SEED)
    s_a = 2.0 ** (-np.arange(16) / 3.0)
    a = orth(rng, 24, 16) @ np.diag(s_a) @ orth(rng, 16, 16).T
    b = rng.standard_normal((16, 40))
    c = rng.standard_normal((12, 4)) @ rng.standard_normal((4, 12))
    d = orth(rng, 6, 6) @ np.diag([5.0, 5.0, 5.0, 1.0, 1.0, 0.5]) @ orth(rng, 9, 6).T
    e = rng.standard_normal(16)
    f = rng.standard_normal((10, 7))
    tensors = {
        "a.weight": torch.from_numpy(a.astype(np.float32)),
        "b.weight": torch.from_numpy(b.astype(np.float16)),  # numpy rounds f64 -> f16 once
        # torch's f64 -> bf16 goes through f32; round once here, then the cast is exact
        "c.weight": torch.from_numpy(round_to(c, 7, -126).astype(np.float32)).to(torch.bfloat16),
        "d.weight": torch.from_numpy(d.astype(np.float32)),
        "e.bias": torch.from_numpy(e.astype(np.float32)),
        "f.weight": torch.from_numpy(f.astype(np.float64)),
    }
    path = out / "spectra.safetensors"
    safetensors.torch.save_file(tensors, str(path), metadata={"generator": GENERATOR})

    # read back what is stored
    try:
        stored = {k: v.astype(np.float64) for k, v in safetensors.numpy.load_file(str(path)).items()}
    except (TypeError, ValueError):  # numpy has no bfloat16
        stored = {k: to_f64(v) for k, v in safetensors.torch.load_file(str(path)).items()}
    dtypes = {k: str(v.dtype).replace("torch.", "") for k, v in safetensors.torch.load_file(str(path)).items()}

    expected = {"welore_taus": WELORE_TAUS, "tensors": {}}
    for name in sorted(stored):
        w = stored[name]
        if w.ndim != 2:
            continue
        m, n = w.shape
        sv = np.linalg.svd(w, compute_uv=False)
        sq = sv ** 2
        total = sq.sum()
        cum = np.cumsum(sq)
        entry = {
            "dtype": dtypes[name],
            "rows": m,
            "cols": n,
            "params": m * n,
            "singular_values": [float(x) for x in sv],
            "fro": float(np.linalg.norm(w)),
            "spectral": float(sv[0]),
        }
        entry["stable_rank"] = float(entry["fro"] ** 2 / sv[0] ** 2)
        p = sv / sv.sum()
        p = p[p > 0]
        entry["effective_rank"] = float(np.exp(-(p * np.log(p)).sum()))
        for key, en in ENERGIES.items():
            target = en * total
            k = int(np.argmax(cum >= target)) + 1
            assert cum[k - 1] >= target and (k == 1 or cum[k - 2] < target)
            for j in (k - 1, k - 2):
                if j >= 0:
                    assert abs(cum[j] - target) > 1e-6 * total, (name, key, "threshold too close")
            entry[key] = k
        entry["break_even_rank"] = (m * n - 1) // (m + n)
        assert entry["break_even_rank"] * (m + n) < m * n <= (entry["break_even_rank"] + 1) * (m + n)
        lo, hi = sv.min(), sv.max()
        counts = []
        for tau in WELORE_TAUS:
            if hi == lo:
                counts.append(0)
                continue
            s_hat = (sv - lo) / (hi - lo)
            assert np.all(np.abs(s_hat - tau) > 1e-6), (name, tau, "WeLore threshold too close")
            counts.append(int((s_hat < tau).sum()))
        entry["welore_k_prune"] = counts
        expected["tensors"][name] = entry
    expected["notes"] = (
        "Computed in float64 numpy from the stored values of spectra.safetensors. "
        "e.bias is 1-D and is absent here on purpose. break_even_rank = largest k >= 0 with "
        "k*(rows+cols) < rows*cols. energy_rank_e = smallest k >= 1 with cumsum(sigma^2)[k-1] >= "
        "e*sum(sigma^2). welore_k_prune[t] = #{s_hat < welore_taus[t]}, s_hat = (sigma-min)/(max-min).")
    write_json(out / "spectra_expected.json", expected)


# ----------------------------------------------------------------------------- (b) intruders

TOP_K, EPSILON, LAMBDA = 10, 0.5, 0.75
I_R, I_ALPHA = 4, 8
I_MODULES = {"layers.0.q_proj": (32, 48, [2.0, 1.6, 1.25, 0.4]),
             "layers.0.v_proj": (32, 32, [0.9, 0.45, 0.2, 0.1])}


class IAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = nn.Linear(32, 48, bias=False)
        self.v_proj = nn.Linear(32, 32, bias=False)

    def forward(self, x):
        return torch.cat([self.q_proj(x), self.v_proj(x)], dim=-1)


class INet(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([IAttention()])

    def forward(self, x):
        return self.layers[0](x)


def make_intruders(out):
    rng = np.random.default_rng(INTRUDER_SEED)
    scaling = I_ALPHA / I_R
    base_w, factors = {}, {}
    for name, (n_in, n_out, t) in I_MODULES.items():
        k = min(n_in, n_out)
        s = 1.0 / (1.0 + np.arange(k))
        base_w[name] = (orth(rng, n_out, k) @ np.diag(s) @ orth(rng, n_in, k).T).astype(np.float32)
        q1, q2 = orth(rng, n_out, I_R), orth(rng, n_in, I_R)
        mix = rng.standard_normal((I_R, I_R)) + 2.0 * np.eye(I_R)
        root = np.diag(np.sqrt(np.asarray(t) / scaling))
        factors[name] = ((np.linalg.inv(mix) @ root @ q2.T).astype(np.float32),  # A: r x in
                         (q1 @ root @ mix).astype(np.float32))                     # B: out x r
    safetensors.numpy.save_file({f"{n}.weight": w for n, w in base_w.items()},
                                str(out / "intruder_base.safetensors"),
                                metadata={"generator": GENERATOR})

    def fresh_base():
        net = INet()
        with torch.no_grad():
            for name, w in base_w.items():
                net.get_submodule(name).weight.copy_(torch.from_numpy(w))
        return net

    config = LoraConfig(r=I_R, lora_alpha=I_ALPHA, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    model = get_peft_model(fresh_base(), config)
    for name, (a, b) in factors.items():
        layer = model.base_model.model.get_submodule(name)
        assert layer.scaling["default"] == scaling
        with torch.no_grad():
            layer.lora_A["default"].weight.copy_(torch.from_numpy(a))
            layer.lora_B["default"].weight.copy_(torch.from_numpy(b))
    adapter_dir = out / "intruder_adapter"
    if adapter_dir.exists():
        shutil.rmtree(adapter_dir)
    model.save_pretrained(str(adapter_dir))
    tidy_adapter_dir(adapter_dir)

    # PEFT's own run, on a model loaded back from disk the way a user would
    loaded = PeftModel.from_pretrained(fresh_base(), str(adapter_dir))
    log = []
    reduce_intruder_dimension(loaded, top_k=TOP_K, threshold_epsilon=EPSILON,
                              mitigation_lambda=LAMBDA, logging_sink=log.append)
    assert loaded.active_adapter == "intruder_reduced"

    modules = {}
    for name, (a, b) in factors.items():
        W0 = torch.from_numpy(base_w[name])
        dW = (torch.from_numpy(b) @ torch.from_numpy(a)) * scaling  # PEFT: (B @ A) * s, float32
        Wm = W0 + dW
        U_base = torch.linalg.svd(W0, full_matrices=False)[0]
        U_m, S_m, Vh_m = torch.linalg.svd(Wm, full_matrices=False)
        cos = (U_m.T @ U_base).abs().max(dim=1).values[:TOP_K].numpy().astype(np.float64)
        intruders = [int(j) for j in np.nonzero(cos < EPSILON)[0]]
        assert np.all(np.abs(cos - EPSILON) >= 0.02), (name, cos, "a cosine is too close to epsilon")

        # the same in float64, to make sure the float32 answers are not fragile
        W0d, dWd = base_w[name].astype(np.float64), b.astype(np.float64) @ a.astype(np.float64) * scaling
        Ubd = np.linalg.svd(W0d, full_matrices=False)[0]
        Umd, Smd, Vhd = np.linalg.svd(W0d + dWd, full_matrices=False)
        cos64 = np.abs(Umd.T @ Ubd).max(axis=1)[:TOP_K]
        assert np.allclose(cos, cos64, atol=1e-4), (name, cos, cos64)
        gaps = -np.diff(Smd[:TOP_K + 1]) / Smd[:TOP_K]
        assert gaps.min() > 1e-3, (name, "top singular values too close")

        layer = loaded.base_model.model.get_submodule(name)
        s_new = layer.scaling["intruder_reduced"]
        A_new, B_new = layer.lora_A["intruder_reduced"].weight, layer.lora_B["intruder_reduced"].weight
        delta_after = ((B_new @ A_new) * s_new).detach().numpy()
        # float64 reference: trunc_r(dW + (lambda - 1) P_I)
        P = (Umd[:, intruders] * Smd[intruders]) @ Vhd[intruders]
        Uq, Sq, Vq = np.linalg.svd(dWd + (LAMBDA - 1.0) * P, full_matrices=False)
        ref = (Uq[:, :I_R] * Sq[:I_R]) @ Vq[:I_R]
        err = np.abs(delta_after - ref).max() / np.abs(ref).max()
        assert err < 1e-4, (name, err)
        modules[name] = {
            "rows": int(W0.shape[0]),
            "cols": int(W0.shape[1]),
            "max_abs_cos": [float(str(np.float32(c))) for c in cos],
            "intruders": intruders,
            "sigma_merged_top": [float(str(np.float32(x))) for x in S_m[:TOP_K].numpy()],
            "rank_after": int(A_new.shape[0]),
            "delta_after": f32_list(delta_after),
            "delta_after_rel_err_vs_float64": float(err),
        }
    for name, entry in modules.items():  # PEFT's own detection agrees
        said = "No intruders" if not entry["intruders"] else f"Intruders: {len(entry['intruders'])}"
        assert f"base_model.model.{name}: {said}" in log, (name, log)
    n_q = len(modules["layers.0.q_proj"]["intruders"])
    assert 1 <= n_q <= 4, n_q
    expected = {
        "top_k": TOP_K,
        "epsilon": EPSILON,
        "lambda": LAMBDA,
        "r": I_R,
        "lora_alpha": I_ALPHA,
        "scaling": scaling,
        "modules": modules,
        "peft_log": log,
        "notes": (
            "max_abs_cos[j] = max_i |U_tuned^T U_base|_{j,i} for j < top_k, from torch.linalg.svd "
            "(float32, full_matrices=False) of W0 and W0 + s*B@A; intruders = [j : max_abs_cos[j] < "
            "epsilon]. delta_after = scaling * lora_B @ lora_A of the adapter 'intruder_reduced' that "
            "peft.tuners.lora.intruders.reduce_intruder_dimension(peft_model, top_k, "
            "threshold_epsilon=epsilon, mitigation_lambda=lambda) adds (in place, returns None; it "
            "also keeps the old adapter 'default' and makes the new one active; base weights untouched, "
            "nothing merged). It equals the rank-r truncated SVD of dW + (lambda - 1) * sum_{j in "
            "intruders} S_m[j] u_j v_j^T (SVD of the merged W0 + dW), lambda being the kept fraction; "
            "modules without intruders keep their A and B. Float32 values (max_abs_cos, sigma_merged_top, "
            "delta_after) are printed with float32's shortest repr: parse them as float32."),
    }
    write_json(out / "intruder_expected.json", expected)


# ----------------------------------------------------------------------------- (c) merge

M_R, M_ALPHA = 4, 16
M_TARGETS = ["q_proj", "v_proj", "down_proj"]
M_DTYPES = {
    "model.layers.0.self_attn.q_proj": torch.bfloat16,
    "model.layers.0.self_attn.v_proj": torch.float16,
    "model.layers.0.mlp.down_proj": torch.float32,
}


class MAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = nn.Linear(24, 16, bias=False, dtype=torch.bfloat16)
        self.v_proj = nn.Linear(24, 16, bias=False, dtype=torch.float16)


class MMlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.down_proj = nn.Linear(16, 24, bias=False, dtype=torch.float32)


class MLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.self_attn = MAttention()
        self.mlp = MMlp()


class MNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(24, dtype=torch.float32))


class MInner(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed_tokens = nn.Embedding(10, 24, dtype=torch.bfloat16)
        self.layers = nn.ModuleList([MLayer()])
        self.norm = MNorm()


class MModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = MInner()

    def forward(self, ids):
        h = self.model.embed_tokens(ids)
        attn = self.model.layers[0].self_attn
        h = attn.q_proj(h).float() + attn.v_proj(h.half()).float()
        return self.model.layers[0].mlp.down_proj(h) * self.model.norm.weight


def emulate_merge(W, A, B, s, m=None):
    """The order of operations of peft 0.21.2's merge (see the module docstring)."""
    delta = (B @ A) * s
    if m is None:
        return (W.float() + delta).to(W.dtype)
    norm = torch.linalg.norm(W + 1 * delta, dim=1).to(torch.float32)
    factor = (m / norm).view(-1, 1)
    return (factor * (W.data + delta)).to(W.dtype)


def make_merge(out):
    rng = np.random.default_rng(SEED + 2)
    base_state = {}
    for name, dtype in M_DTYPES.items():
        shape = (24, 16) if "down_proj" in name else (16, 24)
        w = 0.3 * rng.standard_normal(shape)
        base_state[f"{name}.weight"] = torch.from_numpy(w.astype(np.float32)).to(dtype)  # f32 -> dtype: one rounding
    base_state["model.norm.weight"] = torch.from_numpy((1.0 + 0.1 * rng.standard_normal(24)).astype(np.float32))
    base_state["model.embed_tokens.weight"] = torch.from_numpy(
        rng.standard_normal((10, 24)).astype(np.float32)).to(torch.bfloat16)
    safetensors.torch.save_file(base_state, str(out / "merge_base.safetensors"), metadata={"generator": GENERATOR})

    def fresh_base():
        net = MModel()
        net.load_state_dict(base_state, strict=True)
        for key, value in net.state_dict().items():
            assert value.dtype == base_state[key].dtype, key
        return net

    scaling = M_ALPHA / M_R
    report = {}
    for kind, use_dora in (("lora", False), ("dora", True)):
        config = LoraConfig(r=M_R, lora_alpha=M_ALPHA, lora_dropout=0.0, target_modules=M_TARGETS,
                            use_dora=use_dora)
        model = get_peft_model(fresh_base(), config)
        for name in M_DTYPES:
            layer = model.base_model.model.get_submodule(name)
            assert layer.scaling["default"] == scaling
            a_w, b_w = layer.lora_A["default"].weight, layer.lora_B["default"].weight
            assert a_w.dtype == torch.float32 and b_w.dtype == torch.float32  # autocast_adapter_dtype
            with torch.no_grad():
                a_w.copy_(torch.from_numpy(0.1 * rng.standard_normal(tuple(a_w.shape))).float())
                b_w.copy_(torch.from_numpy(0.1 * rng.standard_normal(tuple(b_w.shape))).float())
                if use_dora:
                    mag = layer.lora_magnitude_vector["default"].weight
                    assert mag.dtype == torch.float32
                    noise = torch.from_numpy(1.0 + 0.1 * rng.standard_normal(mag.shape[0])).float()
                    mag.copy_(mag * noise)
        adapter_dir = out / f"merge_{kind}"
        if adapter_dir.exists():
            shutil.rmtree(adapter_dir)
        model.save_pretrained(str(adapter_dir))
        tidy_adapter_dir(adapter_dir)

        loaded = PeftModel.from_pretrained(fresh_base(), str(adapter_dir))
        adapter = {}
        for name in M_DTYPES:
            layer = loaded.base_model.model.get_submodule(name)
            adapter[name] = (layer.get_base_layer().weight.detach().clone(),
                             layer.lora_A["default"].weight.detach().clone(),
                             layer.lora_B["default"].weight.detach().clone(),
                             layer.lora_magnitude_vector["default"].weight.detach().clone() if use_dora else None)
        merged = loaded.merge_and_unload()
        state = {k: v.detach().clone().contiguous() for k, v in merged.state_dict().items()}
        assert set(state) == set(base_state), sorted(state)
        for key, value in state.items():
            assert value.dtype == base_state[key].dtype, key
        safetensors.torch.save_file(state, str(out / f"merge_{kind}_expected.safetensors"),
                                    metadata={"generator": f"{GENERATOR} merge_{kind}"})
        for key in ("model.norm.weight", "model.embed_tokens.weight"):
            assert torch.equal(state[key], base_state[key]), key

        report[kind] = {}
        for name, dtype in M_DTYPES.items():
            W, A, B, m = adapter[name]
            peft_w = state[f"{name}.weight"]
            emulated = emulate_merge(W, A, B, scaling, m)
            assert torch.equal(emulated, peft_w), (kind, name, "emulation differs from PEFT")
            Wd, Ad, Bd = to_f64(W), to_f64(A), to_f64(B)
            V = Wd + scaling * (Bd @ Ad)
            if use_dora:
                V = (to_f64(m) / np.linalg.norm(V, axis=1))[:, None] * V
            mant, emin = FORMATS[dtype]
            ref = round_to(V, mant, emin)
            got = to_f64(peft_w)
            ulps = np.abs(got - ref) / ulp_of(ref, dtype)
            report[kind][name] = {
                "dtype": str(dtype).replace("torch.", ""),
                "max_abs_diff_vs_one_rounding": float(np.abs(got - ref).max()),
                "max_ulps_vs_one_rounding": float(ulps.max()),
                "max_abs_diff_in_ulps_of_max_abs": float(
                    np.abs(got - ref).max() / ulp_of(np.abs(ref).max(), dtype)),
                "count_differing": int((got != ref).sum()),
                "count": int(got.size),
                "max_abs_diff_vs_exact": float(np.abs(got - V).max()),
            }

    expected = {
        "r": M_R,
        "lora_alpha": M_ALPHA,
        "scaling": scaling,
        "modules": {name: str(dtype).replace("torch.", "") for name, dtype in M_DTYPES.items()},
        "untouched": ["model.norm.weight", "model.embed_tokens.weight"],
        "comparison": report,
        "notes": (
            "PeftModel.from_pretrained(base in stored dtypes, merge_<kind>/).merge_and_unload() in peft "
            "0.21.2. Adapter weights are float32 (saved so, and autocast_adapter_dtype keeps/upcasts "
            "them to float32). delta = (B @ A) * s in float32. LoRA: W_new = dtype(float32(W) + delta) "
            "(in-place W += delta with type promotion: float32 sum, one rounding to W's dtype). DoRA "
            "(merge_unsafe): n = torch.linalg.norm(float32(W) + delta, dim=1) (float32, one norm per "
            "output row of the out x in matrix), f = m / n (float32), W_new = dtype(f[:, None] * "
            "(float32(W) + delta)). So there are float32 roundings before the final one to the dtype. "
            "comparison: PEFT's result vs the float64 value W + s*B@A (DoRA: m/||W + s*B@A||_row * "
            "(W + s*B@A)) rounded once to the dtype; max_ulps_vs_one_rounding is in ulps of the dtype at each "
            "reference value (large for float32 only where W and s*B@A nearly cancel, as delta is itself "
            "rounded to float32), max_abs_diff_in_ulps_of_max_abs in ulps at the largest |reference|. "
            "For bf16/fp16 PEFT equals one rounding here, except that a value within about 1e-7 "
            "(relative) of a tie of the dtype could come out one ulp apart."),
    }
    write_json(out / "merge_expected.json", expected)


# ----------------------------------------------------------------------------- main


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default=str(DEFAULT_DIR))
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    make_spectra(out)
    make_intruders(out)
    make_merge(out)
    total = 0
    for path in sorted(out.rglob("*")):
        if path.is_file():
            size = path.stat().st_size
            total += size
            print(f"{size:8d}  {path.relative_to(out)}")
    print(f"{total:8d}  total")


if __name__ == "__main__":
    main()
