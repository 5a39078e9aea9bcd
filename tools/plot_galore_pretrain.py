#!/usr/bin/env python3
"""Plots the loss curves written by examples/galore_pretrain.cpp (run by hand).

Regenerate docs/images/galore_pretrain.png with:
    build/release/examples/galore_pretrain --csv galore_pretrain.csv && python3 tools/plot_galore_pretrain.py galore_pretrain.csv docs/images/galore_pretrain.png

Usage:
    python3 tools/plot_galore_pretrain.py [CSV] [PNG] [--title TITLE]

CSV defaults to galore_pretrain.csv (columns step,adamw,galore,fira) and PNG to
docs/images/galore_pretrain.png. Needs matplotlib (pip install matplotlib); neither the
build nor CI runs this script. The output is deterministic: Agg backend, fixed size and
dpi, and no software/date metadata in the PNG.
"""

import argparse
import csv
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# Names galore_pretrain's default setup; pass --title when the CSV came from other flags.
DEFAULT_TITLE = "MLP 64 -> 256 -> 64, 512 samples, lr 0.003; GaLore / Fira rank 16, refresh every 50"

SERIES = (
    ("adamw", "AdamW (full state)"),
    ("galore", "GaLore"),
    ("fira", "Fira"),
)


def read_csv(path):
    columns = {"step": []}
    columns.update({key: [] for key, _ in SERIES})
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            sys.exit(f"{path}: missing column(s) {', '.join(missing)}")
        for row in reader:
            columns["step"].append(int(row["step"]))
            for key, _ in SERIES:
                columns[key].append(float(row[key]))
    if not columns["step"]:
        sys.exit(f"{path}: no rows")
    return columns


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", nargs="?", default="galore_pretrain.csv")
    parser.add_argument("png", nargs="?", default="docs/images/galore_pretrain.png")
    parser.add_argument("--title", default=DEFAULT_TITLE)
    args = parser.parse_args()

    data = read_csv(args.csv)

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for key, label in SERIES:
        ax.plot(data["step"], data[key], label=label, linewidth=1.6)
    ax.set_yscale("log")
    ax.set_xlim(data["step"][0], data["step"][-1])
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (log scale)")
    ax.set_title(args.title, fontsize=9)
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
    ax.legend()
    fig.tight_layout()

    out_dir = os.path.dirname(args.png)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    fig.savefig(args.png, dpi=120, metadata={"Software": None})
    plt.close(fig)
    print(f"wrote {args.png} ({os.path.getsize(args.png)} bytes)")


if __name__ == "__main__":
    main()
