"""Task-correlation meta-learning for multi-coil MRI reconstruction (Bian et al., Preprints.org 2025), as two levels.

The preprint's equations were lost in the text we had; this is our reading of its prose
(docs/recipes/taskcorr.md):
training data come in N groups B_1..B_N (tasks: sampling pattern × ratio, or contrasts),
validation data in M groups V_1..V_M. A matrix W ∈ R^{N×M} is normalised column by column,
σ(w_j) = softmax(w_j), and σ(w_j)_i is read as the correlation between training group i and
validation group j.

* ``theta`` (lower, our Eq. 3b): ``θ_j*(W) = argmin_θ Σ_i σ(w_j)_i ℓ(θ; B_i)``, one network θ_j
  per column, all trained together on ``Σ_j Σ_i σ(w_j)_i ℓ(θ_j; B_i)`` (the M problems are
  independent). M = 1 is the paper's base model: one θ, one weight vector σ(w).
* ``correlation`` (upper, our Eq. 3a): ``min_W Σ_j ℓ(θ_j*(W); V_j)``.

(The paper's Eq. 3 is lost; its text names the normalisation (3c). The labels 3a/3b are ours.)
Algorithm 1's schedule — k gradient steps on θ, then one on W — is the lower level's
``unroll = k``. There is no θ shared by M > 1 columns: every column would then receive the same
hypergradient direction through it and the columns could never differ.

ℓ is the loss of Bian's pMRI code on the optimal-control network
(:mod:`problems.taskcorr.optimal_control`): L1 of the root-sum-of-squares image against the target's,
plus the mean squared error of the coil images, plus 0.01 × L1 of the initial coil images x_0.
Data are multi-coil k-space simulated from single-channel slices with smooth coil maps
(``x_c = S_c x``; the network never sees S).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from engines import DataStream, Graph, Level, mix_seed

from ..mri import MRISlices, SamplingTask, fft2c
from .optimal_control import ControlNetConfig, OptimalControlNet, Reconstruction, combined_magnitude

__all__ = [
    "ColumnNetworks",
    "CorrelationLevel",
    "GroupStream",
    "LossWeights",
    "ReconBatch",
    "ReconGroup",
    "ReconTask",
    "TaskCorrSettings",
    "TaskCorrelation",
    "ThetaLevel",
    "pool_groups",
    "reconstruct",
    "reconstruction_loss",
    "simulate_group",
    "task_groups",
    "taskcorr_graph",
    "uniform_graph",
]


# ------------------------------------------------------------------------------------------- data
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
    _check_compatible(groups, "pooled")
    return ReconGroup(
        name,
        torch.cat([g.kspace for g in groups]),
        torch.cat([g.masks for g in groups]),
        torch.cat([g.coils for g in groups]),
    )


@dataclass(frozen=True)
class ReconTask:
    """What a group holds: slices of one ``contrast`` sampled by one ``sampling`` task (e.g. T1, radial 20 %)."""

    contrast: str
    sampling: SamplingTask

    @property
    def key(self) -> str:
        return f"{self.contrast}-{self.sampling.key}"

    @property
    def label(self) -> str:
        return f"{self.contrast.upper()} {self.sampling.label}"

    @classmethod
    def parse(cls, text: str) -> ReconTask:
        """``"t1:radial:0.2"`` or ``"t1:radial:20%"`` (contrast, then a :class:`SamplingTask`) -> a task."""
        contrast, sep, rest = text.partition(":")
        if not sep or not contrast.strip():
            raise ValueError(f"task {text!r} must read contrast:pattern:ratio, e.g. t1:radial:0.2")
        return cls(contrast.strip().lower(), SamplingTask.parse(rest))


def task_groups(
    tasks: Sequence[ReconTask],
    slices: Mapping[str, MRISlices],
    split: str,
    coil_maps: Tensor,
    *,
    limit: int | None = None,
    mask_seed: int = 0,
) -> list[ReconGroup]:
    """One group per task: the ``split`` slices of the task's contrast (at most ``limit``, evenly
    spaced), multi-coil data simulated with ``coil_maps`` ``[C, H, W]`` and the task's mask."""
    groups = []
    for task in tasks:
        if task.contrast not in slices:
            raise ValueError(
                f"task {task.label}: no slices of contrast '{task.contrast}' were loaded (loaded: {sorted(slices)})"
            )
        images = slices[task.contrast].splits[split].subset(limit).images
        mask = task.sampling.mask(tuple(images.shape[-2:]), seed=mask_seed)
        groups.append(simulate_group(f"{task.label} ({split})", images, mask, coil_maps))
    return groups


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


# ------------------------------------------------------------------------------------------- loss
@dataclass(frozen=True)
class LossWeights:
    """ℓ = L1(|x_T|_rss, |x*|) + ``coils`` · MSE(x_T, x*_c) + ``initial`` · L1(x_0, x*_c) (Bian's pMRI loss)."""

    coils: float = 1.0
    initial: float = 0.01


def reconstruction_loss(recon: Reconstruction, coils: Tensor, weights: LossWeights = LossWeights()) -> Tensor:
    """ℓ per sample ``[B]`` (means over pixels and coils) for a reconstruction and the target coil
    images ``[B, C, H, W]``."""
    loss = (combined_magnitude(recon.final) - combined_magnitude(coils)).abs().mean((-2, -1))
    if weights.coils:
        loss = loss + weights.coils * (recon.final - coils).abs().pow(2).mean((-3, -2, -1))
    if weights.initial:
        loss = loss + weights.initial * (recon.initial - coils).abs().mean((-3, -2, -1))
    return loss


# ------------------------------------------------------------------------------------------- modules
class TaskCorrelation(nn.Module):
    """W ∈ R^{N×M} (``logits``); :meth:`weights` is σ(W), every column softmax-normalised over the
    N training groups. Starts at zero: uniform weights 1/N."""

    def __init__(self, n_train: int, n_val: int, initial: Tensor | None = None):
        super().__init__()
        if n_train < 1 or n_val < 1:
            raise ValueError(
                f"TaskCorrelation needs N >= 1 training and M >= 1 validation groups, got {n_train}, {n_val}"
            )
        logits = torch.zeros(n_train, n_val)
        if initial is not None:
            if tuple(initial.shape) != (n_train, n_val):
                raise ValueError(
                    f"initial W has shape {tuple(initial.shape)}, expected (N, M) = {(n_train, n_val)} "
                    "(training groups x validation groups)"
                )
            logits = initial.detach().to(logits.dtype).clone()
        self.logits = nn.Parameter(logits)

    def weights(self) -> Tensor:
        """σ(W) ``[N, M]``; every column sums to one."""
        return torch.softmax(self.logits, dim=0)


class ColumnNetworks(nn.Module):
    """θ_1..θ_M: one optimal-control network per column of W (one network when M = 1).

    Every θ_j starts from the same initialisation (the one a single network built from the same
    seed gets), so that columns, and the baselines, differ only by what W makes them learn.
    """

    def __init__(self, config: ControlNetConfig, columns: int, gradient: str = "adjoint"):
        super().__init__()
        first = OptimalControlNet(config, gradient=gradient)
        self.nets = nn.ModuleList([first, *(copy.deepcopy(first) for _ in range(columns - 1))])

    def __len__(self) -> int:
        return len(self.nets)


# ------------------------------------------------------------------------------------------- levels
class ThetaLevel(Level):
    """``theta`` (lower): ``Σ_j Σ_i σ(w_j)_i ℓ(θ_j; B_i)`` (Eq. 3b, our reading)."""

    def __init__(
        self,
        name: str,
        module: ColumnNetworks,
        *,
        correlation: TaskCorrelation,
        n_groups: int,
        loss_weights: LossWeights,
        **options: Any,
    ):
        super().__init__(name, module, **options)
        self.task_correlation = correlation  # not `self.correlation`: Betty binds the upper level to that name
        self.n_groups = n_groups
        self.loss_weights = loss_weights

    def group_losses(self, batch: ReconBatch) -> Tensor:
        """ℓ(θ_j; B_i) ``[N, M]``: every θ_j on the training batch of every group."""
        columns = []
        for net in self.module.nets:
            per_sample = reconstruction_loss(net(batch.kspace, batch.masks), batch.coils, self.loss_weights)
            columns.append(per_sample.view(self.n_groups, -1).mean(1))
        return torch.stack(columns, dim=1)

    def loss(self, batch: ReconBatch) -> dict[str, Tensor]:
        losses = self.group_losses(batch)
        weights = self.task_correlation.weights().to(losses)  # the baseline's fixed W lives outside the graph
        weighted = (weights * losses).sum()  # Eq. 3b: Σ_j Σ_i σ(w_j)_i ℓ(θ_j; B_i)
        return {"loss": weighted, "mean_group_loss": losses.mean()}


class CorrelationLevel(Level):
    """``correlation`` (upper): ``Σ_j ℓ(θ_j*(W); V_j)`` (Eq. 3a)."""

    def __init__(self, name: str, module: TaskCorrelation, *, theta: ThetaLevel, **options: Any):
        super().__init__(name, module, **options)
        self.theta_level = theta

    def loss(self, batch: ReconBatch) -> dict[str, Tensor]:
        nets = self.theta_level.module.nets
        size = batch.kspace.shape[0] // len(nets)
        losses = []
        for j, net in enumerate(nets):  # θ_j is scored on V_j only
            part = slice(j * size, (j + 1) * size)
            recon = net(batch.kspace[part], batch.masks[part])
            losses.append(reconstruction_loss(recon, batch.coils[part], self.theta_level.loss_weights).mean())
        losses = torch.stack(losses)
        return {"loss": losses.sum(), "max_weight": self.module.weights().max()}


# ------------------------------------------------------------------------------------------- graphs
@dataclass(frozen=True)
class TaskCorrSettings:
    """Training settings of both levels.

    inner_steps: k, θ-steps per W-step (Algorithm 1). theta_lr / correlation_lr: Adam step sizes
    (Algorithm 3 names Adam; Algorithm 1 writes SGD). train_batch / val_batch: samples per group
    and step. hypergrad: the method through ``theta``; options: its options. gradient: the
    network's gradient path. loss: the weights of ℓ.
    """

    inner_steps: int = 5
    theta_lr: float = 1e-3
    correlation_lr: float = 0.05
    train_batch: int = 2
    val_batch: int = 2
    hypergrad: str = "darts"
    options: dict[str, Any] = field(default_factory=dict)
    gradient: str = "adjoint"
    loss: LossWeights = LossWeights()


def _check_compatible(groups: Sequence[ReconGroup], what: str, coils: int | None = None) -> None:
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


def _theta_level(
    config: ControlNetConfig,
    train_groups: Sequence[ReconGroup],
    columns: int,
    correlation: TaskCorrelation,
    settings: TaskCorrSettings,
    seed: int,
) -> ThetaLevel:
    torch.manual_seed(seed)
    nets = ColumnNetworks(config, columns, gradient=settings.gradient)
    return ThetaLevel(
        "theta",
        nets,
        correlation=correlation,
        n_groups=len(train_groups),
        loss_weights=settings.loss,
        optimizer=functools.partial(torch.optim.Adam, lr=settings.theta_lr),
        data=GroupStream(train_groups, settings.train_batch, seed=seed),
        hypergrad=settings.hypergrad,
        unroll=settings.inner_steps,
        options=settings.options,
    )


def taskcorr_graph(
    config: ControlNetConfig,
    train_groups: Sequence[ReconGroup],
    val_groups: Sequence[ReconGroup],
    settings: TaskCorrSettings = TaskCorrSettings(),
    *,
    n_train: int | None = None,
    n_val: int | None = None,
    initial_logits: Tensor | None = None,
    seed: int = 0,
) -> Graph:
    """The bilevel graph: ``theta`` (M networks θ_j) below ``correlation`` (W, N×M).

    ``n_train`` / ``n_val`` (optional) state N and M; they must match the numbers of groups, as must
    ``initial_logits`` (a starting W ``[N, M]``, default zeros: uniform weights).
    """
    _check_compatible(train_groups, "training", config.coils)
    _check_compatible(val_groups, "validation", config.coils)
    if train_groups[0].image_shape != val_groups[0].image_shape:
        raise ValueError(
            f"training images are {train_groups[0].image_shape}, validation images "
            f"{val_groups[0].image_shape}; they must agree"
        )
    N, M = len(train_groups), len(val_groups)
    if n_train is not None and n_train != N:
        raise ValueError(
            f"N = {n_train} training groups were asked for, but {N} training groups were given "
            f"({[g.name for g in train_groups]})"
        )
    if n_val is not None and n_val != M:
        raise ValueError(
            f"M = {n_val} validation groups were asked for, but {M} validation groups were given "
            f"({[g.name for g in val_groups]})"
        )
    if N < 2:
        raise ValueError(
            f"learning task correlations needs N >= 2 training groups (softmax over one group is constant), got {N}"
        )
    correlation = TaskCorrelation(N, M, initial_logits)
    theta = _theta_level(config, train_groups, M, correlation, settings, seed)
    upper = CorrelationLevel(
        "correlation",
        correlation,
        theta=theta,
        optimizer=functools.partial(torch.optim.Adam, lr=settings.correlation_lr),
        data=GroupStream(val_groups, settings.val_batch, seed=mix_seed(seed, 1)),
        probe=lambda level: level.module.weights(),
    )
    graph = Graph(f"taskcorr[N={N},M={M}]")
    graph.add(theta, upper)
    graph.bilevel(lower=theta, upper=upper)
    return graph


def uniform_graph(
    config: ControlNetConfig,
    train_groups: Sequence[ReconGroup],
    settings: TaskCorrSettings = TaskCorrSettings(),
    *,
    seed: int = 0,
) -> Graph:
    """The baseline without correlation learning: one θ on ``(1/N) Σ_i ℓ(θ; B_i)`` (W fixed uniform)."""
    _check_compatible(train_groups, "training", config.coils)
    fixed = TaskCorrelation(len(train_groups), 1).requires_grad_(False)
    theta = _theta_level(config, train_groups, 1, fixed, settings, seed)
    graph = Graph(f"taskcorr-uniform[N={len(train_groups)}]")
    graph.add(theta)
    return graph


# ------------------------------------------------------------------------------------------- inference
@torch.no_grad()
def reconstruct(
    net: OptimalControlNet, group: ReconGroup, *, batch_size: int = 8, device: torch.device | str | None = None
) -> tuple[Tensor, Tensor]:
    """Magnitude reconstructions and references ``[n, H, W]`` (on the CPU) of every sample of ``group``."""
    device = device or next(net.parameters()).device
    dtype = next(net.parameters()).dtype
    complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    outputs = []
    for start in range(0, len(group), batch_size):
        b = group.batch(slice(start, start + batch_size))
        recon = net(b.kspace.to(device, complex_dtype), b.masks.to(device, dtype))
        outputs.append(combined_magnitude(recon.final).cpu())
    return torch.cat(outputs), group.target.to(outputs[0].dtype)
