"""What every recipe's command line shares: options, presets, run folders (results files: reporting.py).

Common options mean the same in every recipe: --dataset, --data-root, --download,
--preset {smoke,small,paper,study}, --device, --seed/--seeds, --steps, --out, --resume, --hypergrad,
--doctor (recipes/doctor.py) and --audit-every (the runner's audit_every).
Without --preset a recipe picks the one that finishes in minutes where it runs (smoke on CPU,
small on a GPU) and says so.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import torch

from engines import METHODS, resolve_device

PRESETS = ("smoke", "small", "paper", "study")


def add_common_arguments(parser: argparse.ArgumentParser, *, datasets: Sequence[str], default_dataset: str) -> None:
    parser.add_argument("--dataset", default=default_dataset, choices=list(datasets), help="dataset to run on")
    parser.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="folder holding the official archives, extracted unchanged (default: the "
        "embedded synthetic sample, written in the real layout)",
    )
    parser.add_argument(
        "--download",
        action="store_true",
        help="download openly available datasets into --data-root (checksum verified)",
    )
    parser.add_argument(
        "--preset",
        choices=PRESETS,
        default=None,
        help="smoke (CPU, minutes), small (a short real run, GPU), paper (the paper's settings), study (the "
        "claims on 2 CPU cores within an hour, docs/results/); "
        "default: smoke on CPU, small on GPU",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--seed", type=int, default=None, help="a single seed (shorthand for --seeds S)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds; results are averaged over them")
    parser.add_argument("--steps", type=positive_int, default=None, help="override the preset's training steps")
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default: runs/<recipe>-<dataset>-<preset>)"
    )
    parser.add_argument("--resume", action="store_true", help="continue the runs in --out where they stopped")
    parser.add_argument(
        "--hypergrad",
        default=None,
        help="hypergradient method for every level, or per level as 'level=method,level=method' "
        f"(methods: {', '.join(m for m, i in METHODS.items() if not i.refused)})",
    )
    parser.add_argument(
        "--precision", choices=("fp32", "bf16", "fp16"), default="fp32", help="autocast precision (fp16 needs a GPU)"
    )
    parser.add_argument("--workers", type=non_negative_int, default=0, help="DataLoader worker processes per level")
    parser.add_argument(
        "--doctor",
        action="store_true",
        help="before training each run, compare every hypergradient method with a reference on its graph and write "
        "hypergrad_doctor.{md,json,png} into its run folder (docs/doctor.md)",
    )
    parser.add_argument(
        "--audit-every",
        type=non_negative_int,
        default=0,
        help="audit each upper level's hypergradient against the doctor's reference at its first step and every N-th "
        "after it, logged in metrics.jsonl (0: off)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _integer_at_least(minimum: int, what: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    parse.__name__ = what.replace(" ", "_")
    return parse


positive_int = _integer_at_least(1, "a positive integer")
"""argparse type: an integer >= 1 (steps, sizes, counts)."""
non_negative_int = _integer_at_least(0, "an integer >= 0")
"""argparse type: an integer >= 0."""


def finite_non_negative_float(text: str) -> float:
    """argparse type: a finite float >= 0 (a weight, a margin); nan, inf and negatives are refused at parse time."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (weights, rates)."""
    value = finite_non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def choose_preset(requested: str | None, device: torch.device) -> str:
    """The requested preset, or smoke on CPU / small on GPU (printed, so the user knows)."""
    if requested is not None:
        return requested
    chosen = "small" if device.type == "cuda" else "smoke"
    print(f"[medmlo] no --preset given: using '{chosen}' on {device} (pass --preset to choose)")
    return chosen


def resolve(args: argparse.Namespace) -> tuple[torch.device, str, list[int]]:
    if args.download and args.data_root is None:
        raise SystemExit("error: --download needs --data-root (the folder to download and extract into)")
    device = resolve_device(args.device)
    preset = choose_preset(args.preset, device)
    if args.seed is not None and args.seeds is not None:
        raise SystemExit("error: give --seed or --seeds, not both")
    seeds = args.seeds if args.seeds is not None else ([args.seed] if args.seed is not None else None)
    return device, preset, seeds


def parse_hypergrad(spec: str | None, levels: Sequence[str]) -> dict[str, str]:
    """``"cg"`` -> every level; ``"gan=darts,seg=cg"`` -> per level.

    Checked at start-up, before any training: an unknown level, an unknown or refused method, or a
    malformed item is a ``SystemExit`` naming it and listing what is accepted.
    """
    if spec is None:
        return {}
    usable = sorted(m for m, info in METHODS.items() if not info.refused)
    if "=" not in spec:
        pairs = [(level, spec.strip()) for level in levels]
    else:
        pairs = []
        for part in spec.split(","):
            level, sep, method = (x.strip() for x in part.partition("="))
            if not sep or not level or not method:
                raise SystemExit(f"error: --hypergrad item {part!r} must read level=method (e.g. {levels[0]}=cg)")
            if level not in levels:
                raise SystemExit(f"error: --hypergrad names level '{level}'; this recipe's levels are {list(levels)}")
            pairs.append((level, method))
    out = {}
    for level, method in pairs:
        info = METHODS.get(method)
        if info is None:
            raise SystemExit(
                f"error: --hypergrad: unknown method '{method}' for level '{level}'; available: {', '.join(usable)}"
            )
        if info.refused:
            raise SystemExit(f"error: --hypergrad: method '{method}' is refused: {info.refused}")
        out[level] = method
    return out


def override(preset: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` ignoring None values (unset command-line options)."""
    return replace(preset, **{k: v for k, v in changes.items() if v is not None})


def prepare_out(out: Path, resume: bool) -> Path:
    """Create the output folder; refuse to mix a new run into a finished one without --resume."""
    if (out / "results.json").exists() and not resume:
        raise SystemExit(
            f"error: {out} already holds results.json; pass --resume to continue it or choose another --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    return out


def preset_table(preset: Any) -> str:
    return ", ".join(f"{f.name}={getattr(preset, f.name)}" for f in fields(preset))


def command_line() -> str:
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
