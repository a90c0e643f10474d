"""Meta-learned LOA reconstruction (Bian et al., Journal of Imaging 2021) as levels: task-invariant θ below, task weights ω above.

Tasks are sampling patterns at sampling ratios (:class:`~problems.mri.masks.SamplingTask`); each
task ``τ_i`` has its own mask and a scalar ``ω_i`` whose ``σ(ω_i)`` weighs the learned
regulariser of the LOA network (:mod:`problems.metarecon.loa`) in that task (Eq. 11):
``F_{θ,ω_i}(y) ≈ argmin_x ½‖P_i F x − y‖² + σ(ω_i) r(x; θ)``.

The bilevel problem (Eq. 14):

* ``theta`` (lower): ``θ(ω) = argmin_θ L(θ, ω; D_tr)`` with ``L = Σ_i ℓ_τi`` — :class:`ThetaLevel`,
  whose loss is on cross-task mini-batches of the training split (every batch holds ``J``
  slices of every task).
* ``omega`` (upper): ``min_ω L(θ(ω), ω; D_val)`` — :class:`OmegaLevel`, on cross-task batches of
  the validation split.

The losses are the paper's, literally: ``ℓ = ½‖F(y) − x̂‖²`` summed over the pixels (Eq. 13),
``ℓ_τi`` summed over the task's slices in the batch (Eq. 12) and ``L`` summed over the tasks (Eq.
14), so that the penalty weight λ of Algorithm 2 (Eq. 17) means what it means in the paper: the
penalty ``λ/2 ‖∇_θ L_tr‖²`` grows with the square of these sums, the validation loss with them.

Which split θ learns from depends on the hypergradient method. With an implicit or unrolled
method (``cg``, ``exact``, ``darts``...) θ descends ``L_tr`` and ω the hypergradient of ``L_val``.
With the penalty method (Algorithm 2, the paper's) θ descends ``L̃ = L_val + λ/2 ‖∇_θ L_tr‖²``: its
step is the validation gradient plus λ times the training Hessian applied to the training
gradient. :mod:`problems.metarecon.balance` measures how large that second part is (at the
paper's λ = 1e-5 it is a small fraction: θ is then mostly fit on the validation split).

k-space is simulated from each real reference slice as ``y = P_i F x̂`` (noise-free, as the experiments).

The same two level classes also give the paper's other trainings:

* conventional supervised training of the same network on one task (:func:`conventional_graph`):
  ``theta`` alone with the regulariser weight fixed to 1 (no ω);
* adaptation to an unseen task (:func:`adaptation_graph`): ``omega`` alone with one new ω and
  the meta-trained θ frozen.

Stair training (Section 4.2) is a :class:`StairSchedule`: the number of active phases is a pure
function of the global step, so a resumed run continues in the right stage.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from engines import DataStream, Graph, Level

from ..mri.masks import SamplingTask
from ..mri.operators import SingleCoil, fft2c
from .loa import LOANetwork, LOASettings, LOATrace

__all__ = [
    "SEEN_TASKS",
    "UNSEEN_CARTESIAN",
    "UNSEEN_RADIAL",
    "CrossTaskSlices",
    "OmegaLevel",
    "StairSchedule",
    "TaskWeights",
    "ThetaLevel",
    "adaptation_graph",
    "conventional_graph",
    "meta_graph",
    "simulate_kspace",
    "task_losses",
]

SEEN_TASKS = tuple(SamplingTask("radial", r) for r in (0.1, 0.2, 0.3, 0.4))
UNSEEN_RADIAL = tuple(SamplingTask("radial", r) for r in (0.15, 0.25, 0.35))
UNSEEN_CARTESIAN = tuple(SamplingTask("cartesian", r) for r in (0.1, 0.2, 0.3, 0.4))


class TaskWeights(nn.Module):
    """ω ∈ R^N, one scalar per task; ``forward(task)`` gives the regulariser weights σ(ω_task) ``[B]``.

    ω starts at 0 (σ = 0.5, the middle of the range; the paper does not state its initial value).
    """

    def __init__(self, n_tasks: int):
        super().__init__()
        if n_tasks < 1:
            raise ValueError(f"TaskWeights needs at least one task, got {n_tasks}")
        self.omega = nn.Parameter(torch.zeros(n_tasks))

    def forward(self, task: Tensor) -> Tensor:
        return torch.sigmoid(self.omega[task])

    def sigma(self) -> Tensor:
        """σ(ω_i) of every task ``[N]`` (detached)."""
        return torch.sigmoid(self.omega.detach())


class CrossTaskSlices(Dataset):
    """Cross-task items: item ``k`` holds one slice for every task (Algorithm 2, lines 3-4).

    Task ``i`` reads slice ``perm_i[k]`` of a seeded permutation of its own, so the tasks of one
    item (and of one batch) see different slices. An item is ``{"target": [T, H, W] real,
    "mask": [T, H, W], "task": [T]}``; a batch of ``J`` items stacks them to ``[J, T, ...]``.
    """

    def __init__(self, images: Tensor, masks: Tensor, *, seed: int = 0, task_ids: Sequence[int] | None = None):
        if images.dim() != 3 or masks.dim() != 3 or images.shape[-2:] != masks.shape[-2:]:
            raise ValueError(
                f"CrossTaskSlices needs images [N, H, W] and masks [T, H, W] of one size, got "
                f"{tuple(images.shape)} and {tuple(masks.shape)}"
            )
        self.images = images
        self.masks = masks
        self.task_ids = torch.as_tensor(list(task_ids) if task_ids is not None else range(len(masks)))
        gen = torch.Generator().manual_seed(seed)
        self.order = torch.stack([torch.randperm(len(images), generator=gen) for _ in range(len(masks))])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, k: int) -> dict[str, Tensor]:
        return {"target": self.images[self.order[:, k]], "mask": self.masks, "task": self.task_ids}


@dataclass(frozen=True)
class StairSchedule:
    """Active phases at a global step: ``phases`` throughout, or (stair training, Section 4.2) one
    phase for the first ``stage_steps`` steps, two for the next ``stage_steps``, ... up to ``phases``."""

    phases: int
    stage_steps: int | None = None

    def __call__(self, step: int) -> int:
        if self.stage_steps is None:
            return self.phases
        return min(self.phases, 1 + max(0, int(step) - 1) // self.stage_steps)

    @property
    def total_stair_steps(self) -> int:
        """Steps until the last stage starts (0 without stair training)."""
        return 0 if self.stage_steps is None else (self.phases - 1) * self.stage_steps


def simulate_kspace(target: Tensor, mask: Tensor) -> Tensor:
    """``y = P F x̂`` ``[B, H, W]`` complex for real reference slices ``[B, H, W]`` and their masks."""
    complex_dtype = torch.promote_types(target.dtype, torch.complex64)
    return mask * fft2c(target.to(complex_dtype))


def task_losses(
    network: LOANetwork, batch: dict[str, Tensor], weight: Tensor, *, phases: int
) -> tuple[Tensor, LOATrace]:
    """``ℓ_τi`` of every task ``[T]`` (Eq. 12-13: sums over pixels and slices) on a cross-task batch
    ``[J, T, H, W]``, with the regulariser weight ``weight`` ``[J, T]`` of each sample, and the
    network's trace."""
    target, mask = batch["target"], batch["mask"]
    j, t = target.shape[:2]
    target, mask = target.flatten(0, 1), mask.flatten(0, 1)
    recon, trace = network(
        simulate_kspace(target, mask), SingleCoil(mask), weight.reshape(-1), phases=phases, trace=True
    )
    per_slice = 0.5 * (recon - target).abs().pow(2).flatten(1).sum(1)  # ℓ = ½ ‖F(y) − x̂‖² (Eq. 13)
    return per_slice.view(j, t).sum(0), trace  # ℓ_τi: the sum over the task's slices (Eq. 12)


class ThetaLevel(Level):
    """``theta``: ``Σ_i ℓ_τi(θ, ω_i; B_tr)`` (Eq. 14b), the task-invariant LOA parameters θ (the
    penalty method replaces the gradient of this loss by that of Eq. 17, see the module docstring).

    ``weights_from`` names the level holding the task weights ω (its module is a
    :class:`TaskWeights`); None fixes the regulariser weight to 1 (conventional training).
    """

    def __init__(
        self,
        name: str,
        network: LOANetwork,
        *,
        schedule: StairSchedule,
        weights_from: str | None = "omega",
        **options: Any,
    ):
        super().__init__(name, network, **options)
        self.schedule = schedule
        self.weights_from = weights_from

    def task_weight(self, task: Tensor) -> Tensor:
        if self.weights_from is None:
            return torch.ones(task.shape, dtype=self.module.eps0.dtype, device=task.device)
        return getattr(self, self.weights_from).module(task)

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Any]:
        phases = self.schedule(self.global_step)
        losses, trace = task_losses(self.module, batch, self.task_weight(batch["task"]), phases=phases)
        return {"loss": losses.sum(), "phases": phases, **trace.summary()}  # Eq. 14b


class OmegaLevel(Level):
    """``omega``: ``Σ_i ℓ_τi(θ(ω), ω_i; B_val)`` (Eq. 14a), the task weights ω.

    ``network`` is the LOA network whose θ the loss reads: the lower level's module in the
    bilevel program, a frozen copy when adapting ω to an unseen task.
    """

    def __init__(
        self, name: str, weights: TaskWeights, *, network: LOANetwork, schedule: StairSchedule, **options: Any
    ):
        super().__init__(name, weights, **options)
        self.network = network
        self.schedule = schedule

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Any]:
        losses, trace = task_losses(
            self.network, batch, self.module(batch["task"]), phases=self.schedule(self.global_step)
        )
        return {"loss": losses.sum(), **trace.summary()}  # Eq. 14a


def _probe_sigma(level: Level) -> Tensor:
    return level.module.sigma()


def meta_graph(
    *,
    train: CrossTaskSlices,
    val: CrossTaskSlices,
    settings: LOASettings,
    schedule: StairSchedule,
    batch_per_task: int,
    val_batch_per_task: int,
    unroll: int,
    hypergrad: str,
    hypergrad_options: dict[str, Any] | None = None,
    theta_lr: float = 1e-3,
    omega_lr: float = 1e-3,
    grad_clip: float = 0.0,
    seed: int = 0,
    workers: int = 0,
) -> Graph:
    """The bilevel program of Eq. 14: ``theta`` (K = ``unroll`` steps per ω step) below ``omega``.

    Both levels use Adam (β = 0.9, 0.999; the paper's learning rate 1e-3). The network and ω are
    initialised from ``seed`` (Xavier kernels, ω = 0). ``grad_clip`` > 0 clips the norm of each
    level's gradient (the paper does not; the LOA's gradients are heavy-tailed, and one rare spike
    fills Adam's second moment for hundreds of steps).
    """
    torch.manual_seed(seed)
    network = LOANetwork(settings)
    weights = TaskWeights(len(train.masks))
    theta = ThetaLevel(
        "theta",
        network,
        schedule=schedule,
        weights_from="omega",
        optimizer=functools.partial(torch.optim.Adam, lr=theta_lr, betas=(0.9, 0.999)),
        grad_clip=grad_clip,
        data=DataStream(train, batch_per_task, seed=seed, num_workers=workers),
        hypergrad=hypergrad,
        unroll=unroll,
        options=hypergrad_options,
    )
    omega = OmegaLevel(
        "omega",
        weights,
        network=network,
        schedule=schedule,
        optimizer=functools.partial(torch.optim.Adam, lr=omega_lr, betas=(0.9, 0.999)),
        data=DataStream(val, val_batch_per_task, seed=seed + 1, num_workers=workers),
        grad_clip=grad_clip,
        probe=_probe_sigma,
    )
    graph = Graph("metarecon")
    graph.add(theta, omega)
    graph.bilevel(lower=theta, upper=omega)
    return graph


def conventional_graph(
    *,
    train: CrossTaskSlices,
    settings: LOASettings,
    schedule: StairSchedule,
    batch_size: int,
    lr: float = 1e-3,
    grad_clip: float = 0.0,
    seed: int = 0,
    workers: int = 0,
) -> Graph:
    """Conventional supervised training of the same network on one task (regulariser weight 1, no ω);
    ``grad_clip`` > 0 clips θ's gradient norm as :func:`meta_graph` does."""
    if len(train.masks) != 1:
        raise ValueError(f"conventional training is per task: give one mask, got {len(train.masks)}")
    torch.manual_seed(seed)
    theta = ThetaLevel(
        "theta",
        LOANetwork(settings),
        schedule=schedule,
        weights_from=None,
        optimizer=functools.partial(torch.optim.Adam, lr=lr, betas=(0.9, 0.999)),
        data=DataStream(train, batch_size, seed=seed, num_workers=workers),
        grad_clip=grad_clip,
    )
    graph = Graph("conventional")
    graph.add(theta)
    return graph


def adaptation_graph(
    *,
    network: LOANetwork,
    train: CrossTaskSlices,
    batch_size: int,
    lr: float = 1e-3,
    grad_clip: float = 0.0,
    seed: int = 0,
    workers: int = 0,
) -> Graph:
    """Quick adaptation to an unseen task: only a new ω is trained, with a frozen copy of θ running the
    phases it is scored with (``network.active_phases``: the meta-learning checkpoint's stair stage)."""
    if len(train.masks) != 1:
        raise ValueError(f"adaptation is per task: give one mask, got {len(train.masks)}")
    frozen = copy.deepcopy(network).requires_grad_(False)
    torch.manual_seed(seed)
    omega = OmegaLevel(
        "omega",
        TaskWeights(1),
        network=frozen,
        schedule=StairSchedule(network.active_phases),
        optimizer=functools.partial(torch.optim.Adam, lr=lr, betas=(0.9, 0.999)),
        data=DataStream(train, batch_size, seed=seed, num_workers=workers),
        probe=_probe_sigma,
        grad_clip=grad_clip,
    )
    graph = Graph("adaptation")
    graph.add(omega)
    return graph
