"""Embedded synthetic samples: determinism, marker, modality look, ensure_dataset, torch Dataset."""

from __future__ import annotations

import hashlib
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from PIL import Image

from problems.segdata import (
    DATASETS,
    DatasetError,
    SegmentationDataset,
    default_sample_root,
    ensure_dataset,
    find_cases,
    is_synthetic_sample,
    read_case,
    write_sample,
)
from problems.segdata.samples import MARKER

KEYS = sorted(DATASETS)


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("key", KEYS)
def test_same_seed_gives_byte_identical_files(key, tmp_path):
    a = digest(write_sample(key, tmp_path / "a", n_cases=2, seed=5, size=48))
    b = digest(write_sample(key, tmp_path / "b", n_cases=2, seed=5, size=48))
    c = digest(write_sample(key, tmp_path / "c", n_cases=2, seed=6, size=48))
    assert a == b
    assert a[MARKER] != c[MARKER] and set(a.values()) - {a[MARKER]} != set(c.values()) - {c[MARKER]}


def test_marker_describes_the_sample(tmp_path):
    root = write_sample("busi", tmp_path / "busi", n_cases=4, seed=3, size=64)
    assert is_synthetic_sample(root)
    text = (root / MARKER).read_text()
    assert "SYNTHETIC" in text and "seed: 3" in text and "n_cases: 4" in text and "generator:" in text


def test_write_sample_refuses_foreign_content_and_replaces_old_samples(tmp_path):
    (tmp_path / "mine.txt").write_text("user data")
    with pytest.raises(DatasetError, match="not empty"):
        write_sample("kvasir", tmp_path)
    root = write_sample("kvasir", tmp_path / "k", n_cases=5, size=48)
    write_sample("kvasir", root, n_cases=2, size=48)
    assert len(find_cases("kvasir", root)) == 2


def test_skin_sample_looks_like_dermoscopy(tmp_path):
    root = write_sample("isic2018", tmp_path / "isic", n_cases=8, size=128)
    for case in find_cases("isic2018", root):
        image, mask = read_case(case)
        grey = image.mean(axis=2)
        lesion, skin = grey[mask == 1].mean(), grey[(mask == 0)][:].mean()
        inner = np.zeros_like(mask, dtype=bool)
        inner[32:96, 32:96] = True
        centre_skin = grey[inner & (mask == 0)].mean()
        corners = np.concatenate(
            [grey[:12, :12].ravel(), grey[:12, -12:].ravel(), grey[-12:, :12].ravel(), grey[-12:, -12:].ravel()]
        ).mean()
        assert lesion < skin - 0.1
        assert corners < centre_skin - 0.1
        assert grey[mask == 0].std() > 0.01
        assert (image[..., 0] >= image[..., 2]).mean() > 0.9  # skin and pigment are warm (red >= blue)


def test_other_modalities_have_their_contrast(tmp_path):
    image, mask = read_case(find_cases("nlm_mc", write_sample("nlm_mc", tmp_path / "mc", n_cases=2))[0])
    assert image[mask == 1].mean() < image[40:90, 60:68].mean()  # lung fields darker than mediastinum
    image, mask = read_case(find_cases("busi", write_sample("busi", tmp_path / "busi", n_cases=3))[0])
    assert image[mask == 1].mean() < 0.6 * image[mask == 0].mean()  # hypoechoic lesion
    image, mask = read_case(find_cases("fetreg", write_sample("fetreg", tmp_path / "fr", n_cases=2))[0])
    placenta = (mask == 0) & (image.mean(axis=2) > 0.1)  # inside the fetoscope's field of view
    assert image[mask == 1].mean() < image[placenta].mean() - 0.1
    assert image[placenta][:, 0].mean() > 1.5 * image[placenta][:, 2].mean()  # reddish-orange


def test_kvasir_masks_are_real_jpegs_with_compression_values(tmp_path):
    case = find_cases("kvasir", write_sample("kvasir", tmp_path / "kv", n_cases=2))[0]
    raw = np.asarray(Image.open(case.masks[0]).convert("L"))
    assert Image.open(case.masks[0]).format == "JPEG"
    assert not set(np.unique(raw)) <= {0, 255}
    assert set(np.unique(read_case(case)[1])) == {0, 1}


def test_fetreg_labels_are_class_indices_with_some_tool(tmp_path):
    cases = find_cases("fetreg", write_sample("fetreg", tmp_path / "fr", n_cases=12, size=64))
    values = set()
    for case in cases:
        label = Image.open(case.masks[0])
        assert label.mode == "L"
        values |= set(np.unique(np.asarray(label)).tolist())
    assert values == {0, 1, 2}
    assert len({c.group for c in cases}) == 2


# ----------------------------------------------------------------------------- ensure_dataset


def test_no_data_root_gives_the_embedded_sample_and_reuses_it(tmp_path):
    root, source = ensure_dataset("kvasir", None, sample_root=tmp_path)
    assert source == "embedded-sample" and root == tmp_path / "kvasir" and is_synthetic_sample(root)
    stamp = (root / MARKER).stat().st_mtime_ns
    assert ensure_dataset("kvasir", None, sample_root=tmp_path) == (root, "embedded-sample")
    assert (root / MARKER).stat().st_mtime_ns == stamp
    ensure_dataset("kvasir", None, sample_root=tmp_path, sample_seed=1)
    assert "seed: 1" in (root / MARKER).read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["kvasir"]


def test_sample_cases_sets_the_sample_size_and_a_new_count_rewrites_it(tmp_path):
    root, _ = ensure_dataset("ph2", None, sample_root=tmp_path, sample_size=48, sample_cases=5)
    assert len(find_cases("ph2", root)) == 5 and "n_cases: 5" in (root / MARKER).read_text()
    ensure_dataset("ph2", None, sample_root=tmp_path, sample_size=48, sample_cases=3)
    assert len(find_cases("ph2", root)) == 3


def test_explicit_empty_data_root_is_an_error(tmp_path):
    with pytest.raises(DatasetError) as err:
        ensure_dataset("isic2018", tmp_path)
    assert str(tmp_path) in str(err.value) and "ISIC2018_Task1-2_Training_Input" in str(err.value)
    with pytest.raises(DatasetError, match="cannot be downloaded automatically"):
        ensure_dataset("jsrt", tmp_path, download=True)
    with pytest.raises(DatasetError, match="destination"):
        ensure_dataset("kvasir", None, download=True)


def test_real_layout_is_reported_as_real(tmp_path):
    root = write_sample("nlm_mc", tmp_path / "mc", n_cases=3, size=48)
    assert ensure_dataset("nlm_mc", root) == (root, "embedded-sample")
    (root / MARKER).unlink()
    assert ensure_dataset("nlm_mc", root) == (root, "real")


def test_default_sample_root_respects_medmlo_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDMLO_CACHE", str(tmp_path))
    assert default_sample_root() == tmp_path / "samples"
    monkeypatch.delenv("MEDMLO_CACHE")
    assert default_sample_root() == Path.home() / ".cache" / "medmlo" / "samples"


# ----------------------------------------------------------------------------- torch Dataset


def test_segmentation_dataset_items_and_seeded_transform(tmp_path):
    cases = find_cases("jsrt", write_sample("jsrt", tmp_path / "jsrt", n_cases=3, size=64))
    plain = SegmentationDataset(cases, size=32, cache=True)
    item = plain[0]
    assert item["image"].shape == (1, 32, 32) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (1, 32, 32) and set(item["mask"].unique().tolist()) <= {0.0, 1.0}
    assert item["case_id"] == cases[0].case_id and len(plain) == 3
    flips = SegmentationDataset(cases, size=32, transform=A.Compose([A.HorizontalFlip(p=0.5)]))
    draws = [flips.sample(0, seed)["image"] for seed in range(8)]
    assert torch.equal(flips.sample(0, 3)["image"], draws[3])
    assert any(torch.equal(d, item["image"].flip(-1)) for d in draws)
    assert any(torch.equal(d, item["image"]) for d in draws)
