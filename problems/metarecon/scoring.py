"""How a trained LOA network is scored: reconstructions, zero-filling, test metrics, validation PSNR.

Every method of the recipe (meta-learning, adaptation to an unseen task, conventional learning) is
scored the same way: the network reconstructs simulated k-space ``y = P_i F x̂`` of each test slice
with the regulariser weight of its task (σ(ω_i), or 1 for conventional learning) and the number
of phases it was trained with; PSNR, SSIM and NMSE compare the magnitude with the reference
(:mod:`problems.mri.metrics`). :class:`ValidationPSNR` is the number that picks the checkpoint kept.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
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
    "graph_network",
    "network_from",
    "reconstruct",
    "safeguard_summary",
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
    """

    def __init__(self, images: Tensor, masks: Tensor, schedule: StairSchedule, batch: int):
        self.images, self.masks, self.schedule, self.batch = images, masks, schedule, batch

    def __call__(self, graph: Graph) -> dict[str, float]:
        phases = self.schedule(graph.engine.global_step)
        network, weights = graph_network(graph)
        values = []
        for i, mask in enumerate(self.masks):
            recon, _ = reconstruct(network, self.images, mask, float(weights[i]), phases=phases, batch_size=self.batch)
            values.append(float(reconstruction_metrics(recon, self.images)["psnr"].mean()))
        return {"val_psnr": sum(values) / len(values), "phases": float(phases)}


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
