"""PSNR / SSIM / NMSE per slice with the paper's peak and an explicit SSIM data range."""

import math

import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from problems.mri import nmse, per_slice_rows, psnr, reconstruction_metrics, ssim, summarize_rows, write_per_slice_csv


def pair(seed=0):
    gen = torch.Generator().manual_seed(seed)
    ref = torch.rand(3, 24, 28, generator=gen, dtype=torch.float64) * torch.tensor([1.0, 0.5, 2.0])[:, None, None]
    noise = 0.05 * torch.randn(3, 24, 28, generator=gen, dtype=torch.float64)
    return (ref + noise).to(torch.complex128) * torch.exp(1j * torch.tensor(0.3)), ref


def test_psnr_uses_the_maximum_of_the_reference_magnitude():
    recon, ref = pair()
    for i in range(3):
        expected = peak_signal_noise_ratio(ref[i].numpy(), recon[i].abs().numpy(), data_range=float(ref[i].max()))
        assert psnr(recon, ref)[i].item() == pytest.approx(expected, rel=1e-10)
    assert math.isinf(psnr(ref, ref)[0].item())


def test_ssim_has_an_explicit_data_range_and_nmse_is_normalised_by_the_reference():
    recon, ref = pair(1)
    for i in range(3):
        expected = structural_similarity(ref[i].numpy(), recon[i].abs().numpy(), data_range=float(ref[i].max()))
        assert ssim(recon, ref)[i].item() == pytest.approx(expected, rel=1e-10)
    assert torch.allclose(nmse(recon, ref), ((recon.abs() - ref) ** 2).sum((1, 2)) / (ref**2).sum((1, 2)))
    assert ssim(ref, ref).tolist() == pytest.approx([1.0] * 3)


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="same shape"):
        psnr(torch.rand(2, 8, 8), torch.rand(2, 8, 9))
    assert psnr(torch.rand(8, 8), torch.rand(8, 8)).shape == (1,)


def test_rows_csv_and_summary(tmp_path):
    recon, ref = pair(2)
    rows = per_slice_rows(reconstruction_metrics(recon, ref), method="meta", task="radial-20")
    assert [r["slice"] for r in rows] == [0, 1, 2] and rows[0]["method"] == "meta"
    summary = summarize_rows(rows)
    values = [r["psnr"] for r in rows]
    assert summary["psnr"]["mean"] == pytest.approx(sum(values) / 3) and summary["psnr"]["n"] == 3
    assert summary["ssim"]["std"] > 0
    text = write_per_slice_csv(tmp_path / "slices.csv", rows).read_text().splitlines()
    assert text[0] == "method,task,slice,psnr,ssim,nmse" and len(text) == 4
