"""The metarecon baseline on the task-correlation experiment: meta-training, adaptation to each test task, scoring.

The metarecon recipe's model (LOA network, task-invariant θ and per-task regulariser weights ω_i,
:mod:`problems.metarecon.levels`) is meta-trained on the same (non-noise) training tasks, then
adapted to each test task by its own protocol for unseen tasks: θ frozen, a new ω trained on that
task's validation slices. It is a single-coil model: it sees the single-channel k-space of the same
slices under the same masks. A noise task has no single-channel images, so it is left out here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from engines import Runner

from .. import metarecon
from ..metarecon.loa import LOASettings
from ..mri import per_slice_rows, reconstruction_metrics
from .tasks import TaskData

__all__ = ["ContrastCrossTaskSlices", "MetareconBaseline", "train_metarecon_baseline"]


class ContrastCrossTaskSlices(torch.utils.data.Dataset):
    """metarecon's cross-task items for tasks that may differ in contrast: item ``k`` holds one slice
    of every task, task ``i``'s from its own contrast's images (a seeded permutation of them)."""

    def __init__(self, images: Sequence[Tensor], masks: Tensor, *, seed: int = 0):
        self.images, self.masks = list(images), masks
        self.task_ids = torch.arange(len(masks))
        gen = torch.Generator().manual_seed(seed)
        self.length = min(len(x) for x in self.images)
        self.order = [torch.randperm(len(x), generator=gen)[: self.length] for x in self.images]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, k: int) -> dict[str, Tensor]:
        target = torch.stack([x[o[k]] for x, o in zip(self.images, self.order)])
        return {"target": target, "mask": self.masks, "task": self.task_ids}


@dataclass(frozen=True)
class MetareconBaseline:
    """Budgets of the baseline: ``outer_steps`` × ``inner_steps`` θ-steps (as the task-correlation
    methods), LOA ``phases`` / ``channels``, ``adapt_steps`` per test task, batches and learning
    rates, the hypergradient method of its own graph, and slice limits per split."""

    outer_steps: int
    inner_steps: int
    phases: int
    channels: int
    adapt_steps: int
    train_batch: int
    val_batch: int
    theta_lr: float
    omega_lr: float
    hypergrad: str = "penalty"
    train_slices: int | None = None
    val_slices: int | None = None
    test_slices: int | None = None


def train_metarecon_baseline(
    data: TaskData,
    settings: MetareconBaseline,
    run_dir: Path,
    *,
    seed: int,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    progress: bool = False,
    resume: bool = False,
) -> dict[str, Any]:
    """Meta-train (in ``run_dir/meta``), adapt to each test task (``run_dir/adapt-<task>``) and score.

    Returns ``rows`` (per-slice metrics, method ``metarecon``), ``examples`` (the middle test slice of
    every task), ``sigma_omega_train`` / ``sigma_omega_test`` (the learned regulariser weights) and
    ``wall_time_s`` of meta-training."""
    tasks = [t for t in data.train_tasks if not t.is_noise]
    shape = data.train[0].image_shape
    masks = torch.stack([t.sampling.mask(shape) for t in tasks])
    s = settings
    train = ContrastCrossTaskSlices([data.images(t, "train", s.train_slices) for t in tasks], masks, seed=seed)
    val = ContrastCrossTaskSlices([data.images(t, "val", s.val_slices) for t in tasks], masks, seed=seed + 1)
    graph = metarecon.meta_graph(
        train=train,
        val=val,
        settings=LOASettings(phases=s.phases, channels=s.channels),
        schedule=metarecon.StairSchedule(s.phases),
        batch_per_task=s.train_batch,
        val_batch_per_task=s.val_batch,
        unroll=s.inner_steps,
        hypergrad=s.hypergrad,
        theta_lr=s.theta_lr,
        omega_lr=s.omega_lr,
        seed=seed,
    )
    result = Runner(
        graph,
        s.outer_steps * s.inner_steps,
        out=run_dir / "meta",
        device=device,
        seed=seed,
        precision=precision,
        checkpoint_every=s.inner_steps * max(1, s.outer_steps // 5),
        resume=resume and (run_dir / "meta" / "checkpoint_latest.pt").exists(),
        progress=progress,
    ).run()
    network = graph["theta"].module
    rows, examples, sigmas = [], {}, {}
    for task in data.val_tasks:
        mask = task.sampling.mask(shape)
        adapt_data = ContrastCrossTaskSlices([data.images(task, "val", s.val_slices)], mask[None], seed=seed)
        adapt = metarecon.adaptation_graph(
            network=network, train=adapt_data, batch_size=s.val_batch, lr=s.omega_lr, seed=seed
        )
        Runner(
            adapt,
            s.adapt_steps,
            out=run_dir / f"adapt-{task.key}",
            device=device,
            seed=seed,
            resume=resume and (run_dir / f"adapt-{task.key}" / "checkpoint_latest.pt").exists(),
            progress=False,
        ).run()
        sigma = float(adapt["omega"].module.sigma()[0])
        images = data.images(task, "test", s.test_slices)
        recon, _ = metarecon.reconstruct(network.eval(), images, mask, sigma)
        metrics = reconstruction_metrics(recon.abs(), images)
        rows += per_slice_rows(metrics, method="metarecon", seed=seed, task=task.label)
        examples[task.key] = recon.abs()[len(recon) // 2]
        sigmas[task.key] = sigma
    return {
        "rows": rows,
        "examples": examples,
        "sigma_omega_train": graph["omega"].module.sigma().tolist(),
        "sigma_omega_test": sigmas,
        "meta_wall_time_s": result.wall_time_s,
    }
