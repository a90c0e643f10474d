"""Train / validation / test splits following Table 1 of the E2EAug paper.

Reading of the paper used here: "N training examples" means N labelled examples, split 80/20
into train and validation (``round(0.8 * N)`` train, the rest validation). Table 1's 160/40 is
the ISIC N = 200 setting, 140/35 the JSRT N = 175 one, and the authors' code uses 32/8 for
ISIC N = 40 and 7/2 for JSRT N = 9, which this rule reproduces.

The test set does not depend on ``seed``: it is drawn once with a fixed seed so that every run,
whatever its seed, is scored on the same cases. Train and validation are then drawn with ``seed``
from the remaining pool. For FetReg the test set is made of whole videos, so that no video
contributes frames to both test and train/validation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .layouts import DATASETS, Case, DatasetError

__all__ = ["TEST_SEED", "Splits", "make_splits", "ood_test_cases"]

TEST_SEED = 20240229
"""Seed of every test-set selection (fixed, so test sets are identical across runs)."""


@dataclass
class Splits:
    """Disjoint lists of cases; ``train`` and ``val`` together are the N labelled examples."""

    train: list[Case] = field(default_factory=list)
    val: list[Case] = field(default_factory=list)
    test: list[Case] = field(default_factory=list)


def _check_cases(key: str, cases: list[Case]) -> list[Case]:
    if key not in DATASETS:
        raise DatasetError(f"unknown dataset '{key}'; expected one of {sorted(DATASETS)}")
    foreign = sorted({c.dataset for c in cases} - {key})
    if foreign:
        raise DatasetError(f"{key}: the case list also holds cases of {foreign}; expected only '{key}' cases")
    return sorted(cases, key=lambda c: c.case_id)


def _pick(cases: list[Case], count: int, seed: int) -> list[Case]:
    """``count`` cases drawn without replacement, deterministic given the (sorted) list and seed."""
    order = np.random.default_rng(seed).permutation(len(cases))
    return [cases[i] for i in order[:count]]


def _test_and_pool(key: str, cases: list[Case], test_size: int) -> tuple[list[Case], list[Case]]:
    """Fixed test selection and the pool left for train/val."""
    if len(cases) < test_size:
        raise DatasetError(f"{key}: found {len(cases)} cases, but the test set alone needs {test_size}")
    if key != "fetreg":
        test = _pick(cases, test_size, TEST_SEED)
        chosen = {c.case_id for c in test}
        return test, [c for c in cases if c.case_id not in chosen]
    return _video_test_and_pool(cases, test_size)


def _video_test_and_pool(cases: list[Case], test_size: int) -> tuple[list[Case], list[Case]]:
    """FetReg: take whole videos in a fixed random order until ``test_size`` frames are reached.

    The last video taken may be used only in part to reach exactly ``test_size`` frames; its
    remaining frames are left out of the pool, so no video is in both test and train/val.
    """
    videos = sorted({c.group for c in cases})
    order = np.random.default_rng(TEST_SEED).permutation(len(videos))
    test: list[Case] = []
    used: set[str] = set()
    for i in order:
        if len(test) >= test_size:
            break
        frames = [c for c in cases if c.group == videos[i]]
        test += frames[: test_size - len(test)]
        used.add(videos[i])
    return test, [c for c in cases if c.group not in used]


def make_splits(key: str, cases: list[Case], train_size: int, seed: int, *, test_size: int | None = None) -> Splits:
    """Split ``cases`` into train / val / test.

    Args:
        key: dataset key; must have ``train_sizes`` (use :func:`ood_test_cases` for OOD-only sets).
        cases: all cases of the dataset (order does not matter; they are sorted by id first).
        train_size: N, the number of labelled examples: ``round(0.8 * N)`` train, the rest val.
        seed: draws train/val from the pool left after the test set.
        test_size: test cases (default: the paper's ``DATASETS[key].test_size``); chosen with
            the fixed :data:`TEST_SEED`, independent of ``seed``.

    Raises:
        DatasetError: OOD-only dataset, N < 2, or too few cases (says how many were found and needed).
    """
    spec = DATASETS.get(key)
    if spec is not None and not spec.train_sizes:
        raise DatasetError(f"{key} is a test-only (out-of-distribution) dataset; use ood_test_cases()")
    cases = _check_cases(key, cases)
    if train_size < 2:
        raise DatasetError(f"{key}: train_size must be >= 2 (N labelled examples split 80/20), got {train_size}")
    test_size = spec.test_size if test_size is None else test_size
    test, pool = _test_and_pool(key, cases, test_size)
    if len(pool) < train_size:
        raise DatasetError(
            f"{key}: found {len(cases)} cases; {len(test)} go to the test set (plus any frames of a partly "
            f"used test video), leaving {len(pool)} for train/val, but N = {train_size} labelled examples "
            f"are needed ({test_size + train_size} cases in all)"
        )
    labelled = _pick(pool, train_size, seed)
    n_train = round(0.8 * train_size)
    return Splits(train=labelled[:n_train], val=labelled[n_train:], test=test)


def ood_test_cases(key: str, cases: list[Case], test_size: int | None = None) -> list[Case]:
    """Test cases of an out-of-distribution dataset: all of them (sorted by id), or a fixed-seed
    selection of ``test_size``.

    Raises:
        DatasetError: if ``test_size`` exceeds the number of cases found.
    """
    cases = _check_cases(key, cases)
    if test_size is None:
        return cases
    if len(cases) < test_size:
        raise DatasetError(f"{key}: found {len(cases)} cases, but {test_size} test cases are needed")
    return _pick(cases, test_size, TEST_SEED)
