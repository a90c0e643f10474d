"""The table of hypergradient methods, shared with Betty's own ``jvp_fn_mapping``.

A method is one *hop* of a hypergradient path: given ``v = d f / d θ_curr`` it returns
``(d θ_curr* / d θ_prev)^T v``, the product with the best-response Jacobian of level ``curr``
with respect to level ``prev``'s parameters. Registering a method here also inserts it into
``betty.hypergradient.jvp_fn_mapping``, so Betty's path machinery (and a plain Betty program
using ``Config(type=...)``) calls it like one of Betty's own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import betty.hypergradient as _betty_hg

from .option_checks import OptionCheck

__all__ = ["METHODS", "MethodInfo", "method_table", "register_method"]


@dataclass(frozen=True)
class MethodInfo:
    """How a method behaves, what it costs, and where it may be used.

    Attributes:
        name: the registry key used as ``Level(hypergrad=...)`` or on a graph edge.
        fn: Betty-style hop ``fn(vector, curr, prev, sync)``; None for refused methods.
        origin: "betty" (Betty's algorithm) or "medmlo" (ours); every registered function is medmlo's
            code except ``betty_cg``, kept verbatim for comparison.
        summary: one line on what it computes.
        cost: extra work per hop through a level (passes, Hessian-vector products).
        memory: memory behaviour.
        options: accepted option keys -> (the Betty ``Config`` field a plain Betty problem sets for it,
            or None) and the default value.
        checks: option key -> :class:`~engines.hypergrad.option_checks.OptionCheck` (type and range);
            every option must have one, so that a bad value is refused before training.
        leaf_only: refuses a level that owns hypergradient paths itself.
        optimizers: the level optimizer classes the method needs (None: any).
        needs_start: the method only makes sense at a level with a ``start`` map (warned otherwise).
        on_lower_step: called by the level after each real step's gradient, before its update.
        refused: if set, graph validation refuses the method with this reason.
    """

    name: str
    fn: Callable[..., Any] | None
    origin: str
    summary: str
    cost: str
    memory: str
    options: dict[str, tuple[str | None, Any]] = field(default_factory=dict)
    checks: dict[str, OptionCheck] = field(default_factory=dict)
    leaf_only: bool = False
    optimizers: tuple[str, ...] | None = None
    needs_start: bool = False
    on_lower_step: Callable[[Any, Any], None] | None = None
    refused: str | None = None

    def defaults(self) -> dict[str, Any]:
        return {key: default for key, (_, default) in self.options.items()}

    def option_problems(self, options: Mapping[str, Any]) -> list[str]:
        """What is wrong with ``options`` for this method: unknown names, then values of the wrong type
        or outside their range (one sentence each; empty when all is well)."""
        unknown = sorted(set(options) - set(self.options))
        problems = []
        if unknown:
            accepted = ", ".join(sorted(self.options)) or "none"
            problems.append(f"option(s) {unknown} are not understood by hypergrad '{self.name}' (accepted: {accepted})")
        for key, value in options.items():
            check = self.checks.get(key)
            problem = check.problem(key, value) if check is not None else None
            if problem is not None:
                problems.append(f"hypergrad '{self.name}' {problem}")
        return problems


METHODS: dict[str, MethodInfo] = {}


def register_method(info: MethodInfo) -> MethodInfo:
    """Add a method to medmlo's registry and to Betty's ``jvp_fn_mapping``. Every option must come
    with a check of its values (``MethodInfo.checks``), and every check must name an option."""
    unchecked = sorted(set(info.options) - set(info.checks))
    stray = sorted(set(info.checks) - set(info.options))
    if unchecked or stray:
        raise ValueError(
            f"register_method('{info.name}'): every option needs a check of its values in MethodInfo.checks "
            f"(engines.hypergrad.option_checks); options without a check: {unchecked}, checks of no option: {stray}"
        )
    for key, (_, default) in info.options.items():
        problem = info.checks[key].problem(key, default)
        if problem is not None:
            raise ValueError(f"register_method('{info.name}'): the default of {problem}")
    METHODS[info.name] = info
    if info.fn is not None:
        _betty_hg.jvp_fn_mapping[info.name] = info.fn
    else:
        _betty_hg.jvp_fn_mapping.pop(info.name, None)
    return info


def method_table() -> str:
    """A Markdown table of the registered methods (name, origin, what, cost, memory)."""
    rows = ["| method | origin | computes | cost per hop | memory |", "|---|---|---|---|---|"]
    for m in METHODS.values():
        rows.append(f"| `{m.name}` | {m.origin} | {m.summary} | {m.cost} | {m.memory} |")
    return "\n".join(rows)
