"""Walking one hypergradient path, hop by hop, with the method each *edge* names.

A path ``[upper, l_1, ..., l_n, upper]`` (Betty's form) says: ``upper``'s loss reads ``l_1``'s
solution, ``l_1``'s solution responds to ``l_2``'s parameters, ..., and ``l_n``'s responds to
``upper``'s. The hypergradient along it is

    d f / d l_1  ->  (d l_1* / d l_2)^T  ->  ...  ->  (d l_n* / d upper)^T

where each arrow is one hop through ``l_i`` with respect to the next level, computed by the method
the graph assigns to that edge (the level's own ``hypergrad`` unless the edge overrides it).
Betty's ``get_grads`` picks the method from the level alone; this walker is what makes
per-edge methods possible (DuMeta++: the encoder through the shared head with ``exact``, the head
initialisation through the same head with ``first_order``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from torch import Tensor

from .common import Hop, running, zeros_for_none
from .registry import METHODS

__all__ = ["Hypergradients", "path_label", "walk_path"]


class Hypergradients(dict):
    """A level's latest hypergradient of every path, keyed by path label (``"hp<-net"``, see
    :func:`path_label`); a key that is not one says which keys there are."""

    def __init__(self, level: str):
        super().__init__()
        self.level = level

    def __missing__(self, key: Any) -> list[Tensor]:
        if self:
            labels = sorted(self)
            hint = f"its keys are path labels: {labels}"
            close = [label for label in labels if str(key) in label.split("<-")]
            if close:
                hint += f" (level '{key}' is on {close})"
        else:
            hint = (
                "it has none yet: a level's hypergradients are kept after each of its steps, keyed by path "
                f"labels such as '{self.level}<-lower'; levels that receive none have no paths"
            )
        raise KeyError(f"level '{self.level}' has no hypergradient '{key}'; {hint}")


def path_label(path: Sequence[Any]) -> str:
    """``"arch<-seg<-gan"``: the upper level, then the levels the hypergradient passes through."""
    return "<-".join([path[0].name, *(level.name for level in path[1:-1])])


def walk_path(vector: Sequence[Tensor], path: Sequence[Any]) -> tuple[list[Tensor], dict[str, dict]]:
    """The hypergradient along ``path`` for ``path[-1]``'s parameters, given ``vector`` = d f / d l_1
    (the gradient of ``path[0]``'s loss with respect to ``path[1]``'s trainable parameters).

    The caller forms every path's first vector from the upper's loss in one backward pass before any
    hop runs: a hop may perturb a level's parameters in place (finite differences), which would
    invalidate the upper's graph for the next path. Returns the gradient (a list over
    ``path[-1].trainable_parameters()``) and one report per hop, keyed
    ``"<through>-><with respect to>"``, holding the method used and its diagnostics.
    """
    vector = zeros_for_none(list(vector), list(path[1].trainable_parameters()))
    label = path_label(path)
    reports: dict[str, dict] = {}
    for curr, prev in itertools.pairwise(path[1:]):
        method, options = curr.method_through(prev)
        hop = Hop(
            curr, prev, method, dict(options), state_key=f"{label}|{curr.name}->{prev.name}", report={"method": method}
        )
        with running(hop):
            vector = METHODS[method].fn(vector, curr, prev, False)
        reports[f"{curr.name}->{prev.name}"] = hop.report
    return vector, reports
