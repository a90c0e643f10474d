"""The candidate methods of the doctor table: which apply to an upper level's paths, and their cost.

A candidate is a registered method (optionally with options and a label of its own) used on every
hop of every path of the upper level, in place of what the graph configures there. Where the graph
already uses that method on a hop, the hop keeps its configured options; elsewhere the method's
defaults apply. Whether a candidate applies is decided from the registry
(:class:`engines.hypergrad.registry.MethodInfo`: refused, optimizers it needs, leaf-only, start map);
a candidate that raises while computing is reported with its error, never crashes the table.

Cost: the hypergradient computation of the upper level's step (every path, all hops, given the
vectors every path starts from), timed over ``rounds`` runs from the same state (each hop's
method state, e.g. a warm start, is put back before every run) and its median reported; peak
memory from one more run under :func:`engines.track_peak_memory`. The lower steps of the window,
common to every method, are not included.
"""

from __future__ import annotations

import copy
import statistics
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..hypergrad import METHODS
from ..hypergrad.paths import path_label
from ..level import Level
from ..memory import track_peak_memory
from .reference import StepVectors, walk, window_of

__all__ = ["Candidate", "Computed", "candidates", "compute", "unsupported_reason"]

NOT_COMPARABLE = {
    "penalty": "not comparable at a shared state: it replaces the lower level's gradient during the window, so its "
    "hypergradient belongs to a different trajectory; compare it where it runs (Runner audit_every=N)",
    "betty_cg": "Betty 0.2.1's shipped cg, registered for accuracy comparisons only; pass it in methods= to include it",
}


@dataclass(frozen=True)
class Candidate:
    """A method to evaluate: ``label`` in the table, registry ``method``, and ``options`` applied on every hop
    (None: each hop's configured options where the graph uses this method there, else the defaults)."""

    label: str
    method: str
    options: tuple[tuple[str, Any], ...] | None = None
    explicit: bool = False

    def choose(self, curr: Level, prev: Level) -> tuple[str, dict[str, Any]]:
        if self.options is not None:
            return self.method, dict(self.options)
        configured, options = curr.method_through(prev)
        return self.method, (dict(options) if configured == self.method else {})


def candidates(methods: Sequence[Any] | None) -> list[Candidate]:
    """Every registered method (``methods=None``), or those named: ``"cg"`` or ``(label, method, options)``."""
    if methods is None:
        return [Candidate(name, name) for name in METHODS]
    out = []
    for item in methods:
        if isinstance(item, str):
            out.append(Candidate(item, item, explicit=True))
        elif isinstance(item, (tuple, list)) and len(item) == 3 and isinstance(item[2], dict):
            label, method, options = item
            out.append(Candidate(str(label), str(method), tuple(sorted(options.items())), explicit=True))
        else:
            raise TypeError(
                f"diagnose: methods entries must be a method name or (label, method, options dict), got {item!r}"
            )
    for c in out:
        if c.method not in METHODS:
            raise ValueError(f"diagnose: unknown method '{c.method}' in methods=; registered: {sorted(METHODS)}")
        unknown = sorted({k for k, _ in (c.options or ())} - set(METHODS[c.method].options))
        if unknown:
            accepted = ", ".join(sorted(METHODS[c.method].options)) or "none"
            raise ValueError(f"diagnose: option(s) {unknown} are not understood by '{c.method}' (accepted: {accepted})")
    labels = [c.label for c in out]
    if len(set(labels)) != len(labels):
        raise ValueError(f"diagnose: methods= labels must be distinct, got {labels}")
    return out


def unsupported_reason(candidate: Candidate, paths: Sequence[Sequence[Any]], owners: set[str]) -> str | None:
    """Why ``candidate`` cannot be used on every hop of ``paths`` (None if it can). ``owners``: names of
    the levels that own hypergradient paths themselves."""
    info = METHODS[candidate.method]
    if info.refused:
        return f"refused: {info.refused}"
    if candidate.method in NOT_COMPARABLE and not candidate.explicit:
        return NOT_COMPARABLE[candidate.method]
    if candidate.method == "penalty":
        return NOT_COMPARABLE["penalty"]
    for path in paths:
        for curr in path[1:-1]:
            optimizer = type(curr.optimizer).__name__
            if info.optimizers is not None and optimizer not in info.optimizers:
                return f"needs one of {list(info.optimizers)} as the optimizer of '{curr.name}', which uses {optimizer}"
            if info.leaf_only and curr.name in owners:
                return f"only for levels that own no hypergradient paths; '{curr.name}' receives hypergradients itself"
            if info.needs_start and not curr.has_start:
                return (
                    f"'{curr.name}' has no start map: {candidate.method} would contribute no hypergradient through it"
                )
    return None


@dataclass
class Computed:
    """One candidate's hypergradient per path at the upper level's step, with its cost."""

    paths: dict[str, list[Tensor]] = field(default_factory=dict)
    hops: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: list[float] = field(default_factory=list)
    peak_bytes: int | None = None
    memory_method: str = ""
    error: str | None = None
    warnings: list[str] = field(default_factory=list)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compute(
    candidate: Candidate,
    paths: Sequence[Sequence[Any]],
    vectors: StepVectors,
    trajectories: dict,
    *,
    rounds: int,
    device: torch.device,
) -> Computed:
    """The candidate's hypergradient on every path, timed over ``rounds`` runs plus one measured for memory."""
    levels = list({lv.name: lv for path in paths for lv in path[1:-1]}.values())
    states = {lv.name: copy.deepcopy(lv.method_state) for lv in levels}
    result = Computed()

    def once() -> dict[str, list[Tensor]]:
        for lv in levels:
            lv.method_state = copy.deepcopy(states[lv.name])
        out = {}
        for path in paths:
            out[path_label(path)], result.hops[path_label(path)] = walk(
                vectors.first[path[1].name], path, candidate.choose
            )
        return out

    with warnings.catch_warnings(record=True) as caught, window_of(paths, candidate.choose, trajectories):
        warnings.simplefilter("always")
        try:
            for _ in range(rounds):
                _sync(device)
                t0 = time.perf_counter()
                result.paths = once()
                _sync(device)
                result.seconds.append(time.perf_counter() - t0)
        except Exception as err:  # a method failing on this graph is a finding of the table, not a crash
            result.error = f"{type(err).__name__}: {err}"
        else:
            try:
                with track_peak_memory(device) as memory:
                    once()
                result.peak_bytes, result.memory_method = memory.peak_bytes, memory.method
            except Exception as err:  # the hypergradient is known; only its memory could not be measured
                result.memory_method = f"not measured ({type(err).__name__}: {err})"
        finally:
            for lv in levels:
                lv.method_state = states[lv.name]
    result.warnings = sorted({str(w.message) for w in caught})
    return result


def median_seconds(computed: Computed) -> float | None:
    return statistics.median(computed.seconds) if computed.seconds else None
