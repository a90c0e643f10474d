"""The embedded lifespan domains made from nilearn's MNI152 tissue maps: roles, age contrasts, atrophy, cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from problems.braindata import (
    META_TEST,
    META_TRAIN,
    PROFILES,
    BrainDataError,
    BrainDomain,
    lifespan_domains,
    load_domains,
)
from problems.braindata.lifespan import GRID, SPACING


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("braindata-cache")


@pytest.fixture(scope="module")
def domains(cache_dir: Path) -> dict[str, BrainDomain]:
    return lifespan_domains(people=1, time_points=2, cache_dir=cache_dir)


def _tissue_means(domain: BrainDomain) -> np.ndarray:
    """Mean normalised intensity of CSF, GM, WM over the domain's scans."""
    return np.array([[s.image[s.label == k].mean() for k in (1, 2, 3)] for s in domain.subjects]).mean(axis=0)


def _brain_ml(domain: BrainDomain) -> float:
    return float(np.mean([sum(s.tissue_volumes_ml.values()) for s in domain.subjects]))


def _csf_share(domain: BrainDomain) -> float:
    return float(np.mean([s.tissue_volumes_ml["CSF"] / sum(s.tissue_volumes_ml.values()) for s in domain.subjects]))


def test_roles_mirror_the_paper(domains: dict[str, BrainDomain], cache_dir: Path) -> None:
    assert META_TRAIN == ("infant12m", "infant24m", "adult") and META_TEST == ("infant6m", "elderly")
    assert list(domains) == [*META_TRAIN, *META_TEST]
    for name, domain in domains.items():
        assert domain.role == PROFILES[name].role and domain.source == "embedded"
        assert domain.description.startswith(f"synthetic {PROFILES[name].like}-like ({name}, {domain.role})")
    picked = load_domains(
        None, meta_train=["adult"], meta_test=["elderly"], people=1, time_points=2, cache_dir=cache_dir
    )
    assert list(picked) == ["adult", "elderly"] and picked["elderly"].role == "meta-test"


def test_volumes_are_labelled_skull_stripped_and_normalised(domains: dict[str, BrainDomain]) -> None:
    for domain in domains.values():
        for s in domain.subjects:
            assert s.image.shape == GRID and s.spacing == SPACING and s.source == "embedded"
            assert s.image.dtype == np.float32 and s.label.dtype == np.int64
            assert set(np.unique(s.label)) == {0, 1, 2, 3}
            assert s.image.min() == 0.0 and s.image.max() == 1.0
            assert (s.image[s.label == 0] == 0).all()
            assert 600 < sum(s.tissue_volumes_ml.values()) < 2500


def test_age_groups_differ_as_described(domains: dict[str, BrainDomain]) -> None:
    means = {name: _tissue_means(d) for name, d in domains.items()}
    contrast = {name: (m[2] - m[1]) / m[2] for name, m in means.items()}  # (WM - GM) / WM
    assert contrast["infant6m"] < 0.15 < contrast["infant12m"] < contrast["adult"]  # isointense at 6 months
    assert all(m[0] < m[1] for m in means.values())  # CSF darkest in T1w
    assert _brain_ml(domains["infant6m"]) < 0.75 * _brain_ml(domains["adult"])  # smaller infant brains
    assert _csf_share(domains["elderly"]) > _csf_share(domains["adult"]) > _csf_share(domains["infant24m"])


def test_elderly_series_atrophy_progresses_in_one_space(domains: dict[str, BrainDomain]) -> None:
    series = domains["elderly"].series()
    assert len(series) == 1
    first, second = next(iter(series.values()))
    assert (first.time_point, second.time_point) == (0, 1)
    assert second.age_months - first.age_months == 12.0
    assert first.label.shape == second.label.shape
    v0, v1 = first.tissue_volumes_ml, second.tissue_volumes_ml
    assert v1["CSF"] > v0["CSF"] and v1["GM"] < v0["GM"]
    assert 0.9 < np.mean(first.label == second.label) < 1.0  # same person, same grid, some change
    assert not np.array_equal(first.image, second.image)  # bias field and noise differ per scan
    assert all(s.series is None for name in META_TRAIN for s in domains[name].subjects)


def test_cache_is_deterministic_and_keyed_by_settings(domains: dict[str, BrainDomain], cache_dir: Path) -> None:
    cached = cache_dir / "infant6m-seed0-p1-t1.npz"
    assert cached.is_file()
    fresh = lifespan_domains(people=1, domains=["infant6m"], cache=False)["infant6m"].subjects[0]
    reread = lifespan_domains(people=1, domains=["infant6m"], cache_dir=cache_dir)["infant6m"].subjects[0]
    original = domains["infant6m"].subjects[0]
    for other in (fresh, reread):
        np.testing.assert_array_equal(other.image, original.image)
        np.testing.assert_array_equal(other.label, original.label)
    reseeded = lifespan_domains(seed=1, people=1, domains=["infant6m"], cache=False)["infant6m"].subjects[0]
    assert np.mean(reseeded.label != original.label) > 0.02  # another person


def test_bad_arguments() -> None:
    with pytest.raises(BrainDataError, match=r"unknown embedded domains \['toddler'\]"):
        lifespan_domains(domains=["toddler"])
    with pytest.raises(BrainDataError, match="time_points >= 2"):
        lifespan_domains(time_points=1)
    with pytest.raises(BrainDataError, match="both meta-train and meta-test"):
        load_domains(None, meta_train=["adult"], meta_test=["adult"])
