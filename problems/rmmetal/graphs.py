"""One run's graph from its settings: the reference code's hyperparameter table per algorithm, and
:class:`GraphConfig`, everything besides the data and the seed that fixes a run's graph.

The table is the released RM-MetaL code's (its ``model_setup``; the paper's §5 gives only
RM-MetaL's step sizes and K = N = 20): K, the lower step size λ_φ and the upper level's Adam rate,
one row for 32x32 data (CIFAR-FS, FC100 and the digits stand-in) and one for 84x84 data
(mini- and tieredImageNet).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import torch

from engines import Graph

from ..fewshot import EpisodeStream, FewShotDataset
from .levels import ALGORITHMS, EpisodeSource, meta_learning_graph

__all__ = ["SMALL_IMAGE_DATASETS", "TABLE", "GraphConfig", "Settings", "build_graph", "settings_for"]

SMALL_IMAGE_DATASETS = ("cifar-fs", "fc100", "digits")
"""Datasets of 32x32 images (the table's first row, Conv-4 width 64); the others are 84x84 (width 32)."""


@dataclass(frozen=True)
class Settings:
    """One algorithm's hyperparameters: K inner steps of size λ_φ, the upper level's Adam rate."""

    inner_steps: int
    inner_lr: float
    outer_lr: float


# (CIFAR-FS/FC100, mini/tieredImageNet): K, λ_φ, Adam learning rate of the upper level
TABLE: dict[str, tuple[Settings, Settings]] = {
    "rm-metal": (Settings(20, 0.1, 1e-4), Settings(20, 0.05, 1e-3)),
    "itd-bio": (Settings(20, 0.1, 1e-4), Settings(20, 0.05, 1e-4)),
    "anil": (Settings(10, 0.1, 1e-4), Settings(5, 0.1, 1e-3)),
    "maml": (Settings(3, 0.5, 1e-3), Settings(3, 0.5, 5e-3)),
}
TABLE["rm-metal-no-warm-start"] = TABLE["rm-metal"]
TABLE.update({f"{method}-shared": TABLE[method] for method in ("itd-bio", "anil")})


def settings_for(method: str, dataset: str, *, inner_steps: int | None = None, outer_lr_scale: float = 1.0) -> Settings:
    """``method``'s row of the table for ``dataset``; ``inner_steps`` replaces K (MAML keeps at most its
    own 3: its whole-network inner loop is the reference's), ``outer_lr_scale`` multiplies the Adam rate
    (short runs on few tasks take larger upper steps)."""
    if method not in TABLE:
        raise ValueError(f"unknown algorithm {method!r}; known: {', '.join(TABLE)}")
    s = TABLE[method][0 if dataset in SMALL_IMAGE_DATASETS else 1]
    steps = inner_steps if inner_steps is not None else s.inner_steps
    if method == "maml":
        steps = min(steps, s.inner_steps)
    return Settings(steps, s.inner_lr, s.outer_lr * outer_lr_scale)


@dataclass(frozen=True)
class GraphConfig:
    """Everything that fixes one run's graph besides the data and the seed.

    ``hypergrad`` replaces the algorithm's hypergradient method through the ``heads`` level (None:
    the algorithm's own); ``cg_iterations`` is N of Subroutine 1, ``mu`` the weight of R(φ) = μ/2 ||φ||².
    """

    method: str
    inner_steps: int
    inner_lr: float
    outer_lr: float
    n_tasks: int
    width: int
    n_way: int = 5
    k_shot: int = 5
    k_query: int = 5
    mu: float = 0.01
    cg_iterations: int = 20
    hypergrad: str | None = None

    @classmethod
    def of(cls, method: str, settings: Settings, **sizes: object) -> GraphConfig:
        """The config of ``method`` with ``settings`` (K, λ_φ, Adam rate) and the given sizes."""
        return cls(method, settings.inner_steps, settings.inner_lr, settings.outer_lr, **sizes)


def build_graph(config: GraphConfig, data: FewShotDataset, seed: int) -> Graph:
    """The two-level graph of ``config.method`` on ``data``'s meta-training split, ready to run.

    ``seed`` fixes the initial backbone and heads and the stream of training episodes, so two
    algorithms built with the same seed start from the same backbone and see the same tasks.
    """
    stream = EpisodeStream(data.splits["train"], config.n_way, config.k_shot, config.k_query, config.n_tasks, seed=seed)
    algorithm = replace(ALGORITHMS[config.method], hypergrad=config.hypergrad) if config.hypergrad else config.method
    return meta_learning_graph(
        algorithm,
        data=EpisodeSource(stream),
        in_channels=data.channels,
        image_size=data.image_size,
        width=config.width,
        n_way=config.n_way,
        n_tasks=config.n_tasks,
        inner_steps=config.inner_steps,
        inner_lr=config.inner_lr,
        outer_optimizer=functools.partial(torch.optim.Adam, lr=config.outer_lr),
        mu=config.mu,
        cg_iterations=config.cg_iterations,
        seed=seed,
    )
