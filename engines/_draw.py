"""PNG drawing of a level graph (matplotlib, no graphviz needed).

The drawing reads a :class:`GraphDrawing` — the graph's data (boxes, depths, edges, labels) —
not the graph class itself, so this module depends on nothing else in the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

_BOX_W, _BOX_H = 2.6, 0.9


@dataclass(frozen=True)
class GraphDrawing:
    """What a picture of a graph shows.

    Attributes:
        name: the graph's name (title).
        boxes: ``{level: (first line, second line)}`` — the level's name and "module | method, K".
        depths: ``{level: depth}`` — 0 for the bottom level.
        nest: ``(lower, upper)`` pairs, drawn solid.
        feeds: ``(upper, lower, label)`` triples, drawn dashed.
    """

    name: str
    boxes: dict[str, tuple[str, str]]
    depths: dict[str, int]
    nest: list[tuple[str, str]]
    feeds: list[tuple[str, str, str]]

    @classmethod
    def of(cls, graph: Any) -> GraphDrawing:
        """Read a (validated) :class:`engines.topology.Topology`."""
        boxes = {}
        for name, level in graph.levels.items():
            method = f"{level.hypergrad}, K={level.unroll}" if graph.uppers(name) else "top level"
            boxes[name] = (name, f"{type(level.module).__name__} | {method}")
        nest = [(lower, upper) for upper in graph.levels for lower in graph.lowers(upper)]
        feeds = []
        for upper in graph.levels:
            for lower in graph.levels:
                if upper in graph.feeders(lower):
                    method, _ = graph.method_of(lower, upper)
                    feeds.append((upper, lower, f"feeds [{method}]" if method != graph[lower].hypergrad else "feeds"))
        return cls(graph.name, boxes, {n: graph.depth(n) for n in graph.levels}, nest, feeds)


def _layout(drawing: GraphDrawing) -> dict[str, tuple[float, float]]:
    """Levels in rows by depth (top level highest), spread evenly within a row."""
    rows: dict[int, list[str]] = {}
    for name in sorted(drawing.boxes):
        rows.setdefault(drawing.depths[name], []).append(name)
    pos = {}
    for depth, names in rows.items():
        for i, name in enumerate(names):
            pos[name] = ((i - (len(names) - 1) / 2) * 3.6, depth * 2.2)
    return pos


def draw_graph(drawing: GraphDrawing, path: Path) -> Path:
    """Write ``drawing`` as a PNG at ``path``: levels by depth, nest edges solid, feeds edges dashed."""
    pos = _layout(drawing)
    xs = [x for x, _ in pos.values()]
    ys = [y for _, y in pos.values()]
    fig, ax = plt.subplots(figsize=(max(6.0, 2.2 * (max(xs) - min(xs)) / 3.6 + 5), 2.0 + 1.4 * (max(ys) / 2.2 + 1)))
    for name, (x, y) in pos.items():
        title, subtitle = drawing.boxes[name]
        ax.add_patch(
            FancyBboxPatch(
                (x - _BOX_W / 2, y - _BOX_H / 2),
                _BOX_W,
                _BOX_H,
                boxstyle="round,pad=0.05",
                facecolor="#e8f0fb",
                edgecolor="#2f5597",
                linewidth=1.4,
            )
        )
        ax.text(x, y + 0.16, title, ha="center", va="center", fontsize=11, fontweight="bold")
        ax.text(x, y - 0.18, subtitle, ha="center", va="center", fontsize=7.5)

    def arrow(src: str, dst: str, side: int, style: str, color: str, label: str) -> None:
        """Nest edges run on the right of the boxes (side=+1), feeds edges on the left (side=-1);
        an edge that spans several rows leaves from the box's side and bows around the rows between."""
        (x0, y0), (x1, y1) = pos[src], pos[dst]
        up = 1 if y1 > y0 else -1
        span = round(abs(y1 - y0) / 2.2)
        if span <= 1:
            start, end, rad = (x0 + side * 0.45, y0 + up * _BOX_H / 2), (x1 + side * 0.45, y1 - up * _BOX_H / 2), 0.0
            text_at = ((start[0] + end[0]) / 2 + side * 0.12, (start[1] + end[1]) / 2)
        else:
            start, end = (x0 + side * _BOX_W / 2, y0), (x1 + side * _BOX_W / 2, y1)
            rad = 0.35 * side * up
            text_at = (x0 + side * (_BOX_W / 2 + 0.45 * span), (y0 + y1) / 2)
        ax.add_patch(
            FancyArrowPatch(
                start,
                end,
                arrowstyle="-|>",
                mutation_scale=14,
                linestyle=style,
                color=color,
                linewidth=1.3,
                connectionstyle=f"arc3,rad={rad}",
            )
        )
        ax.text(*text_at, label, fontsize=7, color=color, ha="left" if side > 0 else "right", va="center")

    for lower, upper in drawing.nest:
        arrow(lower, upper, +1, "-", "#2f5597", "nest")
    for upper, lower, label in drawing.feeds:
        arrow(upper, lower, -1, "--", "#c55a11", label)
    ax.set_xlim(min(xs) - 3.0, max(xs) + 3.0)
    ax.set_ylim(min(ys) - 1.0, max(ys) + 1.0)
    ax.set_axis_off()
    ax.set_title(
        f"{drawing.name}: solid = solution enters upper loss (nest), dashed = parameters enter lower loss (feeds)",
        fontsize=8,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path
