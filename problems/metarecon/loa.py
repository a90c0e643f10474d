"""The LOA-induced reconstruction network of Bian et al. (Journal of Imaging 2021, Algorithm 1): one phase = one iteration.

The network solves ``min_x φ(x) = f(x) + κ·r(x)`` approximately by unrolling Algorithm 1 for T
phases from the zero-filled image ``x_0 = A^H y``, with

* ``f(x) = ½‖A x − y‖²`` (Eq. 3), ``A`` a forward model of :mod:`problems.mri.operators`;
* ``r_ε(x) = Σ_j (sqrt(‖g_j(x)‖² + ε²) − ε)`` (Eq. 5), ``g_j(x) ∈ C^d`` the features at pixel
  ``j`` of a learned complex CNN ``g`` (Eq. 18-19: 3 layers of 4 kernels 3×3, no bias, the
  smoothed ReLU with δ = 0.001 on real and imaginary parts between the layers);
* ``κ = σ(ω_i)`` per sample, the task-specific weight (Eq. 11), given by the caller.

Phase t (Algorithm 1, lines 3-16), for every sample of the batch independently:

    z = x_t − α_t ∇f(x_t)                                                   (line 3)
    u = z − τ_t ∇R_ε(z)                                                      (line 4)
    if ‖∇φ_ε(x_t)‖ ≤ a‖u − x_t‖ and φ_ε(u) − φ_ε(x_t) ≤ −‖u − x_t‖²/a:
        x_{t+1} = u                                                          (lines 5-6)
    else: v = x_t − α ∇φ_ε(x_t), α ← ρ α until φ_ε(v) − φ_ε(x_t) ≤ −‖v − x_t‖²/a;
        x_{t+1} = v                                                          (lines 8-12, the safeguard)
    if ‖∇φ_ε(x_{t+1})‖ < σ γ ε: ε ← γ ε                                      (line 15)
    if σ ε < ε_tol: the sample has converged; later phases leave it unchanged (line 16)

The tests are discrete decisions taken without gradient; the gradient flows through the branch
each sample took (and through ``ρ^k α_t`` of the accepted backtracking step). Should the
backtracking not reach descent within ``max_backtracks`` reductions (in exact arithmetic it
always does, Algorithm 1's finite line search), the sample keeps ``x_t``.

``∇r_ε`` is formed explicitly (Lemma A2, Eq. A2: ``Σ_j ∇g_j(x)^H g_j / sqrt(‖g_j‖² + ε²)``) by
running ``g``'s Jacobian adjoint (transposed convolutions and activation derivatives), so a
phase is an ordinary forward graph: training needs one backward pass, the penalty method's
``‖∇_θ L‖²`` a second one, never a third. Complex numbers are native torch complex tensors; the
kernels are stored as separate real and imaginary real-valued parameters (as the paper's
"every kernel consists real part and imaginary part"), so every optimiser and hypergradient
method of the engine sees real parameters only.

Parameters θ (task-invariant): the CNN kernels, ε₀ (learned, Section 4.2; used as |ε₀|) and the
step sizes ``α_t, τ_t`` of every phase (phases share everything else), kept positive as step
sizes must be by learning them through a softplus. ``active_phases`` selects how many phases
run (stair training adds them one at a time).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

__all__ = ["FeatureCNN", "LOANetwork", "LOASettings", "LOATrace", "smoothed_relu", "smoothed_relu_derivative"]


def smoothed_relu(x: Tensor, delta: float = 1e-3) -> Tensor:
    """Eq. 19: 0 below −δ, ``x²/(4δ) + x/2 + δ/4`` in (−δ, δ), ``x`` above δ (C¹, real input).

    Written as ``(clamp(x, −δ, δ) + δ)²/(4δ) + relu(x − δ)``, which is the same function, with the
    same derivative everywhere, in three elementwise kernels."""
    inner = x.clamp(-delta, delta) + delta
    return inner * inner / (4 * delta) + torch.relu(x - delta)


def smoothed_relu_derivative(x: Tensor, delta: float = 1e-3) -> Tensor:
    """φ'(x): 0 below −δ, ``x/(2δ) + ½`` in (−δ, δ), 1 above δ."""
    return (x / (2 * delta) + 0.5).clamp(0.0, 1.0)


def _complex_kernel(real: Tensor, imag: Tensor) -> Tensor:
    """The real ``[2·out, 2·in, k, k]`` kernel of a complex convolution acting on stacked channels
    ``[Re; Im]``: ``Re y = Wr⋆Re x − Wi⋆Im x``, ``Im y = Wi⋆Re x + Wr⋆Im x``."""
    return torch.cat([torch.cat([real, -imag], 1), torch.cat([imag, real], 1)], 0)


def _to_channels(x: Tensor) -> Tensor:
    """Complex ``[B, H, W]`` -> real ``[B, 2, H, W]`` (real part, imaginary part)."""
    return torch.stack([x.real, x.imag], 1)


class FeatureCNN(nn.Module):
    """``g`` (Eq. 18): complex 3×3 convolutions 1 → d → ... → d without bias, φ between layers.

    Input ``[B, H, W]`` complex. Features are returned as real channels ``[B, 2d, H, W]`` (the
    real parts of the d complex features, then their imaginary parts), so that ``‖g_j‖²`` is the
    sum of squares over channels and φ on real and imaginary parts is φ on every channel. Each
    complex convolution runs as one real convolution with the block kernel of
    :func:`_complex_kernel` (native complex ``conv2d`` is an order of magnitude slower on CPU).
    Kernels are Xavier (Glorot) uniform in their real and imaginary parts, as the paper initialises.
    """

    def __init__(self, channels: int = 4, layers: int = 3, kernel_size: int = 3, delta: float = 1e-3):
        super().__init__()
        if layers < 1 or channels < 1 or kernel_size % 2 == 0:
            raise ValueError(
                f"FeatureCNN needs layers >= 1, channels >= 1 and an odd kernel size, got "
                f"{layers}, {channels}, {kernel_size}"
            )
        self.delta = delta
        self.padding = kernel_size // 2
        shapes = [(channels, 1 if i == 0 else channels, kernel_size, kernel_size) for i in range(layers)]
        self.real = nn.ParameterList([nn.Parameter(nn.init.xavier_uniform_(torch.empty(s))) for s in shapes])
        self.imag = nn.ParameterList([nn.Parameter(nn.init.xavier_uniform_(torch.empty(s))) for s in shapes])

    def kernels(self) -> list[Tensor]:
        """The complex kernels ``[d_out, d_in, k, k]`` (for inspection; the convolutions use block kernels)."""
        return [torch.complex(re, im) for re, im in zip(self.real, self.imag)]

    def forward(self, x: Tensor) -> Tensor:
        """``g(x)`` as a complex tensor ``[B, d, H, W]``."""
        g = self.features(x)[0]
        d = g.shape[1] // 2
        return torch.complex(g[:, :d], g[:, d:])

    def features(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``g(x)`` as real channels ``[B, 2d, H, W]`` and the hidden pre-activations (for :meth:`adjoint`)."""
        blocks = [_complex_kernel(re, im) for re, im in zip(self.real, self.imag)]
        h = nn.functional.conv2d(_to_channels(x), blocks[0], padding=self.padding)
        hidden = []
        for block in blocks[1:]:
            hidden.append(h)
            h = nn.functional.conv2d(smoothed_relu(h, self.delta), block, padding=self.padding)
        return h, hidden

    def adjoint(self, cotangent: Tensor, hidden: list[Tensor]) -> Tensor:
        """``J_g(x)^H c`` ``[B, H, W]`` complex for a cotangent ``c`` ``[B, 2d, H, W]`` (stacked like
        :meth:`features`): the gradient of ``⟨g(x), c⟩`` in x, in torch's convention ``∂/∂Re + i ∂/∂Im``.
        Each transposed convolution runs as a convolution with the flipped, transposed block kernel."""
        blocks = [_complex_kernel(re, im) for re, im in zip(self.real, self.imag)]
        c = cotangent
        for block, h in zip(reversed(blocks[1:]), reversed(hidden)):
            c = nn.functional.conv2d(c, block.transpose(0, 1).flip(-2, -1), padding=self.padding)
            c = smoothed_relu_derivative(h, self.delta) * c
        c = nn.functional.conv2d(c, blocks[0].transpose(0, 1).flip(-2, -1), padding=self.padding)
        return torch.complex(c[:, 0], c[:, 1])


@dataclass(frozen=True)
class LOASettings:
    """Algorithm 1's constants (paper: 0 < ρ, γ < 1; ε₀ = 1e-3; ε_tol = 1e-5; δ = 1e-3).

    ``a``, ``γ``, ``σ`` follow the authors' code (a = 10³, γ = 0.9, σ = 1); the paper states no
    values for them. ρ = 0.5 and ``max_backtracks`` = 10 are ours (the code's backtracking never
    runs). ``alpha0``/``tau0`` initialise every phase's step sizes: with an orthonormal FFT
    ``∇f`` is 1-Lipschitz (α = 1 is the data-consistency step); τ₀ = 0.01 is the authors' code's
    value, small enough that the untrained network stays close to the zero-filled image (∇r_ε is
    stiff: its Lipschitz constant grows like 1/ε, Lemma A2).
    """

    phases: int = 11
    channels: int = 4
    layers: int = 3
    kernel_size: int = 3
    delta: float = 1e-3
    eps0: float = 1e-3
    alpha0: float = 0.5
    tau0: float = 0.01
    a: float = 1e3
    rho: float = 0.5
    gamma: float = 0.9
    sigma: float = 1.0
    eps_tol: float = 1e-5
    max_backtracks: int = 10


@dataclass
class LOATrace:
    """What every phase decided, per sample: ``accepted_u`` [B] (line 6 taken), ``backtracks`` [B]
    (α reductions of the safeguard; −1 where u was accepted or the sample had converged),
    ``objective`` [B] φ_ε(x_{t+1}) (with the ε of that phase), ``objective_before`` [B] φ_ε(x_t),
    ``eps`` [B] ε_{t+1}, ``active`` [B] (not yet terminated by line 16), ``grad_norm`` [B]
    ‖∇φ_ε(x_{t+1})‖ and ``threshold`` [B] σγε_t, the two sides of line 15's test, and ``eps_reduced``
    [B] (line 15 fired: ε_{t+1} = γε_t)."""

    accepted_u: list[Tensor] = field(default_factory=list)
    backtracks: list[Tensor] = field(default_factory=list)
    objective_before: list[Tensor] = field(default_factory=list)
    objective: list[Tensor] = field(default_factory=list)
    eps: list[Tensor] = field(default_factory=list)
    active: list[Tensor] = field(default_factory=list)
    grad_norm: list[Tensor] = field(default_factory=list)
    threshold: list[Tensor] = field(default_factory=list)
    eps_reduced: list[Tensor] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        """Over active phases and samples: fractions with u accepted, the safeguard taken and line 15
        fired; mean backtracks when the safeguard was taken; the median of ‖∇φ_ε(x_{t+1})‖ / σγε_t
        (line 15 fires below 1)."""
        accepted = torch.stack(self.accepted_u).float()
        active = torch.stack(self.active).float()
        steps = torch.stack(self.backtracks).float()
        safeguard = (steps >= 0).float()
        reduced = torch.stack(self.eps_reduced).float()
        ratio = (torch.stack(self.grad_norm) / torch.stack(self.threshold))[torch.stack(self.active)]
        return {
            "u_accepted": float((accepted * active).sum() / active.sum().clamp_min(1)),
            "safeguard_taken": float((safeguard * active).sum() / active.sum().clamp_min(1)),
            "backtracks_when_taken": float((steps.clamp_min(0) * safeguard).sum() / safeguard.sum().clamp_min(1)),
            "eps_reduced": float((reduced * active).sum() / active.sum().clamp_min(1)),
            "grad_over_eps_threshold": float(ratio.median()) if ratio.numel() else float("nan"),
        }


def _inverse_softplus(y: Tensor) -> Tensor:
    """``softplus⁻¹(y) = y + log(1 − e^{−y})`` for y > 0."""
    return y + torch.log(-torch.expm1(-y))


def _sample_norm(x: Tensor) -> Tensor:
    """‖x_b‖ over every non-batch axis ``[B]``."""
    return torch.linalg.vector_norm(x.flatten(1), dim=1)


def _per_sample(value: Tensor, like: Tensor) -> Tensor:
    """A ``[B]`` tensor broadcast against images ``[B, H, W]``."""
    return value.view(-1, *([1] * (like.dim() - 1)))


class LOANetwork(nn.Module):
    """``F_θ(y; κ) ≈ argmin_x ½‖A x − y‖² + κ r_ε(x; θ)`` by T phases of Algorithm 1 (module doc).

    Call ``net(kspace, operator, weight)``: ``kspace`` ``[B, H, W]`` (or ``[B, C, H, W]`` with a
    multi-coil operator), ``operator`` with ``__call__``/``adjoint``/``data_gradient`` (a
    :class:`~problems.mri.operators.SingleCoil` with masks ``[B, H, W]`` gives every sample its
    own task's mask), ``weight`` the regulariser weight κ ``[B]`` (σ(ω_i) per sample). Returns
    ``x_T`` ``[B, H, W]`` complex, and the :class:`LOATrace` with ``trace=True``.
    """

    def __init__(self, settings: LOASettings = LOASettings()):
        super().__init__()
        if settings.phases < 1:
            raise ValueError(f"LOANetwork needs at least one phase, got {settings.phases}")
        for name in ("rho", "gamma"):
            if not 0.0 < getattr(settings, name) < 1.0:
                raise ValueError(f"LOASettings.{name} must lie in (0, 1), got {getattr(settings, name)}")
        for name in ("alpha0", "tau0", "eps0", "a", "sigma"):
            if not getattr(settings, name) > 0.0:
                raise ValueError(f"LOASettings.{name} must be positive, got {getattr(settings, name)}")
        self.settings = settings
        self.g = FeatureCNN(settings.channels, settings.layers, settings.kernel_size, settings.delta)
        self.eps0 = nn.Parameter(torch.tensor(float(settings.eps0)))
        self.alpha_raw = nn.Parameter(_inverse_softplus(torch.full((settings.phases,), float(settings.alpha0))))
        self.tau_raw = nn.Parameter(_inverse_softplus(torch.full((settings.phases,), float(settings.tau0))))
        self.active_phases = settings.phases

    @property
    def phases(self) -> int:
        return self.settings.phases

    @property
    def alpha(self) -> Tensor:
        """Step sizes α_t of every phase ``[T]`` (positive: ``softplus`` of the learned ``alpha_raw``)."""
        return nn.functional.softplus(self.alpha_raw)

    @property
    def tau(self) -> Tensor:
        """Step sizes τ_t = α_t β_t / (α_t + β_t) of every phase ``[T]`` (``softplus`` of ``tau_raw``)."""
        return nn.functional.softplus(self.tau_raw)

    # ------------------------------------------------------------------ the objective
    def regularizer(self, x: Tensor, eps: Tensor) -> Tensor:
        """``r_ε(x)`` per sample ``[B]`` (Eq. 5)."""
        g, _ = self.g.features(x)
        smooth = (g.pow(2).sum(1) + _per_sample(eps, x).pow(2)).sqrt()
        return (smooth - _per_sample(eps, x)).flatten(1).sum(1)

    def regularizer_and_gradient(self, x: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """``r_ε(x)`` ``[B]`` and ``∇r_ε(x)`` ``[B, H, W]`` (Eq. A2)."""
        g, hidden = self.g.features(x)
        smooth = (g.pow(2).sum(1, keepdim=True) + _per_sample(eps, g).pow(2)).sqrt()
        value = (smooth - _per_sample(eps, g)).flatten(1).sum(1)
        return value, self.g.adjoint(g / smooth, hidden)

    def objective(self, x: Tensor, kspace: Tensor, operator, weight: Tensor, eps: Tensor) -> Tensor:
        """``φ_ε(x) = ½‖A x − y‖² + κ r_ε(x)`` per sample ``[B]``."""
        data = 0.5 * (operator(x) - kspace).abs().pow(2).flatten(1).sum(1)
        return data + weight * self.regularizer(x, eps)

    def objective_and_gradient(
        self, x: Tensor, kspace: Tensor, operator, weight: Tensor, eps: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``φ_ε(x)`` ``[B]`` and ``∇φ_ε(x) = A^H(Ax − y) + κ ∇r_ε(x)`` ``[B, H, W]``."""
        residual = operator(x) - kspace
        r, grad_r = self.regularizer_and_gradient(x, eps)
        value = 0.5 * residual.abs().pow(2).flatten(1).sum(1) + weight * r
        return value, operator.adjoint(residual) + _per_sample(weight, x) * grad_r

    # ------------------------------------------------------------------ the phases
    def forward(
        self, kspace: Tensor, operator, weight: Tensor, *, phases: int | None = None, trace: bool = False
    ) -> Tensor | tuple[Tensor, LOATrace]:
        phases = self.active_phases if phases is None else int(phases)
        if not 1 <= phases <= self.phases:
            raise ValueError(f"phases must lie in 1..{self.phases}, got {phases}")
        x = operator.adjoint(kspace)  # x_0: zero-filled reconstruction
        weight = weight.to(x.real.dtype).expand(x.shape[0])
        eps = self.eps0.abs().expand(x.shape[0])
        active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        record = LOATrace()
        with torch.no_grad():  # φ_ε(x_t) and ∇φ_ε(x_t) for the tests; carried from phase to phase
            phi_x, grad_phi_x = self.objective_and_gradient(x, kspace, operator, weight, eps)
        for t in range(phases):
            x, eps, phi_x, grad_phi_x, active = self._phase(
                t, x, kspace, operator, weight, eps, phi_x, grad_phi_x, active, record
            )
            if not bool(active.any()):
                break
        return (x, record) if trace else x

    def _phase(
        self,
        t: int,
        x: Tensor,
        kspace: Tensor,
        operator,
        weight: Tensor,
        eps: Tensor,
        phi_x: Tensor,
        grad_phi_x: Tensor,
        active: Tensor,
        record: LOATrace,
    ):
        s = self.settings
        alpha, tau = self.alpha[t], self.tau[t]  # positive step sizes of this phase
        z = x - alpha * operator.data_gradient(x, kspace)  # line 3
        _, grad_r_z = self.regularizer_and_gradient(z, eps)
        u = z - tau * _per_sample(weight, z) * grad_r_z  # line 4
        with torch.no_grad():  # line 5
            phi_u, grad_phi_u = self.objective_and_gradient(u, kspace, operator, weight, eps)
            step_u = _sample_norm(u - x)
            accept = (_sample_norm(grad_phi_x) <= s.a * step_u) & (phi_u - phi_x <= -step_u.pow(2) / s.a)
        x_next, phi_next, grad_next = u, phi_u, grad_phi_u
        backtracks = torch.full_like(eps, -1, dtype=torch.long)
        fallback = active & ~accept
        if bool(fallback.any()):  # lines 8-12
            x_next, phi_next, grad_next, backtracks = self._safeguard(
                x, u, phi_u, grad_phi_u, accept, fallback, alpha, kspace, operator, weight, eps, phi_x
            )
        x_next = torch.where(_per_sample(active, x), x_next, x)  # terminated samples stay
        with torch.no_grad():
            phi_next = torch.where(active, phi_next, phi_x)
            grad_next = torch.where(_per_sample(active, x), grad_next, grad_phi_x)
            grad_norm, threshold = _sample_norm(grad_next), s.sigma * s.gamma * eps.detach()
            reduce = active & (grad_norm < threshold)  # line 15
        eps_next = torch.where(reduce, s.gamma * eps, eps)
        if bool(reduce.any()):  # ∇φ and φ change with ε: recompute them at x_{t+1} for the next phase
            with torch.no_grad():
                phi_next, grad_next = self.objective_and_gradient(x_next, kspace, operator, weight, eps_next)
        record.accepted_u.append(accept & active)
        record.backtracks.append(torch.where(active, backtracks, torch.full_like(backtracks, -1)))
        record.objective_before.append(phi_x)
        record.objective.append(phi_next)
        record.eps.append(eps_next.detach())
        record.active.append(active)
        record.grad_norm.append(grad_norm)
        record.threshold.append(threshold)
        record.eps_reduced.append(reduce)
        active_next = active & (s.sigma * eps.detach() >= s.eps_tol)  # line 16
        return x_next, eps_next, phi_next, grad_next, active_next

    def _safeguard(
        self,
        x: Tensor,
        u: Tensor,
        phi_u: Tensor,
        grad_phi_u: Tensor,
        accept: Tensor,
        fallback: Tensor,
        alpha: Tensor,
        kspace: Tensor,
        operator,
        weight: Tensor,
        eps: Tensor,
        phi_x: Tensor,
    ):
        """``v = x − α ∇φ_ε(x)`` with α ← ρα until descent (lines 8-12), for the samples in ``fallback``."""
        s = self.settings
        _, grad_phi = self.objective_and_gradient(x, kspace, operator, weight, eps)  # with graph: v is trained
        step = alpha.expand_as(eps)
        found = torch.zeros_like(fallback)
        taken = torch.full_like(eps, -1, dtype=torch.long)
        scale = torch.zeros_like(eps.detach())  # the accepted ρ^k (0: no descent found, x stays)
        phi_v_found = phi_x.clone()
        grad_v_found = torch.zeros_like(grad_phi_u)
        for k in range(s.max_backtracks + 1):
            todo = fallback & ~found
            if not bool(todo.any()):
                break
            with torch.no_grad():
                v = x - _per_sample(step * s.rho**k, x) * grad_phi
                phi_v, grad_v = self.objective_and_gradient(v, kspace, operator, weight, eps)
                descent = phi_v - phi_x <= -_sample_norm(v - x).pow(2) / s.a
            hit = todo & descent
            scale = torch.where(hit, torch.full_like(scale, s.rho**k), scale)
            taken = torch.where(hit, torch.full_like(taken, k), taken)
            phi_v_found = torch.where(hit, phi_v, phi_v_found)
            grad_v_found = torch.where(_per_sample(hit, x), grad_v, grad_v_found)
            found = found | hit
        v = x - _per_sample(alpha * scale, x) * grad_phi
        stuck = fallback & ~found  # these samples keep x_t, and with it ∇φ_ε(x_t)
        grad_v_found = torch.where(_per_sample(stuck, x), grad_phi.detach(), grad_v_found)
        chosen = _per_sample(accept, x)
        x_next = torch.where(chosen, u, v)
        phi_next = torch.where(accept, phi_u, phi_v_found)
        grad_next = torch.where(chosen, grad_phi_u, grad_v_found)
        backtracks = torch.where(
            fallback,
            torch.where(found, taken, torch.full_like(taken, s.max_backtracks + 1)),
            torch.full_like(taken, -1),
        )
        return x_next, phi_next, grad_next, backtracks
