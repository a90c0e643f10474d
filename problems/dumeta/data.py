"""Mini-batches for DuMeta++'s levels: Algorithm 1's split of the meta-training pool per iteration.

Every meta-iteration t draws a random order of the pool's datasets (A, B, C): the inner level
(``head``) takes a mini-batch from A (Algorithm 1 line 4), each outer level a mini-batch from the
remaining two, ``batch_size`` items from each (lines 7 and 10, drawn independently for the two
outer levels as the algorithm samples twice). Every draw is a pure function of
``(seed, t, role, inner step, dataset)``, so the only state is ``t``: a resumed run sees exactly
the batches of an uninterrupted one.

A dataset of the pool is anything with ``draw(n, generator)``: :class:`PatchItems` draws random
2D axial or 3D patches from subjects (the recipe's default), :class:`TensorItems` draws from
tensors held in memory (tests, precomputed slices).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from engines import mix_seed

from ..braindata import Subject, random_patches
from ..braindata.augment import NnUNetAugmentation

__all__ = ["DomainItems", "JointSampler", "MetaTaskSampler", "PatchItems", "SegBatch", "TensorItems"]

_ROLES = {"inner": 0, "encoder": 1, "head_init": 2, "joint": 3, "init": 4}


@dataclass
class SegBatch:
    """A segmentation mini-batch. ``image [B, 1, *S]`` float, ``label [B, *S]`` int64 (0 bg, 1 CSF,
    2 GM, 3 WM), ``domain [B]`` int64: the index of each item's dataset in the pool."""

    image: Tensor
    label: Tensor
    domain: Tensor

    def __post_init__(self) -> None:
        if self.image.dim() != self.label.dim() + 1 or self.image.shape[2:] != self.label.shape[1:]:
            raise ValueError(
                f"SegBatch: image [B, 1, *S] and label [B, *S] disagree: {tuple(self.image.shape)} vs "
                f"{tuple(self.label.shape)}"
            )

    def __len__(self) -> int:
        return self.image.shape[0]


class DomainItems(Protocol):
    """One dataset of the pool: ``draw(n, generator)`` -> images ``[n, 1, *S]`` and labels ``[n, *S]``."""

    name: str

    def draw(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]: ...


class TensorItems:
    """Items held in memory (2D slices or whole resampled volumes), drawn uniformly with replacement.

    Args:
        name: the dataset's name.
        images: ``[N, *S]`` float in [0, 1]; labels: ``[N, *S]`` int64.
    """

    def __init__(self, name: str, images: Tensor, labels: Tensor):
        if images.shape != labels.shape or images.shape[0] == 0:
            raise ValueError(
                f"dataset {name!r}: expected images and labels of equal shape [N, *S] with N >= 1, got "
                f"{tuple(images.shape)} and {tuple(labels.shape)}"
            )
        self.name = name
        self.images = images.float()
        self.labels = labels.long()

    def __len__(self) -> int:
        return self.images.shape[0]

    def draw(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        index = torch.randint(len(self), (n,), generator=generator)
        return self.images[index, None], self.labels[index]


class PatchItems:
    """Random patches of a dataset's subjects (braindata's ``random_patches``: a third of them centred
    on tissue, as nnU-Net's foreground oversampling), drawn anew at every call, optionally with
    nnU-Net's augmentation (:class:`~problems.braindata.augment.NnUNetAugmentation`: each patch is cut
    larger and augmented down to ``patch``).

    Args:
        name: the dataset's name.
        subjects: its scans (on the grid the network works on).
        patch: ``(px, py, pz)``; ``pz = 1`` gives 2D axial patches ``[n, 1, px, py]`` for the 2D network.
        augment: whether to augment every patch; ``device`` is where the spatial resampling runs.
    """

    def __init__(
        self,
        name: str,
        subjects: Sequence[Subject],
        patch: Sequence[int],
        *,
        augment: bool = False,
        device: str | None = None,
    ):
        if not subjects:
            raise ValueError(f"dataset {name!r} has no subjects to draw patches from")
        if len(patch) != 3 or min(patch) < 1:
            raise ValueError(f"dataset {name!r}: expected a 3D patch size, got {tuple(patch)}")
        self.name = name
        self.subjects = list(subjects)
        self.patch = tuple(int(p) for p in patch)
        flat = self.patch[:2] if self.patch[2] == 1 else self.patch
        self.augment = NnUNetAugmentation(flat, device) if augment else None

    def draw(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        which = torch.randint(len(self.subjects), (n,), generator=generator).tolist()
        rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator)))
        cut = self.patch if self.augment is None else (*self.augment.source_patch, 1)[:3]
        images, labels = [], []
        for i in which:
            image, label = random_patches(self.subjects[i], cut, 1, rng)
            if self.patch[2] == 1:  # axial 2D patches
                image, label = image[..., 0], label[..., 0]
            if self.augment is not None:
                image, label = (v[None] for v in self.augment(image[0], label[0], rng))
            images.append(image)
            labels.append(label)
        return torch.from_numpy(np.concatenate(images))[:, None], torch.from_numpy(np.concatenate(labels))


class _PoolSampler:
    """Deterministic draws from a pool of datasets; the only state is the iteration counter."""

    def __init__(self, pool: Sequence[DomainItems], batch_size: int, seed: int = 0):
        if not pool:
            raise ValueError("the pool needs at least one dataset")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.pool = list(pool)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.iteration = 0

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.pool]

    def _draw(self, datasets: Sequence[int], role: str, step: int = 1) -> SegBatch:
        images, labels, domains = [], [], []
        for d in datasets:
            g = torch.Generator().manual_seed(mix_seed(self.seed, self.iteration, _ROLES[role], step, d))
            image, label = self.pool[d].draw(self.batch_size, g)
            images.append(image)
            labels.append(label)
            domains.append(torch.full((self.batch_size,), d, dtype=torch.long))
        return SegBatch(torch.cat(images), torch.cat(labels), torch.cat(domains))

    def state_dict(self) -> dict[str, int]:
        return {"iteration": self.iteration}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.iteration = int(state["iteration"])


class JointSampler(_PoolSampler):
    """The pool as one stream: every call is a new iteration with ``batch_size`` items of every
    dataset (single-level training on the pool, Table V A; fine-tuning on a support set)."""

    def __call__(self, level: Any) -> SegBatch:
        self.iteration += 1
        return self._draw(range(len(self.pool)), "joint")


class MetaTaskSampler(_PoolSampler):
    """Algorithm 1's data: per meta-iteration, one dataset for the inner loop and the other two for
    the outer loops (see the module docstring).

    Args:
        pool: the meta-training datasets (three in the paper: OASIS3, IBIS12M, IBIS24M).
        batch_size: items per dataset in a mini-batch (2 in the paper).
        seed: base seed of every draw.

    Pass the sampler itself as the inner level's ``data`` (calling it is :meth:`inner`: a new
    meta-iteration at the first step of each inner loop; its ``state_dict`` is what the checkpoint
    saves) and ``lambda lv: sampler.outer(role)`` as each outer level's.
    """

    def __init__(self, pool: Sequence[DomainItems], batch_size: int, seed: int = 0):
        if len(pool) < 2:
            raise ValueError(f"the meta-training pool needs at least 2 datasets (the paper has 3), got {len(pool)}")
        super().__init__(pool, batch_size, seed)

    def split(self, iteration: int | None = None) -> tuple[int, list[int]]:
        """``(A, [B, C])``: the inner dataset and the outer datasets of a meta-iteration (default: current)."""
        t = self.iteration if iteration is None else iteration
        order = torch.randperm(len(self.pool), generator=torch.Generator().manual_seed(mix_seed(self.seed, t)))
        return int(order[0]), sorted(int(i) for i in order[1:3])

    def inner(self, level: Any) -> SegBatch:
        """The inner level's mini-batch from dataset A; a new meta-iteration at each inner-loop start."""
        if level.inner_step == 1:
            self.iteration += 1
        return self._draw([self.split()[0]], "inner", level.inner_step)

    def outer(self, role: str) -> SegBatch:
        """An outer level's mini-batch from datasets B and C of the current meta-iteration."""
        if role not in ("encoder", "head_init", "init"):
            raise ValueError(f"unknown outer role {role!r}")
        return self._draw(self.split()[1], role)

    def __call__(self, level: Any) -> SegBatch:
        return self.inner(level)
