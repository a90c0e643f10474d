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

from .edges import ReadCheck
from .errors import GraphError
from .hypergrad import METHODS
from .level import Level

__all__ = ["Topology"]

LevelRef = Level | str


@dataclass(frozen=True)
class _Edge:
    lower: str
    upper: str
    via: str | None = None  # nest only: the upper's loss reads the lower's solution through this level


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
        via: LevelRef | None = None,
        hypergrad: str | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        """``lower``'s solution enters ``upper``'s loss (Betty ``l2u``): ``upper`` steps after ``lower``'s
        inner loop and its hypergradients may pass through ``lower``.

        ``via``: ``upper``'s loss reads ``lower``'s solution only *through* the level ``via``, whose loss
        reads ``lower`` (e.g. a top level whose loss reads the weights of a bilevel pair ``weights`` /
        ``hyper``: ``nest(lower=hyper, upper=top, via=weights)``); paths then run
        ``top <- weights <- hyper`` (see docs/chains.md). ``hypergrad``/``options`` override the method
        for the hop through ``upper`` with respect to ``lower``."""
        self._add_edge(self._nest, lower, upper, "nest", via=None if via is None else _name(via))
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

    def _add_edge(
        self, edges: list[_Edge], lower: LevelRef, upper: LevelRef, kind: str, via: str | None = None
    ) -> None:
        edge = _Edge(_name(lower), _name(upper), via)
        if edge.lower == edge.upper:
            raise GraphError(f"graph '{self.name}': {kind} edge from level '{edge.lower}' to itself")
        for other in edges:
            if (other.lower, other.upper) == (edge.lower, edge.upper) and other.via != edge.via:
                raise GraphError(
                    f"graph '{self.name}': nest edge {edge.lower} -> {edge.upper} declared twice, with via="
                    f"{other.via!r} and via={edge.via!r}; declare it once"
                )
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
        """All nest-chains ``[src, ..., dst]``; a ``via`` edge puts its ``via`` level between its ends."""
        if src == dst:
            return [[dst]]
        return [
            [src, *([e.via] if e.via else []), *rest]
            for e in self._nest
            if e.lower == src
            for rest in self._chains(e.upper, dst)
        ]

    def below(self, name: str) -> set[str]:
        """Every level under ``name`` by nest edges (its lower levels, theirs, and so on)."""
        out: set[str] = set()
        todo = self.lowers(name)
        while todo:
            level = todo.pop()
            if level not in out:
                out.add(level)
                todo.extend(self.lowers(level))
        return out

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
                unknown = [n for n in (e.lower, e.upper, e.via) if n and n not in self._levels]
                if unknown:
                    raise GraphError(
                        f"graph '{self.name}': {kind} edge {e.lower} -> {e.upper} names unknown level(s) "
                        f"{unknown}; known levels: {sorted(self._levels)}"
                    )
        self._check_acyclic()
        self._check_via()
        for e in self._feeds:
            if not self._chains(e.lower, e.upper):
                raise GraphError(self._no_chain_message(e.upper, e.lower))
        for upper, paths in self.paths().items():
            for path in paths:
                inner = path[1:-1]
                if len(set(inner)) != len(inner) or upper in inner:
                    raise GraphError(
                        f"graph '{self.name}': the hypergradient path {' <- '.join(path[:-1])} of '{upper}' passes "
                        "through a level twice (a via= level that is also on the nest chain); declare the chain "
                        "with plain nest edges"
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
        self._check_settings()
        self._check_methods()

    def _check_via(self) -> None:
        """A ``via`` level must read the edge's lower level and lie below its upper level."""
        for e in self._nest:
            if e.via is None:
                continue
            call = f"g.nest(lower='{e.lower}', upper='{e.upper}', via='{e.via}')"
            if e.via in (e.lower, e.upper):
                raise GraphError(f"graph '{self.name}': {call}: via must be a third level, not an end of the edge")
            if e.lower not in self.feeders(e.via) and e.lower not in self.lowers(e.via):
                raise GraphError(
                    f"graph '{self.name}': {call} says that the loss of '{e.via}' reads '{e.lower}', but no edge "
                    f"declares it: add g.bilevel(lower='{e.via}', upper='{e.lower}') or "
                    f"g.feeds('{e.lower}', into='{e.via}') (or g.nest(lower='{e.lower}', upper='{e.via}'))"
                )
            if e.via not in self.below(e.upper):
                raise GraphError(
                    f"graph '{self.name}': {call}: '{e.via}' must lie below '{e.upper}' (a chain of nest edges up "
                    f"to it) so that its solution is current when '{e.upper}' steps; add "
                    f"g.nest(lower='{e.via}', upper='{e.upper}')"
                )

    def _no_chain_message(self, upper: str, lower: str) -> str:
        """Why ``feeds(upper, into=lower)`` has no path, and the declarations that would give it one."""
        readers = [
            v for v in self._levels if v not in (lower, upper) and (lower in self.feeders(v) or lower in self.lowers(v))
        ]
        ways = [f"g.nest(lower='{lower}', upper='{upper}') if the loss of '{upper}' reads '{lower}'"]
        ways += [
            f"g.nest(lower='{lower}', upper='{upper}', via='{v}') if the loss of '{upper}' reads '{v}', whose loss "
            f"reads '{lower}'"
            for v in sorted(readers)
        ]
        return (
            f"level '{upper}' feeds its parameters into '{lower}', but no chain of nest edges leads from '{lower}' "
            f"up to '{upper}', so '{upper}' could never see how '{lower}' responds; each loss on a path must read "
            f"the level after it: add {'; or '.join(ways)}; or nest edges up to '{upper}' through levels whose "
            "losses read each other (see docs/chains.md)"
        )

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

    def _override_hint(self, override: _Override, hops: Mapping[tuple[str, str], list[str]]) -> str:
        """Which call sets the hop the user probably meant (nest sets the hop through its *upper*)."""
        if override.declared_by == "nest" and (override.wrt, override.through) in hops:
            lower, upper = override.wrt, override.through
            return (
                f". g.nest(lower='{lower}', upper='{upper}', hypergrad=...) sets the hop through the upper level "
                f"'{upper}' (taken when a level above '{upper}' differentiates through it); to choose how '{upper}' "
                f"differentiates through '{lower}', pass hypergrad= to g.bilevel(lower='{lower}', upper='{upper}', "
                f"hypergrad=...) or g.feeds('{upper}', into='{lower}', hypergrad=...)"
            )
        if override.declared_by in ("feeds", "bilevel") and (override.wrt, override.through) in hops:
            lower, upper = override.through, override.wrt
            return (
                f". g.feeds/g.bilevel(..., hypergrad=...) set the hop through the lower level '{lower}'; to set the "
                f"hop through '{upper}' with respect to '{lower}', use g.nest(lower='{lower}', upper='{upper}', "
                "hypergrad=...)"
            )
        return ""

    def _check_settings(self) -> None:
        """Warn, naming the level, about settings that would be ignored: those that concern upper levels on a
        top level, a method on a level no hypergradient passes through, and an upper order on a level with
        fewer than two uppers. (Warned rather than refused: level builders are shared between graphs of
        different shapes, e.g. a recipe's baseline without the top level.)"""
        hops = self.hops()
        for name, level in self._levels.items():
            explicit = list(getattr(level, "explicit_settings", ()))
            uppers = self.uppers(name)
            if not uppers and explicit:
                lowers = self.lowers(name)
                meant = (
                    f"; to choose how '{name}' differentiates through '{lowers[0]}', set hypergrad= on '{lowers[0]}' "
                    f"or on the edge: g.bilevel(lower='{lowers[0]}', upper='{name}', hypergrad=...)"
                    if lowers and "hypergrad" in explicit
                    else ""
                )
                warnings.warn(
                    f"level '{name}' has no upper level (it is a top level), so its {', '.join(explicit)} would be "
                    "ignored: they say how upper levels step after a level and differentiate through it; remove "
                    f"them{meant}",
                    UserWarning,
                    stacklevel=3,
                )
                continue
            unused = [k for k in ("hypergrad", "options") if k in explicit]
            if unused and not any(through == name for through, _ in hops):
                warnings.warn(
                    f"level '{name}': its {' and '.join(unused)} would be ignored: no hypergradient passes through "
                    f"'{name}' (its upper level(s) {uppers} are nested over it without a feeds edge into it)",
                    UserWarning,
                    stacklevel=3,
                )
            if "upper_order" in explicit and len(uppers) < 2:
                warnings.warn(
                    f"level '{name}': upper_order='{level.upper_order}' has no effect: it orders several upper "
                    f"levels, and '{name}' has {len(uppers)} ({uppers})",
                    UserWarning,
                    stacklevel=3,
                )

    def _check_methods(self) -> None:
        owners_of_paths = set(self.paths())
        hops = self.hops()
        for key, override in self._overrides.items():
            if key not in hops:
                raise GraphError(
                    f"graph '{self.name}': a hypergradient method was set on the {override.declared_by} edge for "
                    f"differentiating '{override.through}' with respect to '{override.wrt}', but no hypergradient "
                    f"takes that hop; hops taken: {sorted(f'{t}/{w}' for t, w in hops) or 'none'}"
                    + self._override_hint(override, hops)
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
            problems = info.option_problems(options)
            if problems:
                raise GraphError(f"{where}: " + "; ".join(problems))
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
            if lv.upper_order != "simultaneous":
                through += f" upper_order={lv.upper_order}"
            if lv.hypergrad_options and self.uppers(name):
                through += " " + " ".join(f"{k}={v}" for k, v in sorted(lv.hypergrad_options.items()))
            lines.append(
                f"  {name:<12} {type(lv.module).__name__} ({n_params:,} trainable params), {opt_text}, {through}"
            )
        lines.append("edges:")
        for e in self._nest:
            through = f" through '{e.via}'" if e.via else ""
            arrow = f"-> {e.upper} via {e.via}" if e.via else f"-> {e.upper}"
            lines.append(
                f"  {e.lower} {arrow}   (nest: the solution of '{e.lower}' enters the loss of '{e.upper}'{through})"
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
        """Tell every level which uppers differentiate through it and with which per-edge methods, its own
        hypergradient paths, and what its loss must read (checked before the first step)."""
        hops = self.hops()
        paths = self.paths()
        checks = self.read_checks()
        for name, level in self._levels.items():
            through = [wrt for (t, wrt) in hops if t == name]
            level.configure_edges(
                {wrt: self.method_of(name, wrt) for wrt in through if (name, wrt) in self._overrides},
                through,
                paths=[[self._levels[n] for n in path] for path in paths.get(name, [])],
                read_checks=checks.get(name, []),
            )

    def read_checks(self) -> dict[str, list[ReadCheck]]:
        """For every level, what its loss (or start map) must read so that every factor of every path is
        carried: a path ``[U, l_1, ..., l_n, U]`` needs ``U``'s loss to read ``l_1`` and each ``l_i`` to
        read the level after it (:mod:`engines.edges`). Each check names the declaration behind it."""
        texts = self._edge_texts()
        found: dict[tuple[str, str, str | None], list[str]] = {}
        for paths in self.paths().values():
            for path in paths:
                label = "<-".join(path[:-1])
                for i, (x, y) in enumerate(itertools.pairwise(path)):
                    key = (x, y, None if i == 0 else self.method_of(x, y)[0])
                    found.setdefault(key, [])
                    if label not in found[key]:
                        found[key].append(label)
        out: dict[str, list[ReadCheck]] = {}
        for (x, y, method), labels in found.items():
            level = self._levels[x]
            if method is None:
                via = tuple(
                    sorted(v for v in self.below(x) if v != y and (y in self.feeders(v) or y in self.lowers(v)))
                )
                check = ReadCheck(y, texts[(x, y)], tuple(labels), "loss", None, via)
            else:
                info = METHODS[method]
                if info.needs_start and not level.has_start:
                    continue  # warned at validation: the hop is zero by the method's definition
                carrier = "loss"
                if info.needs_start:
                    carrier = "start"
                elif info.name == "exact" and level.has_start:
                    truncate = self.method_of(x, y)[1].get("truncate")
                    carrier = "loss_or_start" if truncate is None or truncate >= level.unroll else "loss"
                check = ReadCheck(y, texts[(x, y)], tuple(labels), carrier, method)
            out.setdefault(x, []).append(check)
        return out

    def _edge_texts(self) -> dict[tuple[str, str], str]:
        """``(x, y) -> the declaration that says x's loss reads y``, as the user would write it."""
        texts: dict[tuple[str, str], str] = {}
        for e in self._feeds:
            texts[(e.lower, e.upper)] = (
                f"feeds edge {e.upper} => {e.lower} (g.feeds('{e.upper}', into='{e.lower}') or "
                f"g.bilevel(lower='{e.lower}', upper='{e.upper}'))"
            )
        for e in self._nest:
            if e.via is None:
                texts.setdefault(
                    (e.upper, e.lower),
                    f"nest edge {e.lower} -> {e.upper} (g.nest(lower='{e.lower}', upper='{e.upper}') or "
                    f"g.bilevel(lower='{e.lower}', upper='{e.upper}'))",
                )
        for e in self._nest:
            if e.via is not None:
                text = f"g.nest(lower='{e.lower}', upper='{e.upper}', via='{e.via}')"
                texts.setdefault((e.upper, e.via), text)
                texts.setdefault((e.via, e.lower), text)
        return texts

    def signature(self) -> dict[str, Any]:
        """What must match for a run directory to be resumed with this graph."""
        return {
            "name": self.name,
            "levels": {
                n: {
                    "hypergrad": lv.hypergrad,
                    "unroll": lv.unroll,
                    "params": [list(p.shape) for p in lv.trainable_parameters()],
                    **({"upper_order": lv.upper_order} if lv.upper_order != "simultaneous" else {}),
                }
                for n, lv in sorted(self._levels.items())
            },
            "nest": sorted([e.lower, e.upper, *([e.via] if e.via else [])] for e in self._nest),
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
