"""DuMeta++'s data of one seed: the meta-training pool (train/validation) and the unseen domains.

:class:`DataSource` says where the domains come from (a data root in the nnU-Net raw or iSeg-2019
layout, or the embedded synthetic lifespan domains of :mod:`problems.braindata`); :func:`meta_data`
assembles, for one seed, what the runs read: every pool dataset split 80/20 into training items and
validation subjects (the paper's model selection), and the unseen domains, every subject on the
working grid. Scans of a longitudinal series are cropped to their common brain box before
resampling, so they stay on one grid and STCS compares them voxel to voxel.

:func:`check_shots` runs before any training: every unseen domain must have more people than the
largest number of shots asked for (one person at least is left to test on).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..braindata import (
    BrainDataError,
    BrainDomain,
    Subject,
    few_shot_split,
    load_domains,
    resample_subject,
    train_val_split,
)
from .data import PatchItems

__all__ = ["Data", "DataSource", "check_shots", "domains_of", "meta_data", "on_grid", "split_for"]


@dataclass(frozen=True)
class DataSource:
    """Where the domains come from (hashable, so the loaded data can be cached per source).

    Attributes:
        root: the data root (one folder per domain), or None for the embedded synthetic domains.
        meta_train, meta_test: domain names (None: the defaults of :func:`problems.braindata.load_domains`).
        label_map: label map of nnU-Net-layout folders (None: their dataset.json).
        people: people per embedded domain (None: the generator's defaults); ignored with a data root.
    """

    root: str | None = None
    meta_train: tuple[str, ...] | None = None
    meta_test: tuple[str, ...] | None = None
    label_map: str | None = None
    people: int | None = None


@dataclass
class Data:
    """Everything a seed's runs read: the pool's items and validation subjects, the unseen domains."""

    pool: list[PatchItems]
    pool_val: list[Subject]
    targets: list[BrainDomain]
    descriptions: dict[str, str]
    source: str


@functools.lru_cache(maxsize=1)
def domains_of(source: DataSource) -> dict[str, BrainDomain]:
    """The pool (three or more domains) and the two unseen domains of ``source``, on their own grids.

    Raises :class:`BrainDataError` naming what is missing."""
    embedded = {"people": source.people} if source.root is None and source.people else {}
    domains = load_domains(
        source.root, meta_train=source.meta_train, meta_test=source.meta_test, label_map=source.label_map, **embedded
    )
    pool = [d.name for d in domains.values() if d.role == "meta-train"]
    targets = [d.name for d in domains.values() if d.role == "meta-test"]
    if len(pool) < 3 or len(targets) != 2:
        raise BrainDataError(
            f"DuMeta++ needs at least three meta-training domains and two meta-test domains (iSeg-2019-like "
            f"for Tables I/V, ADNI-like for Tables II-IV/VI); got {pool} and {targets}"
        )
    return domains


def _foreground_box(subjects: Sequence[Subject], margin_mm: float = 4.0) -> tuple[slice, ...]:
    """One bounding box of the brain over several scans of a series (so they stay on one grid)."""
    foreground = np.zeros(subjects[0].label.shape, dtype=bool)
    for s in subjects:
        foreground |= (s.image > 0) | (s.label > 0)
    box = []
    for axis, (n, spacing) in enumerate(zip(foreground.shape, subjects[0].spacing)):
        idx = np.flatnonzero(foreground.any(axis=tuple(a for a in range(3) if a != axis)))
        margin = math.ceil(margin_mm / spacing)
        box.append(slice(max(int(idx[0]) - margin, 0), min(int(idx[-1]) + 1 + margin, n)))
    return tuple(box)


def on_grid(domain: BrainDomain, grid: Sequence[int | None]) -> BrainDomain:
    """``domain`` with every subject resampled to ``grid``; the scans of a series are cropped to their
    common brain box first, so they share one grid and STCS compares them voxel to voxel."""
    if all(g is None for g in grid):
        return domain
    subjects, done = [], set()
    series = domain.series()
    for s in domain.subjects:
        if s.series in series:
            if s.series in done:
                continue
            done.add(s.series)
            scans = series[s.series]
            box = _foreground_box(scans)
            subjects += [
                resample_subject(
                    dataclasses.replace(t, image=t.image[box], label=t.label[box]), grid, crop_to_brain=False
                )
                for t in scans
            ]
        else:
            subjects.append(resample_subject(s, grid))
    return dataclasses.replace(domain, subjects=sorted(subjects, key=lambda t: t.subject_id))


@functools.lru_cache(maxsize=2)
def meta_data(
    source: DataSource,
    *,
    grid: tuple[int | None, ...],
    patch: tuple[int, int, int],
    valid_people: int,
    seed: int,
    augment: bool = False,
    device: str | None = None,
) -> Data:
    """The data of one seed: each pool domain split 80/20 (seeded) into training items of ``patch``
    (``pz = 1``: 2D axial patches; with nnU-Net's ``augment``ation, resampled on ``device``) and at most
    ``valid_people`` validation scans; the unseen domains; everything resampled to ``grid``."""
    domains = domains_of(source)
    pool, pool_val = [], []
    for d in (d for d in domains.values() if d.role == "meta-train"):
        train, val = train_val_split(d, val_fraction=0.2, seed=seed)
        by_id = {s.subject_id: s for s in on_grid(dataclasses.replace(d, subjects=train + val), grid).subjects}
        pool.append(PatchItems(d.name, [by_id[s.subject_id] for s in train], patch, augment=augment, device=device))
        pool_val += [by_id[s.subject_id] for s in val][:valid_people]
    return Data(
        pool=pool,
        pool_val=pool_val,
        targets=[on_grid(d, grid) for d in domains.values() if d.role == "meta-test"],
        descriptions={d.name: d.description for d in domains.values()},
        source="embedded" if all(d.source == "embedded" for d in domains.values()) else "real",
    )


def split_for(
    domain: BrainDomain, shots: int, seed: int, test_people: int | None = None
) -> tuple[list[Subject], list[Subject]]:
    """Support and test scans of one meta-test task (at most ``test_people`` test people)."""
    split = few_shot_split(domain, shots, seed=seed)
    test = split.test
    if test_people is not None:
        people = list(dict.fromkeys(s.series or s.subject_id for s in test))[:test_people]
        test = [s for s in test if (s.series or s.subject_id) in people]
    return split.support, test


def check_shots(targets: Sequence[BrainDomain], shots: Sequence[int]) -> None:
    """Before any training: every unseen domain can give ``max(shots)`` support people and keep one to
    test on; a :class:`BrainDataError` names the domain and its number of people."""
    for domain in targets:
        few_shot_split(domain, max(shots), seed=0)
