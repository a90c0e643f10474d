"""Checks of hypergradient option values: each option's type and range, declared by its method.

A method declares one check per option in :attr:`engines.hypergrad.MethodInfo.checks`
(``register_method`` refuses a method that leaves an option unchecked). A value outside its range
is refused when the level or the graph is validated, before any step: ``maxiter=-3`` would
otherwise run no product at all and give a hypergradient of exactly zero.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["OptionCheck", "choice", "flag", "integer", "optional", "real"]


@dataclass(frozen=True)
class OptionCheck:
    """A test of one option value and the words that describe what it accepts (for error messages)."""

    expected: str
    accepts: Callable[[Any], bool]

    def problem(self, name: str, value: Any) -> str | None:
        """None when ``value`` is acceptable, else ``"option 'name' must be <expected>, got <value>"``."""
        if self.accepts(value):
            return None
        return f"option '{name}' must be {self.expected}, got {value!r}"


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))


def integer(minimum: int) -> OptionCheck:
    """An integer ``>= minimum`` (``True``/``False`` and floats such as ``3.0`` are refused)."""
    return OptionCheck(f"an integer >= {minimum}", lambda v: _is_int(v) and v >= minimum)


def real(minimum: float, *, strict: bool = False, maximum: float | None = None) -> OptionCheck:
    """A finite number ``>= minimum`` (``> minimum`` when ``strict``), and ``<= maximum`` if given."""
    low = f"> {minimum:g}" if strict else f">= {minimum:g}"
    words = f"a finite number {low}" + (f" and <= {maximum:g}" if maximum is not None else "")

    def accepts(v: Any) -> bool:
        if not _is_real(v):
            return False
        above = v > minimum if strict else v >= minimum
        return above and (maximum is None or v <= maximum)

    return OptionCheck(words, accepts)


def choice(*values: str) -> OptionCheck:
    """One of the given strings."""
    return OptionCheck(f"one of {list(values)}", lambda v: isinstance(v, str) and v in values)


def flag() -> OptionCheck:
    """``True`` or ``False``."""
    return OptionCheck("True or False", lambda v: isinstance(v, bool))


def optional(check: OptionCheck) -> OptionCheck:
    """``None`` (the method's own default) or what ``check`` accepts."""
    return OptionCheck(f"None or {check.expected}", lambda v: v is None or check.accepts(v))
