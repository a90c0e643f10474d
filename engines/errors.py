"""Errors raised by the engine. Each names the level(s), file or argument involved."""

from __future__ import annotations

from pathlib import Path


class GraphError(ValueError):
    """The level graph is malformed (cycle, unknown or duplicate name, unsupported method...)."""


class LossError(TypeError):
    """A level's loss returned something other than a scalar tensor that depends on what it should."""


class NonFiniteError(FloatingPointError):
    """A level produced a non-finite loss or gradient; the run stops without overwriting checkpoints."""

    def __init__(self, level: str, step: int, what: str, value: float):
        self.level, self.step, self.what, self.value = level, step, what, value
        super().__init__(f"level '{level}' produced a non-finite {what} ({value}) at global step {step}")


class ResumeError(RuntimeError):
    """A run directory cannot be resumed (missing checkpoint or a different graph)."""


class CheckpointError(ResumeError):
    """A checkpoint file is unreadable (truncated, empty or corrupted)."""

    def __init__(self, path: Path, reason: str):
        self.path = Path(path)
        super().__init__(f"checkpoint {self.path} is damaged ({reason}); it cannot be loaded")
