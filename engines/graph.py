"""The level graph users build programs with: structure (:mod:`engines.topology`) plus drawing and running.

Example::

    g = Graph("hpo")
    g.add(inner, outer)
    g.bilevel(lower=inner, upper=outer)
    print(g.describe()); g.draw("graph.png")
    g.run(steps=100, device="cpu")

See :mod:`engines.topology` for the two kinds of edges, hypergradient paths and per-edge methods.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from betty.logging.logger_base import get_logger

from ._draw import GraphDrawing, draw_graph
from .run import RunResult, build_engine, run
from .topology import Topology

__all__ = ["Graph"]

get_logger().setLevel(logging.WARNING)  # Betty logs every problem's wiring at INFO on stdout


class Graph(Topology):
    """A multilevel program: levels plus ``nest``/``feeds`` edges (see :class:`engines.topology.Topology`).

    Example:
        >>> g = Graph("hpo")                                        # doctest: +SKIP
        >>> g.add(inner, outer)
        >>> g.bilevel(lower=inner, upper=outer)
        >>> print(g.describe()); g.draw("graph.png")
        >>> g.run(steps=100, device="cpu")
    """

    def draw(self, path: str | Path) -> Path:
        """Write a PNG of the graph: levels by depth, nest edges solid, feeds edges dashed."""
        self.validate()
        return draw_graph(GraphDrawing.of(self), Path(path))

    def build(self, device: torch.device) -> Any:
        """Validate, then translate into Betty's ``Engine`` (``u2l``/``l2u`` dependencies)."""
        return build_engine(self, device)

    def run(self, steps: int, **kwargs: Any) -> RunResult:
        """Run the program for ``steps`` global steps; keyword arguments as :func:`engines.run`."""
        return run(self, steps=steps, **kwargs)
