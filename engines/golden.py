"""Regression goldens of level outputs: per-step losses and output statistics, within a tolerance.

A *trace* records, for every level of a run, the loss of each real step and summary
statistics (mean, std, min, max, L2 norm) of the level's :meth:`~engines.Level.probe`
output at the end. :func:`check_golden` compares a fresh trace with a JSON golden file and
fails with the first differing entries; with ``update=True`` it rewrites the file instead
(regenerate all goldens with ``python -m pytest -m golden --update-goldens``).

Goldens are taken on CPU in float32 with a fixed seed; the default tolerance
(``rtol=1e-4``, ``atol=1e-6``) absorbs reduction-order differences between CPU builds
while catching any change in the maths.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from .graph import Graph
from .run import RunResult

__all__ = ["UPDATE_HINT", "check_golden", "summarize", "trace_run"]

UPDATE_HINT = "regenerate with: python -m pytest -m golden --update-goldens"


def summarize(t: torch.Tensor) -> dict[str, float]:
    """Mean, std, min, max and L2 norm of a tensor (float64)."""
    t = t.detach().double().flatten()
    return {
        "mean": float(t.mean()),
        "std": float(t.std()) if t.numel() > 1 else 0.0,
        "min": float(t.min()),
        "max": float(t.max()),
        "l2": float(t.norm()),
    }


def trace_run(graph: Graph, result: RunResult) -> dict[str, Any]:
    """The trace of a finished run: ``{level: {"loss": [...], "output": summarize(probe)}}``."""
    return {
        name: {"loss": [float(v) for v in result.losses.get(name, [])], "output": summarize(level.probe())}
        for name, level in sorted(graph.levels.items())
    }


def _diff(got: Any, want: Any, rtol: float, atol: float, where: str, out: list[str]) -> None:
    if isinstance(want, dict):
        if not isinstance(got, dict) or set(got) != set(want):
            out.append(f"{where}: keys {sorted(got) if isinstance(got, dict) else got} != {sorted(want)}")
            return
        for key in want:
            _diff(got[key], want[key], rtol, atol, f"{where}.{key}", out)
    elif isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            out.append(f"{where}: length {len(got) if isinstance(got, list) else got} != {len(want)}")
            return
        for i, (g, w) in enumerate(zip(got, want)):
            _diff(g, w, rtol, atol, f"{where}[{i}]", out)
    elif isinstance(want, float):
        if not (math.isfinite(got) and abs(got - want) <= atol + rtol * abs(want)):
            out.append(f"{where}: {got!r} != {want!r} (rtol={rtol}, atol={atol})")
    elif got != want:
        out.append(f"{where}: {got!r} != {want!r}")


def check_golden(trace: dict[str, Any], path: str | Path, *, rtol: float = 1e-4, atol: float = 1e-6,
                 update: bool = False) -> None:
    """Compare ``trace`` with the golden at ``path`` (or write it when ``update``)."""
    path = Path(path)
    if update:
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"tolerance": {"rtol": rtol, "atol": atol}, "torch": torch.__version__, "trace": trace}
        path.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
        return
    if not path.is_file():
        raise AssertionError(f"golden file {path} is missing; {UPDATE_HINT}")
    golden = json.loads(path.read_text())
    tol = golden.get("tolerance", {})
    problems: list[str] = []
    _diff(trace, golden["trace"], tol.get("rtol", rtol), tol.get("atol", atol), path.stem, problems)
    if problems:
        shown = "\n  ".join(problems[:12])
        more = f"\n  ... and {len(problems) - 12} more" if len(problems) > 12 else ""
        raise AssertionError(
            f"level outputs differ from golden {path} (recorded with torch {golden.get('torch')}):\n  "
            f"{shown}{more}\nIf the change is intended, {UPDATE_HINT}"
        )
