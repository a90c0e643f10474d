"""The paper's budgets in epochs, as global steps of the three trainings (Sections 4.2, 5.2).

Meta-learning runs ``epochs`` over each task's training slices with ``J`` slices of every task per
cross-task batch, in whole outer rounds of ``K`` θ-steps; conventional learning runs
``baseline_epoch_ratio`` times as many epochs over the merged training and validation slices
(paper: 2000 against 100); adaptation runs ``adapt_epochs`` over ``adapt_samples`` slices (paper:
50 over 100). Stair training shares the meta-learning steps equally among the phases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Budget"]


@dataclass(frozen=True)
class Budget:
    """Global steps of meta-learning, conventional learning and adaptation; validations every
    ``valid_every`` meta-learning steps; stair stages of ``stage_steps`` steps (None: no stairs)."""

    meta_steps: int
    stage_steps: int | None
    valid_every: int
    baseline_steps: int
    adapt_steps: int

    @classmethod
    def from_epochs(
        cls,
        *,
        n_train: int,
        n_val: int,
        epochs: float,
        batch_per_task: int,
        inner_steps: int,
        phases: int,
        stair: bool,
        valid_times: int,
        baseline_epoch_ratio: float,
        baseline_batch: int,
        adapt_samples: int,
        adapt_epochs: float,
        adapt_batch: int,
        meta_steps: int | None = None,
    ) -> Budget:
        """The steps of every training for splits of ``n_train``/``n_val`` slices per task;
        ``meta_steps`` replaces the meta-learning epochs (the other budgets follow from it)."""
        k, j = inner_steps, batch_per_task
        meta = meta_steps if meta_steps is not None else math.ceil(epochs * n_train / j)
        meta = k * max(1, math.ceil(meta / k))  # whole outer rounds
        stage = k * max(1, meta // (k * phases)) if stair and phases > 1 else None
        valid_every = k * max(1, meta // (k * max(1, valid_times)))
        merged = n_train + n_val
        baseline_epochs = baseline_epoch_ratio * meta * j / n_train
        baseline = math.ceil(baseline_epochs * merged / min(baseline_batch, merged))
        adapt_n = min(adapt_samples, n_train)
        adapt = math.ceil(adapt_epochs * adapt_n / min(adapt_batch, adapt_n))
        return cls(meta, stage, valid_every, max(1, baseline), max(1, adapt))

    def conventional_stage_steps(self) -> int | None:
        """Stair stages of conventional learning: the same share of its steps as in meta-learning."""
        if self.stage_steps is None:
            return None
        return max(1, round(self.stage_steps * self.baseline_steps / self.meta_steps))
