"""``--doctor``: the hypergradient doctor's table for a recipe's graph, written into its run folder.

A recipe with ``--doctor`` calls :func:`write_doctor` with the graph of a run (or a function that
builds it) and the run's folder, before training it; that writes ``hypergrad_doctor.md``,
``hypergrad_doctor.json`` and ``hypergrad_doctor.png`` there and prints the recommendation per upper
level. The graph is examined at the state training starts from and is left exactly as it was
(see docs/doctor.md for how to read the table).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import common

from engines import DoctorReport, Graph, diagnose

__all__ = ["write_doctor"]


def write_doctor(
    graph: Graph | Callable[[], Graph], run_dir: str | Path, *, command: str | None = None, **options: Any
) -> tuple[DoctorReport, dict[str, Path]]:
    """Run :func:`engines.diagnose` on ``graph`` (a graph, or a function returning one) and write
    ``hypergrad_doctor.{md,json,png}`` into ``run_dir``; ``options`` go to :func:`engines.diagnose`
    (e.g. ``device``, ``methods``, ``rounds``). Returns the report and the written paths."""
    if not isinstance(graph, Graph):
        if not callable(graph):
            raise TypeError(f"write_doctor: expected a Graph or a function returning one, got {type(graph).__name__}")
        graph = graph()
        if not isinstance(graph, Graph):
            raise TypeError(f"write_doctor: the graph builder returned {type(graph).__name__}, not a Graph")
    report = diagnose(graph, command=command or common.command_line(), **options)
    paths = report.save(Path(run_dir))
    print(f"[medmlo] hypergradient doctor for '{graph.name}': {paths['md']}")
    for upper in report.uppers:
        print(f"[medmlo]   {upper.upper}: {upper.recommendation_text()}")
    return report, paths
