"""Regression goldens of level outputs: per-step losses and output statistics, within a tolerance.

A *trace* records, for every level of a run, the loss of each real step and summary
statistics (mean, std, min, max, L2 norm) of the level's :meth:`~engines.Level.probe`
output at the end. :func:`check_golden` compares a fresh trace with a JSON golden file and
fails with the first differing entries; with ``update=True`` it rewrites the file instead
(regenerate all goldens with ``python -m pytest -m golden --update-goldens``).

Goldens are taken with :func:`golden_trace`: float64 everywhere, deterministic kernels, CPU, a
fixed seed and a short trace, so they do not depend on the CPU's float32 kernels or the thread
count. Tolerances are set from a measured spread: ``python benchmarks/golden_spread.py`` reruns
every golden under other CPU kernels (``ATEN_CPU_CAPABILITY``) and thread counts and prints the
largest relative difference of each file (``MEDMLO_GOLDEN_RECORD=DIR`` makes :func:`check_golden`
write the traces it gets into DIR instead of comparing).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from .graph import Graph
from .run import RunResult

__all__ = ["UPDATE_HINT", "check_golden", "default_dtype", "golden_trace", "summarize", "trace_run"]

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


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Temporarily set torch's default floating dtype (tensors created inside follow it)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def golden_trace(build: Callable[[], Graph], steps: int, **run_options: Any) -> dict[str, Any]:
    """Build a graph and run it the way goldens are taken: float64 everywhere (modules, batches and
    every tensor created while building, e.g. validation data closed over by a loss), deterministic
    kernels, CPU, seed 0 unless given. Float64 makes the trace independent of the CPU's float32
    kernels and thread count, so a golden holds on any x86-64 machine."""
    options = {"device": "cpu", "seed": 0, "deterministic": True, "progress": False, **run_options}
    with default_dtype(torch.float64):
        graph = build()
        result = graph.run(steps=steps, precision="fp64", **options)
    return trace_run(graph, result)


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


def check_golden(
    trace: dict[str, Any], path: str | Path, *, rtol: float = 1e-4, atol: float = 1e-6, update: bool = False
) -> None:
    """Compare ``trace`` with the golden at ``path`` (or write it when ``update``)."""
    path = Path(path)
    record = os.environ.get("MEDMLO_GOLDEN_RECORD")
    if record:  # measuring the spread (benchmarks/golden_spread.py): keep what this machine produced
        Path(record).mkdir(parents=True, exist_ok=True)
        (Path(record) / path.name).write_text(json.dumps({"trace": trace}, indent=1, sort_keys=True) + "\n")
        return
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
