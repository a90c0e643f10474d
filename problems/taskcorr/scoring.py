"""Scoring on the test groups: every method's reconstructions, the zero-filled reference row, per-slice metrics.

The test groups are the validation tasks on held-out slices; network θ_j is scored on test group j
(a single network, M = 1, on every one). Metrics are PSNR, SSIM and NMSE per slice of the
root-sum-of-squares image against the reference (:mod:`problems.mri.metrics`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..mri import ifft2c, per_slice_rows, reconstruction_metrics
from .groups import ReconGroup
from .optimal_control import OptimalControlNet, combined_magnitude
from .tasks import ReconTask

__all__ = ["ZERO_FILLED", "reconstruct", "score_networks", "score_zero_filled", "zero_filled"]

ZERO_FILLED = "zero-filled"
"""The method name of the zero-filled reconstruction row (no training)."""


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


def zero_filled(group: ReconGroup) -> Tensor:
    """The zero-filled reconstruction ``[n, H, W]``: root-sum-of-squares of the inverse FFT of every
    coil's measured (zero where unsampled) k-space."""
    return combined_magnitude(ifft2c(group.kspace))


def score_networks(
    nets: Sequence[OptimalControlNet],
    tasks: Sequence[ReconTask],
    groups: Sequence[ReconGroup],
    *,
    device: torch.device | str | None = None,
    **identity: Any,
) -> tuple[list[dict[str, Any]], dict[str, Tensor]]:
    """Per-slice metric rows of network j on test group j (the only network when there is one), each row
    carrying ``identity`` (method, seed...) and the task's label; and the middle slice's reconstruction
    of every task (by task key), for figures."""
    rows, examples = [], {}
    for j, (task, group) in enumerate(zip(tasks, groups)):
        net = nets[j] if len(nets) > 1 else nets[0]
        net.eval()
        recon, reference = reconstruct(net, group, device=device)
        rows += per_slice_rows(reconstruction_metrics(recon, reference), **identity, task=task.label)
        examples[task.key] = recon[len(recon) // 2]
    return rows, examples


def score_zero_filled(tasks: Sequence[ReconTask], groups: Sequence[ReconGroup]) -> list[dict[str, Any]]:
    """Per-slice metric rows of the zero-filled reconstruction on every test group."""
    rows = []
    for task, group in zip(tasks, groups):
        recon = zero_filled(group)
        rows += per_slice_rows(
            reconstruction_metrics(recon, group.target.to(recon.dtype)), method=ZERO_FILLED, task=task.label
        )
    return rows
