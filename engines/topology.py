"""The structure of a multilevel program: levels, ``nest``/``feeds`` edges, per-edge methods.

Two kinds of edges, as in Betty:

* ``nest(lower, upper)`` — the lower level's solution enters the upper level's loss
  (Betty's ``l2u``; e.g. the segmenter's weights enter the architecture's validation loss);
* ``feeds(upper, into=lower)`` — the upper level's parameters enter the lower level's loss
  (Betty's ``u2l``; the upper then receives a hypergradient through the lower level).

``bilevel(lower, upper)`` states both, the common case. A graph may have any depth and a
level may have several uppers (one inner level shared by two outer levels).

Every hypergradient is a chain of *hops*: through a level, with respect to the level whose
parameters enter its loss. A hop uses the method of the level it passes through
(``Level(hypergrad=...)``) unless the edge names its own: ``bilevel(lower, upper,
hypergrad="exact")`` or ``feeds(upper, into=lower, hypergrad=...)`` sets the method (and
``options``) for differentiating ``lower`` with respect to ``upper`` only — DuMeta++'s encoder
differentiates through the shared head with ``exact`` while the head initialisation uses
``first_order`` through the same head. ``nest(lower, upper, hypergrad=...)`` sets the hop through
``upper`` with respect to ``lower`` (taken when a level above ``upper`` differentiates through it).

:class:`Topology` holds this structure, validates it and describes it; it runs nothing.
:class:`engines.Graph` adds drawing and running (:mod:`engines.graph`), and the runner
(:mod:`engines.run`) turns a topology into Betty's ``Engine``.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from betty.engine import Engine

from .errors import GraphError
from .hypergrad import METHODS
from .level import Level

__all__ = ["Topology"]

LevelRef = Level | str


@dataclass(frozen=True)
class _Edge:
    lower: str
    upper: str


@dataclass(frozen=True)
class _Override:
    """A per-edge hypergradient method: for the hop through ``through`` with respect to ``wrt``."""

    through: str
    wrt: str
    method: str
    options: tuple[tuple[str, Any], ...]
    declared_by: str  # "bilevel", "feeds" or "nest", for error messages


class Topology:
    """Levels plus ``nest``/``feeds`` edges and per-edge methods: what a program is, not how it runs.

    The structure queries (:meth:`uppers`, :meth:`paths`, :meth:`hops`, :meth:`method_of`) and
    :meth:`validate` are what the runner and the drawing read; :class:`engines.Graph` is the class
    users build programs with.
    """

    def __init__(self, name: str = "graph"):
        self.name = name
        self._levels: dict[str, Level] = {}
        self._nest: list[_Edge] = []
        self._feeds: list[_Edge] = []
        self._overrides: dict[tuple[str, str], _Override] = {}
        self.engine: Any = None  # the Betty Engine the runner builds (engines.run.build_engine)

    # ------------------------------------------------------------------ building
    def add(self, *levels: Level) -> Level | tuple[Level, ...]:
        """Add levels; returns the level (or the tuple of levels) for chaining."""
        for level in levels:
            if not isinstance(level, Level):
                raise TypeError(f"Graph.add expects Level objects, got {type(level).__name__}")
            _check_name(level.name)
            if level.name in self._levels:
                raise GraphError(f"graph '{self.name}': duplicate level name '{level.name}'")
            self._levels[level.name] = level
        return levels[0] if len(levels) == 1 else levels

    def nest(
        self,
        lower: LevelRef,
        upper: LevelRef,
        *,
        hypergrad: str | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        """``lower``'s solution enters ``upper``'s loss (Betty ``l2u``). ``hypergrad``/``options``
        override the method for the hop through ``upper`` with respect to ``lower``."""
        self._add_edge(self._nest, lower, upper, "nest")
        if hypergrad is not None or options is not None:
            self._override(_name(upper), _name(lower), hypergrad, options, "nest")

    def feeds(
        self,
        upper: LevelRef,
        into: LevelRef | Iterable[LevelRef],
        *,
        hypergrad: str | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        """``upper``'s parameters enter the loss of each level in ``into`` (Betty ``u2l``).
        ``hypergrad``/``options`` override the method for the hops through each of them with respect
        to ``upper`` (default: each level's own ``hypergrad``)."""
        targets = [into] if isinstance(into, (Level, str)) else list(into)
        for lower in targets:
            self._add_edge(self._feeds, lower, upper, "feeds")
            if hypergrad is not None or options is not None:
                self._override(_name(lower), _name(upper), hypergrad, options, "feeds")

    def bilevel(
        self,
        lower: LevelRef,
        upper: LevelRef,
        *,
        hypergrad: str | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        """The common bilevel case: ``nest(lower, upper)`` and ``feeds(upper, into=lower)``.
        ``hypergrad``/``options`` choose how ``upper`` differentiates through ``lower`` on this edge
        (default: ``lower``'s own method)."""
        self.nest(lower, upper)
        self.feeds(upper, into=lower, hypergrad=hypergrad, options=options)

    def _override(
        self, through: str, wrt: str, method: str | None, options: Mapping[str, Any] | None, declared_by: str
    ) -> None:
        if method is not None and not isinstance(method, str):
            raise TypeError(
                f"graph '{self.name}': {declared_by} edge {through}/{wrt}: hypergrad must be a method "
                f"name (str), got {type(method).__name__}; pass its options as options={{...}}"
            )
        if options is not None and not isinstance(options, Mapping):
            raise TypeError(
                f"graph '{self.name}': {declared_by} edge {through}/{wrt}: options must be a dict, "
                f"got {type(options).__name__}"
            )
        self._overrides[(through, wrt)] = _Override(
            through, wrt, method or "", tuple(sorted((options or {}).items())), declared_by
        )

    def method_of(self, through: str, wrt: str) -> tuple[str, dict[str, Any]]:
        """The method and options of the hop through level ``through`` with respect to level ``wrt``."""
        override = self._overrides.get((through, wrt))
        level = self._levels[through]
        if override is None:
            return level.hypergrad, dict(level.hypergrad_options)
        method = override.method or level.hypergrad
        options = dict(override.options) if (override.options or override.method) else dict(level.hypergrad_options)
        return method, options

    def hops(self) -> dict[tuple[str, str], list[str]]:
        """Every hop ``(through, wrt)`` some hypergradient takes, with the upper levels that take it."""
        out: dict[tuple[str, str], list[str]] = {}
        for upper, paths in self.paths().items():
            for path in paths:
                for through, wrt in itertools.pairwise(path[1:]):
                    takers = out.setdefault((through, wrt), [])
                    if upper not in takers:
                        takers.append(upper)
        return out

    def _add_edge(self, edges: list[_Edge], lower: LevelRef, upper: LevelRef, kind: str) -> None:
        edge = _Edge(_name(lower), _name(upper))
        if edge.lower == edge.upper:
            raise GraphError(f"graph '{self.name}': {kind} edge from level '{edge.lower}' to itself")
        if edge not in edges:
            edges.append(edge)

    @property
    def levels(self) -> Mapping[str, Level]:
        return dict(self._levels)

    def __getitem__(self, name: str) -> Level:
        return self._levels[name]

    # ------------------------------------------------------------------ structure
    def uppers(self, name: str) -> list[str]:
        return [e.upper for e in self._nest if e.lower == name]

    def lowers(self, name: str) -> list[str]:
        return [e.lower for e in self._nest if e.upper == name]

    def feeders(self, name: str) -> list[str]:
        """The levels whose parameters enter ``name``'s loss (``feeds`` edges into it)."""
        return [e.upper for e in self._feeds if e.lower == name]

    def paths(self) -> dict[str, list[list[str]]]:
        """For every upper level, its hypergradient paths ``[upper, hop1, ..., upper]`` (Betty's form)."""
        out: dict[str, list[list[str]]] = {}
        for edge in self._feeds:
            for chain in self._chains(edge.lower, edge.upper):
                out.setdefault(edge.upper, []).append([edge.upper, *reversed(chain[:-1]), edge.upper])
        return out

    def _chains(self, src: str, dst: str) -> list[list[str]]:
        """All nest-chains ``[src, ..., dst]``."""
        if src == dst:
            return [[dst]]
        return [[src, *rest] for up in self.uppers(src) for rest in self._chains(up, dst)]

    def depth(self, name: str) -> int:
        """Longest chain of nest edges below a level (0 for the bottom)."""
        below = self.lowers(name)
        return 0 if not below else 1 + max(self.depth(b) for b in below)

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise :class:`GraphError` naming the level(s) at fault, or return quietly."""
        if not self._levels:
            raise GraphError(f"graph '{self.name}' has no levels")
        for kind, edges in (("nest", self._nest), ("feeds", self._feeds)):
            for e in edges:
                unknown = [n for n in (e.lower, e.upper) if n not in self._levels]
                if unknown:
                    raise GraphError(
                        f"graph '{self.name}': {kind} edge {e.lower} -> {e.upper} names unknown level(s) "
                        f"{unknown}; known levels: {sorted(self._levels)}"
                    )
        self._check_acyclic()
        for e in self._feeds:
            if not self._chains(e.lower, e.upper):
                raise GraphError(
                    f"level '{e.upper}' feeds its parameters into '{e.lower}', but no chain of nest edges "
                    f"leads from '{e.lower}' up to '{e.upper}', so '{e.upper}' could never see how "
                    f"'{e.lower}' responds; add g.nest(lower='{e.lower}', upper=...) edges up to '{e.upper}'"
                )
        for level in self._levels.values():
            if level.optimizer is None:
                raise GraphError(f"level '{level.name}' has no optimizer")
            optimized = {id(p) for group in level.optimizer.param_groups for p in group["params"]}
            if optimized != {id(p) for p in level.trainable_parameters()}:
                raise GraphError(
                    f"level '{level.name}': its optimizer must hold exactly the level's trainable "
                    "parameters; pass a factory such as functools.partial(torch.optim.Adam, lr=...)"
                )
        for level in self._levels.values():
            for other in self._levels:
                if other != level.name and hasattr(level, other) and getattr(level, other) is not self._levels[other]:
                    raise GraphError(
                        f"level '{level.name}' has an attribute '{other}' of its own, which Betty would overwrite "
                        f"with the level named '{other}' (levels reach each other as attributes); rename the level "
                        "or the attribute"
                    )
        owners: dict[int, str] = {}
        for level in self._levels.values():
            for p in level.trainable_parameters():
                if id(p) in owners:
                    raise GraphError(
                        f"levels '{owners[id(p)]}' and '{level.name}' both train the same parameter; "
                        "each parameter belongs to exactly one level"
                    )
                owners[id(p)] = level.name
        self._check_methods()

    def _check_acyclic(self) -> None:
        visiting: list[str] = []
        done: set[str] = set()

        def visit(name: str) -> None:
            visiting.append(name)
            for up in self.uppers(name):
                if up in visiting:
                    cycle = [*visiting[visiting.index(up) :], up]
                    raise GraphError(f"graph '{self.name}': nest edges form a cycle: {' -> '.join(cycle)}")
                if up not in done:
                    visit(up)
            visiting.pop()
            done.add(name)

        for name in self._levels:
            if name not in done:
                visit(name)

    def _check_methods(self) -> None:
        owners_of_paths = set(self.paths())
        hops = self.hops()
        for key, override in self._overrides.items():
            if key not in hops:
                raise GraphError(
                    f"graph '{self.name}': a hypergradient method was set on the {override.declared_by} edge for "
                    f"differentiating '{override.through}' with respect to '{override.wrt}', but no hypergradient "
                    f"takes that hop; hops taken: {sorted(f'{t}/{w}' for t, w in hops) or 'none'}"
                )
        for (through, wrt), takers in sorted(hops.items()):
            level = self._levels[through]
            method, options = self.method_of(through, wrt)
            where = f"level '{through}'" + (f" (edge to '{wrt}')" if (through, wrt) in self._overrides else "")
            info = METHODS.get(method)
            if info is None:
                usable = sorted(m for m, i in METHODS.items() if not i.refused)
                raise GraphError(f"{where}: unknown hypergrad '{method}'; available: {usable}")
            if info.refused:
                raise GraphError(f"{where}: hypergrad '{info.name}' refused: {info.refused}")
            unknown = sorted(set(options) - set(info.options))
            if unknown:
                raise GraphError(
                    f"{where}: option(s) {unknown} are not understood by hypergrad '{method}' "
                    f"(accepted: {', '.join(sorted(info.options)) or 'none'})"
                )
            if info.leaf_only and through in owners_of_paths:
                raise GraphError(
                    f"{where}: hypergrad '{info.name}' only supports levels that own no hypergradient "
                    f"paths, but '{through}' receives hypergradients from {self.lowers(through)}; this graph's "
                    "depth needs darts, sama, one_step, cg, cg_warm, exact or first_order there"
                )
            optimizer = type(level.optimizer).__name__
            if info.optimizers is not None and optimizer not in info.optimizers:
                raise GraphError(
                    f"{where}: hypergrad '{info.name}' needs one of {list(info.optimizers)} as the "
                    f"level's optimizer, got {optimizer}"
                )
            if info.needs_start and not level.has_start:
                warnings.warn(
                    f"{where}: hypergrad '{info.name}' without a start= map gives {', '.join(takers)} no hypergradient "
                    f"through '{through}' (only the direct gradient): it differentiates the start map only",
                    UserWarning,
                    stacklevel=3,
                )
            if info.name == "exact":
                _ = level.trainable_names  # exact swaps module parameters: raises GraphError if they are not
                truncate = options.get("truncate")
                if truncate is not None and not 1 <= int(truncate) <= level.unroll:
                    raise GraphError(f"{where}: exact option truncate={truncate} must lie in 1..unroll={level.unroll}")
            if info.name == "penalty":
                penalized = sorted(
                    {
                        u
                        for (t, w), us in hops.items()
                        if t == through and self.method_of(t, w)[0] == "penalty"
                        for u in us
                    }
                )
                if len(penalized) > 1:
                    raise GraphError(
                        f"{where}: the penalty method supports one upper level per lower level, got {penalized}"
                    )

    # ------------------------------------------------------------------ description
    def describe(self) -> str:
        """Levels (module, optimizer, method, unroll), edges and hypergradient paths, as text."""
        order = sorted(self._levels, key=lambda n: (-self.depth(n) if self._is_valid_dag() else 0, n))
        lines = [
            f"Graph '{self.name}': {len(self._levels)} level(s), {len(self._nest)} nest edge(s), "
            f"{len(self._feeds)} feeds edge(s)",
            "levels (top first):",
        ]
        for name in order:
            lv = self._levels[name]
            n_params = sum(p.numel() for p in lv.trainable_parameters())
            opt = lv.optimizer
            opt_text = f"{type(opt).__name__}(lr={opt.param_groups[0]['lr']:g})" if opt else "no optimizer"
            through = f"hypergrad={lv.hypergrad} unroll={lv.unroll}" if self.uppers(name) else "top level"
            if lv.hypergrad_options and self.uppers(name):
                through += " " + " ".join(f"{k}={v}" for k, v in sorted(lv.hypergrad_options.items()))
            lines.append(
                f"  {name:<12} {type(lv.module).__name__} ({n_params:,} trainable params), {opt_text}, {through}"
            )
        lines.append("edges:")
        for e in self._nest:
            lines.append(
                f"  {e.lower} -> {e.upper}   (nest: the solution of '{e.lower}' enters the loss of '{e.upper}')"
            )
        for e in self._feeds:
            lines.append(
                f"  {e.upper} => {e.lower}   (feeds: the parameters of '{e.upper}' enter the loss of '{e.lower}')"
            )
        if self._feeds and self._is_valid_dag():
            lines.append("hypergradient paths (hop = method, K unrolled steps; * = set on the edge):")
            for upper, paths in self.paths().items():
                for path in paths:
                    parts = []
                    for through, wrt in itertools.pairwise(path[1:]):
                        method, _ = self.method_of(through, wrt)
                        mark = "*" if (through, wrt) in self._overrides else ""
                        parts.append(f"{through}[{method}{mark}, K={self._levels[through].unroll}]")
                    lines.append(f"  d loss({upper}) / d params({upper}): {upper} <- {' <- '.join(parts)}")
        return "\n".join(lines)

    def _is_valid_dag(self) -> bool:
        try:
            self._check_acyclic()
        except GraphError:
            return False
        return all(e.lower in self._levels and e.upper in self._levels for e in self._nest + self._feeds)

    def dependencies(self) -> dict[str, dict[Level, list[Level]]]:
        """Betty's ``{"l2u": {lower: [uppers]}, "u2l": {upper: [lowers]}}`` for this program."""
        levels = self._levels
        l2u: dict[Level, list[Level]] = {}
        for e in self._nest:
            l2u.setdefault(levels[e.lower], []).append(levels[e.upper])
        u2l: dict[Level, list[Level]] = {}
        for e in self._feeds:
            u2l.setdefault(levels[e.upper], []).append(levels[e.lower])
        return {"l2u": l2u, "u2l": u2l}

    def configure_levels(self) -> None:
        """Tell every level which uppers differentiate through it and with which per-edge methods."""
        hops = self.hops()
        for name, level in self._levels.items():
            through = [wrt for (t, wrt) in hops if t == name]
            level.configure_edges(
                {wrt: self.method_of(name, wrt) for wrt in through if (name, wrt) in self._overrides}, through
            )

    def signature(self) -> dict[str, Any]:
        """What must match for a run directory to be resumed with this graph."""
        return {
            "name": self.name,
            "levels": {
                n: {
                    "hypergrad": lv.hypergrad,
                    "unroll": lv.unroll,
                    "params": [list(p.shape) for p in lv.trainable_parameters()],
                }
                for n, lv in sorted(self._levels.items())
            },
            "nest": sorted([e.lower, e.upper] for e in self._nest),
            "feeds": sorted([e.upper, e.lower] for e in self._feeds),
            "edge_methods": sorted(
                [o.through, o.wrt, o.method, [list(kv) for kv in o.options]] for o in self._overrides.values()
            ),
        }


_RESERVED = (
    set(dir(Engine))
    | set(dir(Level))
    | {
        "config",
        "dependencies",
        "problems",
        "leaves",
        "logger",
        "env",
        "device",
        "module",
        "optimizer",
        "scheduler",
        "cfg",
        "scaler",
        "dtype",
        "precision",
        "gas",
        "ready",
        "accelerator",
        "engine",
    }
)


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name.isidentifier():
        raise GraphError(f"level name {name!r} must be a Python identifier (levels reach each other as attributes)")
    if name in _RESERVED or name.startswith("_"):
        raise GraphError(
            f"level name '{name}' clashes with an attribute Betty sets on the engine or on every level; "
            "choose another name"
        )


def _name(ref: LevelRef) -> str:
    return ref.name if isinstance(ref, Level) else str(ref)
