"""How much each hypergradient method loses in float32, bf16 and fp16 against the same method in float64.

Usage: python benchmarks/hypergrad_precision.py --out DIR [--device auto|cpu|cuda] [--batch B] [--markdown]

Problem: the benchmark CNN of ``hypergrad_cost.py`` (4 conv-BN-ReLU blocks, Adam) with one learnable
weight per training image. For every method the program first takes ``--warmup`` outer steps in float64
(so that Adam's state and the adaptive damping are past their first step) and is checkpointed; from that
checkpoint it is resumed once per precision and takes one outer step (``K`` lower steps, then the upper
step). The upper level's hypergradient is compared with the one the same method computes from the same
checkpoint in float64, by cosine similarity and relative error ``||g - g64|| / ||g64||``. Precisions:
``fp32``; ``bf16`` (autocast, on CPU or GPU); ``fp16`` (autocast with loss scaling) only on a GPU.
Prints a table (``--markdown``: as Markdown) and writes DIR/hypergrad_precision.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from hypergrad_cost import build  # the benchmark CNN (this folder is on sys.path)

from engines import Runner, resolve_device

METHODS: list[tuple[str, str, int, dict]] = [
    ("darts", "darts", 1, {}),
    ("sama", "sama", 1, {}),
    ("one_step", "one_step", 1, {}),
    ("cg (defaults)", "cg", 1, {}),
    ("cg (defaults), double-VJP products", "cg", 1, {"jvp": "reverse"}),
    ("cg, 20 products, damping 1", "cg", 1, {"tol": 0.0, "damping": 1.0, "adaptive_damping": False}),
    ("neumann (5 it.)", "neumann", 1, {"iterations": 5, "alpha": 0.02}),
    ("exact", "exact", 1, {}),
    ("exact", "exact", 3, {}),
]


def warm_checkpoint(method: str, unroll: int, options: dict, device, batch: int, warmup: int, folder: Path) -> None:
    """``warmup`` outer steps in float64, checkpointed in ``folder``."""
    runner = Runner(
        build(method, unroll, dict(options), batch),
        warmup * unroll,
        out=folder,
        device=device,
        progress=False,
        precision="fp64",
    )
    runner.run()


def hypergradient(
    method: str, unroll: int, options: dict, precision: str, device, batch: int, warmup: int, checkpoint: Path
) -> torch.Tensor:
    """The upper level's hypergradient of one outer step at ``precision`` from the warm checkpoint, in float64."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "run"
        shutil.copytree(checkpoint, folder)
        graph = build(method, unroll, dict(options), batch)
        runner = Runner(
            graph, (warmup + 1) * unroll, out=folder, resume=True, device=device, progress=False, precision=precision
        )
        try:
            for _ in range(unroll):
                runner.step()
        finally:
            runner.close()
    return graph["weights"].hypergradients["weights<-net"][0].detach().double().cpu().flatten()


def compare(got: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    cosine = float(torch.nn.functional.cosine_similarity(got, reference, dim=0))
    return cosine, float((got - reference).norm() / reference.norm())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for hypergrad_precision.json")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--batch", type=int, default=32, help="images per batch")
    parser.add_argument("--warmup", type=int, default=2, help="float64 outer steps before the one compared")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = parser.parse_args()
    device = resolve_device(args.device)
    warnings.simplefilter("ignore")
    precisions = ["fp32", "bf16"] + (["fp16"] if device.type == "cuda" else [])
    rows = []
    for label, method, unroll, options in METHODS:
        with tempfile.TemporaryDirectory() as tmp:
            warm = Path(tmp) / "warm"
            warm_checkpoint(method, unroll, options, device, args.batch, args.warmup, warm)
            run = (method, unroll, options)
            reference = hypergradient(*run, "fp64", device, args.batch, args.warmup, warm)
            row = {"method": label, "hypergrad": method, "unroll": unroll, "options": options, "device": str(device)}
            for precision in precisions:
                got = hypergradient(*run, precision, device, args.batch, args.warmup, warm)
                cosine, error = compare(got, reference)
                row[precision] = {"cosine": cosine, "relative_error": error}
        rows.append(row)
        print(label, unroll, {p: f"cos {row[p]['cosine']:.6f} err {row[p]['relative_error']:.2e}" for p in precisions})
    header = " | ".join(f"{p} cosine | {p} rel. error" for p in precisions)
    lines = [f"| method | K | {header} |", "|---|---|" + "---|---|" * len(precisions)]
    for r in rows:
        cells = " | ".join(f"{r[p]['cosine']:.6f} | {r[p]['relative_error']:.1e}" for p in precisions)
        lines.append(f"| {r['method']} | {r['unroll']} | {cells} |")
    if args.markdown:
        print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "hypergrad_precision.json").write_text(json.dumps(rows, indent=1))
    print(f"wrote {args.out / 'hypergrad_precision.json'}")


if __name__ == "__main__":
    main()
