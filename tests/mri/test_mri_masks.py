"""Sampling masks: ratios within 1 %, centred, seeded, cached, and clear errors for bad requests."""

import numpy as np
import pytest
import torch

from problems.mri import masks
from problems.mri.masks import (
    PATTERNS,
    RATIO_TOLERANCE,
    SamplingTask,
    achieved_ratio,
    cartesian_mask,
    mask_cache_dir,
    sampling_mask,
)

RATIOS = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDMLO_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("shape", [(64, 64), (160, 180)])
@pytest.mark.parametrize("pattern", PATTERNS)
def test_achieved_ratio_is_within_one_percent_and_dc_is_sampled(pattern, shape):
    for ratio in RATIOS:
        mask = sampling_mask(pattern, ratio, shape)
        assert mask.shape == shape and set(mask.unique().tolist()) <= {0.0, 1.0}
        assert abs(achieved_ratio(mask) - ratio) <= RATIO_TOLERANCE, (pattern, ratio, achieved_ratio(mask))
        assert mask[shape[0] // 2, shape[1] // 2] == 1


def test_radial_masks_hit_the_sample_count_exactly_and_are_lines_through_the_centre():
    for ratio in RATIOS:
        mask = sampling_mask("radial", ratio, (160, 180))
        assert int(mask.sum()) == round(ratio * 160 * 180)
    mask = sampling_mask("radial", 0.1, (64, 64)).numpy()
    # point symmetry about the centre (lines pass through it), up to the one row/column without a partner
    inner = mask[1:, 1:]
    assert (inner == inner[::-1, ::-1]).mean() > 0.97


def test_cartesian_masks_sample_whole_lines_with_a_full_centre():
    mask = sampling_mask("cartesian", 0.3, (64, 80))
    columns = mask[0].bool()
    assert torch.equal(mask, columns.float().expand(64, 80))
    assert columns[40 - 4 : 40 + 4].all()  # centre fraction ratio/3 of 80 columns = 8
    assert int(columns.sum()) == round(0.3 * 80)


def test_masks_are_seeded():
    for pattern in PATTERNS:
        a = sampling_mask(pattern, 0.2, (64, 64), seed=1, cache=False)
        assert torch.equal(a, sampling_mask(pattern, 0.2, (64, 64), seed=1, cache=False))
        assert not torch.equal(a, sampling_mask(pattern, 0.2, (64, 64), seed=2, cache=False))


def test_masks_are_cached_on_disk_and_reloaded(tmp_path):
    first = sampling_mask("poisson", 0.25, (48, 40), seed=3)
    files = list(mask_cache_dir().glob("poisson-48x40-r0.250000-s3-*.npy"))
    assert len(files) == 1 and mask_cache_dir().is_relative_to(tmp_path)
    np.save(files[0], np.zeros((48, 40), dtype=np.uint8))  # the file, not a recomputation, is what is read back
    masks._cached.cache_clear()
    assert sampling_mask("poisson", 0.25, (48, 40), seed=3).sum() == 0
    files[0].unlink()
    masks._cached.cache_clear()
    assert torch.equal(sampling_mask("poisson", 0.25, (48, 40), seed=3), first)


@pytest.mark.parametrize("ratio", [0, -0.1, 1.5, float("nan"), "abc"])
def test_a_ratio_outside_zero_one_is_refused(ratio):
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        sampling_mask("radial", ratio, (32, 32))


def test_an_unknown_pattern_is_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match="unknown sampling pattern 'spiral'.*radial"):
        sampling_mask("spiral", 0.2, (32, 32))


def test_a_grid_too_coarse_for_the_ratio_is_refused():
    with pytest.raises(ValueError, match="more than 0.01 from the requested"):
        cartesian_mask(0.13, (64, 20))  # 3 of 20 columns = 0.15


def test_full_sampling_and_sampling_tasks():
    assert sampling_mask("poisson", 1.0, (16, 16)).sum() == 256
    task = SamplingTask.parse("radial:0.2")
    assert task == SamplingTask("radial", 0.2) == SamplingTask.parse("radial:20%") == SamplingTask.parse("radial-20")
    assert task.key == "radial-20" and task.label == "radial 20%"
    assert SamplingTask("cartesian", 0.125).key == "cartesian-12.5"
    assert torch.equal(task.mask((32, 32)), sampling_mask("radial", 0.2, (32, 32)))
    assert SamplingTask.parse(task.key) == task and SamplingTask.parse("cartesian-12.5").ratio == 0.125
    with pytest.raises(ValueError, match="pattern:fraction"):
        SamplingTask.parse("radial")
    for text in ("radial:20", "radial:1.5", "radial:0", "radial-150"):
        with pytest.raises(ValueError, match=r"\(0, 1\]"):
            SamplingTask.parse(text)
    with pytest.raises(ValueError, match="not a number"):
        SamplingTask.parse("radial:abc")
