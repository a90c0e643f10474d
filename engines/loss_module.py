"""The module a level's loss runs inside when its parameters are swapped (``torch.func.functional_call``).

Kept apart from :mod:`engines.level` so that the hypergradient methods, which the level module
imports, can use it without an import circle.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

__all__ = ["LossModule"]


class LossModule(nn.Module):
    """Puts a level's module under a parent so ``torch.func.functional_call`` can swap its
    parameters while the level's own loss code (``self.module(...)``) runs unchanged."""

    def __init__(self, level: Any):
        super().__init__()
        self.m = level.module
        self._level = (level,)  # a tuple, so the level is not registered as a submodule

    def forward(self, batch: Any) -> Tensor:
        out = self._level[0].training_step(batch)
        return out["loss"] if isinstance(out, Mapping) else out
