"""How a trained LOA network is scored: reconstructions, zero-filling, test metrics, validation PSNR.

Every method of the recipe (meta-learning, adaptation to an unseen task, conventional learning) is
scored the same way: the network reconstructs simulated k-space ``y = P_i F x̂`` of each test slice
with the regulariser weight of its task (σ(ω_i), or 1 for conventional learning) and the number
of phases it was trained with; PSNR, SSIM and NMSE compare the magnitude with the reference
(:mod:`problems.mri.metrics`). :class:`ValidationPSNR` is the number that picks the checkpoint kept.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from engines import Graph

from ..mri.masks import SamplingTask, achieved_ratio
from ..mri.metrics import per_slice_rows, reconstruction_metrics
from ..mri.operators import SingleCoil
from .levels import StairSchedule, simulate_kspace
from .loa import LOANetwork, LOASettings

__all__ = [
    "ValidationPSNR",
    "eps_rule_sweep",
    "graph_network",
    "network_from",
    "reconstruct",
    "safeguard_summary",
    "score_checkpoint",
    "score_rows",
    "test_rows",
    "zero_filled",
]


@torch.no_grad()
def reconstruct(
    network: LOANetwork,
    images: Tensor,
    mask: Tensor,
    weight: float | Tensor,
    *,
    phases: int | None = None,
    batch_size: int = 16,
) -> tuple[Tensor, dict[str, float]]:
    """LOA reconstructions ``[N, H, W]`` (complex) of reference slices ``[N, H, W]`` sampled with
    ``mask`` ``[H, W]`` at regulariser weight ``weight``, and the safeguard statistics."""
    device = next(network.parameters()).device
    dtype = network.eps0.dtype
    out, summaries = [], []
    for start in range(0, len(images), batch_size):
        target = images[start : start + batch_size].to(device, dtype)
        m = mask.to(device, dtype).expand_as(target)
        kappa = torch.as_tensor(weight, dtype=dtype, device=device).expand(len(target))
        recon, trace = network(simulate_kspace(target, m), SingleCoil(m), kappa, phases=phases, trace=True)
        out.append(recon.cpu())
        summaries.append((len(target), trace.summary()))
    n = sum(k for k, _ in summaries)
    stats = {key: sum(k * s[key] for k, s in summaries) / n for key in summaries[0][1]}
    return torch.cat(out), stats


def zero_filled(images: Tensor, mask: Tensor) -> Tensor:
    """The zero-filled reconstructions ``A^H y`` ``[N, H, W]`` of reference slices (the network's x_0)."""
    m = mask.to(images.dtype).expand_as(images)
    return SingleCoil(m).adjoint(simulate_kspace(images, m))


def score_rows(
    network: LOANetwork, images: Tensor, mask: Tensor, weight: float, *, batch_size: int = 16, **identity: Any
) -> tuple[list[dict[str, Any]], Tensor, dict[str, float]]:
    """Per-slice PSNR/SSIM/NMSE rows of the network on ``images`` (with its active phases), the
    reconstructions and the safeguard statistics; ``identity`` keys (task, method...) go in every row."""
    recon, stats = reconstruct(network, images, mask, weight, phases=network.active_phases, batch_size=batch_size)
    return per_slice_rows(reconstruction_metrics(recon, images), **identity), recon, stats


def graph_network(graph: Graph) -> tuple[LOANetwork, Tensor]:
    """The LOA network a graph trains or reads, and the regulariser weight of each of its tasks:
    σ(ω_i) of the ``omega`` level, or 1 for a graph without one (conventional learning)."""
    if "theta" in graph.levels:
        network = graph["theta"].module
        if "omega" in graph.levels:
            return network, graph["omega"].module.sigma()
        return network, torch.ones(1)
    return graph["omega"].network, graph["omega"].module.sigma()


class ValidationPSNR:
    """Mean validation PSNR over the tasks of a graph, with the phases active at this step.

    ``masks`` ``[T, H, W]`` are the graph's tasks in the order of its weights (one mask for
    conventional learning and adaptation); the value is what the runner's best checkpoint keeps.
    ``extra(graph)`` adds more logged values (e.g. a :class:`~problems.metarecon.balance.BalanceProbe`).
    """

    def __init__(
        self,
        images: Tensor,
        masks: Tensor,
        schedule: StairSchedule,
        batch: int,
        extra: Callable[[Graph], dict[str, float]] | None = None,
    ):
        self.images, self.masks, self.schedule, self.batch, self.extra = images, masks, schedule, batch, extra

    def __call__(self, graph: Graph) -> dict[str, float]:
        phases = self.schedule(graph.engine.global_step)
        network, weights = graph_network(graph)
        values = []
        for i, mask in enumerate(self.masks):
            recon, _ = reconstruct(network, self.images, mask, float(weights[i]), phases=phases, batch_size=self.batch)
            values.append(float(reconstruction_metrics(recon, self.images)["psnr"].mean()))
        out = {"val_psnr": sum(values) / len(values), "phases": float(phases)}
        return {**out, **self.extra(graph)} if self.extra is not None else out


def safeguard_summary(metrics: Path, level: str) -> dict[str, float]:
    """Mean fraction of samples and phases whose u-step was refused (line 5 failed) over a run, read
    from the run's ``metrics.jsonl``."""
    entries = [json.loads(line) for line in Path(metrics).read_text().splitlines() if line]
    taken = [e["safeguard_taken"] for e in entries if e.get("level") == level and "safeguard_taken" in e]
    return {"safeguard_taken_mean": sum(taken) / len(taken) if taken else float("nan"), "steps": len(taken)}


def network_from(state: Mapping[str, Tensor], settings: LOASettings, phases: int) -> LOANetwork:
    """An LOA network with the parameters ``state`` (a ``state_dict``) running ``phases`` phases."""
    network = LOANetwork(settings)
    network.load_state_dict(state)
    network.active_phases = int(phases)
    return network


def test_rows(
    network: LOANetwork,
    images: Tensor,
    tasks: Sequence[SamplingTask],
    masks: Tensor,
    weights: Sequence[float],
    *,
    method: str,
    batch_size: int = 16,
    with_zero_filled: bool = False,
    **identity: Any,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Tensor]], dict[str, dict[str, float]]]:
    """Score ``network`` on the test ``images`` of every task (mask ``masks[i]``, weight ``weights[i]``).

    Returns the per-slice rows (``identity``, the task's pattern/ratio/achieved ratio, ``method``, and
    σ(ω_i) unless the method is conventional; with ``with_zero_filled`` also the zero-filled rows), the
    magnitude of the middle slice's reconstructions per task (for figures), and the safeguard statistics.
    """
    rows, examples, stats = [], {}, {}
    middle = len(images) // 2
    for task, mask, weight in zip(tasks, masks, weights):
        ident = {**identity, "task": task.key, "pattern": task.pattern, "ratio": task.ratio}
        ident["achieved_ratio"] = achieved_ratio(mask)
        extra = {} if method == "conventional" else {"sigma_omega": float(weight)}
        new, recon, stats[task.key] = score_rows(
            network, images, mask, float(weight), batch_size=batch_size, **ident, method=method, **extra
        )
        rows += new
        examples[task.key] = {method: recon[middle].abs(), "mask": mask}
        if with_zero_filled:
            zf = zero_filled(images.double(), mask.double())
            rows += per_slice_rows(reconstruction_metrics(zf, images), **ident, method="zero-filled")
            examples[task.key]["zero-filled"] = zf[middle].abs()
    return rows, examples, stats


def eps_rule_sweep(
    network: LOANetwork,
    images: Tensor,
    masks: Tensor,
    weights: Sequence[float],
    sigmas: Sequence[float],
    *,
    batch_size: int = 16,
) -> list[dict[str, float]]:
    """Line 15 of Algorithm 1 (ε ← γε when ‖∇φ_ε(x_{t+1})‖ < σγε) with other values of its constant σ,
    on a trained network at test time: for every σ, the fraction of phase-samples where ε was reduced,
    the median ‖∇φ_ε‖ / σγε, and the mean test PSNR over the tasks (``masks[i]`` at ``weights[i]``).
    The network was trained with its own σ; this shows where the rule starts to operate and what it
    changes, not what training with that σ would give."""
    trained = network.settings
    out = []
    try:
        for sigma in sigmas:
            network.settings = dataclasses.replace(trained, sigma=float(sigma))
            psnrs, reduced, ratios = [], [], []
            for mask, weight in zip(masks, weights):
                recon, stats = reconstruct(
                    network, images, mask, float(weight), phases=network.active_phases, batch_size=batch_size
                )
                psnrs.append(float(reconstruction_metrics(recon, images)["psnr"].mean()))
                reduced.append(stats["eps_reduced"])
                ratios.append(stats["grad_over_eps_threshold"])
            n = len(psnrs)
            out.append(
                {
                    "sigma": float(sigma),
                    "eps_reduced": sum(reduced) / n,
                    "grad_over_eps_threshold": sorted(ratios)[n // 2],
                    "psnr": sum(psnrs) / n,
                }
            )
    finally:
        network.settings = trained
    return out


def score_checkpoint(
    levels: Mapping[str, Any],
    network: LOANetwork,
    *,
    tasks: Sequence[SamplingTask],
    masks: Tensor,
    images: Tensor,
    method: str,
    batch_size: int = 16,
    eps_sigmas: Sequence[float] = (),
    **identity: Any,
) -> dict[str, Any]:
    """The meta-test protocol of every run: score a checkpoint's network on the test ``images`` of its tasks.

    ``levels`` is the checkpoint's ``levels`` entry; ``network`` runs the phases the checkpoint
    was trained with. The regulariser weight of task ``i`` is σ(ω_i) of the checkpoint's ``omega``
    level, or 1 without one (conventional learning). Returns the per-slice ``rows`` (zero-filled too
    for conventional learning), ``examples`` (the middle slice, for figures), the Algorithm 1
    statistics ``loa_at_test``, ``sigma`` per task and, with ``eps_sigmas``, :func:`eps_rule_sweep`.
    """
    omega = levels.get("omega", {}).get("module", {}).get("omega")
    weights = torch.sigmoid(omega).tolist() if omega is not None else [1.0] * len(tasks)
    rows, examples, stats = test_rows(
        network,
        images,
        tasks,
        masks,
        weights,
        method=method,
        batch_size=batch_size,
        with_zero_filled=method == "conventional",
        **identity,
    )
    out = {
        "rows": rows,
        "examples": examples,
        "loa_at_test": stats,
        "sigma": dict(zip([t.key for t in tasks], weights)),
    }
    if eps_sigmas:
        out["eps_rule"] = eps_rule_sweep(network, images, masks, weights, eps_sigmas, batch_size=batch_size)
    return {**out, "phases": network.active_phases, "eps0": float(network.eps0.detach().abs())}
