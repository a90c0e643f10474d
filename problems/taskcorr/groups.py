"""Groups of multi-coil samples (one B_i or V_j each), their batches, and the stream that draws them.

A group holds measured multi-coil k-space, its masks and the target coil images of one task; data
are simulated from single-channel slices with smooth coil maps (``x_c = S_c x``; the network never
sees S). :class:`GroupStream` draws the same number of samples of every group per step, in group
order, which is the layout every level of this package reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from engines import DataStream, mix_seed

from ..mri import fft2c
from .optimal_control import combined_magnitude

__all__ = [
    "GroupStream",
    "ReconBatch",
    "ReconGroup",
    "check_compatible",
    "noise_group",
    "pool_groups",
    "simulate_group",
]


class ReconBatch(NamedTuple):
    """Samples of one or more groups, in group order: k-space ``[B, C, H, W]`` (complex, zero off the
    mask), masks ``[B, 1, H, W]`` (0/1), target coil images ``[B, C, H, W]`` (complex)."""

    kspace: Tensor
    masks: Tensor
    coils: Tensor


@dataclass(frozen=True)
class ReconGroup:
    """One group B_i or V_j: measured multi-coil k-space, its masks and the target coil images.

    ``kspace`` and ``coils`` are ``[n, C, H, W]`` complex, ``masks`` ``[n, 1, H, W]``.
    """

    name: str
    kspace: Tensor
    masks: Tensor
    coils: Tensor

    def __post_init__(self) -> None:
        n = self.kspace.shape[0]
        if self.kspace.dim() != 4 or not torch.is_complex(self.kspace):
            raise ValueError(
                f"group '{self.name}': kspace must be complex [n, C, H, W], got {self.kspace.dtype} "
                f"{tuple(self.kspace.shape)}"
            )
        if self.coils.shape != self.kspace.shape:
            raise ValueError(
                f"group '{self.name}': coils {tuple(self.coils.shape)} and kspace "
                f"{tuple(self.kspace.shape)} must have the same shape"
            )
        if self.masks.shape != (n, 1, *self.kspace.shape[-2:]):
            raise ValueError(
                f"group '{self.name}': masks must be [n, 1, H, W] = {(n, 1, *self.kspace.shape[-2:])}, "
                f"got {tuple(self.masks.shape)}"
            )
        if n == 0:
            raise ValueError(f"group '{self.name}' is empty")

    def __len__(self) -> int:
        return self.kspace.shape[0]

    @property
    def coil_count(self) -> int:
        return self.kspace.shape[1]

    @property
    def image_shape(self) -> tuple[int, int]:
        return tuple(self.kspace.shape[-2:])

    @property
    def target(self) -> Tensor:
        """The reference magnitude images ``[n, H, W]`` (root-sum-of-squares of the coil images)."""
        return combined_magnitude(self.coils)

    def batch(self, index: slice | Tensor) -> ReconBatch:
        return ReconBatch(self.kspace[index], self.masks[index], self.coils[index])


def simulate_group(
    name: str, images: Tensor, mask: Tensor, coil_maps: Tensor, *, noise_std: float = 0.0, seed: int = 0
) -> ReconGroup:
    """Multi-coil data from single-channel images ``[n, H, W]``: coil images ``x_c = S_c x`` with
    maps ``[C, H, W]``, k-space ``y_c = P (F x_c + ε)`` with complex Gaussian ``ε`` of std ``noise_std``
    and the mask ``P`` ``[H, W]`` (one sampling pattern per group)."""
    if images.dim() != 3:
        raise ValueError(f"group '{name}': images must be [n, H, W], got {tuple(images.shape)}")
    if coil_maps.dim() != 3 or coil_maps.shape[-2:] != images.shape[-2:]:
        raise ValueError(
            f"group '{name}': coil maps must be [C, H, W] with H, W = {tuple(images.shape[-2:])}, "
            f"got {tuple(coil_maps.shape)}"
        )
    if mask.shape != images.shape[-2:]:
        raise ValueError(
            f"group '{name}': mask {tuple(mask.shape)} does not match the images {tuple(images.shape[-2:])}"
        )
    complex_dtype = torch.complex128 if images.dtype == torch.float64 else torch.complex64
    coils = coil_maps.to(complex_dtype) * images.to(complex_dtype)[:, None]
    kspace = fft2c(coils)
    if noise_std > 0:
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn(kspace.shape, generator=gen, dtype=images.dtype) + 1j * torch.randn(
            kspace.shape, generator=gen, dtype=images.dtype
        )
        kspace = kspace + noise_std / 2**0.5 * noise
    mask = mask.to(images.dtype)
    masks = mask.expand(len(images), 1, *mask.shape)
    return ReconGroup(name, mask * kspace, masks, coils)


def pool_groups(name: str, groups: Sequence[ReconGroup]) -> ReconGroup:
    """One group holding the samples of several (e.g. all validation tasks for M = 1)."""
    check_compatible(groups, "pooled")
    return ReconGroup(
        name,
        torch.cat([g.kspace for g in groups]),
        torch.cat([g.masks for g in groups]),
        torch.cat([g.coils for g in groups]),
    )


class _GroupItems(torch.utils.data.Dataset):
    def __init__(self, group: ReconGroup):
        self.group = group

    def __len__(self) -> int:
        return len(self.group)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        g = self.group
        return g.kspace[i], g.masks[i], g.coils[i]


class GroupStream:
    """Endless batches with ``batch_size`` samples of every group, concatenated in group order
    (``[len(groups) * batch_size, ...]``). Deterministic and resumable (one
    :class:`engines.DataStream` per group)."""

    def __init__(self, groups: Sequence[ReconGroup], batch_size: int, *, seed: int = 0):
        for g in groups:
            if batch_size > len(g):
                raise ValueError(f"group '{g.name}' has {len(g)} samples, fewer than the batch size {batch_size}")
        self.groups = list(groups)
        self.batch_size = batch_size
        self.streams = [DataStream(_GroupItems(g), batch_size, seed=mix_seed(seed, i)) for i, g in enumerate(groups)]

    def __iter__(self) -> GroupStream:
        return self

    def __next__(self) -> ReconBatch:
        parts = [next(s) for s in self.streams]
        return ReconBatch(*(torch.cat(field_parts) for field_parts in zip(*parts)))

    def state_dict(self) -> dict[str, Any]:
        return {"streams": [s.state_dict() for s in self.streams]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for s, st in zip(self.streams, state["streams"]):
            s.load_state_dict(st)


def check_compatible(groups: Sequence[ReconGroup], what: str, coils: int | None = None) -> None:
    """Refuse an empty list, groups that differ in coils or image size, or coils the network was not built for."""
    if not groups:
        raise ValueError(f"no {what} groups given")
    first = groups[0]
    for g in groups:
        if g.image_shape != first.image_shape or g.coil_count != first.coil_count:
            raise ValueError(
                f"{what} group '{g.name}' has {g.coil_count} coils of {g.image_shape}, but group "
                f"'{first.name}' has {first.coil_count} coils of {first.image_shape}; all groups "
                "must agree"
            )
        if coils is not None and g.coil_count != coils:
            raise ValueError(
                f"{what} group '{g.name}' has {g.coil_count} coils; the network was built for {coils} "
                "(ControlNetConfig.coils)"
            )


def noise_group(name: str, like: ReconGroup, *, seed: int = 0) -> ReconGroup:
    """A group of pure noise shaped like ``like``: k-space measured (under ``like``'s masks) from
    uniform-noise coil images and independent uniform-noise targets. It teaches nothing about
    reconstruction; a task-weighting method should learn to give it little weight."""
    gen = torch.Generator().manual_seed(seed)
    real = like.masks.dtype
    measured = torch.rand(like.coils.shape, generator=gen, dtype=real).to(like.coils.dtype)
    targets = torch.rand(like.coils.shape, generator=gen, dtype=real).to(like.coils.dtype)
    return ReconGroup(name, like.masks * fft2c(measured), like.masks, targets)
