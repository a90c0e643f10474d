"""An unrolled multi-coil reconstruction network written as an optimal-control system, with three
gradient paths: autograd, the adjoint (Lagrange-multiplier) recursion, and a checkpointed adjoint.

The system (Bian, Chen & Ye, "An optimal control framework for joint-channel parallel MRI
reconstruction without coil sensitivities", 2022; the network of the task-correlation paper,
Bian et al., Preprints.org 2025). States are per-coil images ``x_t`` ``[B, C, H, W]`` (complex); controls ``u_t`` are
the weights of one block each:

    x_0 = G(y; u_0)                     k-space pre-block: complex CNN on the measured k-space, residual,
                                        then the inverse FFT of every coil
    x_t = F(x_{t-1}; u_t), t = 1..T     one proximal-gradient phase:
                                        b = x - α_t A^H (A x - y)     (gradient step on ½Σ_c ||P F x_c - y_c||²:
                                                                       data consistency with the measured k-space)
                                        x_t = b + J̃(g̃(S_θt(g(J(b)))))  (learned proximal residual)

No coil sensitivities are used: ``A = CoilImages(mask)`` acts on every coil image alone. The
output image is the root-sum-of-squares of ``x_T`` (:func:`combined_magnitude`); the loss of
the recipes is taken on it and on the coil images, as in Bian's pMRI code. We index the phase
controls from 1 so that ``u_0`` belongs to ``G`` alone (the issue writes ``x_{t+1} = F(x_t; u_t)``,
which would give ``u_0`` to both).

Gradient paths (``OptimalControlNet(gradient=...)``), all exact:

* ``"autograd"`` — reverse-mode AD through the whole unrolled graph (what Bian's code does).
* ``"adjoint"`` — Theorem 1 / Algorithm 3 of the task-correlation paper: the forward pass stores
  the states ``x_0..x_T`` (not the phases' activations); the backward pass runs the costate
  recursion ``λ_T = ∂ℓ/∂x_T``, ``λ_{t-1} = (∂F/∂x)(x_{t-1}; u_t)ᵀ λ_t`` with the parameter gradients
  ``∇_{u_t} ℓ = (∂F/∂u)(x_{t-1}; u_t)ᵀ λ_t`` and ``∇_{u_0} ℓ = (∂G/∂u_0)ᵀ (λ_0 + ∂ℓ/∂x_0)``,
  each product one vector-Jacobian product of one phase, re-linearised at its stored state.
  Memory: ``T + 1`` states plus one phase's activations (autograd keeps ``T`` phases' activations).
* ``"adjoint_checkpointed"`` — as ``adjoint`` but only every ``checkpoint_every``-th state is
  stored (default ``ceil(sqrt(T))``); the states of a segment are recomputed from its checkpoint
  when the recursion reaches it. Memory ``O(T / s + s)`` states plus one phase's activations, for
  about one extra forward pass.

Both adjoint paths are one ``torch.autograd.Function``, so the engine's hypergradient methods
work through them. When a caller asks for a differentiable gradient (``create_graph=True``:
``cg``, ``neumann``, ``exact``) the backward re-runs the trajectory *with* its graph from the
controls and runs the same recursion with ``create_graph=True``; that pass needs the whole
graph, like autograd, so the memory saving applies to first-order backward passes only.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..mri import CoilImages, ifft2c, root_sum_of_squares

__all__ = [
    "GRADIENT_PATHS",
    "RESIDUAL_INIT_SCALE",
    "ComplexConv2d",
    "ControlNetConfig",
    "KSpaceBlock",
    "OptimalControlNet",
    "ProximalPhase",
    "Reconstruction",
    "combined_magnitude",
]

GRADIENT_PATHS = ("autograd", "adjoint", "adjoint_checkpointed")


def to_channels(z: Tensor) -> Tensor:
    """Complex ``[B, C, H, W]`` -> real ``[B, 2C, H, W]`` (real parts, then imaginary parts)."""
    return torch.cat([z.real, z.imag], dim=1)


def from_channels(r: Tensor, dtype: torch.dtype) -> Tensor:
    """Inverse of :func:`to_channels`, in the complex dtype whose parts are ``dtype`` (convolutions may have
    run in bf16/fp16 under autocast; the FFTs and states stay in full precision)."""
    half = r.shape[1] // 2
    return torch.complex(r[:, :half].to(dtype), r[:, half:].to(dtype))


class ComplexConv2d(nn.Module):
    """Complex convolution ``(W_r + i W_i) ⋆ (x_r + i x_i)`` without bias, on real-stacked channels.

    Input ``[B, 2·in, H, W]`` (real parts then imaginary parts), output ``[B, 2·out, H, W]``; run
    as one real convolution with the block kernel ``[[W_r, -W_i], [W_i, W_r]]``. Each part is
    Glorot-uniform initialised, as in Bian's code (the last layer of a residual branch is then
    scaled down: see :class:`OptimalControlNet`).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 3):
        super().__init__()
        if kernel % 2 != 1:
            raise ValueError(f"ComplexConv2d: kernel must be odd (same-size output), got {kernel}")
        self.weight_real = nn.Parameter(torch.empty(out_channels, in_channels, kernel, kernel))
        self.weight_imag = nn.Parameter(torch.empty(out_channels, in_channels, kernel, kernel))
        nn.init.xavier_uniform_(self.weight_real)
        nn.init.xavier_uniform_(self.weight_imag)
        self.padding = kernel // 2

    def forward(self, x: Tensor) -> Tensor:
        wr, wi = self.weight_real, self.weight_imag
        kernel = torch.cat([torch.cat([wr, -wi], 1), torch.cat([wi, wr], 1)], 0)
        return F.conv2d(x, kernel, padding=self.padding)


RESIDUAL_INIT_SCALE = 0.01
"""The last convolution of every residual branch starts at this fraction of its Glorot draw."""


def _damp_last(net: nn.Sequential) -> nn.Sequential:
    """Scale a residual branch's last convolution by :data:`RESIDUAL_INIT_SCALE` (the branch starts near 0)."""
    with torch.no_grad():
        net[-1].weight_real.mul_(RESIDUAL_INIT_SCALE)
        net[-1].weight_imag.mul_(RESIDUAL_INIT_SCALE)
    return net


def _complex_cnn(channels: list[int], kernel: int, last_activation: bool = False) -> nn.Sequential:
    """Complex convs ``channels[0] -> ... -> channels[-1]`` with ReLU on real and imaginary parts
    (CReLU) between them (and after the last if ``last_activation``)."""
    layers: list[nn.Module] = []
    for i, (cin, cout) in enumerate(itertools.pairwise(channels)):
        layers.append(ComplexConv2d(cin, cout, kernel))
        if i < len(channels) - 2 or last_activation:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class ControlNetConfig:
    """Sizes of the optimal-control network. Bian's pMRI-CNet: width 64, features 32, kernel 9.

    coils: C, coil images per sample. phases: T. width: channels of the k-space pre-block and of
    the coil-combining nets J, J̃. features: channels of the sparsifying transform g, g̃.
    kernel: kernel size of g, g̃ (the other convolutions are 3x3). step: initial α_t (Bian 0.1).
    threshold: initial soft threshold (Bian 0).
    """

    coils: int
    phases: int = 3
    width: int = 64
    features: int = 32
    kernel: int = 9
    step: float = 0.1
    threshold: float = 0.0

    def __post_init__(self) -> None:
        for name in ("coils", "phases", "width", "features", "kernel"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"ControlNetConfig: {name} must be >= 1, got {getattr(self, name)}")


class KSpaceBlock(nn.Module):
    """``G(y; u_0)``: k-space ``[B, C, H, W]`` -> initial coil images ``x_0`` ``[B, C, H, W]``.

    A complex CNN ``C -> width -> width -> width -> C`` (3x3, CReLU) interpolates the missing
    k-space samples from the measured ones across coils (residual, so it starts near the
    zero-filled data), then every coil is inverse-Fourier transformed.
    """

    def __init__(self, config: ControlNetConfig):
        super().__init__()
        w = config.width
        self.net = _damp_last(_complex_cnn([config.coils, w, w, w, config.coils], 3))

    def forward(self, kspace: Tensor) -> Tensor:
        return ifft2c(kspace + from_channels(self.net(to_channels(kspace)), kspace.dtype.to_real()))


class ProximalPhase(nn.Module):
    """``F(x; u_t)``: one phase, coil images ``[B, C, H, W]`` -> ``[B, C, H, W]``.

    ``b = x - α A^H(A x - y)`` then ``x' = b + J̃(g̃(S_θ(g(J(b)))))``: J combines the coils into one
    complex feature image (``C -> width -> width -> width -> 1``), g / g̃ are a sparsifying
    transform and its learned inverse (``features`` channels, ``kernel``x``kernel``), S_θ is the
    soft threshold (separate thresholds for real and imaginary parts), J̃ spreads back to C coils.
    """

    def __init__(self, config: ControlNetConfig):
        super().__init__()
        w, f, k = config.width, config.features, config.kernel
        self.step = nn.Parameter(torch.tensor(float(config.step)))
        self.threshold = nn.Parameter(torch.full((2,), float(config.threshold)))
        self.combine = _complex_cnn([config.coils, w, w, w, 1], 3)  # J
        self.transform = nn.Sequential(ComplexConv2d(1, f, k), _complex_cnn([f, f, f], k))  # g
        self.inverse = nn.Sequential(_complex_cnn([f, f, f], k), ComplexConv2d(f, 1, k))  # g̃
        self.spread = _damp_last(_complex_cnn([1, w, w, w, config.coils], 3))  # J̃
        self.features = f

    def shrink(self, v: Tensor) -> Tensor:
        """Soft threshold ``sign(v) max(|v| - θ, 0)``; real channels use θ[0], imaginary θ[1]."""
        thr = self.threshold.repeat_interleave(self.features).view(1, -1, 1, 1)
        return torch.sign(v) * F.relu(v.abs() - thr)

    def forward(self, x: Tensor, kspace: Tensor, mask: Tensor) -> Tensor:
        b = x - self.step * CoilImages(mask).data_gradient(x, kspace)
        residual = self.spread(self.inverse(self.shrink(self.transform(self.combine(to_channels(b))))))
        return b + from_channels(residual, b.dtype.to_real())


class Reconstruction(NamedTuple):
    """``initial``: x_0 ``[B, C, H, W]``; ``final``: x_T ``[B, C, H, W]`` (complex coil images)."""

    initial: Tensor
    final: Tensor


def combined_magnitude(coils: Tensor) -> Tensor:
    """The network's output image: root-sum-of-squares of coil images ``[B, C, H, W]`` -> ``[B, H, W]``."""
    return root_sum_of_squares(coils, dim=-3)


class OptimalControlNet(nn.Module):
    """The unrolled network ``x_0 = G(y; u_0)``, ``x_t = F(x_{t-1}; u_t)`` (t = 1..T).

    Args:
        config: sizes (:class:`ControlNetConfig`).
        gradient: ``"autograd"``, ``"adjoint"`` or ``"adjoint_checkpointed"`` (module docstring);
            may be changed later through the attribute of the same name.
        checkpoint_every: states between stored checkpoints of ``adjoint_checkpointed``
            (default ``ceil(sqrt(T))``).

    Call with k-space ``[B, C, H, W]`` (complex, zero where not sampled) and a mask ``[H, W]`` or
    ``[B, 1, H, W]``; returns :class:`Reconstruction`.

    Initialisation (our choice; Bian's code is Glorot-uniform everywhere): the last convolution of
    the k-space block's and of every phase's residual branch starts at 1/100 of its Glorot draw,
    so the untrained network returns nearly the zero-filled coil images and training improves on
    them from its first step. With full Glorot residuals the untrained network adds noise in every
    phase: on the smoke tasks, after 100 θ-steps, it was still at the zero-filled PSNR (23.4 dB)
    where the damped start reached 26.5 dB. (Starting them exactly at zero works as well, 26.0 dB,
    but leaves the step sizes α_t with round-off gradients at the first step, which Adam turns
    into ±lr moves that differ between CPU builds.)
    """

    def __init__(self, config: ControlNetConfig, gradient: str = "autograd", checkpoint_every: int | None = None):
        super().__init__()
        self.config = config
        self.initial = KSpaceBlock(config)
        self.phases = nn.ModuleList(ProximalPhase(config) for _ in range(config.phases))
        self.gradient = gradient
        if checkpoint_every is not None and int(checkpoint_every) < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
        default = max(1, math.ceil(math.sqrt(config.phases)))
        self.checkpoint_every = int(checkpoint_every) if checkpoint_every else default

    @property
    def gradient(self) -> str:
        return self._gradient

    @gradient.setter
    def gradient(self, value: str) -> None:
        if value not in GRADIENT_PATHS:
            raise ValueError(f"gradient must be one of {GRADIENT_PATHS}, got {value!r}")
        self._gradient = value

    def blocks(self) -> list[nn.Module]:
        """``[G, F_1, ..., F_T]``: block ``t`` holds control ``u_t``."""
        return [self.initial, *self.phases]

    def forward(self, kspace: Tensor, mask: Tensor) -> Reconstruction:
        self._check_inputs(kspace, mask)
        controls = [list(block.parameters()) for block in self.blocks()]
        flat = [p for ps in controls for p in ps]
        needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in flat)
        if self.gradient == "autograd" or not needs_grad:
            x0 = self.initial(kspace)
            x = x0
            for phase in self.phases:
                x = phase(x, kspace, mask)
            return Reconstruction(x0, x)
        if kspace.requires_grad or mask.requires_grad:
            raise ValueError(
                f"gradient='{self.gradient}' differentiates the controls u_t only; the k-space and "
                "mask must not require grad (use gradient='autograd' to differentiate the data)"
            )
        keep_every = 1 if self.gradient == "adjoint" else self.checkpoint_every
        x0, xT = _AdjointUnroll.apply(self, kspace, mask, keep_every, [len(ps) for ps in controls], *flat)
        return Reconstruction(x0, xT)

    def _check_inputs(self, kspace: Tensor, mask: Tensor) -> None:
        if not torch.is_complex(kspace) or kspace.dim() != 4:
            raise ValueError(
                f"OptimalControlNet: k-space must be complex [B, C, H, W], got {kspace.dtype} {tuple(kspace.shape)}"
            )
        if kspace.shape[1] != self.config.coils:
            raise ValueError(
                f"OptimalControlNet: k-space has {kspace.shape[1]} coils, the network was built for "
                f"{self.config.coils} (ControlNetConfig.coils)"
            )
        weight = self.initial.net[0].weight_real
        if kspace.dtype.to_real() != weight.dtype:
            raise ValueError(
                f"OptimalControlNet: k-space is {kspace.dtype} but the network's parameters are "
                f"{weight.dtype}; cast the data or the network to one precision"
            )
        if mask.shape[-2:] != kspace.shape[-2:]:
            raise ValueError(
                f"OptimalControlNet: mask {tuple(mask.shape)} does not match the k-space's spatial size "
                f"{tuple(kspace.shape[-2:])}"
            )


def _run_block(block: nn.Module, values: list[Tensor], *args: Tensor) -> Tensor:
    """``block(*args)`` with its parameters replaced by ``values`` (in ``block.parameters()`` order)."""
    names = [n for n, _ in block.named_parameters()]
    return torch.func.functional_call(block, dict(zip(names, values)), args)


class _AdjointUnroll(torch.autograd.Function):
    """Forward: the trajectory without graph, keeping every ``keep_every``-th state. Backward:
    the costate recursion of Theorem 1 with one vector-Jacobian product per phase."""

    @staticmethod
    def forward(
        ctx: Any, net: OptimalControlNet, kspace: Tensor, mask: Tensor, keep_every: int, sizes: list[int], *flat: Tensor
    ) -> tuple[Tensor, Tensor]:
        controls = _split(flat, sizes)
        blocks = net.blocks()
        x = _run_block(blocks[0], controls[0], kspace)
        x0, kept = x, {0: x}
        for t in range(1, len(blocks)):
            x = _run_block(blocks[t], controls[t], x, kspace, mask)
            if t % keep_every == 0:
                kept[t] = x
        ctx.net, ctx.keep_every, ctx.sizes, ctx.kept = net, keep_every, sizes, kept
        device = kspace.device.type  # backward re-runs phases under the forward's autocast state
        ctx.autocast = (device, torch.get_autocast_dtype(device), torch.is_autocast_enabled(device))
        ctx.save_for_backward(kspace, mask, *flat)
        ctx.set_materialize_grads(False)
        return x0, x

    @staticmethod
    def backward(ctx: Any, grad_x0: Tensor | None, grad_xT: Tensor | None) -> tuple[Tensor | None, ...]:
        kspace, mask, *flat = ctx.saved_tensors
        controls = _split(flat, ctx.sizes)
        blocks = ctx.net.blocks()
        device, dtype, enabled = ctx.autocast
        with torch.autocast(device, dtype=dtype, enabled=enabled):
            if torch.is_grad_enabled():  # create_graph=True: a gradient that is itself differentiable
                grads = _costates_with_graph(blocks, controls, kspace, mask, grad_x0, grad_xT)
            else:
                grads = _costates(blocks, controls, kspace, mask, ctx.kept, ctx.keep_every, grad_x0, grad_xT)
        return (None, None, None, None, None, *[g for gs in grads for g in gs])


def _split(flat: tuple[Tensor, ...] | list[Tensor], sizes: list[int]) -> list[list[Tensor]]:
    out, start = [], 0
    for n in sizes:
        out.append(list(flat[start : start + n]))
        start += n
    return out


def _zeros_for_none(grads: tuple[Tensor | None, ...], like: list[Tensor]) -> list[Tensor]:
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, like)]


def _costates(
    blocks: list[nn.Module],
    controls: list[list[Tensor]],
    kspace: Tensor,
    mask: Tensor,
    kept: dict[int, Tensor],
    keep_every: int,
    grad_x0: Tensor | None,
    grad_xT: Tensor | None,
) -> list[list[Tensor]]:
    """First-order backward: λ_T = grad_xT, λ_{t-1} = (∂F/∂x)ᵀ λ_t, ∇u_t = (∂F/∂u)ᵀ λ_t, per phase."""
    T = len(blocks) - 1
    grads: list[list[Tensor]] = [[] for _ in blocks]
    lam = grad_xT if grad_xT is not None else torch.zeros_like(kept[0])
    t = T
    while t >= 1:
        start = ((t - 1) // keep_every) * keep_every  # the checkpoint at or below x_{t-1}
        segment = {start: kept[start]}
        with torch.no_grad():  # recompute x_{start+1}..x_{t-1} (nothing when every state is kept)
            for s in range(start + 1, t):
                segment[s] = _run_block(blocks[s], controls[s], segment[s - 1], kspace, mask)
        for s in range(t, start, -1):  # phases s = t..start+1, fed by x_{s-1}
            with torch.enable_grad():
                x_in = segment[s - 1].detach().requires_grad_(True)
                u = [p.detach().requires_grad_(True) for p in controls[s]]
                out = _run_block(blocks[s], u, x_in, kspace, mask)
                lam, *gu = torch.autograd.grad(out, [x_in, *u], lam, allow_unused=True)
            grads[s] = _zeros_for_none(tuple(gu), controls[s])
            del segment[s - 1]
        t = start
    lam0 = lam if grad_x0 is None else lam + grad_x0
    with torch.enable_grad():
        u = [p.detach().requires_grad_(True) for p in controls[0]]
        out = _run_block(blocks[0], u, kspace)
        grads[0] = _zeros_for_none(torch.autograd.grad(out, u, lam0, allow_unused=True), controls[0])
    return grads


def _costates_with_graph(
    blocks: list[nn.Module],
    controls: list[list[Tensor]],
    kspace: Tensor,
    mask: Tensor,
    grad_x0: Tensor | None,
    grad_xT: Tensor | None,
) -> list[list[Tensor]]:
    """The same recursion with ``create_graph=True`` on a trajectory re-run from the live controls,
    so that the result is differentiable in the controls and in the incoming gradients."""
    states = [_run_block(blocks[0], controls[0], kspace)]
    for t in range(1, len(blocks)):
        states.append(_run_block(blocks[t], controls[t], states[-1], kspace, mask))
    grads: list[list[Tensor]] = [[] for _ in blocks]
    lam = grad_xT if grad_xT is not None else torch.zeros_like(states[-1])
    for t in range(len(blocks) - 1, 0, -1):
        lam, *gu = torch.autograd.grad(
            states[t], [states[t - 1], *controls[t]], lam, create_graph=True, allow_unused=True
        )
        grads[t] = _zeros_for_none(tuple(gu), controls[t])
    lam0 = lam if grad_x0 is None else lam + grad_x0
    grads[0] = _zeros_for_none(
        torch.autograd.grad(states[0], controls[0], lam0, create_graph=True, allow_unused=True), controls[0]
    )
    return grads
