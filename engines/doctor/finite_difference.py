"""The model-free check: central finite differences of the upper loss through re-runs of the real steps.

No derivative code is involved. From the state saved at the start of the window, the upper
level's parameters are moved by ``±ε d`` along a unit direction ``d``, the window's real steps are
run again (same batches, random states and learning rates: the data sources and generators are
restored), and the upper loss is read where the upper level would form its gradient. The slope
``(L(+ε) - L(-ε)) / 2ε`` is the *total* derivative of what the window really does along ``d``:
the direct gradient plus every path's hypergradient, whatever the graph's depth. It is compared
with ``<g, d>`` for the reference total ``g`` (direct + Σ paths); their relative disagreement is the
reference's trust. The first direction is the reference total itself (its slope should equal
``||g||``), the others are random (seeded, the run's generators are not touched).

Cost: two re-runs of the window per direction. The batches of every re-run are compared with those
of the first run, so a data source that does not restore its position is detected, not trusted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..level import Level
from ..topology import Topology
from .state import GraphState
from .window import Recorder, drive_to_step, same_batches

__all__ = ["DEFAULT_EPS", "FD_SCALES", "FDCheck", "agreement", "directions", "finite_differences", "predictions"]

DEFAULT_EPS = {torch.float64: 1e-6, torch.float32: 3e-3}
FD_SCALES = (1e-6, 1e-8, 1e-10)
"""The relative steps ``diagnose`` tries in float64, in order, until one agrees with the reference."""


@dataclass
class FDCheck:
    """Directional derivatives measured by re-running the window, against what a gradient predicts.

    ``slopes[i]`` is the measured slope along direction ``i``; :func:`agreement` compares them with a
    gradient's predictions. ``reproducible`` is None when the re-runs drew the same data as the
    first run, else where they differed (the check is then void)."""

    eps: float
    dtype: str
    slopes: list[float] = field(default_factory=list)
    directions: list[list[Tensor]] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    reproducible: str | None = None
    note: str | None = None


def _flat_norm(vectors: Sequence[Tensor]) -> float:
    return math.sqrt(sum(float((v.detach().double() ** 2).sum()) for v in vectors))


def directions(params: Sequence[Tensor], first: Sequence[Tensor] | None, count: int, seed: int) -> tuple[list, list]:
    """Unit directions in the upper parameters: ``first`` normalised (if given and non-zero), then ``count``
    random ones from a private generator seeded with ``seed``."""
    out, kinds = [], []
    if first is not None:
        norm = _flat_norm(first)
        if norm > 0:
            out.append([f.detach() / norm for f in first])
            kinds.append("reference")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    for _ in range(count):
        raw = [torch.randn(p.shape, generator=generator, dtype=torch.float64) for p in params]
        norm = _flat_norm(raw)
        out.append([(r / norm).to(device=p.device, dtype=p.dtype) for r, p in zip(raw, params)])
        kinds.append("random")
    return out, kinds


def finite_differences(
    graph: Topology,
    upper: Level,
    start: GraphState,
    dirs: Sequence[Sequence[Tensor]],
    kinds: Sequence[str],
    *,
    eps: float | None,
    max_steps: int,
    expected_batches: Sequence[tuple[str, Any]] | None,
    recorder_factory: Callable[[], Recorder],
) -> FDCheck:
    """Slopes of the upper loss along ``dirs`` by central differences, each side a re-run of the window
    from ``start`` with the upper parameters moved; ``start`` is restored after every re-run."""
    params = list(upper.trainable_parameters())
    dtype = params[0].dtype
    scale = max(1.0, _flat_norm(params))
    step = (eps if eps is not None else DEFAULT_EPS.get(dtype, 3e-3)) * scale
    check = FDCheck(eps=step, dtype=str(dtype).replace("torch.", ""), kinds=list(kinds))
    for direction in dirs:
        losses = []
        for sign in (1.0, -1.0):
            start.restore()
            with torch.no_grad():
                for p, d in zip(params, direction):
                    p.add_(d.to(p.dtype), alpha=sign * step)
            recorder = recorder_factory()
            with recorder.attached():
                losses.append(drive_to_step(graph, upper, lambda lv, b, logged: logged["loss"], max_steps=max_steps))
            if expected_batches is not None and check.reproducible is None:
                check.reproducible = same_batches(expected_batches, recorder.batches)
        start.restore()
        check.slopes.append((losses[0] - losses[1]) / (2 * step))
        check.directions.append([d.detach() for d in direction])
    return check


def agreement(check: FDCheck, gradient: Sequence[Tensor]) -> float:
    """Relative disagreement ``||s - p|| / max(||s||, ||p||)`` between the measured slopes ``s`` and the
    predictions ``p_i = <gradient, d_i>`` (0: identical; 1 or more: unrelated)."""
    predicted = predictions(check, gradient)
    diff = math.sqrt(sum((s - p) ** 2 for s, p in zip(check.slopes, predicted)))
    scale = max(math.sqrt(sum(s * s for s in check.slopes)), math.sqrt(sum(p * p for p in predicted)))
    return diff / scale if scale > 0 else 0.0


def predictions(check: FDCheck, gradient: Sequence[Tensor]) -> list[float]:
    """``<gradient, d_i>`` for every direction of the check."""
    return [
        sum(float((g.double() * d.double()).sum()) for g, d in zip(gradient, direction))
        for direction in check.directions
    ]
