"""Task-correlation meta-learning for multi-coil MRI reconstruction (Bian et al., Preprints.org 2025), as two levels.

The preprint's equations were lost in the text we had; this is our reading of its prose
(docs/recipes/taskcorr.md):
training data come in N groups B_1..B_N (tasks: sampling pattern × ratio, or contrasts),
validation data in M groups V_1..V_M. A matrix W ∈ R^{N×M} is normalised column by column,
σ(w_j) = softmax(w_j), and σ(w_j)_i weights training group i for validation group j (the paper
reads it as their correlation; :mod:`problems.taskcorr.similarity` measures one to compare).

* ``theta`` (lower, our Eq. 3b): ``θ_j*(W) = argmin_θ Σ_i σ(w_j)_i ℓ(θ; B_i)``, one network θ_j
  per column, all trained together on ``Σ_j Σ_i σ(w_j)_i ℓ(θ_j; B_i)`` (the M problems are
  independent). M = 1 is the paper's base model: one θ, one weight vector σ(w).
* ``correlation`` (upper, our Eq. 3a): ``min_W Σ_j ℓ(θ_j*(W); V_j)``.

(The paper's Eq. 3 is lost; its text names the normalisation (3c). The labels 3a/3b are ours.)
Algorithm 1's schedule — k gradient steps on θ, then one on W — is the lower level's
``unroll = k``; W's hypergradient goes through those k Adam steps (``adjoint_unroll``,
:mod:`problems.taskcorr.hypergradient`). There is no θ shared by M > 1 columns: every column would
then receive the same hypergradient direction through it and the columns could never differ.

The baselines are the same ``theta`` level with a fixed weight matrix over groups (zeros allowed:
a zero weight leaves that group out of that column): ``uniform`` (each θ_j on the training groups
and V_j, equal weights) and ``independent`` (each θ_j on V_j alone).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from engines import Graph, Level, mix_seed

from .groups import GroupStream, ReconBatch, ReconGroup, check_compatible
from .loss import LossWeights, reconstruction_loss
from .optimal_control import ControlNetConfig, OptimalControlNet
from .second_order import second_order_adjoint

__all__ = [
    "ColumnNetworks",
    "CorrelationLevel",
    "FixedTaskWeights",
    "TaskCorrSettings",
    "TaskCorrelation",
    "ThetaLevel",
    "fixed_weights_graph",
    "independent_graph",
    "taskcorr_graph",
    "uniform_graph",
]


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


class FixedTaskWeights(nn.Module):
    """A fixed ``[G, M]`` weight matrix over groups (a baseline's W, never learned): non-negative,
    every column summing to one; a zero leaves that group out of that column's loss."""

    def __init__(self, matrix: Tensor):
        super().__init__()
        matrix = torch.as_tensor(matrix, dtype=torch.get_default_dtype())
        if matrix.dim() != 2 or (matrix < 0).any() or not torch.allclose(matrix.sum(0), torch.ones(matrix.shape[1])):
            raise ValueError(
                f"fixed task weights must be a non-negative [G, M] matrix with columns summing to 1: {matrix}"
            )
        self.register_buffer("matrix", matrix)

    def weights(self) -> Tensor:
        return self.matrix


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
    """``theta`` (lower): ``Σ_j Σ_i σ(w_j)_i ℓ(θ_j; B_i)`` (Eq. 3b, our reading); the groups are the
    ``n_groups`` of every batch (:class:`~problems.taskcorr.groups.GroupStream` layout)."""

    def __init__(
        self,
        name: str,
        module: ColumnNetworks,
        *,
        correlation: TaskCorrelation | FixedTaskWeights,
        n_groups: int,
        loss_weights: LossWeights,
        **options: Any,
    ):
        super().__init__(name, module, **options)
        self.task_correlation = correlation  # not `self.correlation`: Betty binds the upper level to that name
        self.n_groups = n_groups
        self.loss_weights = loss_weights
        self.used = correlation.weights().detach().cpu() > 0  # [G, M]: the groups each column trains on
        if tuple(self.used.shape) != (n_groups, len(module)):
            raise ValueError(
                f"level '{name}': weights of shape {tuple(self.used.shape)} for {n_groups} groups and "
                f"{len(module)} networks; expected ({n_groups}, {len(module)})"
            )

    def group_losses(self, batch: ReconBatch) -> Tensor:
        """ℓ(θ_j; B_i) ``[G, M]``: every θ_j on the batch of every group it trains on (0 elsewhere)."""
        per_group = batch.kspace.shape[0] // self.n_groups
        columns = []
        for j, net in enumerate(self.module.nets):
            used = self.used[:, j]
            if bool(used.all()):
                per_sample = reconstruction_loss(net(batch.kspace, batch.masks), batch.coils, self.loss_weights)
                columns.append(per_sample.view(self.n_groups, -1).mean(1))
                continue
            index = torch.arange(batch.kspace.shape[0]).view(self.n_groups, per_group)[used].flatten()
            index = index.to(batch.kspace.device)
            recon = net(batch.kspace[index], batch.masks[index])
            means = iter(reconstruction_loss(recon, batch.coils[index], self.loss_weights).view(-1, per_group).mean(1))
            zero = batch.masks.new_zeros(())
            columns.append(torch.stack([next(means) if u else zero for u in used.tolist()]))
        return torch.stack(columns, dim=1)

    def loss(self, batch: ReconBatch) -> dict[str, Tensor]:
        losses = self.group_losses(batch)
        weights = self.task_correlation.weights().to(losses)  # a baseline's fixed W lives outside the graph
        weighted = (weights * losses).sum()  # Eq. 3b: Σ_j Σ_i σ(w_j)_i ℓ(θ_j; B_i)
        return {"loss": weighted, "mean_group_loss": losses.mean()}

    def second_order_products(
        self, direction: list[Tensor], upper: Level, *, hessian: bool = True
    ) -> tuple[list[Tensor] | None, list[Tensor]]:
        """``(∇²_θ g · d, (∂²g/∂W∂θ) · d)`` of this level's loss g at its current parameters and batch
        (the first is None without ``hessian``: the mixed product needs forward passes only).

        g = Σ_j Σ_i σ(w_j)_i ℓ(θ_j; B_i) is linear in σ, so the mixed product is the derivative in W of
        Σ_ij σ(w_j)_i ℓ̇_ij with ℓ̇_ij = ⟨∇ℓ(θ_j; B_i), d_j⟩. Both come from the networks' second-order
        adjoint (:func:`~problems.taskcorr.second_order.second_order_adjoint`): exact, and without the
        double-backward graph of all phases (what ``adjoint_unroll`` asks a level for).
        """
        batch = self.cur_batch
        weights = self.task_correlation.weights()
        per_group = batch.kspace.shape[0] // self.n_groups
        hessians, tangents, start = [], [], 0
        for j, net in enumerate(self.module.nets):
            size = len(list(net.parameters()))
            coefficients = weights[:, j].detach().to(batch.masks.dtype).repeat_interleave(per_group) / per_group
            products = second_order_adjoint(
                net,
                batch.kspace,
                batch.masks,
                direction[start : start + size],
                lambda recon: reconstruction_loss(recon, batch.coils, self.loss_weights),
                coefficients,
                hessian=hessian,
            )
            hessians += products.hessian_product or []
            tangents.append(products.loss_tangents.view(self.n_groups, -1).mean(1))
            start += size
        with torch.enable_grad():
            weights = self.task_correlation.weights()
            mixed = torch.autograd.grad(
                (weights * torch.stack(tangents, 1).to(weights)).sum(), list(upper.trainable_parameters())
            )
        return (hessians if hessian else None), list(mixed)


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
        weights = self.module.weights().detach()
        logged = {f"sigma_{i}_{j}": weights[i, j] for i in range(weights.shape[0]) for j in range(weights.shape[1])}
        return {"loss": losses.sum(), "max_weight": weights.max(), **logged}


# ------------------------------------------------------------------------------------------- graphs
@dataclass(frozen=True)
class TaskCorrSettings:
    """Training settings of both levels.

    inner_steps: k, θ-steps per W-step (Algorithm 1). theta_lr / correlation_lr: Adam step sizes
    (Algorithm 3 names Adam; Algorithm 1 writes SGD). train_batch / val_batch: samples per group
    and step. hypergrad: the method through ``theta`` (``adjoint_unroll``: the gradient of what the
    k Adam steps train, see :mod:`problems.taskcorr.hypergradient`); options: its options.
    gradient: the network's gradient path. loss: the weights of ℓ.
    """

    inner_steps: int = 5
    theta_lr: float = 1e-3
    correlation_lr: float = 0.05
    train_batch: int = 2
    val_batch: int = 2
    hypergrad: str = "adjoint_unroll"
    options: dict[str, Any] = field(default_factory=dict)
    gradient: str = "adjoint"
    loss: LossWeights = field(default_factory=LossWeights)


def _theta_level(
    config: ControlNetConfig,
    groups: Sequence[ReconGroup],
    columns: int,
    correlation: TaskCorrelation | FixedTaskWeights,
    settings: TaskCorrSettings,
    seed: int,
    batch_size: int | None = None,
    *,
    has_upper: bool = True,
) -> ThetaLevel:
    torch.manual_seed(seed)
    # how W differentiates through θ; with fixed task weights no level does, so nothing is set
    through = {"hypergrad": settings.hypergrad, "unroll": settings.inner_steps, "options": settings.options}
    nets = ColumnNetworks(config, columns, gradient=settings.gradient)
    return ThetaLevel(
        "theta",
        nets,
        correlation=correlation,
        n_groups=len(groups),
        loss_weights=settings.loss,
        optimizer=functools.partial(torch.optim.Adam, lr=settings.theta_lr),
        data=GroupStream(groups, batch_size or settings.train_batch, seed=seed),
        **(through if has_upper else {}),
    )


def _check_groups(config: ControlNetConfig, train_groups: Sequence[ReconGroup], val_groups: Sequence[ReconGroup]):
    check_compatible(train_groups, "training", config.coils)
    check_compatible(val_groups, "validation", config.coils)
    if train_groups[0].image_shape != val_groups[0].image_shape:
        raise ValueError(
            f"training images are {train_groups[0].image_shape}, validation images "
            f"{val_groups[0].image_shape}; they must agree"
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
    _check_groups(config, train_groups, val_groups)
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


def fixed_weights_graph(
    config: ControlNetConfig,
    groups: Sequence[ReconGroup],
    weights: Tensor,
    settings: TaskCorrSettings = TaskCorrSettings(),
    *,
    name: str,
    batch_size: int | None = None,
    seed: int = 0,
) -> Graph:
    """One level: M networks θ_j, θ_j trained on ``Σ_g weights[g, j] ℓ(θ_j; group g)`` (``weights``
    ``[G, M]`` fixed; ``batch_size`` samples of every group per step, default ``settings.train_batch``)."""
    check_compatible(groups, "training", config.coils)
    fixed = FixedTaskWeights(weights)
    theta = _theta_level(config, groups, fixed.matrix.shape[1], fixed, settings, seed, batch_size, has_upper=False)
    graph = Graph(name)
    graph.add(theta)
    return graph


def uniform_graph(
    config: ControlNetConfig,
    train_groups: Sequence[ReconGroup],
    val_groups: Sequence[ReconGroup],
    settings: TaskCorrSettings = TaskCorrSettings(),
    *,
    seed: int = 0,
) -> Graph:
    """The baseline without task weighting: θ_j on ``(1/(N+1)) (Σ_i ℓ(θ_j; B_i) + ℓ(θ_j; V_j))``, with the
    same networks and the same data as :func:`taskcorr_graph` (W fixed uniform; V_j trained on directly)."""
    _check_groups(config, train_groups, val_groups)
    N, M = len(train_groups), len(val_groups)
    weights = torch.zeros(N + M, M)
    weights[:N] = 1 / (N + 1)
    weights[N:] = torch.eye(M) / (N + 1)
    return fixed_weights_graph(
        config, [*train_groups, *val_groups], weights, settings, name=f"taskcorr-uniform[N={N},M={M}]", seed=seed
    )


def independent_graph(
    config: ControlNetConfig,
    val_groups: Sequence[ReconGroup],
    settings: TaskCorrSettings = TaskCorrSettings(),
    *,
    samples_per_step: int,
    seed: int = 0,
) -> Graph:
    """Independent per-task training: θ_j on ``ℓ(θ_j; V_j)`` alone, ``samples_per_step`` samples of V_j per
    step (capped at the smallest group; the learned model's θ_j sees N × train_batch)."""
    check_compatible(val_groups, "validation", config.coils)
    batch = max(1, min(samples_per_step, *(len(g) for g in val_groups)))
    M = len(val_groups)
    return fixed_weights_graph(
        config, val_groups, torch.eye(M), settings, name=f"taskcorr-independent[M={M}]", batch_size=batch, seed=seed
    )
