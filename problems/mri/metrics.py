"""Reconstruction quality per slice: PSNR, SSIM, NMSE, as Bian et al. (Eq. 20-22) and their code compute them.

All three compare **magnitudes** ``|x|`` of the reconstruction with ``|x̂|`` of the reference
(complex or real tensors ``[B, H, W]`` or ``[H, W]``), one value per slice:

* ``psnr = 20 log10( max|x̂| / RMSE(|x|, |x̂|) )`` — the paper's peak is the maximum of the
  reference magnitude of that slice (Eq. 20 prints the MSE in the denominator; the authors' code
  and the usual definition use its root, as here). An exact reconstruction scores ``inf``.
* ``ssim`` — :func:`skimage.metrics.structural_similarity` (Wang et al. 2004; 7×7 uniform window,
  K1 = 0.01, K2 = 0.03) with ``data_range = max|x̂|`` per slice, the paper's *L* (the authors'
  code left skimage's default range, which is 2 for float input).
* ``nmse = ||x| − |x̂||² / ||x̂||²`` — normalised by the reference, as the authors' code and
  fastMRI (Eq. 22 divides by the reconstruction's norm).

Public API::

    METRIC_NAMES = ("psnr", "ssim", "nmse")
    psnr(recon, reference) / ssim(...) / nmse(...) -> Tensor [B] (float64, CPU)
    reconstruction_metrics(recon, reference) -> {"psnr": [B], "ssim": [B], "nmse": [B]}
    per_slice_rows(metrics, **identity) -> list of rows {**identity, "slice": i, "psnr": ..., ...}
    summarize_rows(rows) -> {"psnr": {"mean", "std", "n"}, ...}
    write_per_slice_csv(path, rows)

Example:
    >>> ref = torch.rand(2, 32, 32)
    >>> m = reconstruction_metrics(ref + 0.01 * torch.randn(2, 32, 32), ref)
    >>> sorted(m), m["psnr"].shape
    (['nmse', 'psnr', 'ssim'], torch.Size([2]))
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "METRIC_NAMES",
    "nmse",
    "per_slice_rows",
    "psnr",
    "reconstruction_metrics",
    "ssim",
    "summarize_rows",
    "write_per_slice_csv",
]

METRIC_NAMES = ("psnr", "ssim", "nmse")


def _magnitudes(recon: Tensor, reference: Tensor) -> tuple[Tensor, Tensor]:
    if recon.shape != reference.shape:
        raise ValueError(
            f"reconstruction and reference must have the same shape, got {tuple(recon.shape)} "
            f"and {tuple(reference.shape)}"
        )
    if recon.dim() == 2:
        recon, reference = recon[None], reference[None]
    if recon.dim() != 3:
        raise ValueError(f"expected images [B, H, W] or [H, W], got shape {tuple(recon.shape)}")
    return recon.detach().abs().double().cpu(), reference.detach().abs().double().cpu()


def psnr(recon: Tensor, reference: Tensor) -> Tensor:
    """``20 log10(max|x̂| / RMSE)`` per slice ``[B]`` (Eq. 20, with the root of the MSE)."""
    x, ref = _magnitudes(recon, reference)
    rmse = (x - ref).pow(2).mean((-2, -1)).sqrt()
    peak = ref.amax((-2, -1))
    return 20 * torch.log10(peak / rmse)


def nmse(recon: Tensor, reference: Tensor) -> Tensor:
    """``||x| − |x̂||² / ||x̂||²`` per slice ``[B]``."""
    x, ref = _magnitudes(recon, reference)
    return (x - ref).pow(2).sum((-2, -1)) / ref.pow(2).sum((-2, -1))


def ssim(recon: Tensor, reference: Tensor) -> Tensor:
    """SSIM per slice ``[B]`` (scikit-image, 7×7 window) with ``data_range = max|x̂|`` of each slice."""
    from skimage.metrics import structural_similarity

    x, ref = _magnitudes(recon, reference)
    values = [structural_similarity(r.numpy(), xi.numpy(), data_range=float(r.max()) or 1.0) for xi, r in zip(x, ref)]
    return torch.tensor(values, dtype=torch.float64)


def reconstruction_metrics(recon: Tensor, reference: Tensor) -> dict[str, Tensor]:
    """PSNR, SSIM and NMSE per slice (each ``[B]``, float64 on CPU)."""
    return {"psnr": psnr(recon, reference), "ssim": ssim(recon, reference), "nmse": nmse(recon, reference)}


def per_slice_rows(metrics: Mapping[str, Tensor], **identity: Any) -> list[dict[str, Any]]:
    """One row per slice: the ``identity`` keys (method, task...), the slice number and every metric."""
    n = len(next(iter(metrics.values())))
    return [{**identity, "slice": i, **{k: float(v[i]) for k, v in metrics.items()}} for i in range(n)]


def summarize_rows(
    rows: Sequence[Mapping[str, Any]], names: Iterable[str] = METRIC_NAMES
) -> dict[str, dict[str, float]]:
    """Mean ± sample std (and count) of each metric over the rows; infinite PSNRs are left out."""
    out = {}
    for name in names:
        values = [float(r[name]) for r in rows if name in r and math.isfinite(float(r[name]))]
        mean = statistics.fmean(values) if values else float("nan")
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        out[name] = {"mean": mean, "std": std, "n": len(values)}
    return out


def write_per_slice_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write the per-slice rows as CSV (columns in first-seen order)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return path
